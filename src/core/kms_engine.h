// The KMS logic both wire APIs share: envelope, key ring, limits, health. Knows nothing of gRPC,
// PKCS#11 or TPM; talks to the device only through KeyBackend.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <condition_variable>
#include <map>
#include <optional>

#include "core/backend_observer.h"
#include "core/defaults.h"
#include "core/health_tracker.h"
#include "core/key_backend.h"
#include "core/key_ring.h"
#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau {

struct EngineOptions {
  // Label of the key family; part of every key_id.
  std::string family_label;
  // How long a device round trip counts as current health; when idle, the prober proves it again
  // at this period.
  std::chrono::milliseconds health_ttl = defaults::kHealthCache;
  // Deadline of one device call (Seal, Open, Probe), unless the request's own deadline is sooner.
  // Under kube-apiserver's 3 s KMS call timeout, so a hung device answers UNAVAILABLE in time.
  std::chrono::milliseconds device_timeout = defaults::kDeviceTimeout;
  // Deadline of a key ring load (connect, log in, list and fingerprint every version).
  std::chrono::milliseconds load_timeout{30000};
  // Told about every device call; may be null. Must outlive the engine.
  BackendObserver* observer = nullptr;
  // A new version decrypts as soon as a load finds it, but encrypts (and becomes Status' key_id) only
  // once a later load, at least max(new_version_settle, activation_delay) after the first one that
  // saw it, still finds the same key. The settle covers a key another process is still deciding
  // about (two rotations at once: it may vanish, and data encrypted under it would be lost). The
  // activation delay covers the other plugins of the fleet: set it to at least their refresh
  // interval plus the settle, and every node holds a version before any node encrypts under it.
  // Both zero: a new version is active at once. The very first load activates its highest version.
  std::chrono::milliseconds new_version_settle{0};
  std::chrono::milliseconds activation_delay{0};
  // A Decrypt naming a key version above every one the ring holds (another node may have activated
  // it first) reloads the key family, at most once per this interval, so forged key_ids cannot make
  // device work beyond that rate. Loads already running are joined, not repeated.
  std::chrono::milliseconds miss_refresh_interval{1000};
  // The clock of the two rules above (activation, miss rate); empty: steady_clock. Tests pass their own.
  std::function<std::chrono::steady_clock::time_point()> now{};
};

struct EncryptResult {
  std::string ciphertext;
  std::string key_id;
};

// A key version that a load no longer found on the device although a loaded key ring held it: its
// key_id is gone (the key deleted, or replaced by another key under the same version). Ciphertexts
// made under it cannot be decrypted any more, unless the key comes back.
struct VanishedKey {
  uint64_t version = 0;
  std::string key_id;
  bool was_active = false;  // it was the active key when it vanished
  std::string replaced_by;  // the key_id now listed under the same version, if any
  std::chrono::system_clock::time_point noticed;
};

struct HealthReport {
  bool ok = false;
  std::string detail;         // "ok", or why not (safe to log and to return to the apiserver)
  std::string active_key_id;  // empty only before the first key ring loaded
};

class KmsEngine {
 public:
  KmsEngine(std::shared_ptr<KeyBackend> backend, EngineOptions options);
  ~KmsEngine();
  KmsEngine(const KmsEngine&) = delete;
  KmsEngine& operator=(const KmsEngine&) = delete;

  // Loads the key family from the device: every version for Decrypt, and the active version by the
  // rule of EngineOptions::activation_delay. On failure the previous ring stays in force. Refuses a
  // family whose active version vanished: a key_id must never flip back.
  Status LoadKeyRing();
  // When a version found on the device becomes due for activation (a load then promotes it); nullopt
  // when none waits.
  std::optional<std::chrono::steady_clock::time_point> NextActivationAt() const;

  // Seals with the active key. Refuses empty plaintext and results longer than `max_ciphertext`.
  // `deadline`: the request's own (gRPC) deadline; the device call also stops at device_timeout.
  // While the device is known to be down (circuit breaker open), fails at once with UNAVAILABLE.
  StatusOr<EncryptResult> Encrypt(std::string_view plaintext, size_t max_ciphertext,
                                  Deadline deadline = Deadline::max());

  // Opens an envelope. `claimed_key_id` (v2's DecryptRequest.key_id) must name the envelope's
  // key version; pass empty for v1beta1, whose requests carry no key_id.
  StatusOr<SecureBytes> Decrypt(std::string_view ciphertext, std::string_view claimed_key_id,
                                Deadline deadline = Deadline::max());

  // Health as last proved by a device round trip. Never touches the device; returns at once.
  HealthReport Health() const;
  // True while requests are refused without device work (the last round trip was an outage).
  bool BreakerOpen() const { return !health_.Admits(); }

  // One probe (a seal and open with the active key) now, recorded in the health state.
  Status ProbeNow();
  // Starts the background prober: it keeps health fresh when idle (one probe per health_ttl) and,
  // after an outage, probes with capped exponential backoff until the device answers again, which
  // closes the breaker.
  void StartProber();
  // Stops the prober; false if a probe is still running at `deadline` (a reconnect to a hung device),
  // in which case the caller must leave without destroying the engine.
  bool StopProber(Deadline deadline);

  std::shared_ptr<const KeyRing> key_ring() const { return ring_.load(); }
  // Every key version a load found gone since the engine started (each key_id once, oldest first):
  // the active version or one below it (decrypt-only) whose key_id a later listing of the device no
  // longer shows. A newer version that vanished before it became active is not one (a rotation's
  // contest may withdraw it; nothing was encrypted under it here). Kept until the process ends.
  std::vector<VanishedKey> VanishedKeys() const;
  const KeyBackend& backend() const { return *backend_; }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point Now() const { return options_.now ? options_.now() : Clock::now(); }
  enum class CallKind { kEncrypt, kDecrypt, kProbe, kLoad };
  // LoadKeyRing with load_mu_ held; `may_activate` false keeps the active version (a Decrypt's refresh).
  Status LoadKeyRingLocked(bool may_activate, Deadline deadline);
  // Records the versions of `current` that `keys` (a successful listing) no longer has.
  void NoteVanished(const KeyRing& current, const std::vector<BackendKey>& keys);
  // The version to encrypt with among `keys`, given the current ring and when each key was first seen.
  StatusOr<uint64_t> ChooseActive(const std::vector<BackendKey>& keys, const KeyRing* current, bool may_activate,
                                  Clock::time_point now);
  // A Decrypt named a version the ring lacks: reload (single flight, rate-limited) and return the ring
  // to look in again.
  std::shared_ptr<const KeyRing> RefreshForMiss(uint64_t version, Deadline deadline);
  // `version`: the key version the call used.
  void Record(CallKind kind, const Status& status, uint64_t version);
  Deadline DeviceDeadline(Deadline request_deadline) const;
  Status NoKeyRing() const;
  void ProberLoop();
  // Times a device call for the observer.
  template <typename Call>
  auto Observed(std::string_view name, Call call);

  // Shared, not owned alone: the plugin's device hooks (app/backend_factory: session-pool gauges read
  // by the metrics endpoint, the stuck-call count at exit, the SIGHUP login retry) hold the same
  // backend and are built apart from the engine; tests keep a handle to change the device's keys under
  // a running engine. Sharing keeps each of them valid whatever order they are destroyed in.
  const std::shared_ptr<KeyBackend> backend_;
  const EngineOptions options_;
  std::atomic<std::shared_ptr<const KeyRing>> ring_;
  // One key ring load at a time. A plain mutex: TSan (GCC 12) does not understand timed_mutex's
  // pthread_mutex_clocklock, so RefreshForMiss waits for it by polling try_lock until its deadline.
  std::mutex load_mu_;
  // Guarded by load_mu_: when a load first saw each key_id (a replaced key restarts its clock), and
  // when the last Decrypt-triggered refresh ran.
  std::map<std::string, Clock::time_point> first_seen_;
  Clock::time_point last_miss_refresh_{};
  std::atomic<uint64_t> loads_done_{0};
  std::atomic<Clock::rep> next_activation_{0};  // NextActivationAt's time since the clock's epoch; 0: none
  HealthTracker health_;
  mutable std::mutex vanished_mu_;
  std::vector<VanishedKey> vanished_;  // guarded by vanished_mu_
  mutable std::mutex load_error_mu_;
  Status load_error_;  // why the last load failed, shown by Health() while no ring is loaded

  std::mutex prober_mu_;
  std::condition_variable prober_cv_;
  bool prober_stopping_ = false;
  bool prober_kicked_ = false;  // probe now: the active key changed
  bool prober_finished_ = false;
  std::thread prober_;
};

}  // namespace trousseau
