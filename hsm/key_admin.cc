#include "hsm/key_admin.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "core/strings.h"
#include "hsm/capabilities.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/cbc_hmac.h"

namespace trousseau::hsm {

namespace {

// How a concurrent creation is decided (CreateNextKekVersion, Settle).
//
// A run creates version v, then reads the family again on a fresh module, as often as it needs to:
//  - no other object has version v: it keeps v, for good;
//  - another object with version v has a lower fingerprint than its own key: it withdraws (destroys
//    its own objects, found by their fingerprints) and tries again above the highest version present;
//  - every other object with version v has a higher fingerprint: it waits for them to go, and keeps v
//    once they have; if one is still there at the settle deadline, it withdraws after all.
//
// Safe: a run keeps v only after a read, taken after its own key existed, that shows no other v, and a
// kept key is never destroyed. Had runs A and B both kept v, A's read missed B's key, so B created it
// after that read and so after A's key existed; B's read came later still and showed A's key (A kept
// it), so B could not have kept. Withdrawing is always safe. The argument needs reads that show every
// key existing at that moment, hence each read after C_GenerateKey is made on a freshly loaded module
// (Reopen): SoftHSM caches the object list per process, and its own C_GenerateKey marks that cache
// current, hiding keys other processes created just before (seen: both runs kept the same version).
//
// An aes-cbc-hmac version is two objects (AES key, then HMAC key, created in that order and destroyed
// in the opposite one, so no reader sees an HMAC key without its AES key): the contest is over the AES
// keys of version v, and "alone" means no AES key or HMAC key of v but this run's.
//
// Why fingerprints (CipherIdentity: a device operation on the key over fixed input, one value per key,
// the same in every process, and part of what the key_id is made of): both runs must reach opposite
// decisions from what
// each can read, and object handles cannot give that, they mean nothing outside their own session. The
// lower fingerprint may not keep at once, though: the other key may belong to a run that read the
// family before ours existed, saw itself alone and kept it; that run never looks again, so ours waits
// and gives way at the deadline. Without the order both runs would withdraw and meet again, and a run
// reading the family while a doomed key still stood would skip its number.

using Clock = std::chrono::steady_clock;

// The part of a key template every family member shares: an AES-256 secret key on the token, with
// the family's label and CKA_ID = its version.
p11::AttributeTemplate Aes256TokenKey(std::string_view label, std::string_view raw_id) {
  p11::AttributeTemplate key_template;
  key_template.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY})
      .Add(CKA_KEY_TYPE, CK_ULONG{CKK_AES})
      .Add(CKA_VALUE_LEN, CK_ULONG{kAes256KeySize})
      .Add(CKA_LABEL, label)
      .Add(CKA_ID, raw_id)
      .Add(CKA_TOKEN, true);
  return key_template;
}
p11::AttributeTemplate Aes256TokenKey(std::string_view label, uint64_t version) {
  return Aes256TokenKey(label, VersionToId(version));
}

// Keys of other labels on the token whose CKA_ID is `id`.
std::vector<TokenSecretKey> OthersWithId(std::string_view label, std::string_view id,
                                         const std::vector<TokenSecretKey>& token_keys) {
  std::vector<TokenSecretKey> others;
  for (const TokenSecretKey& key : token_keys) {
    if (key.label != label && key.id == id) others.push_back(key);
  }
  return others;
}

// Each key once: both keys of another family's aes-cbc-hmac version describe alike.
std::string Describe(const std::vector<TokenSecretKey>& keys) {
  std::vector<std::string> names;
  for (const TokenSecretKey& key : keys) {
    std::string name = DescribeSecretKey(key);
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(std::move(name));
  }
  return StrJoin(names, " and ");
}

// Worth another try: a token briefly not there or a call that failed (UNAVAILABLE, INTERNAL), not a
// rejected PIN (PERMISSION_DENIED, never retried: the token locks) nor a configuration error.
bool Transient(const Status& s) { return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kInternal; }

void SleepMs(int low, int high) {
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(low, high)(rng)));
}

// "1, 2" (an aes-cbc-hmac version's two objects name it once).
std::string Versions(const std::vector<KeyObject>& keys) {
  std::vector<std::string> versions;
  for (const KeyObject& key : keys) {
    if (versions.empty() || versions.back() != StrCat(key.version)) versions.push_back(StrCat(key.version));
  }
  return StrJoin(versions, ", ");
}

// Closes `admin` (its session, the login, the module) and opens the token again, so that what is read
// next is the token's present state, not a view the module cached.
Status Reopen(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri) {
  admin.reset();
  StatusOr<std::unique_ptr<AdminSession>> reopened = OpenAdminSessionPatiently(uri);
  if (!reopened.ok()) return reopened.status();
  admin = *std::move(reopened);
  return OkStatus();
}

// What names this run's objects across sessions (handles do not survive the reopen).
struct OwnKeys {
  KeyScheme scheme = KeyScheme::kAesGcm;
  std::string cipher;  // CipherIdentity of our AES key
  std::string mac;     // MacIdentity of our HMAC key (aes-cbc-hmac)
};

// One value per AES key, the same in every process: for aes-gcm the version's fingerprint (as the URI
// says who chooses IVs), for aes-cbc-hmac its AES-CBC part. Each computed with the mechanisms of the
// scheme this run creates, which the token has.
StatusOr<std::string> CipherIdentity(const Session& session, KeyScheme scheme, CK_OBJECT_HANDLE key,
                                     const Pkcs11Uri& uri) {
  if (scheme == KeyScheme::kAesCbcHmac) {
    return CbcPadEncryptOfNothing(session, key, "computing the key fingerprint (AES-CBC on the device)");
  }
  StatusOr<Fingerprint> fingerprint =
      VersionFingerprint(session, {.scheme = KeyScheme::kAesGcm, .cipher = key}, uri.gcm_iv_source());
  if (!fingerprint.ok()) return fingerprint.status();
  return std::move(fingerprint->bytes);
}

// The HMAC part of an aes-cbc-hmac fingerprint.
StatusOr<std::string> MacIdentity(const Session& session, CK_OBJECT_HANDLE key) {
  return HmacSha256(session, key, kFingerprintAad, "computing the key fingerprint (HMAC-SHA256 on the device)");
}

enum class Decision { kKeep, kWithdraw };

struct Settled {
  Decision decision = Decision::kWithdraw;
  KeyVersion key;        // kKeep: our version as listed in admin's session
  uint64_t highest = 0;  // kKeep: the family's highest version at that read (another run may have gone higher)
  int lower = 0;         // kWithdraw: how many keys of the version had a lower fingerprint than ours
  std::string taken_by;  // kWithdraw: who keeps the version (or its CKA_ID) instead
};

// Decides whether the keys `mine`, just created as `version`, keep it (see above). kWithdraw has
// destroyed them already. An error means the family could not be read on a fresh module until the
// deadline; the keys may then still be there (the message says so).
StatusOr<Settled> Settle(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri, uint64_t version,
                         const OwnKeys& mine_ids, Clock::time_point deadline) {
  const std::string& label = uri.object_label();
  const std::string id = VersionToId(version);
  for (;;) {
    Status problem = Reopen(admin, uri);
    if (!problem.ok() && !Transient(problem)) return problem;
    if (problem.ok()) {
      StatusOr<std::vector<KeyObject>> keys = ListKeyFamily(admin->session(), label);
      StatusOr<std::vector<TokenSecretKey>> token_keys =
          keys.ok() ? ListTokenSecretKeys(admin->session()) : StatusOr<std::vector<TokenSecretKey>>(keys.status());
      if (keys.ok() && token_keys.ok()) {
        // Keys of other families created with our CKA_ID at the same moment (before it, our choice would
        // have skipped it).
        const std::vector<TokenSecretKey> rivals = OthersWithId(label, id, *token_keys);
        std::optional<KeyObject> mine;      // our AES key
        std::optional<KeyObject> mine_mac;  // our HMAC key (aes-cbc-hmac)
        bool undecided = false;
        bool other_mac = false;  // an HMAC key of the version that is not ours
        int lower = 0;
        int same_version = 0;  // AES keys of the version, ours included
        const bool want_mac = mine_ids.scheme == KeyScheme::kAesCbcHmac;
        for (const KeyObject& key : *keys) {
          if (key.version != version) continue;
          if (RoleOf(key) == KeyRole::kMac) {
            if (!want_mac) {
              other_mac = true;  // another run's aes-cbc-hmac version
              continue;
            }
            StatusOr<std::string> id = MacIdentity(admin->session(), key.handle);
            if (!id.ok()) {
              undecided = true;  // may be going away right now; look again
            } else if (*id == mine_ids.mac && !mine_mac.has_value()) {
              mine_mac = key;
            } else {
              other_mac = true;
            }
            continue;
          }
          ++same_version;
          StatusOr<std::string> fp = CipherIdentity(admin->session(), mine_ids.scheme, key.handle, uri);
          if (!fp.ok()) {
            undecided = true;  // may be going away right now; look again
          } else if (*fp == mine_ids.cipher && !mine.has_value()) {
            mine = key;
          } else if (*fp <= mine_ids.cipher) {
            ++lower;
          }
        }
        if (mine.has_value() && want_mac && !mine_mac.has_value() && !undecided) {
          // Our HMAC key is gone although our AES key is there: the token replaced it by a key of another
          // label created with the same CKA_ID (NSS keeps CKA_ID unique among secret keys). Half a version
          // is no version: ours goes.
          const Status destroyed = DestroyKeyObject(admin->session(), mine->handle);
          if (!destroyed.ok()) return destroyed;
          return Settled{.decision = Decision::kWithdraw,
                         .key = {},
                         .highest = 0,
                         .lower = 0,
                         .taken_by = StrCat(rivals.empty() ? std::string("another key") : Describe(rivals),
                                            ", which replaced this run's HMAC key on the token")};
        }
        const std::string other_key =
            rivals.empty() ? StrCat("another key of family '", label, "' with version ", version) : Describe(rivals);
        if (!mine.has_value()) {
          if (!undecided && (same_version > 0 || !rivals.empty())) {
            // The token replaced our key by one created with the same CKA_ID (NSS keeps CKA_ID unique
            // among secret keys): that key keeps the number; only an HMAC key of ours may be left.
            if (mine_mac.has_value()) {
              if (Status s = DestroyKeyObject(admin->session(), mine_mac->handle); !s.ok()) return s;
            }
            return Settled{.decision = Decision::kWithdraw,
                           .key = {},
                           .highest = 0,
                           .lower = 0,
                           .taken_by = StrCat(other_key, ", which replaced this run's key on the token")};
          }
          problem = InternalError(StrCat("the token does not list the new key '", label, "' version ", version));
        } else {
          const bool alone = !undecided && same_version == 1 && !other_mac && rivals.empty();
          if (alone) {
            KeyVersion kept{.version = version, .scheme = mine_ids.scheme, .cipher = *mine, .mac = {}};
            kept.mac.handle = kNoObject;
            if (mine_mac.has_value()) kept.mac = *mine_mac;
            return Settled{.decision = Decision::kKeep,
                           .key = std::move(kept),
                           .highest = keys->back().version,
                           .lower = 0,
                           .taken_by = {}};
          }
          // Across families fingerprints decide nothing (the other family's key may not be able to make
          // one): the family whose label sorts later gives way at once, the other waits for that.
          const bool yield_to_rival = std::any_of(rivals.begin(), rivals.end(),
                                                  [&](const TokenSecretKey& rival) { return rival.label < label; });
          if (lower > 0 || yield_to_rival || Clock::now() >= deadline) {
            std::vector<KeyObject> ours;
            if (mine_mac.has_value()) ours.push_back(*mine_mac);
            ours.push_back(*mine);
            if (Status s = DestroyVersionObjects(admin->session(), ours); !s.ok()) {
              return Status(s.code(),
                            StrCat("another run created ", other_key, " at the same time as this run's key '", label,
                                   "' version ", version, " (CKA_ID ", HexEncode(id),
                                   "), and destroying this run's copy failed (", s.message(),
                                   "): the token may hold CKA_ID ", HexEncode(id), " twice; check `key list`"));
            }
            return Settled{.decision = Decision::kWithdraw,
                           .key = {},
                           .highest = 0,
                           .lower = lower,
                           .taken_by = StrCat(other_key, ", created at the same time")};
          }
        }
      } else {
        problem = keys.ok() ? token_keys.status() : keys.status();
      }
    }
    if (!problem.ok() && Clock::now() >= deadline) {
      return Status(problem.code(), StrCat(problem.message(), "; version ", version,
                                           " was created but could not be checked against other runs: check "
                                           "`key list` for version ",
                                           version, " twice"));
    }
    SleepMs(15, 40);
  }
}

}  // namespace

StatusOr<CK_OBJECT_HANDLE> GenerateKekVersion(const Session& session, std::string_view label, uint64_t version,
                                              KekOptions options) {
  if (version == 0) return InvalidArgumentError("key versions start at 1");
  p11::AttributeTemplate key_template = Aes256TokenKey(label, version);
  key_template.Add(CKA_PRIVATE, true)
      .Add(CKA_SENSITIVE, true)
      .Add(CKA_EXTRACTABLE, false)
      .Add(CKA_ENCRYPT, true)
      .Add(CKA_DECRYPT, true)
      .Add(CKA_WRAP, false)
      .Add(CKA_UNWRAP, false)
      .Add(CKA_SIGN, false)
      .Add(CKA_VERIFY, false)
      .Add(CKA_DERIVE, false)
      .Add(CKA_MODIFIABLE, options.modifiable);
  return p11::GenerateKey(session, CKM_AES_KEY_GEN, key_template,
                          StrCat("generating AES-256 key '", label, "' version ", version));
}

StatusOr<CK_OBJECT_HANDLE> GenerateMacKeyOfVersion(const Session& session, std::string_view label, uint64_t version,
                                                   KekOptions options) {
  if (version == 0) return InvalidArgumentError("key versions start at 1");
  p11::AttributeTemplate key_template;
  key_template.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY})
      .Add(CKA_KEY_TYPE, CK_ULONG{CKK_GENERIC_SECRET})
      .Add(CKA_VALUE_LEN, CK_ULONG{kHmacKeySize})
      .Add(CKA_LABEL, label)
      .Add(CKA_ID, VersionToId(version))
      .Add(CKA_TOKEN, true)
      .Add(CKA_PRIVATE, true)
      .Add(CKA_SENSITIVE, true)
      .Add(CKA_EXTRACTABLE, false)
      .Add(CKA_SIGN, true)
      .Add(CKA_VERIFY, true)
      .Add(CKA_ENCRYPT, false)
      .Add(CKA_DECRYPT, false)
      .Add(CKA_WRAP, false)
      .Add(CKA_UNWRAP, false)
      .Add(CKA_DERIVE, false)
      .Add(CKA_MODIFIABLE, options.modifiable);
  return p11::GenerateKey(session, CKM_GENERIC_SECRET_KEY_GEN, key_template,
                          StrCat("generating the HMAC key of '", label, "' version ", version));
}

StatusOr<VersionHandles> GenerateVersionKeys(const Session& session, std::string_view label, uint64_t version,
                                             KeyScheme scheme, KekOptions options) {
  StatusOr<CK_OBJECT_HANDLE> cipher = GenerateKekVersion(session, label, version, options);
  if (!cipher.ok()) return cipher.status();
  VersionHandles made{.scheme = scheme, .cipher = *cipher, .mac = kNoObject};
  if (scheme != KeyScheme::kAesCbcHmac) return made;
  // Half a version is no version: without its HMAC key the AES key goes again.
  const auto undo = [&](const Status& why, CK_OBJECT_HANDLE also) {
    std::vector<std::string> failures;
    for (CK_OBJECT_HANDLE object : {also, *cipher}) {
      if (object == kNoObject) continue;
      if (Status s = DestroyKeyObject(session, object); !s.ok()) failures.push_back(std::string(s.message()));
    }
    return Status(why.code(),
                  StrCat(why.message(), "; ",
                         failures.empty() ? StrCat("the AES key of version ", version, " was destroyed again")
                                          : StrCat("destroying what was made of version ", version, " failed too (",
                                                   StrJoin(failures, "; "), "): remove the objects labelled '", label,
                                                   "' with CKA_ID ", HexEncode(VersionToId(version)),
                                                   " with the token's own tools")));
  };
  StatusOr<CK_OBJECT_HANDLE> mac = GenerateMacKeyOfVersion(session, label, version, options);
  if (!mac.ok()) return undo(mac.status(), kNoObject);
  // A token that keeps CKA_ID unique among secret keys (NSS softoken) silently replaces the AES key by
  // the new HMAC key (same handle, or the old one gone): both keys of a version cannot live there.
  StatusOr<p11::AttributeReader> still_aes =
      p11::AttributeReader::Read(session, *cipher, {{CKA_KEY_TYPE, sizeof(CK_KEY_TYPE)}});
  if (*mac != *cipher && !still_aes.ok()) {
    // Cannot tell whether the AES key is still there: nothing of the version stays.
    return undo(
        Status(still_aes.status().code(), StrCat("reading back the AES key of '", label, "' version ", version,
                                                 " after its HMAC key was made: ", still_aes.status().message())),
        *mac);
  }
  if (*mac == *cipher || still_aes->Ulong(CKA_KEY_TYPE) != CK_ULONG{CKK_AES}) {
    const Status replaced = FailedPreconditionError(
        StrCat("the token replaced the AES key of '", label, "' version ", version,
               " by its HMAC key (same label and CKA_ID): it keeps CKA_ID unique among secret keys, as NSS "
               "softoken does, so an aes-cbc-hmac version cannot be stored on it; use --scheme aes-gcm"));
    std::vector<std::string> failures;
    if (Status s = DestroyKeyObject(session, *mac); !s.ok()) failures.push_back(std::string(s.message()));
    if (*mac != *cipher) {
      if (Status s = DestroyKeyObject(session, *cipher); !s.ok()) failures.push_back(std::string(s.message()));
    }
    if (failures.empty()) return Status(replaced.code(), StrCat(replaced.message(), "; nothing was left"));
    return Status(replaced.code(), StrCat(replaced.message(), "; removing what was made failed (",
                                          StrJoin(failures, "; "), "): check `key list`"));
  }
  made.mac = *mac;
  return made;
}

StatusOr<KeyScheme> SchemeForNewVersion(const AdminSession& admin, std::optional<KeyScheme> requested) {
  StatusOr<TokenCapabilities> token = ReadTokenCapabilities(admin.api(), admin.token().slot);
  if (!token.ok()) return token.status();
  if (!requested.has_value()) return SchemeForNewKeys(*token);
  if (Status tpm = RefuseTpm2Pkcs11(token->module); !tpm.ok()) return tpm;
  const std::vector<std::string> missing = MissingForNewKeys(*token, *requested);
  if (missing.empty()) return *requested;
  const std::vector<std::string> offered = token->Offered();
  return FailedPreconditionError(
      StrCat(token->Describe(), " cannot create ", SchemeName(*requested), " key versions: it needs ",
             StrJoin(missing, ", "), ". The token offers ",
             offered.empty() ? std::string("none of the mechanisms trousseau-hsm uses") : StrJoin(offered, ", "),
             ". Nothing was created; --scheme auto takes what the token can do"));
}

StatusOr<KeyScheme> SchemeForNewVersionPatiently(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri,
                                                 std::optional<KeyScheme> requested) {
  constexpr int kTries = 5;
  for (int attempt = 1;; ++attempt) {
    StatusOr<KeyScheme> scheme = SchemeForNewVersion(*admin, requested);
    if (scheme.ok() || attempt == kTries || !Transient(scheme.status())) return scheme;
    // The failure sticks to this module instance (SoftHSM keeps the token it could not read): a fresh one.
    SleepMs(10, 50);
    if (Status s = Reopen(admin, uri); !s.ok()) return s;
  }
}

StatusOr<CK_OBJECT_HANDLE> GenerateTestAesKey(const Session& session, std::string_view label, uint64_t version,
                                              TestKeyFlags flags) {
  p11::AttributeTemplate key_template = Aes256TokenKey(label, version);
  key_template.Add(CKA_SENSITIVE, flags.sensitive)
      .Add(CKA_EXTRACTABLE, flags.extractable)
      .Add(CKA_PRIVATE, flags.is_private)
      .Add(CKA_ENCRYPT, true)
      .Add(CKA_DECRYPT, true);
  return p11::GenerateKey(session, CKM_AES_KEY_GEN, key_template, "C_GenerateKey");
}

StatusOr<CK_OBJECT_HANDLE> GenerateTestAesKeyWithId(const Session& session, std::string_view label,
                                                    std::string_view raw_id) {
  p11::AttributeTemplate key_template = Aes256TokenKey(label, raw_id);
  key_template.Add(CKA_SENSITIVE, true)
      .Add(CKA_EXTRACTABLE, false)
      .Add(CKA_PRIVATE, true)
      .Add(CKA_ENCRYPT, true)
      .Add(CKA_DECRYPT, true)
      .Add(CKA_MODIFIABLE, false);
  return p11::GenerateKey(session, CKM_AES_KEY_GEN, key_template, "C_GenerateKey");
}

StatusOr<uint64_t> ChooseNewVersion(std::string_view label, uint64_t above,
                                    const std::vector<TokenSecretKey>& token_keys,
                                    std::vector<SkippedVersion>& skipped) {
  constexpr uint64_t kLast = std::numeric_limits<uint64_t>::max();
  for (uint64_t version = above; version != kLast;) {
    ++version;
    if (!IdIsWritable(version)) continue;  // an ID the plugin would read as text: never written
    const std::vector<TokenSecretKey> others = OthersWithId(label, VersionToId(version), token_keys);
    if (others.empty()) return version;
    skipped.push_back({.version = version,
                       .why = StrCat("CKA_ID ", HexEncode(VersionToId(version)), " is used by ", Describe(others))});
  }
  return FailedPreconditionError(StrCat("key family '", label, "' has no version number left above ", above));
}

StatusOr<std::unique_ptr<AdminSession>> OpenAdminSessionPatiently(const Pkcs11Uri& uri) {
  constexpr int kTries = 8;
  for (int attempt = 1;; ++attempt) {
    StatusOr<std::unique_ptr<AdminSession>> admin = AdminSession::Open(uri);
    if (admin.ok() || attempt == kTries || !Transient(admin.status())) return admin;
    SleepMs(10, 50);
  }
}

StatusOr<std::vector<KeyObject>> ListKeyFamilyPatiently(const Session& session, std::string_view label) {
  constexpr int kTries = 5;
  for (int attempt = 1;; ++attempt) {
    StatusOr<std::vector<KeyObject>> keys = ListKeyFamily(session, label);
    if (keys.ok() || attempt == kTries || !Transient(keys.status())) return keys;
    SleepMs(5, 20);
  }
}

StatusOr<NewKekVersion> CreateNextKekVersion(std::unique_ptr<AdminSession>& admin, const Pkcs11Uri& uri,
                                             NextKekOptions options) {
  const std::string& label = uri.object_label();
  NewKekVersion result;
  StatusOr<KeyScheme> scheme = SchemeForNewVersionPatiently(admin, uri, options.scheme);
  if (!scheme.ok()) return scheme.status();
  const int attempts = std::max(1, options.max_attempts);
  int lower = 0;  // of the last contest this run lost
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    if (attempt > 1) {
      // Runs that lost the same contest retry one after the other, in fingerprint order, so they do not
      // all meet again on the next version (only timing: a run that misjudges it just meets another
      // contest). Then a fresh module, so the choice sees the versions they took meanwhile.
      SleepMs(10, 30);
      if (lower > 1) std::this_thread::sleep_for(std::chrono::milliseconds(80 * (lower - 1)));
      if (Status s = Reopen(admin, uri); !s.ok()) return s;
    }
    StatusOr<std::vector<KeyObject>> keys = ListKeyFamilyPatiently(admin->session(), label);
    if (!keys.ok()) return keys.status();
    if (options.first_version && !keys->empty() && attempt > 1) {
      // What this run saw may be a rival's first version that is about to be withdrawn too (both can
      // withdraw): once every contest over it is decided, look again.
      std::this_thread::sleep_for(options.settle_timeout + std::chrono::milliseconds(200));
      if (Status s = Reopen(admin, uri); !s.ok()) return s;
      keys = ListKeyFamilyPatiently(admin->session(), label);
      if (!keys.ok()) return keys.status();
    }
    if (options.first_version) {
      if (!keys->empty()) {
        return AlreadyExistsError(StrCat("key family '", label, "' already has version(s) ", Versions(*keys),
                                         "; refusing to generate a first version again. Use `key rotate` for a new "
                                         "version"));
      }
    } else if (keys->empty()) {
      return FailedPreconditionError(
          StrCat("key family '", label, "' has no key yet; create its first version with `key generate`"));
    }
    // Every secret key on the token, whatever its label: the new CKA_ID must be used by none of them.
    StatusOr<std::vector<TokenSecretKey>> token_keys = ListTokenSecretKeys(admin->session());
    if (!token_keys.ok()) return token_keys.status();
    std::vector<SkippedVersion> skipped;
    StatusOr<uint64_t> chosen = ChooseNewVersion(label, keys->empty() ? 0 : keys->back().version, *token_keys, skipped);
    if (!chosen.ok()) return chosen.status();
    const uint64_t version = *chosen;
    for (SkippedVersion& skip : skipped) {
      const bool known = std::any_of(result.skipped.begin(), result.skipped.end(),
                                     [&](const SkippedVersion& s) { return s.version == skip.version; });
      if (!known) result.skipped.push_back(std::move(skip));
    }
    StatusOr<VersionHandles> handles = GenerateVersionKeys(admin->session(), label, version, *scheme, options.key);
    if (!handles.ok()) return handles.status();
    // The fingerprints name our keys across sessions (handles do not survive the reopen) and decide
    // contests. Keys the device cannot fingerprint could never serve as a KEK either.
    OwnKeys mine{.scheme = *scheme, .cipher = {}, .mac = {}};
    Status identified;
    if (StatusOr<std::string> id = CipherIdentity(admin->session(), *scheme, handles->cipher, uri); id.ok()) {
      mine.cipher = *std::move(id);
    } else {
      identified = id.status();
    }
    if (identified.ok() && handles->mac != kNoObject) {
      if (StatusOr<std::string> id = MacIdentity(admin->session(), handles->mac); id.ok()) {
        mine.mac = *std::move(id);
      } else {
        identified = id.status();
      }
    }
    if (!identified.ok()) {
      std::vector<std::string> failures;
      for (CK_OBJECT_HANDLE object : {handles->mac, handles->cipher}) {
        if (object == kNoObject) continue;
        if (Status s = DestroyKeyObject(admin->session(), object); !s.ok())
          failures.push_back(std::string(s.message()));
      }
      return Status(identified.code(),
                    StrCat("the token created ", SchemeName(*scheme), " key '", label, "' version ", version,
                           " but cannot fingerprint it (", identified.message(), "), so the plugin could not use it; ",
                           failures.empty() ? "it was destroyed again"
                                            : StrCat("destroying it failed too (", StrJoin(failures, "; "),
                                                     "): remove it with the token's own tools")));
    }
    StatusOr<Settled> settled = Settle(admin, uri, version, mine, Clock::now() + options.settle_timeout);
    if (!settled.ok()) return settled.status();
    if (settled->decision == Decision::kKeep) {
      result.version = settled->key;
      result.highest = settled->highest;
      return result;
    }
    result.lost.push_back({.version = version, .why = settled->taken_by});
    lower = settled->lower;
  }
  std::vector<std::string> lost;
  for (const SkippedVersion& v : result.lost) lost.push_back(StrCat(v.version));
  return Status(StatusCode::kAborted,
                StrCat("other runs created the version this run chose ", attempts, " times in a row (versions ",
                       StrJoin(lost, ", "), "), each at the same moment; this run created nothing. Run it again"));
}

Status DestroyKeyObject(const Session& session, CK_OBJECT_HANDLE object) { return p11::DestroyObject(session, object); }

Status DestroyVersionObjects(const Session& session, const std::vector<KeyObject>& objects) {
  for (KeyRole role : {KeyRole::kMac, KeyRole::kCipher}) {
    for (const KeyObject& key : objects) {
      if (RoleOf(key) != role) continue;
      if (Status s = DestroyKeyObject(session, key.handle); !s.ok()) return s;
    }
  }
  return OkStatus();
}

}  // namespace trousseau::hsm
