#include "hsm/pkcs11_backend.h"

#include <spdlog/spdlog.h>

#include <set>
#include <utility>

#include "core/strings.h"
#include "hsm/p11/gcm.h"

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

struct Pkcs11Backend::KeyHandle {
  CK_OBJECT_HANDLE token_object = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE session_copy = CK_INVALID_HANDLE;  // ends with the admin session
  std::string fingerprint;
  NonceSequence ivs;
  CK_OBJECT_HANDLE handle() const { return session_copy != CK_INVALID_HANDLE ? session_copy : token_object; }
};

struct Pkcs11Backend::Connection {
  TokenSlot token;
  Session admin;                  // logs in, finds keys and owns the session copies (admin lane only)
  std::vector<Session> sessions;  // sessions[i] is used by lane i only
  std::atomic<std::shared_ptr<const KeyTable>> keys{std::make_shared<const KeyTable>()};
  // Shared by a call on one of the sessions; exclusive to tear the connection down, which waits
  // (with a deadline) for calls still inside the device.
  std::shared_timed_mutex use;
  bool closed = false;  // guarded by `use`

  // The sessions end with the module's C_Finalize, which every reconnect does before it opens new
  // ones. Closing them here instead, perhaps after that, could close a new session that the module
  // gave the same handle number.
  ~Connection() {
    admin.Release();
    for (Session& session : sessions) session.Release();
  }
};

bool Pkcs11Backend::PinFileStamp::operator==(const PinFileStamp& o) const {
  return exists == o.exists && dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
         mtime.tv_nsec == o.mtime.tv_nsec && ctime.tv_sec == o.ctime.tv_sec && ctime.tv_nsec == o.ctime.tv_nsec;
}

StatusOr<std::unique_ptr<Pkcs11Backend>> Pkcs11Backend::Create(Pkcs11Uri uri, Pkcs11BackendOptions options) {
  if (options.sessions == 0) return InvalidArgumentError("the session pool needs at least one session");
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(uri.module_path(), uri.init_reserved());
  if (!module.ok()) return module.status();
  return std::unique_ptr<Pkcs11Backend>(new Pkcs11Backend(std::move(uri), options, *std::move(module)));
}

Pkcs11Backend::Pkcs11Backend(Pkcs11Uri uri, Pkcs11BackendOptions options, std::unique_ptr<Pkcs11Module> module)
    : uri_(std::move(uri)), options_(options), module_(std::move(module)), lanes_(options_.sessions) {}

Pkcs11Backend::~Pkcs11Backend() = default;  // lanes join first; the module finalises last

std::string Pkcs11Backend::Describe() const {
  return StrCat("PKCS#11 ", uri_.token_description(), " via ", uri_.module_path(), ", key family '",
                uri_.object_label(), "'");
}

std::shared_ptr<Pkcs11Backend::Connection> Pkcs11Backend::Current() const {
  std::lock_guard lock(conn_mu_);
  return conn_;
}

Status Pkcs11Backend::NotConnected() const {
  std::lock_guard lock(conn_mu_);
  return UnavailableError(last_loss_.ok() ? std::string("HSM unavailable: not connected yet")
                                          : StrCat("HSM unavailable: ", last_loss_.message()));
}

void Pkcs11Backend::MarkBroken(const std::shared_ptr<Connection>& conn, const Status& why) {
  std::lock_guard lock(conn_mu_);
  if (conn_ != conn) return;  // someone else noticed first
  spdlog::warn("lost the HSM connection ({}); reconnecting when the device answers again", why.message());
  broken_.push_back(std::move(conn_));
  conn_.reset();
  last_loss_ = why;
}

std::optional<Pkcs11Backend::PinFileStamp> Pkcs11Backend::StampPinFile() const {
  if (!uri_.pin_file()) return std::nullopt;  // TROUSSEAU_HSM_PIN: only SIGHUP says it changed
  PinFileStamp stamp;
  struct stat st {};
  if (stat(uri_.pin_file()->c_str(), &st) == 0) {
    stamp = {true, st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
  }
  return stamp;
}

// ---- requests, on the lanes --------------------------------------------------------------------

StatusOr<std::string> Pkcs11Backend::Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                                          Deadline deadline) {
  // The call may outlive this request (a hung device): it gets its own copies.
  auto input = std::make_shared<const SecureBytes>(SecureBytes::CopyOf(plaintext));
  return lanes_.Run<std::string>(deadline, "AES-GCM encrypt on the device",
                                 [this, version, input, aad = std::string(aad)](size_t lane) {
                                   return SealOnLane(lane, version, input->view(), aad);
                                 });
}

StatusOr<SecureBytes> Pkcs11Backend::Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                          Deadline deadline) {
  if (StatusOr<GcmIv> iv = SplitIv(sealed); !iv.ok()) return iv.status();
  return lanes_.Run<SecureBytes>(deadline, "AES-GCM decrypt on the device",
                                 [this, version, sealed = std::string(sealed), aad = std::string(aad)](size_t lane) {
                                   return OpenOnLane(lane, version, sealed, aad);
                                 });
}

Status Pkcs11Backend::Probe(uint64_t version, Deadline deadline) {
  if (Current() == nullptr) {
    // Not connected (an outage, or the start failed): this is where recovery happens.
    const Deadline connect_deadline = std::max(deadline, std::chrono::steady_clock::now() + options_.connect_timeout);
    StatusOr<bool> reconnected =
        admin_lane_.Run<bool>(connect_deadline, "reconnecting to the HSM", [this](size_t) -> StatusOr<bool> {
          if (Status s = ReconnectOnAdmin(); !s.ok()) return s;
          return true;
        });
    if (!reconnected.ok()) return reconnected.status();
  }
  return lanes_.Run<bool>(deadline, "health probe", [this, version](size_t lane) { return ProbeOnLane(lane, version); })
      .status();
}

StatusOr<Pkcs11Backend::KeyInUse> Pkcs11Backend::UseKey(uint64_t version) {
  KeyInUse in_use;
  in_use.conn = Current();
  if (!in_use.conn) return NotConnected();
  in_use.use = std::shared_lock(in_use.conn->use);
  if (in_use.conn->closed) return UnavailableError("HSM unavailable: the connection is being re-established");
  std::shared_ptr<const KeyTable> keys = in_use.conn->keys.load();
  auto key = keys->find(version);
  if (key == keys->end()) return NotFoundError(StrCat("key version ", version, " is not loaded"));
  in_use.key = key->second;
  return in_use;
}

StatusOr<std::string> Pkcs11Backend::SealOnLane(size_t lane, uint64_t version, std::string_view plaintext,
                                                std::string_view aad) {
  StatusOr<KeyInUse> in_use = UseKey(version);
  if (!in_use.ok()) return in_use.status();
  const std::shared_ptr<Connection>& conn = in_use->conn;
  KeyHandle& key = *in_use->key;
  StatusOr<GcmIv> iv = key.ivs.Next();
  if (!iv.ok()) return iv.status();
  std::string body;
  if (Status failed = GcmSeal(conn->sessions[lane], key.handle(), *iv, aad, plaintext, body); !failed.ok()) {
    if (IsUnavailable(failed)) MarkBroken(conn, failed);  // the connection is lost (hsm/pkcs11_error.cc)
    return failed;
  }
  std::string sealed(reinterpret_cast<const char*>(iv->data()), iv->size());
  sealed += body;
  return sealed;
}

StatusOr<SecureBytes> Pkcs11Backend::OpenOnLane(size_t lane, uint64_t version, std::string_view sealed,
                                                std::string_view aad) {
  StatusOr<KeyInUse> in_use = UseKey(version);
  if (!in_use.ok()) return in_use.status();
  const std::shared_ptr<Connection>& conn = in_use->conn;
  KeyHandle& key = *in_use->key;
  GcmIv iv;
  std::copy(sealed.begin(), sealed.begin() + kGcmIvSize, iv.begin());
  SecureBytes plaintext;
  // INVALID_ARGUMENT: the tag did not verify, the caller's bytes (never an outage).
  Status failed = GcmOpen(conn->sessions[lane], key.handle(), iv, aad, sealed.substr(kGcmIvSize), plaintext);
  if (failed.ok()) return plaintext;
  if (IsUnavailable(failed)) MarkBroken(conn, failed);
  return failed;
}

StatusOr<bool> Pkcs11Backend::ProbeOnLane(size_t lane, uint64_t version) {
  StatusOr<std::string> sealed = SealOnLane(lane, version, kProbePlaintext, kProbeAad);
  if (!sealed.ok()) return sealed.status();
  StatusOr<SecureBytes> opened = OpenOnLane(lane, version, *sealed, kProbeAad);
  if (!opened.ok()) {
    // Our own fresh ciphertext must open: a mismatch here is the device's fault.
    return IsInvalidArgument(opened.status()) ? UnavailableError("health probe: the device failed to decrypt")
                                              : opened.status();
  }
  if (opened->view() != kProbePlaintext) return UnavailableError("health probe: the device returned wrong data");
  return true;
}

// ---- connection management, on the admin lane ------------------------------------------------

StatusOr<std::vector<BackendKey>> Pkcs11Backend::LoadKeys(Deadline deadline) {
  return admin_lane_.Run<std::vector<BackendKey>>(deadline, "loading the key family",
                                                  [this](size_t) { return LoadKeysOnAdmin(); });
}

StatusOr<std::vector<BackendKey>> Pkcs11Backend::LoadKeysOnAdmin() {
  std::shared_ptr<Connection> conn = Current();
  Status loaded = UnavailableError("not connected");
  if (conn) {
    loaded = LoadFamily(*conn, /*restore=*/false);
    if (IsUnavailable(loaded)) MarkBroken(conn, loaded);
  }
  if (IsUnavailable(loaded)) {
    // Reconnect to the last good ring first, so a bad new key cannot keep the device out of service;
    // then judge the whole family on the live connection, as any refresh does.
    loaded = ReconnectOnAdmin();
    conn = Current();
    if (loaded.ok() && conn && !known_fingerprints_.empty()) {
      loaded = LoadFamily(*conn, /*restore=*/false);
      if (IsUnavailable(loaded)) MarkBroken(conn, loaded);
    }
  }
  if (!loaded.ok()) return loaded;
  std::vector<BackendKey> keys;
  for (const auto& [version, key] : *conn->keys.load()) keys.push_back({version, key->fingerprint});
  known_fingerprints_.clear();
  for (const BackendKey& key : keys) known_fingerprints_[key.version] = key.fingerprint;
  return keys;
}

Status Pkcs11Backend::LoginBlocked() {
  if (login_block_.ok()) return OkStatus();
  const bool asked = login_retry_requested_.exchange(false);
  const std::optional<PinFileStamp> stamp = StampPinFile();
  if (asked || (stamp && blocked_pin_stamp_ && !(*stamp == *blocked_pin_stamp_))) {
    spdlog::info("{}: trying to log in again", asked ? "SIGHUP" : "the PIN file changed");
    login_block_ = OkStatus();
    return OkStatus();
  }
  return LoginBlockedError();
}

Status Pkcs11Backend::LoginBlockedError() const {
  return PermissionDeniedError(
      StrCat(login_block_.message(), "; not trying that PIN again (each try counts towards locking the token): ",
             uri_.pin_file() ? "fix the PIN file (a change is noticed at once), or send SIGHUP to try it again"
                             : "restart with the right TROUSSEAU_HSM_PIN, or send SIGHUP to try the same PIN again"));
}

Status Pkcs11Backend::RetireBrokenConnections() {
  std::vector<std::shared_ptr<Connection>> broken;
  {
    std::lock_guard lock(conn_mu_);
    broken.swap(broken_);
  }
  Status result;
  for (auto& conn : broken) {
    // Short: calls still inside a hung device keep their connection; the next attempt tries again.
    std::unique_lock use(conn->use, std::defer_lock);
    if (use.try_lock_for(std::chrono::milliseconds(100))) {
      conn->closed = true;
      continue;
    }
    result = UnavailableError(
        "calls are still stuck in the device; the module is re-initialised once the device returns them");
    std::lock_guard lock(conn_mu_);
    broken_.push_back(std::move(conn));
  }
  return result;
}

Status Pkcs11Backend::ReconnectOnAdmin() {
  if (Current() != nullptr) return OkStatus();  // a reconnect queued behind another one
  if (Status blocked = LoginBlocked(); !blocked.ok()) return blocked;
  if (Status retired = RetireBrokenConnections(); !retired.ok()) return retired;
  StatusOr<std::shared_ptr<Connection>> conn = Connect(/*restore=*/true);
  if (!conn.ok()) {
    // A refused key or an ambiguous token is configuration: said as such. Anything else is an outage.
    Status failed = IsFailedPrecondition(conn.status()) || IsInvalidArgument(conn.status())
                        ? conn.status()
                        : UnavailableError(StrCat("HSM unavailable: ", conn.status().message()));
    if (IsPermissionDenied(conn.status())) {
      login_block_ = conn.status();
      blocked_pin_stamp_ = StampPinFile();
      // A SIGHUP from before this refusal (e.g. a rotation's) must not count as the operator's go-ahead.
      login_retry_requested_.store(false);
      failed = LoginBlockedError();
    }
    std::lock_guard lock(conn_mu_);
    last_loss_ = failed;
    return failed;
  }
  {
    std::lock_guard lock(conn_mu_);
    conn_ = *std::move(conn);
  }
  spdlog::info("{} {}", known_fingerprints_.empty() ? "connected to" : "reconnected to", Describe());
  return OkStatus();
}

StatusOr<std::shared_ptr<Pkcs11Backend::Connection>> Pkcs11Backend::Connect(bool restore) {
  module_->Finalize();  // closes every session of the old connection (none is in use: retired)
  if (Status s = module_->Initialize(); !s.ok()) return s;
  auto conn = std::make_shared<Connection>();
  StatusOr<TokenSlot> token = FindToken(module_->api(), uri_);
  if (!token.ok()) return token.status();
  conn->token = *token;
  StatusOr<Session> admin = OpenSession(module_->api(), token->slot, /*read_write=*/false);
  if (!admin.ok()) return admin.status();
  conn->admin = *std::move(admin);
  if (Status s = LoginUser(conn->admin, conn->token, uri_.pin_file()); !s.ok()) return s;
  for (size_t i = 0; i < options_.sessions; ++i) {
    StatusOr<Session> session = OpenSession(module_->api(), token->slot, /*read_write=*/false);
    if (!session.ok()) return session.status();
    conn->sessions.push_back(*std::move(session));
  }
  if (Status s = LoadFamily(*conn, restore); !s.ok()) return s;
  return conn;
}

Status Pkcs11Backend::LoadFamily(Connection& conn, bool restore) {
  StatusOr<std::vector<KeyObject>> family = ListKeyFamily(conn.admin, uri_.object_label());
  if (!family.ok()) return family.status();
  // Restoring after an outage brings back exactly the last good key ring: the same versions, each
  // only if its key still has the fingerprint its key_id was derived from. A bad key that appeared
  // meanwhile must not turn the outage into a permanent one; the next refresh judges it, and fails
  // without touching the ring.
  restore = restore && !known_fingerprints_.empty();
  // Otherwise the family is judged as a whole by the one KEK family policy trousseau-hsm-init applies
  // too (hsm/key_family.h), before anything is loaded, so a bad family leaves the loaded keys untouched.
  if (!restore) {
    if (std::string why = KekFamilyViolation(*family); !why.empty()) {
      return FailedPreconditionError(StrCat("refusing key family '", uri_.object_label(), "': ", why));
    }
  }
  std::map<uint64_t, std::pair<CK_OBJECT_HANDLE, std::string>> found;  // version -> (object, fingerprint)
  std::set<uint64_t> replaced;  // restore: versions with an object whose fingerprint is not the known one
  for (const KeyObject& key : *family) {
    auto known = known_fingerprints_.find(key.version);
    if (restore && known == known_fingerprints_.end()) continue;    // new since the last refresh
    if (std::string why = KekPolicyViolation(key); !why.empty()) {  // restore only: checked above otherwise
      spdlog::error("key '{}' version {} is no longer usable ({}); it stays out of service", uri_.object_label(),
                    key.version, why);
      continue;
    }
    StatusOr<std::string> fingerprint = KeyFingerprint(conn.admin, key.handle);  // as trousseau-hsm-init computes it
    if (!fingerprint.ok()) return fingerprint.status();
    if (restore && *fingerprint != known->second) {
      replaced.insert(key.version);  // another key under a known version: it must not serve under that key_id
      continue;
    }
    if (restore && found.contains(key.version)) continue;                             // the known key is already found
    found.emplace(key.version, std::make_pair(key.handle, *std::move(fingerprint)));  // no duplicates: checked above
  }
  for (uint64_t version : replaced) {
    if (found.contains(version)) continue;  // the known key is still there too (a duplicate): it serves
    spdlog::error("key '{}' version {} was replaced on the token; it stays unusable until the key ring reloads",
                  uri_.object_label(), version);
  }
  std::shared_ptr<const KeyTable> previous = conn.keys.load();
  auto table = std::make_shared<KeyTable>();
  for (auto& [version, object_and_fingerprint] : found) {
    auto& [object, fingerprint] = object_and_fingerprint;
    auto same = previous->find(version);
    if (same != previous->end() && same->second->token_object == object && same->second->fingerprint == fingerprint) {
      table->emplace(version, same->second);  // keeps its copy and IV sequence
      continue;
    }
    auto key = std::make_shared<KeyHandle>();
    key->token_object = object;
    key->fingerprint = std::move(fingerprint);
    if (options_.session_key_copies) {
      StatusOr<CK_OBJECT_HANDLE> copy = CopyToSessionObject(conn.admin, object);
      if (copy.ok()) {
        key->session_copy = *copy;
      } else if (IsUnavailable(copy.status())) {
        return copy.status();
      } else {
        spdlog::info("the token does not copy key version {} into the session ({}); using the token object", version,
                     copy.status().message());
      }
    }
    table->emplace(version, std::move(key));
  }
  // A version gone from the table keeps its session copy until the admin session ends: a call that
  // took the old table may still be using it.
  conn.keys.store(std::move(table));
  return OkStatus();
}

}  // namespace trousseau::hsm
