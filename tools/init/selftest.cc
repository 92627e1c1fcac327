// selftest: what the token offers (mechanisms, the scheme new keys get), then every version against the
// plugin's KEK policy, and a round trip and tamper check with its scheme on the device.
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "core/key_id.h"
#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "core/strings.h"
#include "hsm/capabilities.h"
#include "hsm/p11/gcm.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/version_aead.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

constexpr std::string_view kSelftestPlaintext = "trousseau-hsm-init selftest: 0123456789abcdef";
constexpr std::string_view kSelftestAad = "trousseau-hsm-init selftest";

struct Check {
  uint64_t version = 0;
  std::string scheme;
  std::string key_id;
  bool active = false;
  std::vector<std::string> failures;
  std::vector<std::string> warnings;
  std::vector<std::string> passed;
  bool round_trip = false;
  bool tamper_rejected = false;
};

// What the token offers and which schemes it can use: printed before the keys, and the one reason a
// token no scheme can use fails with the configuration exit code.
struct TokenVerdict {
  hsm::TokenCapabilities capabilities;
  std::optional<hsm::GcmIvSource> gcm_iv_source;  // the URI's x-gcm-iv, as the plugin honours it
  StatusOr<hsm::KeyScheme> new_keys = InternalError("not read");
  std::vector<std::pair<hsm::KeyScheme, std::vector<std::string>>> missing_to_serve;  // per scheme
  bool usable() const {
    for (const auto& [scheme, missing] : missing_to_serve) {
      if (missing.empty()) return true;
    }
    return false;
  }
};

TokenVerdict JudgeToken(hsm::TokenCapabilities capabilities) {
  TokenVerdict verdict;
  verdict.capabilities = std::move(capabilities);
  verdict.new_keys = hsm::SchemeForNewKeys(verdict.capabilities);
  for (hsm::KeyScheme scheme : {hsm::KeyScheme::kAesGcm, hsm::KeyScheme::kAesCbcHmac}) {
    verdict.missing_to_serve.emplace_back(scheme, hsm::MissingToServe(verdict.capabilities, scheme));
  }
  return verdict;
}

// Rejects a copy of `sealed` with bit 0 of byte `index` flipped?
bool RejectsFlippedBit(const hsm::Session& session, const hsm::SealingKey& key, std::string sealed, size_t index) {
  sealed[index] = static_cast<char>(sealed[index] ^ 0x01);
  return !hsm::OpenWithVersion(session, key, kSelftestAad, sealed).ok();
}

void CheckPolicy(const hsm::KeyObject& key, std::string_view role, Check& check) {
  // Policy: exactly the plugin's verdict is a failure; what it tolerates but should not be is a warning.
  if (std::string why = hsm::KekPolicyViolation(key); !why.empty()) {
    check.failures.push_back(StrCat("KEK policy", role, ": ", why, " (the plugin refuses the whole family)"));
  } else if (hsm::RoleOf(key) == hsm::KeyRole::kMac) {
    check.passed.push_back(StrCat(
        "KEK policy", role, ": 256-bit generic secret, sensitive, not extractable, private, may sign and verify"));
  } else {
    check.passed.push_back(
        StrCat("KEK policy", role, ": AES-256, sensitive, not extractable, private, may encrypt and decrypt"));
  }
  // The same warnings `key list` shows.
  for (std::string& warning : hsm::KekPolicyWarnings(key)) check.warnings.push_back(std::move(warning));
}

Check CheckVersion(const Family& family, const hsm::KeyVersion& version, const TokenVerdict& token,
                   NonceSequence& ivs) {
  Check check;
  check.version = version.version;
  check.scheme = std::string(hsm::SchemeName(version.scheme));
  const hsm::Session& session = family.session();
  const bool two_keys = version.scheme == hsm::KeyScheme::kAesCbcHmac;

  CheckPolicy(version.cipher, two_keys ? " (AES key)" : "", check);
  if (two_keys) CheckPolicy(version.mac, " (HMAC key)", check);

  const hsm::VersionHandles handles = hsm::HandlesOf(version);
  StatusOr<hsm::Fingerprint> fingerprint = hsm::VersionFingerprint(session, handles, token.gcm_iv_source);
  if (fingerprint.ok()) {
    check.key_id = DeriveKeyId(hsm::kPkcs11BackendKind, family.label(), version.version, fingerprint->bytes);
  } else {
    check.failures.push_back(StrCat("key_id: ", fingerprint.status().message()));
  }
  const hsm::GcmIvSource iv_source = fingerprint.ok() ? fingerprint->gcm_iv_source : hsm::GcmIvSource::kCaller;
  if (Status serve = hsm::CanServe(token.capabilities, version.scheme, iv_source); !serve.ok()) {
    check.failures.push_back(std::string(serve.message()));
    return check;
  }
  check.passed.push_back(StrCat("the token offers what ", check.scheme, " needs",
                                iv_source == hsm::GcmIvSource::kDevice ? " (the device chooses GCM IVs)" : ""));

  const std::string round_trip = StrCat(check.scheme, " round trip");
  const hsm::KeyObject* lacking = nullptr;
  if (!version.cipher.encrypt || !version.cipher.decrypt) lacking = &version.cipher;
  if (two_keys && (!version.mac.sign || !version.mac.verify)) lacking = &version.mac;
  if (lacking != nullptr) {
    check.failures.push_back(
        StrCat(round_trip, ": skipped, the ",
               lacking == &version.mac ? "HMAC key may not sign and verify" : "AES key may not encrypt and decrypt"));
    return check;
  }
  const hsm::SealingKey key{handles, iv_source};
  StatusOr<std::string> sealed = hsm::SealWithVersion(session, key, ivs, kSelftestAad, kSelftestPlaintext);
  if (!sealed.ok()) {
    check.failures.push_back(StrCat(round_trip, ": sealing on the device failed: ", sealed.status().message()));
    return check;
  }
  StatusOr<SecureBytes> opened = hsm::OpenWithVersion(session, key, kSelftestAad, *sealed);
  if (!opened.ok()) {
    check.failures.push_back(StrCat(round_trip, ": opening on the device failed: ", opened.status().message()));
    return check;
  }
  if (opened->view() != kSelftestPlaintext || sealed->find(kSelftestPlaintext) != std::string::npos) {
    check.failures.push_back(StrCat(round_trip, " returned wrong data"));
    return check;
  }
  check.round_trip = true;
  check.passed.push_back(StrCat(round_trip, " on the device"));

  // One flipped bit in the IV, in the ciphertext body, and in the tag or MAC: each must fail authentication.
  const size_t iv_size = two_keys ? hsm::kCbcIvSize : kGcmIvSize;
  const bool iv = RejectsFlippedBit(session, key, *sealed, 0);
  const bool body = RejectsFlippedBit(session, key, *sealed, iv_size);
  const bool tag = RejectsFlippedBit(session, key, *sealed, sealed->size() - 1);
  check.tamper_rejected = iv && body && tag;
  if (check.tamper_rejected) {
    check.passed.push_back("tamper check: a flipped bit in the IV, the ciphertext and the tag is rejected");
  } else {
    check.failures.push_back(StrCat("tamper check: a flipped bit in the ",
                                    !iv     ? "IV"
                                    : !body ? "ciphertext"
                                            : "tag",
                                    " was accepted: the device does not authenticate ", check.scheme));
  }
  return check;
}

std::string JsonList(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) StrAppend(out, i ? "," : "", JsonQuote(items[i]));
  return out + "]";
}

std::string CapabilitiesJson(const TokenVerdict& token) {
  const hsm::TokenCapabilities& c = token.capabilities;
  std::ostringstream out;
  out << "{\"module\":{\"manufacturer\":" << JsonQuote(c.module.manufacturer)
      << ",\"library\":" << JsonQuote(c.module.library_description)
      << ",\"version\":" << JsonQuote(c.module.library_version)
      << ",\"cryptoki\":" << JsonQuote(c.module.cryptoki_version)
      << "},\"token\":{\"label\":" << JsonQuote(c.token_label) << ",\"model\":" << JsonQuote(c.token_model)
      << ",\"manufacturer\":" << JsonQuote(c.token_manufacturer)
      << ",\"flags\":" << JsonList(hsm::TokenFlagNames(c.token_flags)) << "},\"mechanism_count\":" << c.mechanism_count
      << ",\"mechanisms\":[";
  for (size_t i = 0; i < c.mechanisms.size(); ++i) {
    const hsm::MechanismSupport& m = c.mechanisms[i];
    out << (i ? "," : "") << "{\"name\":" << JsonQuote(m.name) << ",\"offered\":" << (m.listed ? "true" : "false")
        << ",\"flags\":" << JsonList(m.FlagNames()) << ",\"min_key_size\":" << m.min_key_size
        << ",\"max_key_size\":" << m.max_key_size << "}";
  }
  out << "],\"new_keys\":" << (token.new_keys.ok() ? JsonQuote(hsm::SchemeName(*token.new_keys)) : "null");
  out << ",\"new_keys_problem\":" << (token.new_keys.ok() ? "null" : JsonQuote(token.new_keys.status().message()));
  out << ",\"missing\":{";
  for (size_t i = 0; i < token.missing_to_serve.size(); ++i) {
    const auto& [scheme, missing] = token.missing_to_serve[i];
    std::vector<std::string> for_new_keys = hsm::MissingForNewKeys(c, scheme);
    out << (i ? "," : "") << JsonQuote(hsm::SchemeName(scheme)) << ":{\"to_serve\":" << JsonList(missing)
        << ",\"for_new_keys\":" << JsonList(for_new_keys) << "}";
  }
  out << "}}";
  return out.str();
}

void PrintCapabilities(const TokenVerdict& token, std::ostream& out) {
  const hsm::TokenCapabilities& c = token.capabilities;
  out << "module      " << c.module.Describe() << " (PKCS#11 " << c.module.cryptoki_version << ")\n";
  const std::vector<std::string> flags = hsm::TokenFlagNames(c.token_flags);
  out << "token       '" << c.token_label << "': " << c.token_model << " by " << c.token_manufacturer
      << (flags.empty() ? "" : StrCat(" (", StrJoin(flags, ", "), ")")) << "\n";
  for (size_t i = 0; i < c.mechanisms.size(); ++i) {
    out << (i == 0 ? "mechanisms  " : "            ") << c.mechanisms[i].Describe() << "\n";
  }
  out << "            (" << c.mechanism_count << " mechanisms in all)\n";
  for (size_t i = 0; i < token.missing_to_serve.size(); ++i) {
    const auto& [scheme, missing] = token.missing_to_serve[i];
    const std::vector<std::string> for_new_keys = hsm::MissingForNewKeys(c, scheme);
    out << (i == 0 ? "schemes     " : "            ") << hsm::SchemeName(scheme) << ": ";
    if (!missing.empty()) {
      out << "unusable, missing " << StrJoin(missing, ", ") << "\n";
    } else if (!for_new_keys.empty()) {
      out << "serves existing keys; new keys need " << StrJoin(for_new_keys, ", ") << "\n";
    } else {
      out << "new keys and serving\n";
    }
  }
  out << "new keys    " << (token.new_keys.ok() ? hsm::SchemeName(*token.new_keys) : "none (see below)") << "\n";
}

}  // namespace

int Selftest(const KeyOptions& options) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(options.pkcs11_uri);
  if (!uri.ok()) return Fail(kExitUsage, uri.status().message());
  // The module on its own first, before any token is looked for: a module that is no token trousseau-hsm can
  // use (tpm2-pkcs11) is named as such. Loaded before the family and kept until after it, so the family's
  // session finds it initialised and nothing is unloaded and loaded again in this process.
  StatusOr<std::unique_ptr<hsm::Pkcs11Module>> module =
      hsm::Pkcs11Module::Load(uri->module_path(), uri->init_reserved());
  if (!module.ok()) return Fail(kExitUsage, module.status().message());
  if (Status s = (*module)->Initialize(); !s.ok())
    return Fail(IsFailedPrecondition(s) ? kExitUsage : kExitFailed, s.message());
  StatusOr<hsm::ModuleIdentity> identity = hsm::ReadModuleIdentity((*module)->api());
  if (!identity.ok()) return FailStatus(identity.status());
  if (Status s = hsm::RefuseTpm2Pkcs11(*identity); !s.ok()) return Fail(kExitUsage, s.message());

  // The token's verdict needs no login and no read-write session: a token no scheme can use (a read-only or
  // crypto-less one among them) is told so even when the family could not be opened on it.
  StatusOr<hsm::TokenSlot> slot = hsm::FindToken((*module)->api(), *uri);
  std::optional<TokenVerdict> token;
  if (slot.ok()) {
    StatusOr<hsm::TokenCapabilities> capabilities = hsm::ReadTokenCapabilities((*module)->api(), slot->slot);
    if (!capabilities.ok()) return FailStatus(capabilities.status());
    token = JudgeToken(*std::move(capabilities));
  }  // else: OpenFamily finds no token either and reports it as every command does

  Family family;
  std::vector<Check> checks;
  std::vector<std::string> family_failures;
  std::vector<std::string> token_warnings;
  if (token && !token->usable()) {
    // Nothing else can pass on such a token: its one message says what is missing and what would work.
    family_failures.push_back(std::string(token->new_keys.status().message()));
  } else {
    if (int rc = OpenFamily(options.pkcs11_uri, family); rc != kExitOk) return rc;
    if (!token) {  // the token appeared between the two looks: judge it now
      StatusOr<hsm::TokenCapabilities> capabilities =
          hsm::ReadTokenCapabilities(family.admin->api(), family.admin->token().slot);
      if (!capabilities.ok()) return FailStatus(capabilities.status());
      token = JudgeToken(*std::move(capabilities));
    }
    if (!token->new_keys.ok()) token_warnings.push_back(std::string(token->new_keys.status().message()));
    if (family.keys.empty()) {
      family_failures.push_back(StrCat(family.Describe(), " has no key; create one with `key generate`"));
    }
    if (std::string why = hsm::KekFamilyViolation(family.keys); !why.empty()) {
      family_failures.push_back(StrCat(why, ": the plugin refuses the family"));
    }
    token->gcm_iv_source = uri->gcm_iv_source();
    NonceSequence ivs;  // random fixed field per run: never the fingerprint IV, never one the plugin draws again
    const std::vector<hsm::KeyVersion> versions = hsm::GroupKeyVersions(family.keys);
    for (const hsm::KeyVersion& version : versions) {
      checks.push_back(CheckVersion(family, version, *token, ivs));
      checks.back().active = version.version == versions.back().version;
    }
  }

  bool ok = family_failures.empty() && !(options.strict && !token_warnings.empty());
  size_t warnings = token_warnings.size();
  for (const Check& c : checks) {
    ok = ok && c.failures.empty() && !(options.strict && !c.warnings.empty());
    warnings += c.warnings.size();
  }

  std::ostringstream out;
  if (options.json) {
    out << "{\"ok\":" << (ok ? "true" : "false") << ",\"capabilities\":" << CapabilitiesJson(*token)
        << ",\"failures\":" << JsonList(family_failures) << ",\"warnings\":" << JsonList(token_warnings)
        << ",\"keys\":[";
    for (size_t i = 0; i < checks.size(); ++i) {
      const Check& c = checks[i];
      out << (i ? "," : "") << "{\"version\":" << c.version << ",\"scheme\":" << JsonQuote(c.scheme)
          << ",\"key_id\":" << JsonQuote(c.key_id) << ",\"active\":" << (c.active ? "true" : "false")
          << ",\"ok\":" << (c.failures.empty() && !(options.strict && !c.warnings.empty()) ? "true" : "false")
          << ",\"round_trip\":" << (c.round_trip ? "true" : "false")
          << ",\"tamper_rejected\":" << (c.tamper_rejected ? "true" : "false")
          << ",\"failures\":" << JsonList(c.failures) << ",\"warnings\":" << JsonList(c.warnings)
          << ",\"passed\":" << JsonList(c.passed) << "}";
    }
    out << "]}\n";
  } else {
    out << "selftest of key family '" << uri->object_label() << "' on " << uri->token_description() << "\n";
    PrintCapabilities(*token, out);
    for (const std::string& w : token_warnings) out << (options.strict ? "FAIL (strict) " : "WARN ") << w << "\n";
    for (const std::string& f : family_failures) out << "FAIL " << f << "\n";
    for (const Check& c : checks) {
      out << "\nversion " << c.version << (c.active ? " (active)" : "") << "  " << c.scheme << "  "
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
  if (!token->usable()) return kExitUsage;  // configuration: another token or module, or the TPM backend
  return ok ? kExitOk : kExitFailed;
}

}  // namespace trousseau::init
