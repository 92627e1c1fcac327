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
  return LoadKeyRingLocked(/*may_activate=*/true, Clock::now() + options_.load_timeout);
}

std::optional<std::chrono::steady_clock::time_point> KmsEngine::NextActivationAt() const {
  const Clock::rep at = next_activation_.load();
  if (at == 0) return std::nullopt;
  return Clock::time_point(Clock::duration(at));
}

StatusOr<uint64_t> KmsEngine::ChooseActive(const std::vector<BackendKey>& keys, const KeyRing* current,
                                           bool may_activate, Clock::time_point now) {
  StatusOr<KeyRing> listed = KeyRing::Build(backend_->Kind(), options_.family_label, keys);
  if (!listed.ok()) return listed.status();
  // Each key_id's clock starts at the first load that lists it; a key gone from the device forgets it.
  std::map<std::string, Clock::time_point> seen;
  for (const auto& [version, key_id] : listed->key_ids()) {
    auto it = first_seen_.find(key_id);
    seen.emplace(key_id, it == first_seen_.end() ? now : it->second);
  }
  first_seen_ = std::move(seen);
  next_activation_.store(0);
  if (current == nullptr) return listed->highest_version();  // the first load: nothing to wait for

  const uint64_t active = current->active_version();
  const std::string* still_there = listed->KeyIdOf(active);
  if (still_there == nullptr || *still_there != current->active_key_id()) {
    // Nothing can be encrypted under a key that is gone: a newer version takes over at once (every
    // node that lost it is in the same position); an older one never does (no flip back).
    if (listed->highest_version() > active) return listed->highest_version();
    return FailedPreconditionError(StrCat("the active key ", current->active_key_id(),
                                          " disappeared from the device; keeping it active rather than "
                                          "flipping back to version ",
                                          listed->highest_version()));
  }
  const auto wait = std::max(options_.new_version_settle, options_.activation_delay);
  std::optional<Clock::time_point> next_due;
  uint64_t chosen = active;
  for (auto it = listed->key_ids().rbegin(); it != listed->key_ids().rend() && it->first > active; ++it) {
    const Clock::time_point due = first_seen_.at(it->second) + wait;
    if (may_activate && due <= now) {
      chosen = it->first;  // the highest version that has waited long enough
      break;
    }
    next_due = next_due ? std::min(*next_due, due) : due;
  }
  if (next_due && chosen < listed->highest_version()) next_activation_.store(next_due->time_since_epoch().count());
  return chosen;
}

Status KmsEngine::LoadKeyRingLocked(bool may_activate, Deadline deadline) {
  StatusOr<std::vector<BackendKey>> keys = Observed("load_keys", [&] { return backend_->LoadKeys(deadline); });
  loads_done_.fetch_add(1);
  if (!keys.ok()) {
    // A listing that works proves little, but one that fails for the device proves an outage.
    if (IsUnavailable(keys.status()) || IsPermissionDenied(keys.status())) Record(CallKind::kLoad, keys.status(), 0);
    std::lock_guard error_lock(load_error_mu_);
    load_error_ = keys.status();
    return keys.status();
  }
  std::shared_ptr<const KeyRing> current = ring_.load();
  // Before anything may refuse this listing (the active key gone with nothing newer is refused below):
  // a version that vanished is an incident either way.
  if (current != nullptr) NoteVanished(*current, *keys);
  StatusOr<uint64_t> active = ChooseActive(*keys, current.get(), may_activate, Now());
  if (!active.ok()) return active.status();
  StatusOr<KeyRing> ring = KeyRing::Build(backend_->Kind(), options_.family_label, *keys, *active);
  if (!ring.ok()) return ring.status();
  // No health success here: a key listing shows that the device answers lookups, not that its keys
  // work (and a TPM backend answers an unchanged directory from its cache). Only Seal, Open and the
  // probe are round trips.
  const bool new_active = current == nullptr || ring->active_key_id() != current->active_key_id();
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

void KmsEngine::NoteVanished(const KeyRing& current, const std::vector<BackendKey>& keys) {
  // The listing's key_ids by version (an empty family lists none: every version vanished).
  std::map<uint64_t, std::string> listed;
  if (!keys.empty()) {
    StatusOr<KeyRing> ring = KeyRing::Build(backend_->Kind(), options_.family_label, keys);
    if (!ring.ok()) return;  // two keys with one version: refused as a whole, nothing to compare
    listed = ring->key_ids();
  }
  std::lock_guard lock(vanished_mu_);
  for (const auto& [version, key_id] : current.key_ids()) {
    if (version > current.active_version()) break;  // pending, never encrypted under here
    auto now_listed = listed.find(version);
    if (now_listed != listed.end() && now_listed->second == key_id) continue;
    const std::string& id = key_id;  // clang 14 (the fuzz build) cannot capture a structured binding
    const bool known =
        std::any_of(vanished_.begin(), vanished_.end(), [&](const VanishedKey& gone) { return gone.key_id == id; });
    if (known) continue;
    vanished_.push_back({.version = version,
                         .key_id = key_id,
                         .was_active = version == current.active_version(),
                         .replaced_by = now_listed == listed.end() ? "" : now_listed->second,
                         .noticed = std::chrono::system_clock::now()});
  }
}

std::vector<VanishedKey> KmsEngine::VanishedKeys() const {
  std::lock_guard lock(vanished_mu_);
  return vanished_;
}

std::shared_ptr<const KeyRing> KmsEngine::RefreshForMiss(uint64_t version, Deadline deadline) {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  // Only a version above all we hold can be new; a lower unknown one was retired, or is forged.
  if (version <= ring->highest_version()) return ring;
  const uint64_t loads_before = loads_done_.load();
  deadline = DeviceDeadline(deadline);
  std::unique_lock lock(load_mu_, std::defer_lock);
  while (!lock.try_lock()) {
    if (Clock::now() >= deadline) return ring_.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a load in flight: join it, never repeat it
  }
  const auto report = [&](std::string_view outcome) {
    if (options_.observer != nullptr) options_.observer->OnDecryptMiss(outcome);
  };
  if (loads_done_.load() != loads_before) {
    report("joined");  // a load ran while this request waited: its ring is as fresh as ours would be
    return ring_.load();
  }
  const Clock::time_point now = Now();
  if (last_miss_refresh_ != Clock::time_point{} && now < last_miss_refresh_ + options_.miss_refresh_interval) {
    report("limited");
    return ring_.load();
  }
  last_miss_refresh_ = now;
  const Status loaded = LoadKeyRingLocked(/*may_activate=*/false, deadline);
  std::shared_ptr<const KeyRing> fresh = ring_.load();
  report(!loaded.ok() ? "failed" : fresh->KeyIdOf(version) != nullptr ? "found" : "not_found");
  return fresh;
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
    return InvalidArgumentError(StrCat("plaintext of ", plaintext.size(), " bytes would make a ", size,
                                       "-byte ciphertext; the limit is ", max_ciphertext));
  }
  if (Status open = health_.OpenBecause(); !open.ok()) return open;
  const uint64_t version = ring->active_version();
  EncryptResult result;
  result.ciphertext = EncodeEnvelopeHeader(version, ring->EnvelopeFormatOf(version));
  StatusOr<std::string> sealed =
      Observed("seal", [&] { return backend_->Seal(version, plaintext, result.ciphertext, DeviceDeadline(deadline)); });
  Record(CallKind::kEncrypt, sealed.status(), version);
  if (!sealed.ok()) return sealed.status();
  if (options_.observer != nullptr) options_.observer->OnKeyVersionUse(version);
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
  const bool known = claimed_key_id.empty() ? ring->KeyIdOf(envelope->key_version) != nullptr
                                            : ring->VersionOf(claimed_key_id).has_value();
  if (!known) ring = RefreshForMiss(envelope->key_version, deadline);
  if (!claimed_key_id.empty()) {
    std::optional<uint64_t> claimed = ring->VersionOf(claimed_key_id);
    if (!claimed) {
      return NotFoundError(StrCat("unknown key_id ", Quote(claimed_key_id)));
    }
    if (*claimed != envelope->key_version) {
      return InvalidArgumentError(StrCat("key_id ", Quote(claimed_key_id), " names key version ", *claimed,
                                         " but the ciphertext was made with version ", envelope->key_version));
    }
  } else if (ring->KeyIdOf(envelope->key_version) == nullptr) {
    return NotFoundError(
        StrCat("ciphertext was made with key version ", envelope->key_version, ", which is not on the device"));
  }
  // The header is authenticated too, so this only answers a mismatch before the device is asked.
  if (const uint8_t format = ring->EnvelopeFormatOf(envelope->key_version); format != envelope->format) {
    return InvalidArgumentError(StrCat("ciphertext names envelope format ", envelope->format, " but key version ",
                                       envelope->key_version, " seals with format ", format));
  }
  if (Status open = health_.OpenBecause(); !open.ok()) return open;
  StatusOr<SecureBytes> plaintext = Observed("open", [&] {
    return backend_->Open(envelope->key_version, envelope->sealed, envelope->header, DeviceDeadline(deadline));
  });
  Record(CallKind::kDecrypt, plaintext.status(), envelope->key_version);
  if (plaintext.ok() && options_.observer != nullptr) options_.observer->OnKeyVersionUse(envelope->key_version);
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
    const auto due =
        ring_.load() ? std::max(health_.NextProbeAt(), last_probe + kMinProbeInterval) : now + std::chrono::seconds(1);
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
