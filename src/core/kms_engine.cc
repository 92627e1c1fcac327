#include "core/kms_engine.h"

#include <algorithm>
#include <thread>
#include <type_traits>
#include <utility>

#include "core/envelope.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau {
namespace {

// The shortest time between two probes of the background prober.
constexpr std::chrono::milliseconds kMinProbeInterval{100};

// key_ids in requests are caller-controlled; quote them short and printable in messages.
std::string Quote(std::string_view text) { return QuoteForMessage(text); }

}  // namespace

template <typename Call>
auto KmsEngine::Observed(std::string_view name, Call call) {
  if (options_.observer == nullptr) return call();
  const auto start = std::chrono::steady_clock::now();
  auto result = call();
  const auto latency = std::chrono::steady_clock::now() - start;
  if constexpr (std::is_same_v<decltype(result), Status>) {
    options_.observer->OnBackendCall(name, latency, result);
  } else {
    options_.observer->OnBackendCall(name, latency, result.status());
  }
  return result;
}

KmsEngine::KmsEngine(std::shared_ptr<KeyBackend> backend, EngineOptions options)
    : backend_(std::move(backend)),
      options_(std::move(options)),
      health_(HealthTracker::Options{.fresh_for = options_.health_ttl}) {}

KmsEngine::~KmsEngine() { StopProber(Deadline::max()); }

bool KmsEngine::StopProber(Deadline deadline) {
  std::unique_lock lock(prober_mu_);
  prober_stopping_ = true;
  prober_cv_.notify_all();
  if (!prober_.joinable()) return true;
  if (!prober_cv_.wait_until(lock, deadline, [&] { return prober_finished_; })) return false;
  lock.unlock();
  prober_.join();
  return true;
}

Deadline KmsEngine::DeviceDeadline(Deadline request_deadline) const {
  return std::min(request_deadline, std::chrono::steady_clock::now() + options_.device_timeout);
}

Status KmsEngine::LoadKeyRing() {
  std::lock_guard lock(load_mu_);
  const auto load = [&] {
    return Observed("load_keys",
                    [&] { return backend_->LoadKeys(std::chrono::steady_clock::now() + options_.load_timeout); });
  };
  StatusOr<std::vector<BackendKey>> keys = load();
  if (!keys.ok()) {
    // A listing that works proves little, but one that fails for the device proves an outage.
    if (IsUnavailable(keys.status()) || IsPermissionDenied(keys.status())) Record(CallKind::kLoad, keys.status(), 0);
    std::lock_guard error_lock(load_error_mu_);
    load_error_ = keys.status();
    return keys.status();
  }
  StatusOr<KeyRing> ring = KeyRing::Build(backend_->Kind(), options_.family_label, *keys);
  if (!ring.ok()) return ring.status();
  std::shared_ptr<const KeyRing> current = ring_.load();
  if (current && ring->active_version() < current->active_version()) {
    return FailedPreconditionError(StrCat(
        "the active key version ", current->active_version(), " disappeared from the device; keeping ",
        current->active_key_id(), " active rather than flipping back to version ", ring->active_version()));
  }
  if (current && ring->active_version() > current->active_version() && options_.new_version_settle.count() > 0) {
    std::this_thread::sleep_for(options_.new_version_settle);  // requests keep using the current ring
    StatusOr<std::vector<BackendKey>> again = load();
    if (!again.ok()) return again.status();
    StatusOr<KeyRing> confirmed = KeyRing::Build(backend_->Kind(), options_.family_label, *again);
    if (!confirmed.ok()) return confirmed.status();
    if (confirmed->active_key_id() != ring->active_key_id()) {
      return FailedPreconditionError(StrCat(
          "the new active key ", ring->active_key_id(), " did not stay (", confirmed->active_key_id(),
          " a moment later: a rotation still deciding?); keeping ", current->active_key_id(),
          " until the next refresh"));
    }
    ring = std::move(confirmed);
  }
  // No health success here: a key listing shows that the device answers lookups, not that its keys
  // work (and a TPM backend answers an unchanged directory from its cache). Only Seal, Open and the
  // probe are round trips.
  const bool new_active = current == nullptr || ring->active_version() != current->active_version();
  ring_.store(std::make_shared<const KeyRing>(*std::move(ring)));
  if (current == nullptr) {
    // The first ring: one round trip with its active key, so health starts from a fact (that the
    // key works, not only that it is listed), and the prober takes over from there.
    (void)ProbeNow();
  } else if (new_active) {
    // A call with the old active key may have failed while the device already had the new ring:
    // prove the new key at once rather than report that until the next retry.
    std::lock_guard prober_lock(prober_mu_);
    prober_kicked_ = true;
  }
  prober_cv_.notify_all();
  return OkStatus();
}

Status KmsEngine::NoKeyRing() const {
  std::lock_guard lock(load_error_mu_);
  return UnavailableError(load_error_.ok() ? std::string("no key loaded yet")
                                           : StrCat("no key loaded yet: ", load_error_.message()));
}

StatusOr<EncryptResult> KmsEngine::Encrypt(std::string_view plaintext, size_t max_ciphertext, Deadline deadline) {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) return NoKeyRing();
  if (plaintext.empty()) return InvalidArgumentError("plaintext is empty");
  const size_t size = kEnvelopeHeaderSize + backend_->SealOverhead() + plaintext.size();
  if (size > max_ciphertext) {
    return InvalidArgumentError(StrCat("plaintext of ", plaintext.size(), " bytes would make a ",
                                                   size, "-byte ciphertext; the limit is ", max_ciphertext));
  }
  if (Status open = health_.OpenBecause(); !open.ok()) return open;
  const uint64_t version = ring->active_version();
  EncryptResult result;
  result.ciphertext = EncodeEnvelopeHeader(version);
  StatusOr<std::string> sealed = Observed(
      "seal", [&] { return backend_->Seal(version, plaintext, result.ciphertext, DeviceDeadline(deadline)); });
  Record(CallKind::kEncrypt, sealed.status(), version);
  if (!sealed.ok()) return sealed.status();
  result.ciphertext += *sealed;
  result.key_id = ring->active_key_id();
  return result;
}

StatusOr<SecureBytes> KmsEngine::Decrypt(std::string_view ciphertext, std::string_view claimed_key_id,
                                         Deadline deadline) {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) return NoKeyRing();
  StatusOr<ParsedEnvelope> envelope = ParseEnvelope(ciphertext);
  if (!envelope.ok()) return envelope.status();
  if (!claimed_key_id.empty()) {
    std::optional<uint64_t> claimed = ring->VersionOf(claimed_key_id);
    if (!claimed) {
      return NotFoundError(StrCat("unknown key_id ", Quote(claimed_key_id)));
    }
    if (*claimed != envelope->key_version) {
      return InvalidArgumentError(StrCat("key_id ", Quote(claimed_key_id), " names key version ",
                                                     *claimed, " but the ciphertext was made with version ",
                                                     envelope->key_version));
    }
  } else if (ring->KeyIdOf(envelope->key_version) == nullptr) {
    return NotFoundError(
        StrCat("ciphertext was made with key version ", envelope->key_version, ", which is not on the device"));
  }
  if (Status open = health_.OpenBecause(); !open.ok()) return open;
  StatusOr<SecureBytes> plaintext = Observed("open", [&] {
    return backend_->Open(envelope->key_version, envelope->sealed, envelope->header, DeviceDeadline(deadline));
  });
  Record(CallKind::kDecrypt, plaintext.status(), envelope->key_version);
  return plaintext;
}

HealthReport KmsEngine::Health() const {
  HealthReport report;
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) {
    report.detail = StrCat("unhealthy: ", NoKeyRing().message());
    return report;
  }
  report.active_key_id = ring->active_key_id();
  // A probe in flight may take its whole deadline before it updates the state.
  Status status = health_.Current(options_.device_timeout + std::chrono::seconds(1));
  report.ok = status.ok();
  report.detail = status.ok() ? "ok" : StrCat("unhealthy: ", status.message());
  return report;
}

Status KmsEngine::ProbeNow() {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) return UnavailableError("no key loaded yet");
  const uint64_t version = ring->active_version();
  const Status status = Observed("probe", [&] { return backend_->Probe(version, DeviceDeadline(Deadline::max())); });
  Record(CallKind::kProbe, status, version);
  return status;
}

void KmsEngine::StartProber() {
  if (prober_.joinable()) return;
  prober_ = std::thread([this] { ProberLoop(); });
}

void KmsEngine::ProberLoop() {
  std::chrono::steady_clock::time_point last_probe{};
  std::unique_lock lock(prober_mu_);
  while (!prober_stopping_) {
    // Before the first key ring there is nothing to probe: wait for LoadKeyRing's nudge.
    const auto now = std::chrono::steady_clock::now();
    // Never back to back, even with a health TTL of 0.
    const auto due = ring_.load() ? std::max(health_.NextProbeAt(), last_probe + kMinProbeInterval)
                                  : now + std::chrono::seconds(1);
    prober_cv_.wait_until(lock, due, [&] { return prober_stopping_ || prober_kicked_; });
    if (prober_stopping_) break;
    const bool kicked = std::exchange(prober_kicked_, false);
    if (!ring_.load() || (!kicked && std::chrono::steady_clock::now() < due)) continue;
    last_probe = std::chrono::steady_clock::now();
    lock.unlock();
    (void)ProbeNow();
    lock.lock();
  }
  prober_finished_ = true;
  prober_cv_.notify_all();
}

void KmsEngine::Record(CallKind kind, const Status& status, uint64_t version) {
  bool changed;
  if (status.ok()) {
    changed = health_.RecordSuccess();
  } else if (IsUnavailable(status) || IsPermissionDenied(status)) {
    changed = health_.RecordOutage(status);  // the device is gone or refuses us: open the breaker
  } else if (kind == CallKind::kDecrypt || IsInvalidArgument(status)) {
    // The caller's bytes or key_id, or an old version's trouble: neither says the plugin cannot encrypt.
    return;
  } else if (auto ring = ring_.load(); ring && ring->active_version() != version) {
    return;  // a reload replaced the active key meanwhile: this says nothing about the new one
  } else {
    // The device answers, yet the key cannot be used (the active key deleted, replaced, refused):
    // the plugin cannot encrypt, which health must say at once.
    changed = health_.RecordFault(status);
  }
  if (changed && options_.observer != nullptr) options_.observer->OnHealth(status.ok());
}

}  // namespace trousseau
