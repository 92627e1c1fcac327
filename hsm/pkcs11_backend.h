// KeyBackend on a PKCS#11 token: the KEK family is secret keys that never leave the token; every
// seal/open runs on the device, by the scheme of the key version (hsm/key_scheme.h): CKM_AES_GCM with
// our IV or, on a device that insists, its own; or AES-CBC-PAD with HMAC-SHA256 on tokens without GCM.
//
// Deadlines: every device call runs on a lane (device_lanes.h), one per session, and the caller
// waits only until its deadline. Connecting, logging in and listing keys run on one more lane, the
// admin lane, with their own deadline. No thread of the caller ever waits on the device unbounded.
//
// Recovery: a call that finds the device gone marks the connection broken. The next Probe() or
// LoadKeys() (the engine's prober retries with backoff) tears it down once no call is inside it any
// more (closing its sessions), finds the token again by its URI, re-opens the sessions, logs in and
// restores the last good key ring; first on the module as it is, and if that fails as an outage,
// after re-initialising the module (C_Finalize + C_Initialize). A PIN the token rejected is never tried again (it would
// lock the token) until the PIN file changes or AllowLoginRetry() (SIGHUP).
//
// Recipient key: with x-recipient=LABEL in the URI (hsm/pkcs11_uri.h) the backend is also the
// RecipientDevice of that key (hsm/recipient_key.h): found by label at every connect and judged by the
// recipient policy, ECDH on a lane with the caller's deadline, an outage handled as for Seal/Open (the
// connection is marked broken; the next call, Probe or LoadKeys reconnects and finds the key again). A URI
// with x-recipient and no object= (Pkcs11Uri::Parse with KeyFamilyInUri::kOptionalWithRecipient) makes
// a backend that holds the recipient key only: LoadKeys is then FAILED_PRECONDITION, and the recipient
// calls connect by themselves.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/backend_observer.h"
#include "core/defaults.h"
#include "core/key_backend.h"
#include "core/nonce_sequence.h"
#include "core/recipient_device.h"
#include "core/status.h"
#include "hsm/device_lanes.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"
#include "hsm/p11/ecdh.h"
#include "hsm/p11/gcm.h"
#include "hsm/token_discovery.h"

namespace trousseau::hsm {

// The backend kind that goes into every key_id (Kind()); trousseau-hsm-init derives key_ids with it too.
inline constexpr char kPkcs11BackendKind[] = "pkcs11";

// How long a `key rotate` run (hsm/key_admin.h, NextKekOptions::settle_timeout) waits, after creating
// its version, for a contest with another run over that version to be decided. The plugin waits
// twice this before it takes a new version as settled (backend_factory.cc).
inline constexpr std::chrono::milliseconds kKekSettleTimeout{1000};

struct Pkcs11BackendOptions {
  // Sessions, each with its own lane: the number of device calls that can be in flight at once. With
  // grow_sessions, the size the pool starts with (see SessionPoolLimit for how far it grows); without,
  // the size it keeps.
  size_t sessions = defaults::kHsmSessions;
  bool grow_sessions = true;
  // Use an in-session copy of each key (C_CopyObject, CKA_TOKEN=false: still sensitive and
  // non-extractable). SoftHSM serialises token-object use on file locks; a session copy does not.
  bool session_key_copies = true;
  // Deadline of a reconnect (initialise, find the token, open sessions, log in, restore the keys)
  // started by a probe, whose own deadline is meant for one round trip.
  std::chrono::milliseconds connect_timeout{10000};
  // Told about every login the backend tries (the plugin's login metrics); may be null. Must outlive
  // the backend.
  LoginObserver* login_observer = nullptr;
};

// Largest pool a token allows us: `token_limit`, its ulMaxSessionCount (read-only sessions:
// ulMaxRwSessionCount does not apply; TokenSessionLimit reads it), minus headroom for our admin
// session and a provisioning tool's, capped at defaults::kHsmSessionsMax; kHsmSessionsMax when the
// token states no limit (nullopt). Never below `start`: the pool never shrinks below its start size.
size_t SessionPoolLimit(std::optional<uint64_t> token_limit, size_t start);
// ulMaxSessionCount of `token`, nullopt for CK_EFFECTIVELY_INFINITE and CK_UNAVAILABLE_INFORMATION.
std::optional<uint64_t> TokenSessionLimit(const CK_TOKEN_INFO& token);

class Pkcs11Backend final : public KeyBackend, public RecipientDevice {
 public:
  // Loads the module; connects on the first LoadKeys().
  static StatusOr<std::unique_ptr<Pkcs11Backend>> Create(Pkcs11Uri uri, Pkcs11BackendOptions options);
  // Waits for calls still in the device (see DeviceLanes); the plugin exits instead when some are stuck.
  ~Pkcs11Backend() override;

  using KeyBackend::LoadKeys;
  using KeyBackend::Open;
  using KeyBackend::Probe;
  using KeyBackend::Seal;
  std::string_view Kind() const override { return kPkcs11BackendKind; }
  std::string Describe() const override;
  StatusOr<std::vector<BackendKey>> LoadKeys(Deadline deadline) override;
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                             Deadline deadline) override;
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad,
                             Deadline deadline) override;
  // 28 (IV + tag) while every loaded version is aes-gcm; 64 (IV, padding, HMAC) once one is aes-cbc-hmac.
  size_t SealOverhead() const override { return seal_overhead_.load(); }
  Status Probe(uint64_t version, Deadline deadline) override;

  // RecipientDevice, when the URI names x-recipient; FAILED_PRECONDITION from every call otherwise.
  bool has_recipient() const { return uri_.recipient_label().has_value(); }
  std::string_view RecipientKind() const override { return kPkcs11BackendKind; }
  std::string DescribeRecipient() const override;
  // Read from the public key object on the device at each call (a lane, the caller's deadline).
  StatusOr<std::string> RecipientPublicPoint(Deadline deadline) override;
  // `peer_point` is checked on the host first (CheckP256Point: length, form, on the curve):
  // INVALID_ARGUMENT without a device call. Not connected: one reconnect on the admin lane first.
  StatusOr<SecureBytes> RecipientSharedSecret(std::string_view peer_point, Deadline deadline) override;
  // The peer point form the token took for ECDH (kUnknown until one succeeded): for tests and reports.
  p11::PeerPointForm ecdh_peer_point_form() const { return peer_point_form_.load(); }

  // After the token rejected the PIN, logins stop until the PIN file changes or this is called
  // (SIGHUP, e.g. after fixing TROUSSEAU_HSM_PIN's source). Returns at once.
  void AllowLoginRetry() { login_retry_requested_.store(true); }
  size_t sessions_in_use() const { return lanes_.busy(); }
  // Grows with the load when options.grow_sessions (see GrowSessionsOnAdmin); never shrinks.
  size_t session_count() const { return lanes_.size(); }
  // Calls whose caller gave up at its deadline and that the device has not returned yet.
  size_t calls_stuck() const { return lanes_.abandoned() + admin_lane_.abandoned(); }

 private:
  struct KeyHandle;
  struct Connection;
  using KeyTable = std::map<uint64_t, std::shared_ptr<KeyHandle>>;
  // Identity of the PIN file, to notice an operator's fix without reading the PIN.
  struct PinFileStamp {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    timespec mtime{}, ctime{};
    bool operator==(const PinFileStamp& o) const;
  };

  Pkcs11Backend(Pkcs11Uri uri, Pkcs11BackendOptions options, std::unique_ptr<Pkcs11Module> module);

  std::shared_ptr<Connection> Current() const;
  Status NotConnected() const;
  // A call on `conn` found the device gone: later calls fail at once until a reconnect.
  void MarkBroken(const std::shared_ptr<Connection>& conn, const Status& why);
  std::optional<PinFileStamp> StampPinFile() const;

  // A key version on the live connection, which stays up (shared lock) while the holder uses it.
  struct KeyInUse {
    std::shared_ptr<Connection> conn;
    std::shared_lock<std::shared_timed_mutex> use;
    std::shared_ptr<KeyHandle> key;
  };

  // On a lane.
  StatusOr<KeyInUse> UseKey(uint64_t version);
  StatusOr<std::string> SealOnLane(size_t lane, uint64_t version, std::string_view plaintext, std::string_view aad);
  StatusOr<SecureBytes> OpenOnLane(size_t lane, uint64_t version, std::string_view sealed, std::string_view aad);
  StatusOr<bool> ProbeOnLane(size_t lane, uint64_t version);

  // The recipient key on the live connection, which stays up (shared lock) while the holder uses it.
  struct RecipientInUse {
    std::shared_ptr<Connection> conn;
    std::shared_lock<std::shared_timed_mutex> use;
  };
  StatusOr<RecipientInUse> UseRecipient();
  StatusOr<std::string> RecipientPointOnLane(size_t lane);
  StatusOr<SecureBytes> SharedSecretOnLane(size_t lane, std::string_view peer_point);
  // FAILED_PRECONDITION without x-recipient; else connected (reconnecting on the admin lane by `deadline`).
  Status RecipientReady(Deadline deadline);

  // A device call that is about to queue for a lane: asks the admin lane to grow the pool when that
  // would help (options.grow_sessions, the device slow enough, the token's limit not reached). Returns
  // at once.
  void MaybeGrowSessions();

  // On the admin lane only.
  void GrowSessionsOnAdmin();
  StatusOr<std::vector<BackendKey>> LoadKeysOnAdmin();
  Status ReconnectOnAdmin();
  Status RetireBrokenConnections();
  // `restore`: after an outage, bring back only the last good key ring (see LoadFamily); otherwise
  // (start-up, refresh) the whole family is judged and any bad key fails the load.
  StatusOr<std::shared_ptr<Connection>> Connect(bool restore);
  StatusOr<std::shared_ptr<Connection>> ConnectOnce(bool restore);
  StatusOr<std::shared_ptr<Connection>> BuildConnection(std::shared_ptr<Connection> conn, bool restore);
  Status LoadFamily(Connection& conn, bool restore);
  // Finds the recipient key by label and judges it (hsm/recipient_key.h); FAILED_PRECONDITION when it is
  // missing, ambiguous or breaks the policy, or the token cannot do ECDH.
  Status LoadRecipient(Connection& conn);
  // OK, or lifts the block if the PIN file changed or SIGHUP asked since; else LoginBlockedError().
  Status LoginBlocked();
  Status LoginBlockedError() const;

  const Pkcs11Uri uri_;
  const Pkcs11BackendOptions options_;
  const std::unique_ptr<Pkcs11Module> module_;

  mutable std::mutex conn_mu_;
  std::mutex no_copy_mu_;
  std::set<uint64_t> no_copy_reported_;  // versions whose "no session copy" was logged; guarded by no_copy_mu_
  std::shared_ptr<Connection> conn_;     // null: not connected, or broken
  std::vector<std::shared_ptr<Connection>> broken_;  // to tear down before the module re-initialises
  Status last_loss_;                                 // why the last connection broke

  // Admin lane only.
  bool module_initialized_ = false;                     // C_Initialize succeeded and no C_Finalize since
  std::map<uint64_t, std::string> known_fingerprints_;  // the key ring a reconnect restores
  Status login_block_;                                  // the PIN was rejected
  std::optional<PinFileStamp> blocked_pin_stamp_;
  std::atomic<bool> login_retry_requested_{false};
  std::atomic<size_t> seal_overhead_{kGcmIvSize + kGcmTagSize};
  // The peer point form this token's CKM_ECDH1_DERIVE takes, once found out (p11/ecdh.h); kept across
  // reconnects (it is the module's, not the session's).
  std::atomic<p11::PeerPointForm> peer_point_form_{p11::PeerPointForm::kUnknown};
  // The most sessions the pool may grow to (SessionPoolLimit of the token at the last connect); written
  // on the admin lane, read by callers deciding whether to ask for growth.
  std::atomic<size_t> session_limit_;
  std::atomic<bool> growth_requested_{false};  // a GrowSessionsOnAdmin is queued or running

  // Last: their threads stop (and are joined) before anything above goes.
  DeviceLanes lanes_;
  DeviceLanes admin_lane_{1};
};

}  // namespace trousseau::hsm
