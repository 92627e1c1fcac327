// Provisioning steps on the token (used by trousseau-hsm-init and by tests): create a new version
// of the KEK family on the device.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/admin.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"
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

// For tests of the KEK policy: an AES-256 token key of family `label` with CKA_ID = version and the
// given protection flags, allowed to encrypt and decrypt, so the plugin's refusal can be shown.
struct TestKeyFlags {
  bool sensitive = true;
  bool extractable = false;
  bool is_private = true;
};
StatusOr<CK_OBJECT_HANDLE> GenerateTestAesKey(const Session& session, std::string_view label, uint64_t version,
                                              TestKeyFlags flags);

struct NextKekOptions {
  KekOptions key;
  // `key generate`: version 1 of an empty family and nothing else (ALREADY_EXISTS once the family has
  // a key, also when another run created version 1 at the same moment). Otherwise (`key rotate`):
  // (highest present) + 1, in a family that has a key (FAILED_PRECONDITION if it has none).
  bool first_version = false;
  // Versions tried before giving up (ABORTED) while other runs keep taking the one this run chose.
  int max_attempts = 5;
  // How long a run waits, after C_GenerateKey, for a contest over its version to be decided before
  // it withdraws its own key (see key_admin.cc).
  std::chrono::milliseconds settle_timeout = kKekSettleTimeout;
};

struct NewKekVersion {
  KeyObject key;               // the new version as the token lists it, in the session `admin` holds now
  std::vector<uint64_t> lost;  // versions other runs created at the same time; this run withdrew from them
  uint64_t highest = 0;        // the highest version in the family at the read that decided (>= key.version)
};

// Creates the next version of the family `uri` names, safely against other runs doing the same at the
// same moment on the same token, from this host or another (two operators, automation on several
// control-plane nodes sharing a network HSM). No lock spans hosts, so it is optimistic: after
// C_GenerateKey it reads the family again; when another object has the same version, exactly one of
// the two keeps it, the other destroys the object it created (never anyone else's) and tries the next
// version. Never leaves one version twice on the token, as long as every creator goes through here.
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

// ListKeyFamily, tried again a few times while it fails UNAVAILABLE or INTERNAL: a key another run
// destroys while the family is being read (CKR_OBJECT_HANDLE_INVALID) is no reason to fail.
StatusOr<std::vector<KeyObject>> ListKeyFamilyPatiently(const Session& session, std::string_view label);

// KekFamilyViolation (the family policy the plugin applies too) is in hsm/key_family.h.

// Destroys the token object of one version.
Status DestroyKeyObject(const Session& session, CK_OBJECT_HANDLE object);

}  // namespace trousseau::hsm
