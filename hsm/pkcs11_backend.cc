#include "hsm/pkcs11_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <utility>

#include "core/strings.h"
#include "hsm/capabilities.h"
#include "hsm/p11/gcm.h"
#include "hsm/recipient_key.h"
#include "hsm/version_aead.h"

namespace trousseau::hsm {
namespace {

// The health probe: a real seal and open on the device.
constexpr std::string_view kProbePlaintext = "trousseau-hsm health probe";
constexpr std::string_view kProbeAad = "trousseau-hsm probe";

// LoginObserver::OnLogin's `failure` for a login LoginUser tried.
std::string_view LoginFailureName(LoginOutcome outcome) {
  switch (outcome) {
    case LoginOutcome::kOk:
    case LoginOutcome::kNotTried:
      return "";
    case LoginOutcome::kPinIncorrect:
      return "pin_incorrect";
    case LoginOutcome::kPinLocked:
      return "pin_locked";
    case LoginOutcome::kPinExpired:
      return "pin_expired";
    case LoginOutcome::kOther:
      break;
  }
  return "other";
}

// Sizing the session pool (--hsm-sessions auto). Each session has a lane, so the pool is the number of
// device calls in flight; by Little's law a device of latency W serving a rate R keeps R x W of them
// busy. We cannot see the rate callers would like while they queue, but we see the calls that want a
// lane right now (busy + waiting): that is R x W for the offered rate, so a call that finds every lane
// busy asks the admin lane to grow the pool to that many (at most double per step:
// 16 -> 32 -> 64 covers 64 concurrent streams in two steps of a few C_OpenSession each, while one burst
// cannot take the token's whole limit at once).
//
// Only a slow device gains from more lanes: below kGrowMinCallTime a lane turns round in well under a
// millisecond, so the 16 lanes we start with already give > 16 / 1 ms = 16000 calls/s, four times the
// 4000/s a busy apiserver asks; there the host CPU, not the lane count, is the bound, and more lanes
// only add threads. A network HSM at 2 ms (each Decrypt is C_DecryptInit + C_Decrypt there) is far above.
constexpr std::chrono::microseconds kGrowMinCallTime{1000};
// Sessions of the token we leave to others under its ulMaxSessionCount: our own admin session, and a
// trousseau-hsm-init run (one session) or an operator's pkcs11-tool beside us, plus one spare.
constexpr size_t kSessionHeadroom = 4;

// Shorter than any scheme's sealed bytes: refused before it takes a lane.
Status CheckSealedSize(std::string_view sealed) {
  if (sealed.size() < kGcmIvSize + kGcmTagSize) {
    return InvalidArgumentError("ciphertext is too short to hold an IV and an authentication tag");
  }
  return OkStatus();
}

}  // namespace

// One version's device objects: the AES key and, for aes-cbc-hmac, the HMAC key; each the token object
// or its session copy (which ends with the admin session).
struct Pkcs11Backend::KeyHandle {
  KeyScheme scheme = KeyScheme::kAesGcm;
  GcmIvSource gcm_iv_source = GcmIvSource::kCaller;
  CK_OBJECT_HANDLE token_object = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE session_copy = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE mac_token_object = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE mac_session_copy = CK_INVALID_HANDLE;
  std::string fingerprint;
  NonceSequence ivs;
  SealingKey sealing() const {
    return {.handles = {.scheme = scheme,
                        .cipher = session_copy != CK_INVALID_HANDLE ? session_copy : token_object,
                        .mac = mac_session_copy != CK_INVALID_HANDLE ? mac_session_copy : mac_token_object},
            .gcm_iv_source = gcm_iv_source};
  }
};

struct Pkcs11Backend::Connection {
  TokenSlot token;
  TokenCapabilities capabilities;  // read at connect: which schemes this token can serve
  Session admin;                   // logs in, finds keys and owns the session copies (admin lane only)
  std::vector<Session> sessions;   // sessions[i] is used by lane i only
  std::atomic<std::shared_ptr<const KeyTable>> keys{std::make_shared<const KeyTable>()};
  // Shared by a call on one of the sessions; exclusive to tear the connection down, which waits
  // (with a deadline) for calls still inside the device.
  std::shared_timed_mutex use;
  bool closed = false;  // guarded by `use`
  // The recipient key (x-recipient), found at connect; CK_INVALID_HANDLE without one.
  CK_OBJECT_HANDLE recipient_private = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE recipient_public = CK_INVALID_HANDLE;

  // Closes every session (which ends the login): called on a retired or half-built connection before
  // any new session is opened, so no close can hit a new session that reuses a handle number.
  void CloseSessions() {
    for (Session& session : sessions) session = Session();
    admin = Session();
  }
  // Sessions still open here end with the module's C_Finalize: closing them here, perhaps after that,
  // could close a new session that the module gave the same handle number.
  ~Connection() {
    admin.Release();
    for (Session& session : sessions) session.Release();
  }
};

std::optional<uint64_t> TokenSessionLimit(const CK_TOKEN_INFO& token) {
  const CK_ULONG stated = token.ulMaxSessionCount;
  if (stated == CK_EFFECTIVELY_INFINITE || stated == CK_UNAVAILABLE_INFORMATION) return std::nullopt;
  return stated;
}

size_t SessionPoolLimit(std::optional<uint64_t> token_limit, size_t start) {
  size_t limit = defaults::kHsmSessionsMax;
  if (token_limit.has_value()) {
    limit = std::min<size_t>(limit, *token_limit > kSessionHeadroom ? *token_limit - kSessionHeadroom : 0);
  }
  return std::max(limit, start);
}

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
    : uri_(std::move(uri)),
      options_(options),
      module_(std::move(module)),
      // Until a token says otherwise: the hard cap (growth needs a connection, which reads the token).
      session_limit_(options_.grow_sessions ? std::max(options_.sessions, defaults::kHsmSessionsMax)
                                            : options_.sessions),
      lanes_(options_.sessions, session_limit_.load()) {}

Pkcs11Backend::~Pkcs11Backend() = default;  // lanes join first; the module finalises last

std::string Pkcs11Backend::Describe() const {
  std::string described = StrCat("PKCS#11 ", uri_.token_description(), " via ", uri_.module_path());
  if (uri_.has_key_family()) StrAppend(described, ", key family '", uri_.object_label(), "'");
  if (uri_.recipient_label()) StrAppend(described, ", recipient key '", *uri_.recipient_label(), "'");
  return described;
}

std::string Pkcs11Backend::DescribeRecipient() const { return Describe(); }

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
  MaybeGrowSessions();
  return lanes_.Run<std::string>(deadline, "encrypt on the device",
                                 [this, version, input, aad = std::string(aad)](size_t lane) {
                                   return SealOnLane(lane, version, input->view(), aad);
                                 });
}

StatusOr<SecureBytes> Pkcs11Backend::Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                          Deadline deadline) {
  if (Status s = CheckSealedSize(sealed); !s.ok()) return s;
  MaybeGrowSessions();
  return lanes_.Run<SecureBytes>(deadline, "decrypt on the device",
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

void Pkcs11Backend::MaybeGrowSessions() {
  if (!options_.grow_sessions) return;
  if (lanes_.busy() < lanes_.size()) return;  // a lane is free: this call does not queue
  if (lanes_.size() >= session_limit_.load()) return;
  if (lanes_.call_time() < kGrowMinCallTime) return;
  // A call its caller gave up on is still in the device: a hung device, not a slow one. More lanes
  // would only be more calls stuck in it (the pool bounds those).
  if (lanes_.abandoned() > 0) return;
  if (growth_requested_.exchange(true)) return;  // one request at a time
  // Only if the admin lane is free now: a reconnect or key load in progress comes first, and the
  // next queued call asks again.
  if (!admin_lane_.TryPost([this](size_t) {
        GrowSessionsOnAdmin();
        growth_requested_.store(false);
      })) {
    growth_requested_.store(false);
  }
}

void Pkcs11Backend::GrowSessionsOnAdmin() {
  std::shared_ptr<Connection> conn = Current();
  if (!conn) return;  // the reconnect opens as many sessions as there are lanes
  const size_t now = lanes_.size();
  const size_t wanted = lanes_.busy() + lanes_.waiting();
  if (wanted <= now) return;  // the queue drained meanwhile
  const size_t target = std::min({wanted, 2 * now, session_limit_.load()});
  if (target <= now) return;
  // The sessions first (conn->sessions has room for every lane the pool may reach, so no lane's
  // element moves), then the lanes that use them: lane i gets work only after Grow publishes it.
  size_t opened = now;
  for (; opened < target; ++opened) {
    StatusOr<Session> session = OpenSession(module_->api(), conn->token.slot, /*read_write=*/false);
    if (!session.ok()) {
      if (IsUnavailable(session.status())) MarkBroken(conn, session.status());
      // E.g. CKR_SESSION_COUNT: the token's real limit is lower than it said; stay where we are.
      spdlog::warn("the HSM session pool stays at {} sessions: opening one more failed ({})", opened,
                   session.status().message());
      session_limit_.store(opened);
      break;
    }
    conn->sessions[opened] = *std::move(session);
  }
  if (opened == now) return;
  lanes_.Grow(opened);
  spdlog::info("HSM session pool grown from {} to {} sessions (calls queued for a session; device call time {} us)",
               now, opened, lanes_.call_time().count());
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
  StatusOr<std::string> sealed = SealWithVersion(conn->sessions[lane], key.sealing(), key.ivs, aad, plaintext);
  // UNAVAILABLE: the connection is lost (hsm/pkcs11_error.cc).
  if (IsUnavailable(sealed.status())) MarkBroken(conn, sealed.status());
  return sealed;
}

StatusOr<SecureBytes> Pkcs11Backend::OpenOnLane(size_t lane, uint64_t version, std::string_view sealed,
                                                std::string_view aad) {
  StatusOr<KeyInUse> in_use = UseKey(version);
  if (!in_use.ok()) return in_use.status();
  const std::shared_ptr<Connection>& conn = in_use->conn;
  // INVALID_ARGUMENT: the tag or MAC did not verify, the caller's bytes (never an outage).
  StatusOr<SecureBytes> plaintext = OpenWithVersion(conn->sessions[lane], in_use->key->sealing(), aad, sealed);
  if (IsUnavailable(plaintext.status())) MarkBroken(conn, plaintext.status());
  return plaintext;
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

// ---- the recipient key, on the lanes -----------------------------------------------------------

Status Pkcs11Backend::RecipientReady(Deadline deadline) {
  if (!uri_.recipient_label()) {
    return FailedPreconditionError(StrCat(Describe(), " holds no recipient key (the URI names no x-recipient=LABEL)"));
  }
  if (Current() != nullptr) return OkStatus();
  // Not connected (never yet, or an outage): a recipient-only backend has no prober that reconnects
  // it, so the call does; within its own deadline (the reconnect finishes on the admin lane regardless).
  return admin_lane_
      .Run<bool>(deadline, "connecting to the HSM",
                 [this](size_t) -> StatusOr<bool> {
                   if (Status s = ReconnectOnAdmin(); !s.ok()) return s;
                   return true;
                 })
      .status();
}

StatusOr<Pkcs11Backend::RecipientInUse> Pkcs11Backend::UseRecipient() {
  RecipientInUse in_use;
  in_use.conn = Current();
  if (!in_use.conn) return NotConnected();
  in_use.use = std::shared_lock(in_use.conn->use);
  if (in_use.conn->closed) return UnavailableError("HSM unavailable: the connection is being re-established");
  return in_use;
}

StatusOr<std::string> Pkcs11Backend::RecipientPublicPoint(Deadline deadline) {
  if (Status s = RecipientReady(deadline); !s.ok()) return s;
  return lanes_.Run<std::string>(deadline, "reading the recipient key's public point",
                                 [this](size_t lane) { return RecipientPointOnLane(lane); });
}

StatusOr<SecureBytes> Pkcs11Backend::RecipientSharedSecret(std::string_view peer_point, Deadline deadline) {
  // The caller's bytes are judged before any device or lane is involved.
  if (Status s = CheckP256Point(peer_point); !s.ok()) return s;
  if (Status s = RecipientReady(deadline); !s.ok()) return s;
  MaybeGrowSessions();
  return lanes_.Run<SecureBytes>(deadline, "ECDH on the device", [this, peer = std::string(peer_point)](size_t lane) {
    return SharedSecretOnLane(lane, peer);
  });
}

StatusOr<std::string> Pkcs11Backend::RecipientPointOnLane(size_t lane) {
  StatusOr<RecipientInUse> in_use = UseRecipient();
  if (!in_use.ok()) return in_use.status();
  const std::shared_ptr<Connection>& conn = in_use->conn;
  StatusOr<std::string> point = p11::ReadP256PublicPoint(conn->sessions[lane], conn->recipient_public);
  if (IsUnavailable(point.status())) MarkBroken(conn, point.status());
  return point;
}

StatusOr<SecureBytes> Pkcs11Backend::SharedSecretOnLane(size_t lane, std::string_view peer_point) {
  StatusOr<RecipientInUse> in_use = UseRecipient();
  if (!in_use.ok()) return in_use.status();
  const std::shared_ptr<Connection>& conn = in_use->conn;
  StatusOr<p11::EcdhSecret> derived =
      p11::DeriveEcdhSecret(conn->sessions[lane], conn->recipient_private, peer_point, peer_point_form_.load());
  if (!derived.ok()) {
    // UNAVAILABLE: the connection is lost. INVALID_ARGUMENT: the device refused this point, not an outage.
    if (IsUnavailable(derived.status())) MarkBroken(conn, derived.status());
    return derived.status();
  }
  peer_point_form_.store(derived->form);
  return std::move(derived->secret);
}

// ---- connection management, on the admin lane ------------------------------------------------

StatusOr<std::vector<BackendKey>> Pkcs11Backend::LoadKeys(Deadline deadline) {
  return admin_lane_.Run<std::vector<BackendKey>>(deadline, "loading the key family",
                                                  [this](size_t) { return LoadKeysOnAdmin(); });
}

StatusOr<std::vector<BackendKey>> Pkcs11Backend::LoadKeysOnAdmin() {
  if (!uri_.has_key_family()) {
    return FailedPreconditionError(StrCat("no key family to load: the URI names no object= (only the recipient key '",
                                          uri_.recipient_label().value_or(""), "')"));
  }
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
  for (const auto& [version, key] : *conn->keys.load()) {
    keys.push_back({version, key->fingerprint, EnvelopeFormatOf(key->scheme)});
  }
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
      conn->CloseSessions();  // before the reconnect opens new ones (see Connect)
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
  // First on the module as it is: a token that went away and came back is usually found again without
  // re-initialising, and some modules cannot re-initialise while their device is away (opencryptoki
  // with pkcsslotd down: after C_Finalize, C_Initialize fails until the daemon returns, and every call
  // until then says CKR_CRYPTOKI_NOT_INITIALIZED). Only an outage-like failure tries again afresh.
  if (module_initialized_) {
    StatusOr<std::shared_ptr<Connection>> conn = ConnectOnce(restore);
    if (conn.ok() || !IsUnavailable(conn.status())) return conn;
    spdlog::debug("reconnecting without re-initialising the module failed ({}); re-initialising it",
                  conn.status().message());
  }
  module_initialized_ = false;
  module_->Finalize();  // closes any session left (none is in use: the broken ones are retired)
  if (Status s = module_->Initialize(); !s.ok()) return s;
  module_initialized_ = true;
  return ConnectOnce(restore);
}

StatusOr<std::shared_ptr<Pkcs11Backend::Connection>> Pkcs11Backend::ConnectOnce(bool restore) {
  auto conn = std::make_shared<Connection>();
  StatusOr<std::shared_ptr<Connection>> built = BuildConnection(conn, restore);
  if (!built.ok()) conn->CloseSessions();  // none leaks into the next attempt, which may not finalise
  return built;
}

StatusOr<std::shared_ptr<Pkcs11Backend::Connection>> Pkcs11Backend::BuildConnection(std::shared_ptr<Connection> conn,
                                                                                    bool restore) {
  // tpm2-pkcs11 is a TPM: the native backend serves it; said before its (often absent) token is sought.
  StatusOr<ModuleIdentity> module = ReadModuleIdentity(module_->api());
  if (!module.ok()) return module.status();
  if (Status tpm = RefuseTpm2Pkcs11(*module); !tpm.ok()) return tpm;
  StatusOr<TokenSlot> token = FindToken(module_->api(), uri_);
  if (!token.ok()) return token.status();
  conn->token = *token;
  StatusOr<TokenCapabilities> capabilities = ReadTokenCapabilities(module_->api(), token->slot);
  if (!capabilities.ok()) return capabilities.status();
  conn->capabilities = *std::move(capabilities);
  StatusOr<Session> admin = OpenSession(module_->api(), token->slot, /*read_write=*/false);
  if (!admin.ok()) return admin.status();
  conn->admin = *std::move(admin);
  LoginOutcome login = LoginOutcome::kNotTried;
  const Status logged_in = LoginUser(conn->admin, conn->token, uri_.pin_file(), &login);
  if (options_.login_observer != nullptr && login != LoginOutcome::kNotTried) {
    options_.login_observer->OnLogin(Describe(), LoginFailureName(login));
  }
  if (!logged_in.ok()) return logged_in;
  if (options_.grow_sessions) {
    session_limit_.store(std::max(SessionPoolLimit(TokenSessionLimit(token->info), options_.sessions), lanes_.size()));
  }
  // Room for every lane the pool may reach (GrowSessionsOnAdmin fills it in place); sessions for the
  // lanes there are now (the pool may have grown on an earlier connection).
  conn->sessions.resize(lanes_.capacity());
  for (size_t i = 0; i < lanes_.size(); ++i) {
    StatusOr<Session> session = OpenSession(module_->api(), token->slot, /*read_write=*/false);
    if (!session.ok()) return session.status();
    conn->sessions[i] = *std::move(session);
  }
  if (Status s = LoadRecipient(*conn); !s.ok()) return s;
  if (uri_.has_key_family()) {
    if (Status s = LoadFamily(*conn, restore); !s.ok()) return s;
  }
  return conn;
}

Status Pkcs11Backend::LoadRecipient(Connection& conn) {
  if (!uri_.recipient_label()) return OkStatus();
  const std::string& label = *uri_.recipient_label();
  if (Status s = CanHoldRecipient(conn.capabilities, /*to_create=*/false); !s.ok()) return s;
  StatusOr<RecipientKeyObjects> objects = FindRecipientKey(conn.admin, label);
  if (!objects.ok()) {
    if (!IsNotFound(objects.status())) return objects.status();
    return FailedPreconditionError(
        StrCat(objects.status().message(), " (x-recipient=", label, "): create it with the provisioning tool first"));
  }
  StatusOr<RecipientKeyInfo> info = ShowRecipient(conn.admin, label);
  if (!info.ok()) return info.status();
  if (!info->violation.empty()) {
    return FailedPreconditionError(StrCat("refusing recipient key '", label, "': ", info->violation));
  }
  conn.recipient_private = objects->private_key;
  conn.recipient_public = objects->public_key;
  return OkStatus();
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
    // A token that cannot run a version's scheme: one message naming what is missing and what it offers.
    std::set<KeyScheme> schemes;
    for (const KeyVersion& version : GroupKeyVersions(*family)) schemes.insert(version.scheme);
    for (KeyScheme scheme : schemes) {
      // With x-gcm-iv=device the fingerprint needs AES-ECB too: said here rather than as CKR_MECHANISM_INVALID.
      const GcmIvSource iv_source =
          scheme == KeyScheme::kAesGcm ? uri_.gcm_iv_source().value_or(GcmIvSource::kCaller) : GcmIvSource::kCaller;
      if (Status s = CanServe(conn.capabilities, scheme, iv_source); !s.ok()) return s;
    }
    // No key yet on a token no scheme can use: say that, rather than "provision a key" that cannot be made.
    if (family->empty()) {
      if (StatusOr<KeyScheme> usable = SchemeForNewKeys(conn.capabilities); !usable.ok()) return usable.status();
    }
  }
  // Each version's objects by role (a well-judged family has one of each; a restore may meet more).
  struct Candidates {
    std::vector<CK_OBJECT_HANDLE> ciphers, macs;
  };
  std::map<uint64_t, Candidates> candidates;
  for (const KeyObject& key : *family) {
    auto known = known_fingerprints_.find(key.version);
    if (restore && known == known_fingerprints_.end()) continue;    // new since the last refresh
    if (std::string why = KekPolicyViolation(key); !why.empty()) {  // restore only: checked above otherwise
      spdlog::error("key '{}' version {} is no longer usable ({}); it stays out of service", uri_.object_label(),
                    key.version, why);
      continue;
    }
    Candidates& c = candidates[key.version];
    (RoleOf(key) == KeyRole::kMac ? c.macs : c.ciphers).push_back(key.handle);
  }
  struct Found {
    VersionHandles handles;
    Fingerprint fingerprint;
  };
  std::map<uint64_t, Found> found;
  std::set<uint64_t> replaced;  // restore: versions with objects whose fingerprint is not the known one
  for (const auto& [version, c] : candidates) {
    const KeyScheme scheme = c.macs.empty() ? KeyScheme::kAesGcm : KeyScheme::kAesCbcHmac;
    const std::vector<CK_OBJECT_HANDLE> macs = c.macs.empty() ? std::vector<CK_OBJECT_HANDLE>{kNoObject} : c.macs;
    for (CK_OBJECT_HANDLE cipher : c.ciphers) {
      for (CK_OBJECT_HANDLE mac : macs) {
        if (found.contains(version)) break;
        const VersionHandles handles{.scheme = scheme, .cipher = cipher, .mac = mac};
        // As trousseau-hsm-init computes it (hsm/key_family.h).
        StatusOr<Fingerprint> fingerprint = VersionFingerprint(conn.admin, handles, uri_.gcm_iv_source());
        if (!fingerprint.ok()) return fingerprint.status();
        if (restore && fingerprint->bytes != known_fingerprints_.at(version)) {
          replaced.insert(version);  // other keys under a known version: they must not serve under its key_id
          continue;
        }
        found.emplace(version, Found{handles, *std::move(fingerprint)});  // no duplicates unless restoring
      }
    }
  }
  for (uint64_t version : replaced) {
    if (found.contains(version)) continue;  // the known keys are still there too (a duplicate): they serve
    spdlog::error("key '{}' version {} was replaced on the token; it stays unusable until the key ring reloads",
                  uri_.object_label(), version);
  }
  std::shared_ptr<const KeyTable> previous = conn.keys.load();
  auto table = std::make_shared<KeyTable>();
  size_t overhead = kGcmIvSize + kGcmTagSize;
  for (auto& [version, f] : found) {
    overhead = std::max(overhead, MaxSealOverhead(f.handles.scheme));
    auto same = previous->find(version);
    if (same != previous->end() && same->second->token_object == f.handles.cipher &&
        same->second->mac_token_object == f.handles.mac && same->second->fingerprint == f.fingerprint.bytes) {
      table->emplace(version, same->second);  // keeps its copies and IV sequence
      continue;
    }
    auto key = std::make_shared<KeyHandle>();
    key->scheme = f.handles.scheme;
    key->gcm_iv_source = f.fingerprint.gcm_iv_source;
    key->token_object = f.handles.cipher;
    key->mac_token_object = f.handles.mac;
    key->fingerprint = std::move(f.fingerprint.bytes);
    if (options_.session_key_copies) {
      for (auto [object, copy] : {std::pair{key->token_object, &key->session_copy},
                                  std::pair{key->mac_token_object, &key->mac_session_copy}}) {
        if (object == kNoObject) continue;
        StatusOr<CK_OBJECT_HANDLE> copied = CopyToSessionObject(conn.admin, object);
        if (copied.ok()) {
          *copy = *copied;
        } else if (IsUnavailable(copied.status())) {
          return copied.status();
        } else {
          // Said once per version for the process's life: every reconnect and reload finds the same.
          std::lock_guard lock(no_copy_mu_);
          if (no_copy_reported_.insert(version).second) {
            spdlog::info("the token does not copy key version {} into the session ({}); using the token object",
                         version, copied.status().message());
          }
        }
      }
    }
    table->emplace(version, std::move(key));
  }
  seal_overhead_.store(overhead);
  // A version gone from the table keeps its session copy until the admin session ends: a call that
  // took the old table may still be using it.
  conn.keys.store(std::move(table));
  return OkStatus();
}

}  // namespace trousseau::hsm
