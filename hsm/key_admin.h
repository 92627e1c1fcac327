// Provisioning steps on the token (used by trousseau-hsm-init and by tests): create a new version
// of the KEK family on the device, in either scheme (hsm/key_scheme.h): aes-gcm (one AES key) or
// aes-cbc-hmac (an AES key and an HMAC key under the same label and CKA_ID).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/admin.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"
#include "hsm/key_scheme.h"
#include "hsm/pkcs11_backend.h"

namespace trousseau::hsm {

struct KekOptions {
  // Non-modifiable keys cannot have their label, id or usage changed later. SoftHSM also refuses
  // to copy them into a session (CKR_ATTRIBUTE_READ_ONLY), so the plugin then uses the token object.
  bool modifiable = false;
};

// Generates AES-256 key `version` of family `label` inside the token: token object, private,
// sensitive, never extractable, encrypt/decrypt only (no wrap, unwrap, sign, verify, derive),
// CKA_ID = version. Needs a logged-in read-write session. Returns the object handle.
StatusOr<CK_OBJECT_HANDLE> GenerateKekVersion(const Session& session, std::string_view label, uint64_t version,
                                              KekOptions options = {});

// Generates the HMAC key of aes-cbc-hmac version `version` of family `label` inside the token
// (CKM_GENERIC_SECRET_KEY_GEN): a 256-bit CKK_GENERIC_SECRET, token object, private, sensitive, never
// extractable, sign/verify only, CKA_ID = version. Alone it is no version: the plugin refuses a family
// with an HMAC key and no AES key beside it (GenerateVersionKeys makes both).
StatusOr<CK_OBJECT_HANDLE> GenerateMacKeyOfVersion(const Session& session, std::string_view label, uint64_t version,
                                                   KekOptions options = {});

// Every key of version `version` in `scheme`: the AES key, then for aes-cbc-hmac the HMAC key. Never
// leaves half a version: when the HMAC key cannot be made, the AES key is destroyed again (the error
// says if that failed too). A token that keeps CKA_ID unique among secret keys (NSS softoken) replaces
// the AES key by the HMAC key: that is FAILED_PRECONDITION (aes-cbc-hmac cannot live there), and the
// HMAC key is destroyed.
StatusOr<VersionHandles> GenerateVersionKeys(const Session& session, std::string_view label, uint64_t version,
                                             KeyScheme scheme, KekOptions options = {});

// The scheme a new version gets on the token `admin` holds: `requested` if the token can make keys of
// it (else FAILED_PRECONDITION naming what it lacks and what it offers), or with nullopt ("auto") what
// the token offers best (SchemeForNewKeys, hsm/capabilities.h: aes-gcm wherever the token has it).
StatusOr<KeyScheme> SchemeForNewVersion(const AdminSession& admin, std::optional<KeyScheme> requested);
// The same, tried again on a freshly opened token (`admin` is replaced) while it fails UNAVAILABLE or
// INTERNAL: SoftHSM rewrites its token file at every login, and a module that read the token at that
// moment answers C_GetTokenInfo with CKR_GENERAL_ERROR until it is initialised again.
StatusOr<KeyScheme> SchemeForNewVersionPatiently(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri,
                                                 std::optional<KeyScheme> requested);

// For tests of the KEK policy: an AES-256 token key of family `label` with CKA_ID = version and the
// given protection flags, allowed to encrypt and decrypt, so the plugin's refusal can be shown.
struct TestKeyFlags {
  bool sensitive = true;
  bool extractable = false;
  bool is_private = true;
};
StatusOr<CK_OBJECT_HANDLE> GenerateTestAesKey(const Session& session, std::string_view label, uint64_t version,
                                              TestKeyFlags flags);
// The same with any raw CKA_ID (tests of the CKA_IDs other tools write: tpm2_ptool's ASCII "3031",
// a non-minimal 0001), with the production protection flags.
StatusOr<CK_OBJECT_HANDLE> GenerateTestAesKeyWithId(const Session& session, std::string_view label,
                                                    std::string_view raw_id);

struct NextKekOptions {
  KekOptions key;
  // The new version's scheme; nullopt: SchemeForNewVersion(admin, nullopt).
  std::optional<KeyScheme> scheme;
  // `key generate`: the first version of an empty family and nothing else (ALREADY_EXISTS once the
  // family has a key, also when another run created its first version at the same moment). Otherwise
  // (`key rotate`): a version above the highest present, in a family that has a key
  // (FAILED_PRECONDITION if it has none). Either way the version is the lowest such number whose
  // CKA_ID no secret key of another label on the token uses (ChooseNewVersion): tokens such as NSS
  // softoken keep CKA_ID unique among secret keys and silently replace the older key.
  bool first_version = false;
  // Versions tried before giving up (ABORTED) while other runs keep taking the one this run chose.
  int max_attempts = 5;
  // How long a run waits, after C_GenerateKey, for a contest over its version to be decided before
  // it withdraws its own key (see key_admin.cc).
  std::chrono::milliseconds settle_timeout = kKekSettleTimeout;
};

// A version number a new key did not get, and why (e.g. "CKA_ID 02 is used by family 'other' version 2 (CKA_ID 02)").
struct SkippedVersion {
  uint64_t version = 0;
  std::string why;
};

// The version a new key of family `label` gets: the lowest number above `above` (its highest version;
// 0 for an empty family) whose CKA_ID (VersionToId) no secret key of another label in `token_keys` uses
// and that IdIsWritable. Numbers passed over for another key's CKA_ID are added to `skipped`.
// FAILED_PRECONDITION when no number is left.
StatusOr<uint64_t> ChooseNewVersion(std::string_view label, uint64_t above,
                                    const std::vector<TokenSecretKey>& token_keys,
                                    std::vector<SkippedVersion>& skipped);

struct NewKekVersion {
  KeyVersion version;  // the new version's objects as the token lists them, in the session `admin` holds now
  std::vector<SkippedVersion> lost;     // versions other runs created at the same time; this run withdrew from them
  std::vector<SkippedVersion> skipped;  // numbers passed over because another key on the token has their CKA_ID
  uint64_t highest = 0;                 // the highest version in the family at the read that decided (>= key.version)
};

// Creates the next version of the family `uri` names, safely against other runs doing the same at the
// same moment on the same token, from this host or another (two operators, automation on several
// control-plane nodes sharing a network HSM). No lock spans hosts, so it is optimistic: after
// C_GenerateKey it reads the family again; when another object has the same version, exactly one of
// the two keeps it, the other destroys the objects it created (never anyone else's) and tries the next
// version. An aes-cbc-hmac version has two objects: the contest is decided on the AES keys, and the
// losing run destroys both of its objects. Never leaves one version twice on the token, as long as every creator goes
// through here. The same holds across families for the CKA_ID: a key of another label with the new key's CKA_ID,
// created at the same moment, is a contest too; the run of the family whose label sorts later gives way
// (and the other waits for that, until the settle deadline). A token that replaced the new key by
// another one with its CKA_ID (NSS) counts as a lost contest.
//
// `admin` is a session opened on `uri` (AdminSession::Open) and is the only user of the module in
// this process. Every read after C_GenerateKey is made on a freshly loaded module: the session is
// closed, the module finalised and opened again, because a module may serve a cached object list
// (SoftHSM does: its own C_GenerateKey marks the token as up to date, so it does not see keys other
// processes created a moment before). On return `admin` holds the last session (or is null).
StatusOr<NewKekVersion> CreateNextKekVersion(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri,
                                             NextKekOptions options = {});

// AdminSession::Open, tried again a few times (a few hundred ms in all) while it fails UNAVAILABLE or
// INTERNAL (no such token, C_Login failed with something other than a PIN error, device error). Never
// retries a rejected PIN (PERMISSION_DENIED: the token locks after a few) or a configuration error.
// SoftHSM rewrites its token file at every login, so another process opening the token at that moment
// briefly finds no token, or C_Login fails (CKR_GENERAL_ERROR, CKR_USER_PIN_NOT_INITIALIZED).
StatusOr<std::unique_ptr<AdminSession>> OpenAdminSessionPatiently(const Pkcs11Uri& uri);

// ListKeyFamily, tried again a few times while it fails UNAVAILABLE or INTERNAL: a token that another
// run is changing at that moment (SoftHSM rewrites its token file) may fail a read for a moment.
StatusOr<std::vector<KeyObject>> ListKeyFamilyPatiently(const Session& session, std::string_view label);

// KekFamilyViolation (the family policy the plugin applies too) is in hsm/key_family.h.

// Destroys one token object.
Status DestroyKeyObject(const Session& session, CK_OBJECT_HANDLE object);
// Destroys every object of one version (`objects`, as ListKeyFamily lists them), HMAC keys first: an
// HMAC key without its AES key is a family the plugin refuses, so no reader should ever see one.
Status DestroyVersionObjects(const Session& session, const std::vector<KeyObject>& objects);

}  // namespace trousseau::hsm
