// The KMS logic both wire APIs share: envelope, key ring, limits, health. Knows nothing of gRPC,
// PKCS#11 or TPM; talks to the device only through KeyBackend.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "core/backend_observer.h"
#include "core/health_tracker.h"
#include "core/key_backend.h"
#include "core/key_ring.h"
#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau {

struct EngineOptions {
  // Label of the key family; part of every key_id.
  std::string family_label;
  // How long a device outcome counts as current health before Status probes again.
  std::chrono::milliseconds health_ttl{5000};
  // Told about every device call; may be null. Must outlive the engine.
  BackendObserver* observer = nullptr;
  // A reload that finds a new active version reads the device again this much later and switches only
  // if the second read agrees. A key another process is still deciding about (two rotations at once)
  // may vanish within that time; encrypting under it would lose the data. Zero: switch at once.
  std::chrono::milliseconds new_version_settle{0};
};

struct EncryptResult {
  std::string ciphertext;
  std::string key_id;
};

struct HealthReport {
  bool ok = false;
  std::string detail;         // "ok", or why not (safe to log and to return to the apiserver)
  std::string active_key_id;  // empty only before the first key ring loaded
};

class KmsEngine {
 public:
  KmsEngine(std::shared_ptr<KeyBackend> backend, EngineOptions options);

  // Loads the key family from the device and makes its highest version active. On failure the
  // previous ring stays in force. Refuses a ring whose active version is lower than the current
  // one: a key_id must never flip back.
  Status LoadKeyRing();

  // Seals with the active key. Refuses empty plaintext and results longer than `max_ciphertext`.
  StatusOr<EncryptResult> Encrypt(std::string_view plaintext, size_t max_ciphertext);

  // Opens an envelope. `claimed_key_id` (v2's DecryptRequest.key_id) must name the envelope's
  // key version; pass empty for v1beta1, whose requests carry no key_id.
  StatusOr<SecureBytes> Decrypt(std::string_view ciphertext, std::string_view claimed_key_id);

  HealthReport Health();

  std::shared_ptr<const KeyRing> key_ring() const { return ring_.load(); }
  const KeyBackend& backend() const { return *backend_; }

 private:
  void Record(const Status& status);
  // Times a device call for the observer.
  template <typename Call>
  auto Observed(std::string_view name, Call call);

  const std::shared_ptr<KeyBackend> backend_;
  const EngineOptions options_;
  std::atomic<std::shared_ptr<const KeyRing>> ring_;
  std::mutex load_mu_;  // one key ring load at a time
  HealthTracker health_;
};

}  // namespace trousseau
