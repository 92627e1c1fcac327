// key generate | rotate | list | retire
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

// "1, 2" (an aes-cbc-hmac version's two objects name it once).
std::string Versions(const std::vector<hsm::KeyObject>& keys) {
  std::vector<std::string> versions;
  for (const hsm::KeyObject& key : keys) {
    if (versions.empty() || versions.back() != StrCat(key.version)) versions.push_back(StrCat(key.version));
  }
  return StrJoin(versions, ", ");
}

// --scheme: nullopt for "auto" (CLI11 admits only the three names).
std::optional<hsm::KeyScheme> RequestedScheme(const std::string& name) {
  if (name == hsm::SchemeName(hsm::KeyScheme::kAesGcm)) return hsm::KeyScheme::kAesGcm;
  if (name == hsm::SchemeName(hsm::KeyScheme::kAesCbcHmac)) return hsm::KeyScheme::kAesCbcHmac;
  return std::nullopt;
}

std::string KeyTypeName(const hsm::KeyObject& key) {
  if (key.key_type == hsm::kAesKeyType) return "AES";
  if (key.key_type == CKK_GENERIC_SECRET) return "HMAC";  // a generic secret, as HMAC keys are typed
  if (key.key_type == CKK_SHA256_HMAC) return "HMAC-SHA256";
  if (key.key_type == hsm::kUnknownKeyType) return "unknown";
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(key.key_type));
  return buf;
}

std::vector<std::string> Usages(const hsm::KeyObject& key) {
  std::vector<std::string> usages;
  if (key.encrypt) usages.push_back("encrypt");
  if (key.decrypt) usages.push_back("decrypt");
  if (key.wrap) usages.push_back("wrap");
  if (key.unwrap) usages.push_back("unwrap");
  if (key.sign) usages.push_back("sign");
  if (key.verify) usages.push_back("verify");
  if (key.derive) usages.push_back("derive");
  return usages;
}

const char* Bool(bool b) { return b ? "true" : "false"; }

// The keys of other labels on the token that have `key`'s CKA_ID, described.
// The family's own keys never count: both keys of an aes-cbc-hmac version carry its CKA_ID on purpose.
std::vector<std::string> SharedIdWith(const std::string& label, const hsm::KeyObject& key,
                                      const std::vector<hsm::TokenSecretKey>& token_keys) {
  std::vector<std::string> shared;
  for (const hsm::TokenSecretKey& other : token_keys) {
    if (other.label == label || other.id != key.id) continue;
    std::string name = hsm::DescribeSecretKey(other);  // another family's two keys of one version read alike
    if (std::find(shared.begin(), shared.end(), name) == shared.end()) shared.push_back(std::move(name));
  }
  return shared;
}

// Each object of a version that breaks the KEK policy, as "why" for the AES key and "the HMAC key: why".
std::string VersionPolicyViolation(const hsm::KeyVersion& version) {
  std::vector<std::string> violations;
  if (version.cipher.handle != hsm::kNoObject) {
    if (std::string why = hsm::KekPolicyViolation(version.cipher); !why.empty()) violations.push_back(why);
  }
  if (version.mac.handle != hsm::kNoObject) {
    if (std::string why = hsm::KekPolicyViolation(version.mac); !why.empty()) {
      violations.push_back(StrCat("the HMAC key: ", why));
    }
  }
  return StrJoin(violations, "; ");
}

std::vector<std::string> VersionPolicyWarnings(const hsm::KeyVersion& version) {
  std::vector<std::string> warnings;
  if (version.cipher.handle != hsm::kNoObject) warnings = hsm::KekPolicyWarnings(version.cipher);
  if (version.mac.handle != hsm::kNoObject) {
    for (const std::string& warning : hsm::KekPolicyWarnings(version.mac)) {
      warnings.push_back(StrCat("the HMAC key: ", warning));
    }
  }
  return warnings;
}

// OpenFamily for generate and rotate, which other runs may be doing at the same moment: opening the
// token is tried again while it is briefly unavailable (OpenAdminSessionPatiently).
int OpenFamilyToChange(const std::string& uri_text, Family& family) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(uri_text);
  if (!uri.ok()) return Fail(kExitUsage, uri.status().message());
  family.uri = *std::move(uri);
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::OpenAdminSessionPatiently(*family.uri);
  if (!admin.ok()) {
    // As OpenFamily: configuration is a usage error; a missing token, a device failure or a rejected
    // PIN is an operation failure.
    const Status& s = admin.status();
    return Fail(IsFailedPrecondition(s) || IsInvalidArgument(s) ? kExitUsage : kExitFailed, s.message());
  }
  family.admin = *std::move(admin);
  StatusOr<std::vector<hsm::KeyObject>> keys = hsm::ListKeyFamilyPatiently(family.session(), family.label());
  if (!keys.ok()) return FailStatus(keys.status());
  family.keys = *std::move(keys);
  return kExitOk;
}

// "65s", "1500ms".
std::string Seconds(std::chrono::milliseconds duration) {
  if (duration.count() % 1000 == 0) return StrCat(duration.count() / 1000, "s");
  return StrCat(duration.count(), "ms");
}

// A key made now must be usable by the plugin's user. SoftHSM stores each object as a file of the
// user who created it: a key made by root in a token the plugin's user owns is a file that user cannot
// read, so the plugin never sees it, while this tool (root) would happily list it. Refused, not
// warned: nothing good comes of that object, and removing it again needs the token's own tools.
int CheckStorageOwner(const Family& family) {
  const StorageOwner storage = TokenStorageOwner(family.uri->module_path(), family.admin->token().Serial());
  if (!storage.known) {
    std::cerr << kToolName << ": note: " << storage.note << "\n";
    return kExitOk;
  }
  if (storage.owner == geteuid()) return kExitOk;
  return Fail(kExitFailed, StrCat("the token's storage ", storage.path, " belongs to uid ", storage.owner,
                                  ", but this runs as uid ", geteuid(), ": a key created now would be readable by uid ",
                                  geteuid(), " only, and a plugin running as uid ", storage.owner,
                                  " would never see it. Nothing was created; run this command as uid ", storage.owner,
                                  " (e.g. runuser -u <that user> -- ", kToolName, " ...)"));
}

// Refuses when the plugin would refuse the family as a whole: no version of it, new or old, would be
// active, whatever this tool prints.
int CheckFamilyIsAccepted(const Family& family) {
  if (std::string why = hsm::KekFamilyViolation(family.keys); !why.empty()) {
    return Fail(kExitFailed, StrCat("the plugin refuses ", family.Describe(), " as a whole (", why,
                                    "), so a new version would never become active. Nothing was created; remove "
                                    "or replace the offending object with the token's own tools first (see `",
                                    kToolName, " key list`)"));
  }
  return kExitOk;
}

// Creates the next version (1 for `key generate`), checks what the token made of it and what a plugin
// will make of the family, and prints its key_id. Runs at the same moment (another operator,
// automation on another control-plane node sharing the HSM) each get their own version: see
// CreateNextKekVersion. A rotation is confirmed with the running plugin unless --no-wait.
// What the operator does next, after a created version (text output only).
void PrintNextSteps(const KeyOptions& options, bool rotation, uint64_t version, uint64_t highest_version,
                    bool confirmed, const std::string& socket) {
  const bool highest = highest_version <= version;
  if (rotation && !highest) {
    std::cout << "Another run created version " << highest_version << " at the same time; that one is the active key.\n"
              << "Check with `" << kToolName << " key list`. See docs/rotation.md.\n";
  } else if (rotation && confirmed) {
    std::cout << "The plugin on " << socket << " now reports this key_id: version " << version
              << " is the active key.\n"
              << "Re-encrypt existing Secrets (kubectl get secrets -A -o json | kubectl replace -f -) before\n"
              << "retiring older versions. See docs/rotation.md.\n";
  } else if (rotation) {
    std::cout
        << "Version " << version << " is the highest version and the plugin's policy accepts the family, so a\n"
        << "running trousseau-hsm makes it active on SIGHUP or within its --key-refresh-interval (60s by default).\n"
        << "Not confirmed with a running plugin ("
        << (options.no_wait ? "--no-wait" : StrCat("no --socket, and no ", kDefaultPluginSocket)) << "):\n"
        << "check its Status key_id (trousseauctl status). Then re-encrypt existing Secrets\n"
        << "(kubectl get secrets -A -o json | kubectl replace -f -) before retiring older versions.\n"
        << "See docs/rotation.md.\n";
  } else {
    std::cout << "Start (or SIGHUP) trousseau-hsm with this --pkcs11-uri; its Status reports this key_id.\n";
  }
}

// Version numbers the new key did not get because another key on the token has their CKA_ID.
void PrintSkipped(const hsm::NewKekVersion& made, uint64_t version) {
  if (made.skipped.empty()) return;
  std::cout << "skipped version(s) ";
  for (size_t i = 0; i < made.skipped.size(); ++i) std::cout << (i ? ", " : "") << made.skipped[i].version;
  std::cout << ": a key of another label on the token has that CKA_ID, and tokens such as NSS softoken keep\n"
            << "CKA_ID unique among secret keys (a new key would silently replace that one). Version " << version
            << " is the lowest number free:\n";
  for (const hsm::SkippedVersion& skip : made.skipped) std::cout << "  " << skip.version << ": " << skip.why << "\n";
}

// The family's label must name the family only. Secret keys with it that are no KEK family member
// are refused (ListKeyFamily already refuses a CKA_ID that is no version, with the bytes); other
// objects with the label are no part of the family and are only noted.
int CheckLabelIsTheFamilys(const Family& family, bool first_version) {
  if (first_version && !family.keys.empty()) {
    if (std::string why = hsm::KekFamilyViolation(family.keys); !why.empty()) {
      return Fail(kExitFailed,
                  StrCat("the label '", family.label(), "' is already used by secret key(s) on ",
                         family.uri->token_description(), " that are no KEK (", why,
                         "); the plugin would read them as versions of this family. Nothing was created; choose "
                         "another object= label, or remove those keys with the token's own tools"));
    }
  }
  StatusOr<size_t> others = hsm::CountOtherObjectsLabelled(family.session(), family.label());
  if (others.ok() && *others > 0) {
    std::cerr << kToolName << ": note: " << *others << " object(s) on " << family.uri->token_description()
              << " that are not secret keys (certificates, data objects, key pairs) are labelled '" << family.label()
              << "' too. The plugin ignores them, but removing \"every object labelled " << family.label()
              << "\" with another tool would take the key family with them\n";
  }
  return kExitOk;
}

int CreateVersion(Family& family, const KeyOptions& options, bool rotation) {
  if (int rc = CheckStorageOwner(family); rc != kExitOk) return rc;
  hsm::NextKekOptions next;
  next.first_version = !rotation;
  next.scheme = RequestedScheme(options.scheme);
  // The token decides what it can make: said before anything is created, as configuration (exit 2).
  StatusOr<hsm::KeyScheme> scheme = hsm::SchemeForNewVersionPatiently(family.admin, *family.uri, next.scheme);
  if (!scheme.ok())
    return Fail(IsFailedPrecondition(scheme.status()) ? kExitUsage : kExitFailed,
                std::string(scheme.status().message()));
  next.scheme = *scheme;
  const std::vector<hsm::KeyVersion> before = hsm::GroupKeyVersions(family.keys);
  StatusOr<hsm::NewKekVersion> made = hsm::CreateNextKekVersion(family.admin, *family.uri, next);
  if (!made.ok()) return FailStatus(made.status());
  const uint64_t version = made->version.version;
  for (const hsm::SkippedVersion& lost : made->lost) {
    std::cerr << kToolName << ": version " << lost.version << " of " << family.Describe() << " went to " << lost.why
              << "; this run left it and took another number\n";
  }
  // The new key as the token lists it, read back as the plugin will, so a token that ignored part of
  // the template is caught now.
  const hsm::KeyObject* created = &made->version.cipher;
  if (std::string why = VersionPolicyViolation(made->version); !why.empty()) {
    return Fail(kExitFailed,
                StrCat("the token created version ", version, " but the plugin would refuse it: ", why,
                       ". The token did not apply the requested template; remove the object with the token's own "
                       "tools (it is the active version, so `key retire` will not)"));
  }
  StatusOr<std::string> key_id =
      hsm::KeyIdOf(family.session(), family.label(), made->version, family.uri->gcm_iv_source());
  if (!key_id.ok()) return FailStatus(key_id.status());
  const std::string_view scheme_name = hsm::SchemeName(made->version.scheme);
  if (!before.empty() && before.back().scheme != made->version.scheme && !options.json) {
    // Never a silent change: the plugin serves both schemes side by side, but the operator should know.
    std::cerr << kToolName << ": note: version " << version << " is " << scheme_name << ", version "
              << before.back().version << " before it was " << hsm::SchemeName(before.back().scheme) << " (--scheme "
              << options.scheme << " on " << family.uri->token_description() << "); the plugin serves both\n";
  }
  // The family as the plugin's next refresh will read it: another tool may have added a key the
  // plugin refuses meanwhile. (Duplicates seen now may be other runs' contests still being decided;
  // the check before creating caught lasting ones.)
  StatusOr<std::vector<hsm::KeyObject>> now = hsm::ListKeyFamilyPatiently(family.session(), family.label());
  if (!now.ok()) return FailStatus(now.status());
  const std::string family_violation = hsm::KekFamilyViolation(*now, /*count_duplicates=*/false);
  // Another run may have kept a higher version at the same moment: then that one is active.
  const bool highest = made->highest <= version;
  const bool active = highest && family_violation.empty();

  // Confirm with the running plugin: its Status must report the new key_id.
  std::optional<std::string> socket;
  if (rotation && active && !options.no_wait) {
    socket = options.socket.empty() ? DefaultPluginSocket() : std::optional<std::string>(options.socket);
  }
  std::optional<PluginWait> waited;
  if (socket) waited = WaitForPluginKeyId(*socket, *key_id, options.wait_timeout);
  const bool confirmed = waited && waited->confirmed;

  if (options.json) {
    std::cout << "{\"version\":" << version << ",\"key_id\":" << JsonQuote(*key_id)
              << ",\"id\":" << JsonQuote(Hex(created->id)) << ",\"label\":" << JsonQuote(family.label())
              << ",\"scheme\":" << JsonQuote(std::string(scheme_name)) << ",\"active\":" << (active ? "true" : "false")
              << ",\"skipped_versions\":[";
    for (size_t i = 0; i < made->skipped.size(); ++i) {
      std::cout << (i ? "," : "") << "{\"version\":" << made->skipped[i].version
                << ",\"why\":" << JsonQuote(made->skipped[i].why) << "}";
    }
    std::cout << "]";
    if (waited) std::cout << ",\"plugin_confirmed\":" << (confirmed ? "true" : "false");
    std::cout << "}\n";
  } else {
    PrintSkipped(*made, version);
    if (made->version.scheme == hsm::KeyScheme::kAesCbcHmac) {
      std::cout << "created version " << version << " of " << family.Describe() << ": " << scheme_name
                << ", an AES-256 key (encrypt/decrypt only) and an HMAC-SHA256 key (256-bit generic secret, "
                   "sign/verify only), both sensitive, never extractable, CKA_ID "
                << Hex(created->id) << "\n";
    } else {
      std::cout << "created version " << version << " of " << family.Describe() << ": " << scheme_name
                << ", AES-256, sensitive, never extractable, encrypt/decrypt only, CKA_ID " << Hex(created->id) << "\n";
    }
    std::cout << "key_id: " << *key_id << "\n";
  }
  if (!family_violation.empty()) {
    return Fail(kExitFailed, StrCat("version ", version, " was created, but the plugin now refuses ", family.Describe(),
                                    " as a whole (", family_violation,
                                    "): it will not become active. Remove or "
                                    "replace the offending object with the token's own tools"));
  }
  if (waited && !confirmed) {
    const std::string seen =
        waited->last_error.empty()
            ? StrCat("its Status still reports key_id ", waited->last_key_id.empty() ? "(none)" : waited->last_key_id)
            : StrCat("its Status call fails: ", waited->last_error);
    return Fail(kExitFailed,
                StrCat("version ", version, " was created, but the plugin on ", *socket,
                       " did not report its key_id within ", Seconds(options.wait_timeout), ": ", seen,
                       ". Send the plugin SIGHUP (or wait for its --key-refresh-interval) and check with trousseauctl "
                       "status; if it never reports it, the plugin uses another token or family, or runs as a user "
                       "that cannot see this key. --wait-timeout waits longer, --no-wait does not ask"));
  }
  if (options.json) return kExitOk;
  PrintNextSteps(options, rotation, version, made->highest, confirmed, socket.value_or(""));
  return kExitOk;
}

}  // namespace

int KeyGenerate(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamilyToChange(options.pkcs11_uri, family); rc != kExitOk) return rc;
  if (int rc = CheckLabelIsTheFamilys(family, /*first_version=*/true); rc != kExitOk) return rc;
  if (!family.keys.empty()) {
    return Fail(kExitFailed, StrCat(family.Describe(), " already has version(s) ", Versions(family.keys),
                                    "; refusing to generate a first version again. Use `key rotate` for a new "
                                    "version"));
  }
  return CreateVersion(family, options, /*rotation=*/false);
}

int KeyRotate(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamilyToChange(options.pkcs11_uri, family); rc != kExitOk) return rc;
  if (family.keys.empty()) {
    return Fail(kExitFailed, StrCat(family.Describe(), " has no key yet; create version 1 with `key generate`"));
  }
  if (family.keys.back().version == std::numeric_limits<uint64_t>::max()) {
    return Fail(kExitFailed, "the highest key version is already the largest possible one");
  }
  if (hsm::KekFamilyViolation(family.keys, /*count_duplicates=*/false).empty() &&
      !hsm::KekFamilyViolation(family.keys).empty()) {
    // A version held twice may be other runs' contest, decided within their settle time (see
    // CreateNextKekVersion): read again once it must be over before calling it lasting.
    std::this_thread::sleep_for(2 * hsm::kKekSettleTimeout);
    StatusOr<std::vector<hsm::KeyObject>> again = hsm::ListKeyFamilyPatiently(family.session(), family.label());
    if (!again.ok()) return FailStatus(again.status());
    family.keys = *std::move(again);
  }
  if (int rc = CheckFamilyIsAccepted(family); rc != kExitOk) return rc;
  if (int rc = CheckLabelIsTheFamilys(family, /*first_version=*/false); rc != kExitOk) return rc;
  return CreateVersion(family, options, /*rotation=*/true);
}

namespace {

// One entry of `key list`: an AES key with the HMAC key of its version (aes-cbc-hmac), or an HMAC key
// the plugin cannot pair with an AES key (none of its version, or a second one), shown on its own.
struct ListedVersion {
  hsm::KeyVersion version;  // cipher.handle kNoObject for an HMAC key on its own
  std::string unpaired;     // why an HMAC key stands alone, else ""
};

std::vector<ListedVersion> ListedVersions(const std::vector<hsm::KeyObject>& keys) {
  std::vector<ListedVersion> listed;
  std::vector<const hsm::KeyObject*> paired;  // the HMAC keys an AES key's entry shows
  for (const hsm::KeyObject& key : keys) {
    if (hsm::RoleOf(key) != hsm::KeyRole::kCipher) continue;
    ListedVersion entry;
    entry.version.version = key.version;
    entry.version.cipher = key;
    entry.version.mac.handle = hsm::kNoObject;
    for (const hsm::KeyObject& mac : keys) {
      if (hsm::RoleOf(mac) != hsm::KeyRole::kMac || mac.version != key.version) continue;
      entry.version.scheme = hsm::KeyScheme::kAesCbcHmac;
      entry.version.mac = mac;  // the first one (a second one is listed apart)
      if (std::find(paired.begin(), paired.end(), &mac) == paired.end()) paired.push_back(&mac);
      break;
    }
    listed.push_back(std::move(entry));
  }
  for (const hsm::KeyObject& key : keys) {
    if (hsm::RoleOf(key) != hsm::KeyRole::kMac || std::find(paired.begin(), paired.end(), &key) != paired.end()) {
      continue;
    }
    const bool has_aes = std::any_of(listed.begin(), listed.end(),
                                     [&](const ListedVersion& v) { return v.version.version == key.version; });
    ListedVersion entry;
    entry.version.version = key.version;
    entry.version.scheme = hsm::KeyScheme::kAesCbcHmac;
    entry.version.cipher.handle = hsm::kNoObject;
    entry.version.mac = key;
    entry.unpaired = has_aes ? StrCat("a second HMAC key with version ", key.version)
                             : StrCat("an HMAC key with no AES key of version ", key.version,
                                      " beside it (an aes-cbc-hmac version needs both)");
    listed.push_back(std::move(entry));
  }
  std::stable_sort(listed.begin(), listed.end(), [](const ListedVersion& a, const ListedVersion& b) {
    return a.version.version < b.version.version;
  });
  return listed;
}

// The attributes of one object as JSON members (no braces).
std::string AttributesJson(const hsm::KeyObject& key) {
  std::ostringstream out;
  out << "\"key_type\":" << JsonQuote(KeyTypeName(key)) << ",\"bits\":" << key.value_len * 8
      << ",\"sensitive\":" << Bool(key.sensitive) << ",\"extractable\":" << Bool(key.extractable)
      << ",\"always_sensitive\":" << Bool(key.always_sensitive)
      << ",\"never_extractable\":" << Bool(key.never_extractable) << ",\"local\":" << Bool(key.local)
      << ",\"modifiable\":" << Bool(key.modifiable) << ",\"usages\":[";
  const std::vector<std::string> usages = Usages(key);
  for (size_t i = 0; i < usages.size(); ++i) out << (i ? "," : "") << JsonQuote(usages[i]);
  out << "]";
  return out.str();
}

// The key, attributes and usages lines of one object; `hmac` names them as the HMAC key's.
std::string AttributesText(const hsm::KeyObject& key, bool hmac) {
  const char* key_label = hmac ? "  hmac key:   " : "  key:        ";
  const char* attributes_label = hmac ? "  hmac attrs: " : "  attributes: ";
  const char* usages_label = hmac ? "  hmac usages:" : "  usages:     ";
  std::ostringstream out;
  out << key_label << KeyTypeName(key) << "-" << key.value_len * 8 << "\n"
      << attributes_label << (key.sensitive ? "sensitive" : "NOT sensitive") << ", "
      << (key.extractable ? "EXTRACTABLE" : "not extractable") << ", "
      << (key.always_sensitive ? "always sensitive" : "not always sensitive") << ", "
      << (key.never_extractable ? "never extractable" : "was extractable") << ", "
      << (key.local ? "generated on the token" : "not generated on the token") << ", "
      << (key.modifiable ? "modifiable" : "not modifiable") << "\n"
      << usages_label << (hmac ? " " : "") << StrJoin(Usages(key), ", ") << "\n";
  return out.str();
}

// {"known":true,"uses":N,"timestamp":T|null} or {"known":false,"why":"..."}.
std::string LastUseJson(const VersionUseSeen& use) {
  if (!use.known) return StrCat("{\"known\":false,\"why\":", JsonQuote(use.why_unknown), "}");
  return StrCat("{\"known\":true,\"uses\":", use.uses,
                ",\"timestamp\":", use.last_use > 0 ? StrCat(static_cast<int64_t>(use.last_use)) : std::string("null"),
                "}");
}

std::string LastUseText(const VersionUseSeen& use, double plugin_started) {
  if (!use.known) return StrCat("unknown: ", use.why_unknown);
  if (use.last_use <= 0) {
    return plugin_started > 0 ? StrCat("none since the plugin started ", AgoText(plugin_started))
                              : std::string("none since the plugin started");
  }
  return StrCat(UtcTime(use.last_use), " (", AgoText(use.last_use), "), ", use.uses,
                " Encrypt/Decrypt(s) since the plugin started");
}

}  // namespace

int KeyList(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;
  const uint64_t active = family.keys.empty() ? 0 : family.keys.back().version;
  const std::vector<ListedVersion> versions = ListedVersions(family.keys);
  std::ostringstream out;
  if (options.json) out << "{";
  if (!options.json) {
    size_t count = 0;
    for (size_t i = 0; i < versions.size(); ++i) {
      if (i == 0 || versions[i].version.version != versions[i - 1].version.version) ++count;
    }
    out << family.Describe() << ": " << count << " version(s)";
    if (!family.keys.empty()) out << ", active version " << active;
    out << "\n";
  }
  // The running plugin's view of each version's use, read once (a plugin that cannot be reached is said
  // so, and the listing goes on).
  std::optional<PluginUse> plugin;
  if (!options.plugin_metrics.empty()) {
    plugin = ReadPluginUse(options.plugin_metrics, std::chrono::seconds(3));
    if (options.json) {
      out << "\"plugin\":{\"listen\":" << JsonQuote(plugin->listen) << ",\"reached\":" << Bool(plugin->reached);
      if (!plugin->reached) out << ",\"error\":" << JsonQuote(plugin->error);
      if (plugin->started > 0) out << ",\"started\":" << StrCat(static_cast<int64_t>(plugin->started));
      out << "},";
    } else if (plugin->reached) {
      out << "plugin at " << plugin->listen << ": "
          << (plugin->started > 0
                  ? StrCat("running since ", UtcTime(plugin->started), " (", AgoText(plugin->started), ")")
                  : std::string("reached"))
          << "; 'last use' is what this plugin served since then (one node: ask each control-plane node's "
             "plugin)\n";
    } else {
      out << "plugin at " << plugin->listen << ": NOT REACHED (" << plugin->error << "); last use unknown\n";
    }
  }
  if (options.json) out << "\"keys\":[";
  bool first = true;
  StatusOr<std::vector<hsm::TokenSecretKey>> listed_token_keys = hsm::ListTokenSecretKeys(family.session());
  if (!listed_token_keys.ok()) return FailStatus(listed_token_keys.status());
  const std::vector<hsm::TokenSecretKey>& token_keys = *listed_token_keys;
  for (const ListedVersion& entry : versions) {
    const hsm::KeyVersion& version = entry.version;
    const bool has_cipher = version.cipher.handle != hsm::kNoObject;
    const hsm::KeyObject& key = has_cipher ? version.cipher : version.mac;
    StatusOr<std::string> key_id =
        has_cipher ? hsm::KeyIdOf(family.session(), family.label(), version, family.uri->gcm_iv_source())
                   : StatusOr<std::string>(FailedPreconditionError(entry.unpaired));
    std::string violation = VersionPolicyViolation(version);
    if (!entry.unpaired.empty())
      violation = violation.empty() ? entry.unpaired : StrCat(entry.unpaired, "; ", violation);
    // The same judgement as selftest: what the plugin accepts but a KEK should not be is a warning.
    const std::vector<std::string> warnings = VersionPolicyWarnings(version);
    const std::vector<std::string> shared = SharedIdWith(family.label(), key, token_keys);
    const bool is_active = key.version == active;
    const bool with_mac = has_cipher && version.mac.handle != hsm::kNoObject;
    const std::string scheme(hsm::SchemeName(version.scheme));
    const std::optional<VersionUseSeen> use =
        plugin ? std::optional<VersionUseSeen>(plugin->Of(key.version, key_id.ok() ? *key_id : "")) : std::nullopt;
    if (options.json) {
      if (!first) out << ",";
      first = false;
      out << "{\"version\":" << key.version << ",\"key_id\":" << JsonQuote(key_id.ok() ? *key_id : "")
          << ",\"id\":" << JsonQuote(Hex(key.id)) << ",\"active\":" << Bool(is_active)
          << ",\"scheme\":" << JsonQuote(scheme) << "," << AttributesJson(key);
      if (with_mac) out << ",\"hmac_key\":{" << AttributesJson(version.mac) << "}";
      out << ",\"policy_ok\":" << Bool(violation.empty()) << ",\"policy_warnings\":[";
      for (size_t i = 0; i < warnings.size(); ++i) out << (i ? "," : "") << JsonQuote(warnings[i]);
      out << "],\"cka_id_shared_with\":[";
      for (size_t i = 0; i < shared.size(); ++i) out << (i ? "," : "") << JsonQuote(shared[i]);
      out << "]";
      if (!violation.empty()) out << ",\"policy_violation\":" << JsonQuote(violation);
      if (!key_id.ok()) out << ",\"key_id_error\":" << JsonQuote(key_id.status().message());
      if (use) out << ",\"last_use\":" << LastUseJson(*use);
      out << "}";
      continue;
    }
    out << "\nversion " << key.version << (is_active ? "  (active: new encryptions use it)" : "") << "\n"
        << "  key_id:     " << (key_id.ok() ? *key_id : StrCat("(unknown: ", key_id.status().message(), ")")) << "\n"
        << "  scheme:     " << scheme
        << (version.scheme == hsm::KeyScheme::kAesCbcHmac ? " (AES-256-CBC and HMAC-SHA256, two keys)"
                                                          : " (one AES-256 key)")
        << "\n"
        << "  CKA_ID:     " << Hex(key.id) << "\n"
        << AttributesText(key, /*hmac=*/!has_cipher);
    if (with_mac) out << AttributesText(version.mac, /*hmac=*/true);
    out << "  policy:     "
        << (!violation.empty() ? StrCat("REFUSED by the plugin: ", violation)
            : warnings.empty() ? std::string("ok")
                               : StrCat("accepted by the plugin, with ", warnings.size(),
                                        " warning(s) (selftest warns, selftest --strict fails)"))
        << "\n";
    if (use) out << "  last use:   " << LastUseText(*use, plugin->started) << "\n";
    for (const std::string& warning : warnings) out << "  WARN        " << warning << "\n";
    for (const std::string& other : shared) {
      out << "  WARN        CKA_ID " << Hex(key.id) << " is also used by " << other
          << ": a token that keeps CKA_ID unique (NSS) may replace one by the other\n";
    }
  }
  if (options.json) out << "]}\n";
  std::cout << out.str();
  return kExitOk;
}

int KeyRetire(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;
  // Every object of the version: its AES key and, for aes-cbc-hmac, its HMAC key.
  std::vector<hsm::KeyObject> targets;
  for (const hsm::KeyObject& key : family.keys) {
    if (key.version == options.version) targets.push_back(key);
  }
  if (targets.empty()) {
    return Fail(kExitFailed, StrCat(family.Describe(), " has no version ", options.version, " (present: ",
                                    family.keys.empty() ? std::string("none") : Versions(family.keys), ")"));
  }
  const uint64_t active = family.keys.back().version;
  if (options.version == active) {
    return Fail(kExitFailed,
                StrCat("version ", options.version, " is the active (highest) version of ", family.Describe(),
                       " and can never be retired: new encryptions use it. Rotate first (`key rotate`), "
                       "re-encrypt, then retire the old version"));
  }
  const std::vector<hsm::KeyVersion> grouped = hsm::GroupKeyVersions(targets);
  StatusOr<std::string> key_id =
      grouped.empty() ? StatusOr<std::string>(NotFoundError("no AES key"))
                      : hsm::KeyIdOf(family.session(), family.label(), grouped.front(), family.uri->gcm_iv_source());
  const std::string name = key_id.ok() ? StrCat("key_id ", *key_id) : StrCat("version ", options.version);
  const bool extractable =
      std::any_of(targets.begin(), targets.end(), [](const hsm::KeyObject& k) { return k.extractable; });
  const std::string objects = targets.size() == 1 ? std::string("the key") : StrCat("its ", targets.size(), " keys");
  if (!options.yes) {
    std::cerr << kToolName << ": not retiring without --yes. Retiring destroys version " << options.version << " of "
              << family.Describe() << " (" << name << ", " << objects << ") for good"
              << (extractable ? "" : ": it cannot leave the token, so no copy of it exists") << ".\n"
              << "Everything still encrypted under " << name << " becomes unreadable: kube-apiserver gets NOT_FOUND\n"
              << "from the plugin and cannot read those objects any more.\n"
              << "Re-encrypt first, so every object is rewritten under the active version " << active << ":\n"
              << "  kubectl get secrets -A -o json | kubectl replace -f -\n"
              << "(and the same for every other resource your EncryptionConfiguration encrypts), make sure it\n"
              << "completed for all objects (docs/rotation.md), then run this command again with --yes.\n";
    return kExitFailed;
  }
  // HMAC keys first: no reader ever sees an HMAC key without its AES key (a family the plugin refuses).
  if (Status s = hsm::DestroyVersionObjects(family.session(), targets); !s.ok()) return FailStatus(s);
  std::cout << "retired version " << options.version << " of " << family.Describe() << " (" << name << "): "
            << (targets.size() == 1 ? std::string("the key is destroyed")
                                    : StrCat("its ", targets.size(), " keys are destroyed"))
            << ".\n"
            << "Send SIGHUP to trousseau-hsm (or wait for its --key-refresh-interval) so it drops the version;\n"
            << "decrypting anything still under it now fails with NOT_FOUND. Active version: " << active << ".\n"
            << "A running plugin counts this as a vanished version (an error line naming " << name << ",\n"
            << "trousseau_hsm_key_versions_vanished_total): that is this retirement, expected.\n";
  return kExitOk;
}

}  // namespace trousseau::init
