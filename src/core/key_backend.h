// The one interface between the KMS logic and a key-holding device (PKCS#11 HSM, TPM 2.0).
// It is an AEAD keyed by key version: the key never leaves the device, the device does the
// cryptography, and the caller never sees anything but sealed bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau {

// One version of the key family as the device holds it.
struct BackendKey {
  uint64_t version = 0;
  // Public bytes that identify the key material itself (e.g. a MAC of a fixed message made on the
  // device), so a re-created key with the same label and version never gets the same key_id.
  std::string fingerprint;
  // The envelope format (core/envelope.h) of what this version seals: the engine writes it into the
  // header and refuses an envelope of this version that names another.
  uint8_t envelope_format = 1;
};

// When a device call must have answered. A device that does not answer by then costs the caller
// UNAVAILABLE at the deadline, never a longer wait: the backend abandons the call (its session or
// worker stays out of use until the device returns it) and reports the device unavailable.
using Deadline = std::chrono::steady_clock::time_point;

// Error contract, so the gRPC layer can answer kube-apiserver precisely:
//   UNAVAILABLE          the device is unreachable or failed; the backend recovers by itself later
//   NOT_FOUND            no such key version on the device
//   INVALID_ARGUMENT     sealed bytes malformed or failed authentication
//   FAILED_PRECONDITION  configuration or key policy is wrong; retrying will not help
//   PERMISSION_DENIED    the device refused our credentials (PIN); not retried until they change
// Messages never contain key material or plaintext.
//
// Thread-safety (as tink's Aead): implementations are expected to be thread-safe. Every method may
// be called from many threads at once, LoadKeys included while Seal/Open/Probe run (KmsEngine
// re-reads the key family while requests are served).
//
// Const-ness: the const methods (Kind, Describe, SealOverhead) never touch the device, never block
// and answer the same for the backend's whole life, so a `const KeyBackend&` is safe to hand to
// anyone. The others are non-const because they use the device: they may change its connection
// state (sessions, logins, loaded objects, reconnects after an outage) and the set of usable
// versions, even when the caller sees no change.
//
// Blocking: a non-const call blocks for at most its deadline (see Deadline); none waits on another
// caller's device call beyond that.
class KeyBackend {
 public:
  virtual ~KeyBackend() = default;

  // Short, stable name of the device family ("pkcs11", "tpm2"); part of the key_id derivation.
  virtual std::string_view Kind() const = 0;
  // Human description for logs, e.g. "PKCS#11 token 'k8s-kms', key family 'kek'".
  virtual std::string Describe() const = 0;

  // (Re)reads the key family from the device and makes every listed version usable.
  // Versions that vanished from the device stop being usable.
  virtual StatusOr<std::vector<BackendKey>> LoadKeys(Deadline deadline) = 0;

  // Authenticated encryption with one key version; `aad` is bound but not stored.
  virtual StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                                     Deadline deadline) = 0;
  virtual StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                     Deadline deadline) = 0;
  // Bytes Seal adds to the plaintext at most, with any version (IV, padding, tag, ...), for enforcing
  // size limits up front.
  virtual size_t SealOverhead() const = 0;

  // A real round trip on the device with `version`; OK means the device works now.
  virtual Status Probe(uint64_t version, Deadline deadline) = 0;

  // For callers with no deadline of their own (tools, tests): a generous one, never none. A
  // subclass brings these into scope with `using KeyBackend::LoadKeys;` etc.
  static Deadline DefaultDeadline() { return std::chrono::steady_clock::now() + std::chrono::seconds(30); }
  StatusOr<std::vector<BackendKey>> LoadKeys() { return LoadKeys(DefaultDeadline()); }
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad) {
    return Seal(version, plaintext, aad, DefaultDeadline());
  }
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad) {
    return Open(version, sealed, aad, DefaultDeadline());
  }
  Status Probe(uint64_t version) { return Probe(version, DefaultDeadline()); }
};

}  // namespace trousseau
