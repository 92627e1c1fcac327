// selftest: every version against the plugin's KEK policy, then AES-GCM on the device.
#include <iostream>
#include <map>
#include <sstream>

#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "core/strings.h"
#include "hsm/p11/gcm.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

constexpr std::string_view kSelftestPlaintext = "trousseau-hsm-init selftest: 0123456789abcdef";
constexpr std::string_view kSelftestAad = "trousseau-hsm-init selftest";

struct Check {
  uint64_t version = 0;
  std::string key_id;
  bool active = false;
  std::vector<std::string> failures;
  std::vector<std::string> warnings;
  std::vector<std::string> passed;
  bool round_trip = false;
  bool tamper_rejected = false;
};

// Rejects a copy of `sealed` (ciphertext || tag) with bit `bit` of byte `index` flipped?
bool RejectsFlippedBit(const hsm::Session& session, hsm::ObjectHandle key, const GcmIv& iv, std::string sealed,
                       size_t index) {
  sealed[index] = static_cast<char>(sealed[index] ^ 0x01);
  SecureBytes opened;
  return !hsm::GcmOpen(session, key, iv, kSelftestAad, sealed, opened).ok();
}

Check CheckKey(const Family& family, const hsm::KeyObject& key, NonceSequence& ivs) {
  Check check;
  check.version = key.version;
  const hsm::Session& session = family.session();

  // Policy: exactly the plugin's verdict is a failure; what it tolerates but should not be is a warning.
  if (std::string why = hsm::KekPolicyViolation(key); !why.empty()) {
    check.failures.push_back(StrCat("KEK policy: ", why, " (the plugin refuses the whole family)"));
  } else {
    check.passed.push_back("KEK policy: AES-256, sensitive, not extractable, private, may encrypt and decrypt");
  }
  // The same warnings `key list` shows.
  for (std::string& warning : hsm::KekPolicyWarnings(key)) check.warnings.push_back(std::move(warning));

  StatusOr<std::string> key_id = hsm::KeyIdOf(session, family.label(), key);
  if (key_id.ok()) {
    check.key_id = *key_id;
  } else {
    check.failures.push_back(StrCat("key_id: ", key_id.status().message()));
  }

  if (!key.encrypt || !key.decrypt) {
    check.failures.push_back("AES-GCM round trip: skipped, the key may not encrypt and decrypt");
    return check;
  }
  StatusOr<GcmIv> iv = ivs.Next();
  if (!iv.ok()) {
    check.failures.push_back(StrCat("AES-GCM round trip: ", iv.status().message()));
    return check;
  }
  std::string sealed;
  if (Status s = hsm::GcmSeal(session, key.handle, *iv, kSelftestAad, kSelftestPlaintext, sealed,
                              "AES-GCM encrypt on the device failed");
      !s.ok()) {
    check.failures.push_back(std::string(s.message()));
    return check;
  }
  SecureBytes opened;
  if (Status s =
          hsm::GcmOpen(session, key.handle, *iv, kSelftestAad, sealed, opened, "AES-GCM decrypt on the device failed");
      !s.ok()) {
    check.failures.push_back(std::string(s.message()));
    return check;
  }
  if (opened.view() != kSelftestPlaintext || sealed.substr(0, kSelftestPlaintext.size()) == kSelftestPlaintext) {
    check.failures.push_back("AES-GCM round trip returned wrong data");
    return check;
  }
  check.round_trip = true;
  check.passed.push_back("AES-GCM round trip on the device");

  // One flipped bit in the ciphertext body, and one in the tag: each must fail authentication.
  const bool body = RejectsFlippedBit(session, key.handle, *iv, sealed, 0);
  const bool tag = RejectsFlippedBit(session, key.handle, *iv, sealed, sealed.size() - 1);
  check.tamper_rejected = body && tag;
  if (check.tamper_rejected) {
    check.passed.push_back("tamper check: a flipped bit in the ciphertext and in the tag is rejected");
  } else {
    check.failures.push_back(StrCat("tamper check: a flipped bit in the ", body ? "tag" : "ciphertext",
                                    " was accepted: the device does not authenticate AES-GCM"));
  }
  return check;
}

std::string JsonList(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) StrAppend(out, i ? "," : "", JsonQuote(items[i]));
  return out + "]";
}

}  // namespace

int Selftest(const KeyOptions& options) {
  Family family;
  if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;

  std::vector<Check> checks;
  std::vector<std::string> family_failures;
  if (family.keys.empty()) {
    family_failures.push_back(StrCat(family.Describe(), " has no key; create one with `key generate`"));
  }
  std::map<uint64_t, int> seen;
  for (const hsm::KeyObject& key : family.keys) {
    if (++seen[key.version] == 2) {
      family_failures.push_back(
          StrCat("two keys have version ", key.version, " (CKA_ID ", Hex(key.id), "): the plugin refuses the family"));
    }
  }
  NonceSequence ivs;  // random fixed field per run: never the fingerprint IV, never one the plugin draws again
  for (const hsm::KeyObject& key : family.keys) {
    checks.push_back(CheckKey(family, key, ivs));
    checks.back().active = key.version == family.keys.back().version;
  }

  bool ok = family_failures.empty();
  size_t warnings = 0;
  for (const Check& c : checks) {
    ok = ok && c.failures.empty() && !(options.strict && !c.warnings.empty());
    warnings += c.warnings.size();
  }

  std::ostringstream out;
  if (options.json) {
    out << "{\"ok\":" << (ok ? "true" : "false") << ",\"failures\":" << JsonList(family_failures) << ",\"keys\":[";
    for (size_t i = 0; i < checks.size(); ++i) {
      const Check& c = checks[i];
      out << (i ? "," : "") << "{\"version\":" << c.version << ",\"key_id\":" << JsonQuote(c.key_id)
          << ",\"active\":" << (c.active ? "true" : "false")
          << ",\"ok\":" << (c.failures.empty() && !(options.strict && !c.warnings.empty()) ? "true" : "false")
          << ",\"round_trip\":" << (c.round_trip ? "true" : "false")
          << ",\"tamper_rejected\":" << (c.tamper_rejected ? "true" : "false")
          << ",\"failures\":" << JsonList(c.failures) << ",\"warnings\":" << JsonList(c.warnings)
          << ",\"passed\":" << JsonList(c.passed) << "}";
    }
    out << "]}\n";
  } else {
    out << "selftest of " << family.Describe() << "\n";
    for (const std::string& f : family_failures) out << "FAIL " << f << "\n";
    for (const Check& c : checks) {
      out << "\nversion " << c.version << (c.active ? " (active)" : "") << "  "
          << (c.key_id.empty() ? "(no key_id)" : c.key_id) << "\n";
      for (const std::string& p : c.passed) out << "  PASS " << p << "\n";
      for (const std::string& w : c.warnings) out << (options.strict ? "  FAIL (strict) " : "  WARN ") << w << "\n";
      for (const std::string& f : c.failures) out << "  FAIL " << f << "\n";
    }
    out << "\n"
        << (ok ? "selftest passed" : "selftest FAILED") << ": " << checks.size() << " version(s), " << warnings
        << " warning(s)\n";
  }
  std::cout << out.str();
  return ok ? kExitOk : kExitFailed;
}

}  // namespace trousseau::init
