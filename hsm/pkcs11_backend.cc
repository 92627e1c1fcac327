#include "hsm/pkcs11_backend.h"

#include <spdlog/spdlog.h>

#include <set>
#include <utility>

#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {
namespace {

// The health probe: a real seal and open on the device.
constexpr std::string_view kProbePlaintext = "trousseau-hsm health probe";
constexpr std::string_view kProbeAad = "trousseau-hsm probe";

StatusOr<GcmIv> SplitIv(std::string_view sealed) {
  if (sealed.size() < kGcmIvSize + kGcmTagSize) {
    return InvalidArgumentError("ciphertext is too short to hold an IV and an authentication tag");
  }
  GcmIv iv;
  std::copy(sealed.begin(), sealed.begin() + kGcmIvSize, iv.begin());
  return iv;
}

}  // namespace

StatusOr<std::unique_ptr<Pkcs11Backend>> Pkcs11Backend::Create(Pkcs11Uri uri, Pkcs11BackendOptions options) {
  if (options.sessions == 0) return InvalidArgumentError("the session pool needs at least one session");
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(uri.module_path());
  if (!module.ok()) return module.status();
  return std::unique_ptr<Pkcs11Backend>(new Pkcs11Backend(std::move(uri), options, *std::move(module)));
}

Pkcs11Backend::Pkcs11Backend(Pkcs11Uri uri, Pkcs11BackendOptions options, std::unique_ptr<Pkcs11Module> module)
    : uri_(std::move(uri)), options_(options), module_(std::move(module)) {}

Pkcs11Backend::~Pkcs11Backend() {
  std::unique_lock lock(mu_);
  conn_.reset();  // before the module finalises
}

std::string Pkcs11Backend::Describe() const {
  return StrCat("PKCS#11 ", uri_.token_description(), " via ", uri_.module_path(), ", key family '",
                      uri_.object_label(), "'");
}

size_t Pkcs11Backend::sessions_in_use() const {
  std::shared_lock lock(mu_);
  return conn_ && conn_->pool ? conn_->pool->in_use() : 0;
}

void Pkcs11Backend::AllowLoginRetry() {
  std::unique_lock lock(mu_);
  login_block_ = OkStatus();
  last_attempt_ = {};
}

template <typename T>
StatusOr<T> Pkcs11Backend::Run(const std::function<StatusOr<T>(Connection&)>& op) {
  for (int attempt = 0;; ++attempt) {
    {
      std::shared_lock lock(mu_);
      if (conn_ && !broken_.load(std::memory_order_acquire)) {
        StatusOr<T> result = op(*conn_);
        if (!IsUnavailable(result.status())) return result;
        if (!broken_.exchange(true)) {
          spdlog::warn("lost the HSM connection ({}); will reconnect", result.status().message());
        }
        if (attempt > 0) return result;
      }
    }
    if (Status reconnected = Reconnect(); !reconnected.ok()) return reconnected;
    if (attempt > 0) return UnavailableError("the HSM connection keeps failing");
  }
}

Status Pkcs11Backend::Reconnect() {
  std::unique_lock lock(mu_);
  if (conn_ && !broken_.load()) return OkStatus();  // another thread got there first
  if (!login_block_.ok()) {
    return UnavailableError(StrCat(login_block_.message(),
                                               "; not retrying (it would lock the token): fix the PIN, then send SIGHUP"));
  }
  const auto now = std::chrono::steady_clock::now();
  if (now - last_attempt_ < options_.reconnect_interval) {
    return UnavailableError(StrCat("HSM unavailable: ", last_error_.message()));
  }
  last_attempt_ = now;
  Status connected = ConnectLocked(/*restore=*/true);
  if (!connected.ok()) {
    last_error_ = connected;
    if (IsPermissionDenied(connected)) login_block_ = connected;
    return UnavailableError(StrCat("HSM unavailable: ", connected.message()));
  }
  spdlog::info("reconnected to {}", Describe());
  return OkStatus();
}

Status Pkcs11Backend::ConnectLocked(bool restore) {
  conn_.reset();  // close old sessions before their handle numbers can be reused
  broken_.store(true);
  module_->Finalize();
  if (Status s = module_->Initialize(); !s.ok()) return s;

  auto conn = std::make_unique<Connection>();
  StatusOr<TokenSlot> token = FindToken(module_->api(), uri_);
  if (!token.ok()) return token.status();
  conn->token = *token;
  StatusOr<Session> admin = OpenSession(module_->api(), token->slot, /*read_write=*/false);
  if (!admin.ok()) return admin.status();
  conn->admin = *std::move(admin);
  if (Status s = LoginUser(conn->admin, conn->token, uri_.pin_file()); !s.ok()) return s;

  std::vector<Session> sessions;
  for (size_t i = 0; i < options_.sessions; ++i) {
    StatusOr<Session> session = OpenSession(module_->api(), token->slot, /*read_write=*/false);
    if (!session.ok()) return session.status();
    sessions.push_back(*std::move(session));
  }
  conn->pool = std::make_unique<SessionPool>(std::move(sessions));
  if (Status s = LoadFamilyLocked(*conn, restore); !s.ok()) return s;
  conn_ = std::move(conn);
  broken_.store(false, std::memory_order_release);
  return OkStatus();
}

StatusOr<std::string> Pkcs11Backend::Fingerprint(const Connection& conn, CK_OBJECT_HANDLE key) const {
  return KeyFingerprint(conn.admin, key);  // shared with trousseau-hsm-init: key_ids must agree
}

Status Pkcs11Backend::LoadFamilyLocked(Connection& conn, bool restore) {
  StatusOr<std::vector<KeyObject>> family = ListKeyFamily(conn.admin, uri_.object_label());
  if (!family.ok()) return family.status();
  // Restoring after an outage brings back exactly the last good key ring: the same versions, each
  // only if its key still has the fingerprint its key_id was derived from. A bad key that appeared
  // meanwhile must not turn the outage into a permanent one; the next refresh judges it, and fails
  // without touching the ring.
  restore = restore && !known_fingerprints_.empty();
  // First check every key, so a bad family leaves the loaded keys untouched.
  std::map<uint64_t, std::pair<CK_OBJECT_HANDLE, std::string>> found;  // version -> (object, fingerprint)
  std::set<uint64_t> replaced;  // restore: versions with an object whose fingerprint is not the known one
  for (const KeyObject& key : *family) {
    auto known = known_fingerprints_.find(key.version);
    if (restore && known == known_fingerprints_.end()) continue;  // new since the last refresh
    if (std::string why = KekPolicyViolation(key); !why.empty() && restore) {
      spdlog::error("key '{}' version {} is no longer usable ({}); it stays out of service", uri_.object_label(),
                    key.version, why);
      continue;
    } else if (!why.empty()) {
      return FailedPreconditionError(StrCat("refusing key '", uri_.object_label(), "' version ",
                                                        key.version, ": ", why));
    }
    StatusOr<std::string> fingerprint = Fingerprint(conn, key.handle);
    if (!fingerprint.ok()) return fingerprint.status();
    if (restore && *fingerprint != known->second) {
      replaced.insert(key.version);  // another key under a known version: it must not serve under that key_id
      continue;
    }
    if (restore && found.contains(key.version)) continue;  // the known key is already found
    if (!found.emplace(key.version, std::make_pair(key.handle, *std::move(fingerprint))).second) {
      return FailedPreconditionError(StrCat("key family '", uri_.object_label(),
                                                        "' has two keys with version ", key.version));
    }
  }
  for (uint64_t version : replaced) {
    if (found.contains(version)) continue;  // the known key is still there too (a duplicate): it serves
    spdlog::error("key '{}' version {} was replaced on the token; it stays unusable until the key ring reloads",
                  uri_.object_label(), version);
  }
  std::map<uint64_t, LoadedKey> loaded;
  for (auto& [version, object_and_fingerprint] : found) {
    auto& [object, fingerprint] = object_and_fingerprint;
    auto previous = conn.keys.find(version);
    if (previous != conn.keys.end() && previous->second.token_object == object &&
        previous->second.fingerprint == fingerprint) {
      loaded.emplace(version, std::move(previous->second));  // keeps its copy and IV sequence
      continue;
    }
    LoadedKey entry;
    entry.token_object = object;
    entry.fingerprint = std::move(fingerprint);
    if (options_.session_key_copies) {
      CK_BBOOL session_only = CK_FALSE;
      CK_ATTRIBUTE copy_template[] = {{CKA_TOKEN, &session_only, sizeof session_only}};
      CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
      CK_RV rv = module_->api()->C_CopyObject(conn.admin.handle(), object, copy_template, 1, &copy);
      if (rv == CKR_OK) {
        entry.session_copy = SessionObject(module_->api(), conn.admin.handle(), copy);
      } else if (IsConnectionLost(rv)) {
        return RvStatus(rv, "C_CopyObject");
      } else {
        spdlog::info("the token does not copy key version {} into the session ({}); using the token object",
                     version, RvName(rv));
      }
    }
    loaded.emplace(version, std::move(entry));
  }
  conn.keys = std::move(loaded);
  return OkStatus();
}

std::vector<BackendKey> Pkcs11Backend::ListLoaded() const {
  std::vector<BackendKey> keys;
  for (const auto& [version, key] : conn_->keys) keys.push_back({version, key.fingerprint});
  return keys;
}

StatusOr<std::vector<BackendKey>> Pkcs11Backend::LoadKeys() {
  std::unique_lock lock(mu_);
  Status loaded = UnavailableError("not connected");
  if (conn_ && !broken_.load()) {
    loaded = LoadFamilyLocked(*conn_, /*restore=*/false);
    if (IsUnavailable(loaded)) broken_.store(true);
  }
  if (IsUnavailable(loaded) && login_block_.ok()) {
    last_attempt_ = std::chrono::steady_clock::now();
    // Reconnect to the last good ring first, so a bad new key cannot keep the device out of service;
    // then judge the whole family on the live connection, as any refresh does.
    loaded = ConnectLocked(/*restore=*/true);
    if (!loaded.ok()) {
      last_error_ = loaded;
    } else if (!known_fingerprints_.empty()) {
      loaded = LoadFamilyLocked(*conn_, /*restore=*/false);
      if (IsUnavailable(loaded)) broken_.store(true);
    }
    if (IsPermissionDenied(loaded)) {
      login_block_ = loaded;
      loaded = UnavailableError(loaded.message());
    }
  } else if (!login_block_.ok()) {
    loaded = UnavailableError(StrCat(login_block_.message(), "; fix the PIN, then send SIGHUP"));
  }
  if (!loaded.ok()) return loaded;
  std::vector<BackendKey> keys = ListLoaded();
  known_fingerprints_.clear();
  for (const BackendKey& key : keys) known_fingerprints_[key.version] = key.fingerprint;
  return keys;
}

StatusOr<std::string> Pkcs11Backend::Seal(uint64_t version, std::string_view plaintext, std::string_view aad) {
  return Run<std::string>([&](Connection& conn) -> StatusOr<std::string> {
    auto key = conn.keys.find(version);
    if (key == conn.keys.end()) return NotFoundError(StrCat("key version ", version, " is not loaded"));
    StatusOr<GcmIv> iv = key->second.ivs->Next();
    if (!iv.ok()) return iv.status();
    std::string body;
    CK_RV rv;
    {
      SessionPool::Lease lease = conn.pool->Acquire();
      rv = GcmSeal(lease.session(), key->second.handle(), *iv, aad, plaintext, body);
    }
    if (rv != CKR_OK) return RvStatus(rv, "AES-GCM encrypt on the device");
    std::string sealed(reinterpret_cast<const char*>(iv->data()), iv->size());
    sealed += body;
    return sealed;
  });
}

StatusOr<SecureBytes> Pkcs11Backend::Open(uint64_t version, std::string_view sealed, std::string_view aad) {
  StatusOr<GcmIv> iv = SplitIv(sealed);
  if (!iv.ok()) return iv.status();
  return Run<SecureBytes>([&](Connection& conn) -> StatusOr<SecureBytes> {
    auto key = conn.keys.find(version);
    if (key == conn.keys.end()) return NotFoundError(StrCat("key version ", version, " is not loaded"));
    SecureBytes plaintext;
    CK_RV rv;
    {
      SessionPool::Lease lease = conn.pool->Acquire();
      rv = GcmOpen(lease.session(), key->second.handle(), *iv, aad, sealed.substr(kGcmIvSize), plaintext);
    }
    if (rv == CKR_OK) return plaintext;
    if (rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_SESSION_HANDLE_INVALID ||
        rv == CKR_SESSION_CLOSED || rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_TOKEN_NOT_PRESENT ||
        rv == CKR_USER_NOT_LOGGED_IN || rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) {
      return RvStatus(rv, "AES-GCM decrypt on the device");
    }
    // Modules report a failed tag check with various codes (SoftHSM: CKR_GENERAL_ERROR). A round
    // trip that works tells us the ciphertext, not the device, is at fault.
    if (Status device = ProbeOn(conn, version); !device.ok()) return device;
    return InvalidArgumentError("ciphertext failed authentication (tampered, truncated or not ours)");
  });
}

Status Pkcs11Backend::ProbeOn(Connection& conn, uint64_t version) {
  auto key = conn.keys.find(version);
  if (key == conn.keys.end()) return NotFoundError(StrCat("key version ", version, " is not loaded"));
  StatusOr<GcmIv> iv = key->second.ivs->Next();
  if (!iv.ok()) return iv.status();
  SessionPool::Lease lease = conn.pool->Acquire();
  std::string sealed;
  if (CK_RV rv = GcmSeal(lease.session(), key->second.handle(), *iv, kProbeAad, kProbePlaintext, sealed); rv != CKR_OK) {
    return RvStatus(rv, "health probe encrypt");
  }
  SecureBytes opened;
  if (CK_RV rv = GcmOpen(lease.session(), key->second.handle(), *iv, kProbeAad, sealed, opened); rv != CKR_OK) {
    return RvStatus(rv, "health probe decrypt");
  }
  if (opened.view() != kProbePlaintext) return UnavailableError("health probe: the device returned wrong data");
  return OkStatus();
}

Status Pkcs11Backend::Probe(uint64_t version) {
  StatusOr<bool> probed = Run<bool>([&](Connection& conn) -> StatusOr<bool> {
    if (Status s = ProbeOn(conn, version); !s.ok()) return s;
    return true;
  });
  return probed.status();
}

}  // namespace trousseau::hsm
