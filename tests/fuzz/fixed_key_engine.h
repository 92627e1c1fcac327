// The engine the request-handler harnesses drive: KmsEngine over the tests-only software AES-GCM
// backend with fixed keys (versions 1-3, 3 active), so a corpus of real envelopes stays valid
// across runs and a harness can check a "successful" Decrypt independently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/envelope.h"
#include "core/kms_engine.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/testing/software_backend.h"

namespace trousseau::fuzz {

inline constexpr uint64_t kVersions[] = {1, 2, 3};

// Version v's key: 32 bytes of (v * 0x11). Test data, not a secret.
inline std::string FixedKey(uint64_t version) { return std::string(32, static_cast<char>(version * 0x11)); }

inline KmsEngine& FixedKeyEngine() {
  static KmsEngine* engine = [] {
    auto backend = std::make_shared<testing::SoftwareBackend>();
    for (uint64_t v : kVersions) backend->AddVersion(v, FixedKey(v));
    // A long health TTL: Status answers from the last outcome instead of sealing every time.
    auto* e = new KmsEngine(backend, EngineOptions{.family_label = "kek", .health_ttl = std::chrono::hours(1)});
    FUZZ_CHECK(e->LoadKeyRing().ok());
    // Health counts real round trips only: one Encrypt makes Status "ok" from the start.
    FUZZ_CHECK(e->Encrypt("warm-up", 1024).ok());
    return e;
  }();
  return *engine;
}

// The plaintext an envelope really holds, checked without KmsEngine or the backend object: header
// parsed by hand, AES-GCM opened with the fixed key. Empty if it is not authentic.
inline std::optional<std::string> IndependentlyOpen(std::string_view ciphertext) {
  if (ciphertext.size() < kEnvelopeHeaderSize || ciphertext.substr(0, 3) != std::string_view("TH\x01", 3)) {
    return std::nullopt;
  }
  uint64_t version = 0;
  for (size_t i = 3; i < kEnvelopeHeaderSize; ++i) version = (version << 8) | static_cast<uint8_t>(ciphertext[i]);
  if (version < 1 || version > 3) return std::nullopt;
  StatusOr<SecureBytes> plain = testing::AesGcmOpen(FixedKey(version), ciphertext.substr(kEnvelopeHeaderSize),
                                                    ciphertext.substr(0, kEnvelopeHeaderSize));
  if (!plain.ok()) return std::nullopt;
  return std::string(plain->view());
}

}  // namespace trousseau::fuzz
