#include "tpm/tpm_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

#include "core/abandonable_call.h"
#include "core/strings.h"
#include "tpm/recipient_key.h"

namespace trousseau::tpm {
namespace {

constexpr std::string_view kProbePlaintext = "trousseau-hsm tpm2 health probe";
constexpr std::string_view kProbeAad = "trousseau-hsm probe";

// Copyable holder for the job closures (std::function needs copyable callables).
struct Inputs {
  SecureBytes plaintext;
  std::string data;
  std::string aad;
};

static_assert(kEccP256PointSize == kP256PointSize);

// Transient objects a loaded key version holds.
size_t ObjectsOf(Scheme scheme) { return scheme == Scheme::kRsaOaep ? 1 : 2; }

}  // namespace

StatusOr<std::unique_ptr<TpmBackend>> TpmBackend::Create(TpmBackendOptions options) {
  if (options.key_dir.empty() && options.recipient_dir.empty()) {
    return FailedPreconditionError("the tpm2 backend needs a key directory or a recipient key directory");
  }
  // Refused here too (TpmDevice::Open would at the first request): tpm2-tss' default TPM may not be
  // the one the keys belong to.
  if (options.tcti.empty()) return FailedPreconditionError("the tpm2 backend needs a TCTI (e.g. device:/dev/tpmrm0)");
  if (options.loaded_versions == 0) return FailedPreconditionError("loaded_versions must be at least 1");
  // The primary and one key must fit while a key loads.
  if (options.object_slots < 2) return FailedPreconditionError("object_slots must be at least 2");
  if (options.max_queue == 0) return FailedPreconditionError("max_queue must be at least 1");
  if (options.request_timeout <= std::chrono::milliseconds(0)) {
    return FailedPreconditionError("the TPM request timeout must be positive");
  }
  return std::unique_ptr<TpmBackend>(new TpmBackend(std::move(options)));
}

TpmBackend::TpmBackend(TpmBackendOptions options) : options_(std::move(options)) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

TpmBackend::~TpmBackend() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

std::string TpmBackend::Describe() const {
  if (options_.key_dir.empty()) return StrCat("TPM 2.0 via TCTI '", options_.tcti, "', no key directory");
  return StrCat("TPM 2.0 via TCTI '", options_.tcti, "', key directory ", options_.key_dir);
}

std::string TpmBackend::DescribeRecipient() const {
  return StrCat("TPM ", options_.tcti, ", recipient key in ", options_.recipient_dir);
}

TpmBackend::Stats TpmBackend::stats() const {
  size_t waiting;
  {
    std::lock_guard lock(mu_);
    waiting = queue_.size();
  }
  return {requests_run_.load(),      expired_in_queue_.load(),   connects_.load(),
          connection_losses_.load(), refused_queue_full_.load(), waiting};
}

void TpmBackend::WorkerLoop() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, and nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    const bool expired = Clock::now() >= job.deadline;
    if (expired) {
      expired_in_queue_.fetch_add(1);
    } else {
      requests_run_.fetch_add(1);
    }
    job.run(expired);
  }
  // Flush our objects (they would otherwise take TPM slots until a reset) before the context goes.
  loaded_.clear();
  lru_.clear();
  recipient_key_.Flush();
  device_.reset();
}

template <typename T>
StatusOr<T> TpmBackend::Submit(Clock::time_point deadline, std::function<StatusOr<T>()> op) {
  auto pending = AbandonableCall<StatusOr<T>>::Create(&abandoned_);
  const auto queued_at = Clock::now();
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - queued_at);
  Job job;
  job.deadline = deadline;
  // A result nobody waits for any more is dropped in Deliver: the worker is past it, no longer stuck.
  job.run = [pending, op = std::move(op), timeout](bool expired) {
    if (expired) {
      pending->Deliver(UnavailableError(StrCat("the TPM request waited in the queue longer than its deadline (",
                                               timeout.count(), " ms); the TPM is busy or stuck")));
      return;
    }
    pending->Deliver(op());
  };
  {
    std::lock_guard lock(mu_);
    if (stopping_) return UnavailableError("the TPM backend is shutting down");
    if (queue_.size() >= options_.max_queue) {
      refused_queue_full_.fetch_add(1);
      return UnavailableError(
          StrCat("the TPM request queue is full (", options_.max_queue, " waiting); the TPM is stuck or overloaded"));
    }
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
  std::optional<StatusOr<T>> result = pending->WaitUntil(deadline);
  if (!result) return UnavailableError(StrCat("the TPM did not answer within ", timeout.count(), " ms"));
  return std::move(*result);
}

Status TpmBackend::EnsureConnected(Clock::time_point deadline) {
  if (device_) {
    device_->set_deadline(deadline);
    return OkStatus();
  }
  StatusOr<std::unique_ptr<TpmDevice>> device = TpmDevice::Open(options_.tcti);
  if (!device.ok()) return device.status();
  (*device)->set_deadline(deadline);
  Status flushed = (*device)->FlushLeftoverTransients();
  if (!flushed.ok()) return flushed;
  StatusOr<TpmCapabilities> caps = QueryCapabilities(**device);
  if (!caps.ok()) return caps.status();
  device_ = *std::move(device);
  caps_ = *caps;
  caps_.encrypt_decrypt2 = caps_.encrypt_decrypt2 && (options_.prefer_encrypt_decrypt2 || !caps_.encrypt_decrypt1);
  connects_.fetch_add(1);
  if (connects_.load() > 1) spdlog::info("reconnected to the TPM ({})", Describe());
  return OkStatus();
}

void TpmBackend::DropConnection(const Status& why) {
  if (!device_) return;
  connection_losses_.fetch_add(1);
  spdlog::warn("lost the TPM ({}); will reconnect on the next request", why.message());
  // The TPM may have restarted: our handle numbers may now name someone else's objects. Forget
  // them without flushing.
  for (auto& [version, loaded] : loaded_) loaded.Abandon();
  loaded_.clear();
  lru_.clear();
  recipient_key_.Abandon();
  device_.reset();
}

StatusOr<const LoadedVersion*> TpmBackend::EnsureLoaded(uint64_t version) {
  auto key = keys_.find(version);
  if (key == keys_.end()) return NotFoundError(StrCat("TPM key version ", version, " is not loaded"));
  auto loaded = loaded_.find(version);
  if (loaded != loaded_.end()) {
    lru_.remove(version);
    lru_.push_front(version);
    return &loaded->second;
  }
  while (loaded_.size() >= options_.loaded_versions && !lru_.empty()) {
    loaded_.erase(lru_.back());  // flushes both objects
    lru_.pop_back();
  }
  MakeRoom(1 + ObjectsOf(key->second.blobs.scheme), /*for_recipient=*/false);
  StatusOr<LoadedVersion> fresh = LoadVersion(*device_, caps_, key->second.blobs);
  if (!fresh.ok()) return fresh.status();
  lru_.push_front(version);
  return &loaded_.emplace(version, *std::move(fresh)).first->second;
}

size_t TpmBackend::ObjectsLoaded() const {
  size_t objects = recipient_key_ ? 1 : 0;
  for (const auto& [version, loaded] : loaded_) objects += ObjectsOf(loaded.scheme);
  return objects;
}

void TpmBackend::MakeRoom(size_t objects, bool for_recipient) {
  while (ObjectsLoaded() + objects > options_.object_slots) {
    if (!for_recipient && recipient_key_) {
      recipient_key_.Flush();  // reloaded by the next recipient request
    } else if (!lru_.empty()) {
      loaded_.erase(lru_.back());
      lru_.pop_back();
    } else {
      return;  // nothing of ours left to flush
    }
  }
}

StatusOr<const TransientObject*> TpmBackend::EnsureRecipientLoaded() {
  if (recipient_key_) return &recipient_key_;
  if (!recipient_blobs_) {
    StatusOr<ObjectBlobs> blobs = ReadRecipientKey(options_.recipient_dir);
    if (!blobs.ok()) {
      if (!IsNotFound(blobs.status())) return blobs.status();
      return FailedPreconditionError(StrCat(blobs.status().message(), "; create it with `trousseau-hsm-init`"));
    }
    StatusOr<std::string> point = RecipientPoint(*blobs);
    if (!point.ok()) return point.status();
    recipient_blobs_ = *std::move(blobs);
    recipient_point_ = *std::move(point);
  }
  MakeRoom(2, /*for_recipient=*/true);  // the primary and the key while it loads
  StatusOr<TransientObject> key = LoadRecipientObject(*device_, *recipient_blobs_);
  if (!key.ok()) {
    if (!IsFailedPrecondition(key.status())) return key.status();
    recipient_blobs_.reset();  // read the directory again next time: an operator may fix it without a restart
    return FailedPreconditionError(StrCat("the TPM recipient key in ", options_.recipient_dir,
                                          " does not load in the TPM at '", options_.tcti,
                                          "': ", key.status().message()));
  }
  recipient_key_ = *std::move(key);
  return &recipient_key_;
}

template <typename T>
StatusOr<T> TpmBackend::WithDevice(Clock::time_point deadline, const std::function<StatusOr<T>()>& op) {
  for (int attempt = 0;; ++attempt) {
    Status connected = EnsureConnected(deadline);
    if (!connected.ok()) {
      if (IsUnavailable(connected)) DropConnection(connected);
      return connected;
    }
    StatusOr<T> result = op();
    // The device, not the Status, knows whether the link went: messages carry no internal tags.
    if (result.ok() || !device_->link_lost()) return result;
    DropConnection(result.status());
    // A TPM that restarted between two requests shows up as stale handles: one clean retry on a
    // new context is invisible to the caller. A dead link fails again quickly.
    if (attempt > 0 || Clock::now() >= deadline) return result;
  }
}

StatusOr<std::vector<BackendKey>> TpmBackend::LoadKeysOnWorker(Clock::time_point deadline) {
  if (options_.key_dir.empty()) {
    return FailedPreconditionError("no key directory: this TPM backend only holds a recipient key");
  }
  StatusOr<std::map<uint64_t, VersionBlobs>> dir = ReadKeyDir(options_.key_dir);
  if (!dir.ok()) return dir.status();
  if (dir->empty()) {
    return FailedPreconditionError(
        StrCat("no TPM keys in ", options_.key_dir, "; create version 1 with `trousseau-hsm-init tpm init`"));
  }
  return WithDevice<std::vector<BackendKey>>(deadline, [&]() -> StatusOr<std::vector<BackendKey>> {
    // Check and fingerprint every version first, so a bad directory leaves the loaded keys alone.
    std::map<uint64_t, KeyEntry> fresh;
    for (auto& [version, blobs] : *dir) {
      KeyEntry entry;
      entry.blobs = blobs;
      auto known = keys_.find(version);
      if (known != keys_.end() && known->second.blobs == blobs) {
        entry.fingerprint = known->second.fingerprint;  // same blobs, same key
      } else {
        // Load outside the cache: the old entry (if any) stays in service until the swap.
        while (!loaded_.empty() && loaded_.size() + 1 > options_.loaded_versions) {
          loaded_.erase(lru_.back());
          lru_.pop_back();
        }
        MakeRoom(1 + ObjectsOf(blobs.scheme), /*for_recipient=*/false);
        StatusOr<LoadedVersion> loaded = LoadVersion(*device_, caps_, blobs);
        if (!loaded.ok()) return loaded.status();
        StatusOr<std::string> fingerprint = Fingerprint(*device_, *loaded);
        if (!fingerprint.ok()) return fingerprint.status();
        entry.fingerprint = *std::move(fingerprint);
      }
      fresh.emplace(version, std::move(entry));
    }
    // Drop loaded objects of versions that vanished or changed.
    for (auto it = loaded_.begin(); it != loaded_.end();) {
      auto now = fresh.find(it->first);
      if (now == fresh.end() || !(now->second.blobs == keys_[it->first].blobs)) {
        lru_.remove(it->first);
        it = loaded_.erase(it);
      } else {
        ++it;
      }
    }
    keys_ = std::move(fresh);
    seal_overhead_.store(keys_.rbegin()->second.blobs.scheme == Scheme::kRsaOaep ? kRsaSealedSize : kSealOverhead);
    std::vector<BackendKey> result;
    for (const auto& [version, entry] : keys_) result.push_back({version, entry.fingerprint});
    // Keep the active (highest) version loaded: it serves every Encrypt.
    if (StatusOr<const LoadedVersion*> active = EnsureLoaded(keys_.rbegin()->first); !active.ok()) {
      return active.status();
    }
    return result;
  });
}

Clock::time_point TpmBackend::RequestDeadline(Deadline deadline) const {
  return std::min(deadline, Clock::now() + options_.request_timeout);
}

StatusOr<std::vector<BackendKey>> TpmBackend::LoadKeys(Deadline deadline) {
  deadline = std::min(deadline, Clock::now() + std::max(options_.load_timeout, options_.request_timeout));
  return Submit<std::vector<BackendKey>>(deadline, [this, deadline] { return LoadKeysOnWorker(deadline); });
}

StatusOr<std::string> TpmBackend::Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                                       Deadline request_deadline) {
  auto in = std::make_shared<Inputs>();
  in->plaintext = SecureBytes::CopyOf(plaintext);
  in->aad = std::string(aad);
  const auto deadline = RequestDeadline(request_deadline);
  return Submit<std::string>(deadline, [this, in, version, deadline] {
    return WithDevice<std::string>(deadline, [&]() -> StatusOr<std::string> {
      StatusOr<const LoadedVersion*> key = EnsureLoaded(version);
      if (!key.ok()) return key.status();
      return tpm::Seal(*device_, caps_, **key, in->plaintext.view(), in->aad);
    });
  });
}

StatusOr<SecureBytes> TpmBackend::Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                       Deadline request_deadline) {
  if (sealed.size() < kSealOverhead) return InvalidArgumentError("ciphertext is too short to hold an IV and a MAC");
  auto in = std::make_shared<Inputs>();
  in->data = std::string(sealed);
  in->aad = std::string(aad);
  const auto deadline = RequestDeadline(request_deadline);
  return Submit<SecureBytes>(deadline, [this, in, version, deadline] {
    return WithDevice<SecureBytes>(deadline, [&]() -> StatusOr<SecureBytes> {
      StatusOr<const LoadedVersion*> key = EnsureLoaded(version);
      if (!key.ok()) return key.status();
      return tpm::Open(*device_, caps_, **key, in->data, in->aad);
    });
  });
}

Status TpmBackend::Probe(uint64_t version, Deadline request_deadline) {
  const auto deadline = RequestDeadline(request_deadline);
  StatusOr<bool> probed = Submit<bool>(deadline, [this, version, deadline] {
    return WithDevice<bool>(deadline, [&]() -> StatusOr<bool> {
      StatusOr<const LoadedVersion*> key = EnsureLoaded(version);
      if (!key.ok()) return key.status();
      StatusOr<std::string> sealed = tpm::Seal(*device_, caps_, **key, kProbePlaintext, kProbeAad);
      if (!sealed.ok()) return sealed.status();
      StatusOr<SecureBytes> opened = tpm::Open(*device_, caps_, **key, *sealed, kProbeAad);
      if (!opened.ok()) {
        return IsInvalidArgument(opened.status()) ? UnavailableError("health probe: the TPM returned a bad MAC")
                                                  : opened.status();
      }
      if (opened->view() != kProbePlaintext) return UnavailableError("health probe: the TPM returned wrong data");
      return true;
    });
  });
  return probed.status();
}

StatusOr<std::string> TpmBackend::RecipientPublicPoint(Deadline request_deadline) {
  if (options_.recipient_dir.empty()) return FailedPreconditionError("no TPM recipient key directory configured");
  const auto deadline = RequestDeadline(request_deadline);
  return Submit<std::string>(deadline, [this, deadline] {
    return WithDevice<std::string>(deadline, [&]() -> StatusOr<std::string> {
      StatusOr<const TransientObject*> key = EnsureRecipientLoaded();
      if (!key.ok()) return key.status();
      return recipient_point_;  // TPM2_Load checked it belongs to the private part
    });
  });
}

StatusOr<SecureBytes> TpmBackend::RecipientSharedSecret(std::string_view peer_point, Deadline request_deadline) {
  if (options_.recipient_dir.empty()) return FailedPreconditionError("no TPM recipient key directory configured");
  if (peer_point.size() != kP256PointSize || peer_point[0] != 0x04) {
    return InvalidArgumentError("the peer point is not an uncompressed P-256 point (65 bytes starting with 0x04)");
  }
  auto in = std::make_shared<Inputs>();
  in->data = std::string(peer_point);
  const auto deadline = RequestDeadline(request_deadline);
  return Submit<SecureBytes>(deadline, [this, in, deadline] {
    return WithDevice<SecureBytes>(deadline, [&]() -> StatusOr<SecureBytes> {
      StatusOr<const TransientObject*> key = EnsureRecipientLoaded();
      if (!key.ok()) return key.status();
      return device_->EcdhZGen(**key, in->data);
    });
  });
}

}  // namespace trousseau::tpm
