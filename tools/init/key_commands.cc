// key generate | rotate | list | retire
#include <cstdio>
#include <iostream>
#include <limits>
#include <sstream>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

std::string Versions(const std::vector<hsm::KeyObject>& keys) {
  std::vector<std::string> versions;
  for (const hsm::KeyObject& key : keys) versions.push_back(StrCat(key.version));
  return StrJoin(versions, ", ");
}

std::string KeyTypeName(const hsm::KeyObject& key) {
  if (key.key_type == CKK_AES) return "AES";
  if (key.key_type == static_cast<CK_KEY_TYPE>(-1)) return "unknown";
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

// Creates the next version (1 for `key generate`), checks what the token made of it, and prints its
// key_id. Runs at the same moment (another operator, automation on another control-plane node sharing
// the HSM) each get their own version: see CreateNextKekVersion.
int CreateVersion(Family& family, bool json, bool rotation) {
  hsm::NextKekOptions next;
  next.first_version = !rotation;
  StatusOr<hsm::NewKekVersion> made = hsm::CreateNextKekVersion(family.admin, *family.uri, next);
  if (!made.ok()) return FailStatus(made.status());
  const uint64_t version = made->key.version;
  for (uint64_t lost : made->lost) {
    std::cerr << kToolName << ": another run created version " << lost << " of " << family.Describe()
              << " at the same time; this run left it to that run and took the next version\n";
  }
  // The new key as the token lists it, read back as the plugin will, so a token that ignored part of
  // the template is caught now.
  const hsm::KeyObject* created = &made->key;
  if (std::string why = hsm::KekPolicyViolation(*created); !why.empty()) {
    return Fail(kExitFailed, StrCat("the token created version ", version, " but the plugin would refuse it: ", why,
                                    ". The token did not apply the requested template; remove the object with the token's own "
                                    "tools (it is the active version, so `key retire` will not)"));
  }
  StatusOr<std::string> key_id = hsm::KeyIdOf(family.session(), family.label(), *created);
  if (!key_id.ok()) return FailStatus(key_id.status());
  // Another run may have kept a higher version at the same moment: then that one is active.
  const bool active = made->highest <= version;
  if (json) {
    std::cout << "{\"version\":" << version << ",\"key_id\":" << JsonQuote(*key_id)
              << ",\"id\":" << JsonQuote(Hex(created->id)) << ",\"label\":" << JsonQuote(family.label())
              << ",\"active\":" << (active ? "true" : "false") << "}\n";
    return kExitOk;
  }
  std::cout << "created version " << version << " of " << family.Describe()
            << ": AES-256, sensitive, never extractable, encrypt/decrypt only, CKA_ID " << Hex(created->id) << "\n"
            << "key_id: " << *key_id << "\n";
  if (rotation && !active) {
    std::cout << "Another run created version " << made->highest << " at the same time; that one is the active key.\n"
              << "Check with `" << kToolName << " key list`. See docs/rotation.md.\n";
  } else if (rotation) {
    std::cout << "Version " << version << " is now the highest version, so it becomes the active key: a running\n"
              << "trousseau-hsm picks it up on SIGHUP or within its --key-refresh-interval (60s by default);\n"
              << "check with `" << kToolName << " key list` and the plugin's Status key_id. Then re-encrypt\n"
              << "existing Secrets (kubectl get secrets -A -o json | kubectl replace -f -) before retiring\n"
              << "older versions. See docs/rotation.md.\n";
  } else {
    std::cout << "Start (or SIGHUP) trousseau-hsm with this --pkcs11-uri; its Status reports this key_id.\n";
  }
  return kExitOk;
}

}  // namespace

int KeyGenerate(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamilyToChange(options.pkcs11_uri, family); rc != kExitOk) return rc;
  if (!family.keys.empty()) {
    return Fail(kExitFailed, StrCat(family.Describe(), " already has version(s) ", Versions(family.keys),
                                    "; refusing to generate version 1 again. Use `key rotate` for a new version"));
  }
  return CreateVersion(family, options.json, /*rotation=*/false);
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
  return CreateVersion(family, options.json, /*rotation=*/true);
}

int KeyList(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;
  const uint64_t active = family.keys.empty() ? 0 : family.keys.back().version;
  std::ostringstream out;
  if (options.json) out << "{\"keys\":[";
  if (!options.json) {
    out << family.Describe() << ": " << family.keys.size() << " version(s)";
    if (!family.keys.empty()) out << ", active version " << active;
    out << "\n";
  }
  bool first = true;
  for (const hsm::KeyObject& key : family.keys) {
    StatusOr<std::string> key_id = hsm::KeyIdOf(family.session(), family.label(), key);
    const std::string violation = hsm::KekPolicyViolation(key);
    const bool is_active = key.version == active;
    if (options.json) {
      if (!first) out << ",";
      first = false;
      out << "{\"version\":" << key.version << ",\"key_id\":" << JsonQuote(key_id.ok() ? *key_id : "")
          << ",\"id\":" << JsonQuote(Hex(key.id)) << ",\"active\":" << Bool(is_active)
          << ",\"key_type\":" << JsonQuote(KeyTypeName(key)) << ",\"bits\":" << key.value_len * 8
          << ",\"sensitive\":" << Bool(key.sensitive) << ",\"extractable\":" << Bool(key.extractable)
          << ",\"always_sensitive\":" << Bool(key.always_sensitive)
          << ",\"never_extractable\":" << Bool(key.never_extractable) << ",\"local\":" << Bool(key.local)
          << ",\"modifiable\":" << Bool(key.modifiable) << ",\"usages\":[";
      const std::vector<std::string> usages = Usages(key);
      for (size_t i = 0; i < usages.size(); ++i) out << (i ? "," : "") << JsonQuote(usages[i]);
      out << "],\"policy_ok\":" << Bool(violation.empty());
      if (!violation.empty()) out << ",\"policy_violation\":" << JsonQuote(violation);
      if (!key_id.ok()) out << ",\"key_id_error\":" << JsonQuote(key_id.status().message());
      out << "}";
      continue;
    }
    out << "\nversion " << key.version << (is_active ? "  (active: new encryptions use it)" : "") << "\n"
        << "  key_id:     " << (key_id.ok() ? *key_id : StrCat("(unknown: ", key_id.status().message(), ")")) << "\n"
        << "  CKA_ID:     " << Hex(key.id) << "\n"
        << "  key:        " << KeyTypeName(key) << "-" << key.value_len * 8 << "\n"
        << "  attributes: " << (key.sensitive ? "sensitive" : "NOT sensitive") << ", "
        << (key.extractable ? "EXTRACTABLE" : "not extractable") << ", "
        << (key.always_sensitive ? "always sensitive" : "not always sensitive") << ", "
        << (key.never_extractable ? "never extractable" : "was extractable") << ", "
        << (key.local ? "generated on the token" : "not generated on the token") << ", "
        << (key.modifiable ? "modifiable" : "not modifiable") << "\n"
        << "  usages:     " << StrJoin(Usages(key), ", ") << "\n"
        << "  policy:     " << (violation.empty() ? "ok" : StrCat("REFUSED by the plugin: ", violation)) << "\n";
  }
  if (options.json) out << "]}\n";
  std::cout << out.str();
  return kExitOk;
}

int KeyRetire(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;
  std::vector<const hsm::KeyObject*> targets;
  for (const hsm::KeyObject& key : family.keys) {
    if (key.version == options.version) targets.push_back(&key);
  }
  if (targets.empty()) {
    return Fail(kExitFailed, StrCat(family.Describe(), " has no version ", options.version, " (present: ",
                                    family.keys.empty() ? std::string("none") : Versions(family.keys), ")"));
  }
  const uint64_t active = family.keys.back().version;
  if (options.version == active) {
    return Fail(kExitFailed, StrCat("version ", options.version, " is the active (highest) version of ", family.Describe(),
                                    " and can never be retired: new encryptions use it. Rotate first (`key rotate`), "
                                    "re-encrypt, then retire the old version"));
  }
  StatusOr<std::string> key_id = hsm::KeyIdOf(family.session(), family.label(), *targets.front());
  const std::string name = key_id.ok() ? StrCat("key_id ", *key_id) : StrCat("version ", options.version);
  if (!options.yes) {
    std::cerr << kToolName << ": not retiring without --yes. Retiring destroys version " << options.version << " of "
              << family.Describe() << " (" << name << ") for good"
              << (targets.front()->extractable ? "" : ": it cannot leave the token, so no copy of it exists") << ".\n"
              << "Everything still encrypted under " << name << " becomes unreadable: kube-apiserver gets NOT_FOUND\n"
              << "from the plugin and cannot read those objects any more.\n"
              << "Re-encrypt first, so every object is rewritten under the active version " << active << ":\n"
              << "  kubectl get secrets -A -o json | kubectl replace -f -\n"
              << "(and the same for every other resource your EncryptionConfiguration encrypts), make sure it\n"
              << "completed for all objects (docs/rotation.md), then run this command again with --yes.\n";
    return kExitFailed;
  }
  for (const hsm::KeyObject* key : targets) {
    if (Status s = hsm::DestroyKeyObject(family.session(), key->handle); !s.ok()) return FailStatus(s);
  }
  std::cout << "retired version " << options.version << " of " << family.Describe() << " (" << name
            << "): the key is destroyed.\n"
            << "Send SIGHUP to trousseau-hsm (or wait for its --key-refresh-interval) so it drops the version;\n"
            << "decrypting anything still under it now fails with NOT_FOUND. Active version: " << active << ".\n";
  return kExitOk;
}

}  // namespace trousseau::init
