// FOR TESTS ONLY: a KeyBackend whose keys live in this process's memory. The plugin never links it
// (it is only in the test libraries); a real deployment keeps its keys in an HSM or a TPM.
//
// It is a real AES-256-GCM (OpenSSL EVP), with the PKCS#11 backend's sealed layout
// (12-byte IV || ciphertext || 16-byte tag, the envelope header as AAD) and error contract, so
// KmsEngine, the gRPC services and the fuzz harnesses can be driven end to end without SoftHSM:
// a forged or truncated envelope really fails authentication.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/key_backend.h"
#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::testing {

class SoftwareBackend final : public KeyBackend {
 public:
  static constexpr size_t kKeySize = 32;
  static constexpr size_t kIvSize = 12;
  static constexpr size_t kTagSize = 16;

  SoftwareBackend() = default;

  // Adds a version with a fresh random key.
  void AddVersion(uint64_t version);
  // Adds a version with the given 32-byte key (fuzz harnesses use fixed keys so a corpus of real
  // envelopes stays valid from run to run).
  void AddVersion(uint64_t version, std::string_view key);
  // The version is gone from the "device": LoadKeys no longer lists it and Seal/Open answer NOT_FOUND.
  void RemoveVersion(uint64_t version);
  // While down, every call answers UNAVAILABLE, as a lost HSM does.
  void SetUnavailable(bool unavailable);
  // Every call answers `failure` (e.g. PERMISSION_DENIED, as a token that refuses the PIN) until
  // cleared with OkStatus().
  void SetFailure(Status failure);
  // Runs at the start of every Seal and Open (outside the lock), so a test can hold a call "in the
  // device" while it checks what else still answers.
  void OnDeviceCall(std::function<void()> hook);
  // Seal, Open (a Probe is one of each) and LoadKeys calls that reached the "device" so far.
  int device_calls() const;
  // Runs at the start of every LoadKeys call with its 1-based number (outside the lock), so a test
  // can change the family between two reads at an exact point instead of racing a timer.
  void OnLoadKeys(std::function<void(int call)> hook);
  int load_keys_calls() const;

  std::string_view Kind() const override { return "software"; }
  std::string Describe() const override { return "in-memory software AES-GCM (tests only)"; }
  // Each call answers at once; one that starts after its deadline answers UNAVAILABLE, as a
  // device that did not answer in time would.
  StatusOr<std::vector<BackendKey>> LoadKeys(Deadline deadline) override;
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                             Deadline deadline) override;
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad,
                             Deadline deadline) override;
  size_t SealOverhead() const override { return kIvSize + kTagSize; }
  Status Probe(uint64_t version, Deadline deadline) override;

 private:
  // A copy of the key, or why there is none.
  StatusOr<SecureBytes> KeyFor(uint64_t version, Deadline deadline) const;

  void RunDeviceCallHook();

  mutable std::mutex mu_;
  std::map<uint64_t, SecureBytes> keys_;
  Status failure_;
  mutable int device_calls_ = 0;
  std::function<void()> on_device_call_;
  int load_keys_calls_ = 0;
  std::function<void(int)> on_load_keys_;
};

// AES-256-GCM of `plaintext` under `key` with `iv`, returning IV || ciphertext || tag. Shared by
// the backend and by harnesses that check its output independently.
StatusOr<std::string> AesGcmSeal(std::string_view key, std::string_view iv, std::string_view plaintext,
                                 std::string_view aad);
// The inverse; INVALID_ARGUMENT if `sealed` is malformed or fails authentication.
StatusOr<SecureBytes> AesGcmOpen(std::string_view key, std::string_view sealed, std::string_view aad);

}  // namespace trousseau::testing
