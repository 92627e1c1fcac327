// KeyBackend on a PKCS#11 token: the KEK family is AES-256 secret keys that never leave the token;
// every seal/open is CKM_AES_GCM on the device. Recovers by itself from a lost device: the next
// request (or health probe) re-initialises the module, re-opens sessions and logs in again.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "core/key_backend.h"
#include "core/nonce_sequence.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/session_pool.h"
#include "hsm/token.h"
#include "core/status.h"

namespace trousseau::hsm {

struct Pkcs11BackendOptions {
  // Sessions in the pool: the number of device calls that can be in flight at once.
  size_t sessions = 16;
  // Use an in-session copy of each key (C_CopyObject, CKA_TOKEN=false: still sensitive and
  // non-extractable). SoftHSM serialises token-object use on file locks; a session copy does not.
  bool session_key_copies = true;
  // Minimum time between two attempts to re-establish a lost connection.
  std::chrono::milliseconds reconnect_interval{1000};
};

class Pkcs11Backend final : public KeyBackend {
 public:
  // Loads the module; connects on the first LoadKeys().
  static StatusOr<std::unique_ptr<Pkcs11Backend>> Create(Pkcs11Uri uri, Pkcs11BackendOptions options);
  ~Pkcs11Backend() override;

  std::string_view Kind() const override { return "pkcs11"; }
  std::string Describe() const override;
  StatusOr<std::vector<BackendKey>> LoadKeys() override;
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad) override;
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad) override;
  size_t SealOverhead() const override { return kGcmIvSize + kGcmTagSize; }
  Status Probe(uint64_t version) override;

  // After the token rejected the PIN, logins stop (a retry loop would lock the token) until this is
  // called, e.g. on SIGHUP once the operator fixed the PIN file.
  void AllowLoginRetry();
  size_t sessions_in_use() const;
  size_t session_count() const { return options_.sessions; }

 private:
  struct LoadedKey {
    CK_OBJECT_HANDLE token_object = CK_INVALID_HANDLE;
    std::string fingerprint;
    SessionObject session_copy;
    std::unique_ptr<NonceSequence> ivs = std::make_unique<NonceSequence>();
    CK_OBJECT_HANDLE handle() const {
      return session_copy.handle() != CK_INVALID_HANDLE ? session_copy.handle() : token_object;
    }
  };
  struct Connection {
    TokenSlot token;
    Session admin;  // logs in, finds keys and owns the session copies
    std::unique_ptr<SessionPool> pool;
    std::map<uint64_t, LoadedKey> keys;  // last: copies are destroyed before their session closes
  };

  Pkcs11Backend(Pkcs11Uri uri, Pkcs11BackendOptions options, std::unique_ptr<Pkcs11Module> module);

  // Runs `op` on a live connection; if the device was lost, reconnects once and retries.
  template <typename T>
  StatusOr<T> Run(const std::function<StatusOr<T>(Connection&)>& op);
  Status Reconnect();
  // `restore`: after an outage, bring back only the last good key ring (see LoadFamilyLocked);
  // otherwise (start-up, refresh) the whole family is judged and any bad key fails the load.
  Status ConnectLocked(bool restore);
  Status LoadFamilyLocked(Connection& conn, bool restore);
  StatusOr<std::string> Fingerprint(const Connection& conn, CK_OBJECT_HANDLE key) const;
  Status ProbeOn(Connection& conn, uint64_t version);
  std::vector<BackendKey> ListLoaded() const;

  const Pkcs11Uri uri_;
  const Pkcs11BackendOptions options_;
  const std::unique_ptr<Pkcs11Module> module_;

  // Shared by device operations; exclusive for (re)connecting and reloading keys, so no operation
  // ever runs on a handle from a torn-down connection.
  mutable std::shared_mutex mu_;
  std::unique_ptr<Connection> conn_;
  std::atomic<bool> broken_{false};
  // Fingerprints the key ring was built from: a reconnect must not swap another key in under them.
  std::map<uint64_t, std::string> known_fingerprints_;

  // Guarded by mu_ held exclusively.
  std::chrono::steady_clock::time_point last_attempt_{};
  Status last_error_;
  Status login_block_;  // set when the PIN was rejected
};

}  // namespace trousseau::hsm
