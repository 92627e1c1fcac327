#include "hsm/capabilities.h"

#include <cstdio>
#include <optional>

#include "core/strings.h"
#include "hsm/p11/mechanisms.h"
#include "hsm/pkcs11_uri.h"

namespace trousseau::hsm {
namespace {

constexpr std::string_view kReadmeSection = "README, \"What your HSM must offer\"";

std::string VersionText(const CK_VERSION& version) {
  char text[16];
  std::snprintf(text, sizeof text, "%u.%u", static_cast<unsigned>(version.major), static_cast<unsigned>(version.minor));
  return text;
}

// One thing a scheme needs of a mechanism.
struct Need {
  CK_MECHANISM_TYPE mechanism;
  CK_FLAGS flags;
  bool aes256;  // the reported key sizes must admit AES-256
};

constexpr Need kGcmNewKeys[] = {{CKM_AES_KEY_GEN, CKF_GENERATE, true}, {CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, true}};
constexpr Need kGcmServe[] = {{CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, true}};
// The device-IV fingerprint is AES-ECB of one block (hsm/key_family.h kDeviceIvFingerprintBlock).
constexpr Need kGcmDeviceIvServe[] = {{CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, true}, {CKM_AES_ECB, CKF_ENCRYPT, true}};
constexpr Need kCbcHmacNewKeys[] = {{CKM_AES_KEY_GEN, CKF_GENERATE, true},
                                    {CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT, true},
                                    // Key sizes of generic secrets and HMAC: units differ between modules
                                    // (opencryptoki 80-2048 bits, NSS 1-32): the key generation itself tells.
                                    {CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, false},
                                    {CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, false}};
constexpr Need kCbcHmacServe[] = {{CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT, true},
                                  {CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, false}};

constexpr std::pair<CK_FLAGS, std::string_view> kMechanismFlagNames[] = {
    {CKF_ENCRYPT, "encrypt"}, {CKF_DECRYPT, "decrypt"},   {CKF_SIGN, "sign"},
    {CKF_VERIFY, "verify"},   {CKF_GENERATE, "generate"}, {CKF_WRAP, "wrap"},
    {CKF_UNWRAP, "unwrap"},   {CKF_DERIVE, "derive"},     {CKF_GENERATE_KEY_PAIR, "generate key pair"}};

// A recipient key (P-256): made on the token, then used for ECDH. EC key sizes are in bits.
constexpr CK_ULONG kP256KeyBits = 256;
struct EcNeed {
  CK_MECHANISM_TYPE mechanism;
  CK_FLAGS flags;
};
constexpr EcNeed kRecipientCreate[] = {{CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR}, {CKM_ECDH1_DERIVE, CKF_DERIVE}};
constexpr EcNeed kRecipientUse[] = {{CKM_ECDH1_DERIVE, CKF_DERIVE}};

std::string FlagList(CK_FLAGS flags) {
  std::vector<std::string> names;
  for (const auto& [flag, name] : kMechanismFlagNames) {
    if ((flags & flag) != 0) names.emplace_back(name);
  }
  return StrJoin(names, ", ");
}

// "CKM_AES_GCM (not offered)", "CKM_AES_GCM with decrypt (has encrypt)", "CKM_AES_KEY_GEN for 256-bit keys
// (key size 16-24)": what `support` lacks of `need`, or nullopt.
std::optional<std::string> Lack(const MechanismSupport& support, const Need& need) {
  if (!support.listed) return StrCat(support.name, " (not offered)");
  if (!support.Has(need.flags)) {
    const std::string has = FlagList(support.flags);
    return StrCat(support.name, " with ", FlagList(need.flags & ~support.flags), " (has ", has.empty() ? "none" : has,
                  ")");
  }
  if (need.aes256 && !support.AdmitsAes256()) {
    return StrCat(support.name, " for 256-bit keys (key size ", support.min_key_size, "-", support.max_key_size, ")");
  }
  return std::nullopt;
}

template <size_t N>
std::vector<std::string> Lacks(const TokenCapabilities& token, const Need (&needs)[N]) {
  std::vector<std::string> missing;
  for (const Need& need : needs) {
    if (std::optional<std::string> lack = Lack(token.Of(need.mechanism), need)) missing.push_back(*std::move(lack));
  }
  return missing;
}

std::string OfferedText(const TokenCapabilities& token) {
  std::vector<std::string> offered = token.Offered();
  return StrCat("the token offers ",
                offered.empty() ? "none of the mechanisms trousseau-hsm uses" : StrJoin(offered, ", "), " (",
                token.mechanism_count, " mechanisms in all)");
}

}  // namespace

std::string MechanismName(CK_MECHANISM_TYPE mechanism) {
  switch (mechanism) {
    case CKM_EC_KEY_PAIR_GEN:
      return "CKM_EC_KEY_PAIR_GEN";
    case CKM_ECDH1_DERIVE:
      return "CKM_ECDH1_DERIVE";
    case CKM_AES_KEY_GEN:
      return "CKM_AES_KEY_GEN";
    case CKM_AES_GCM:
      return "CKM_AES_GCM";
    case CKM_AES_ECB:
      return "CKM_AES_ECB";
    case CKM_AES_CBC:
      return "CKM_AES_CBC";
    case CKM_AES_CBC_PAD:
      return "CKM_AES_CBC_PAD";
    case CKM_AES_CTR:
      return "CKM_AES_CTR";
    case CKM_AES_CMAC:
      return "CKM_AES_CMAC";
    case CKM_AES_KEY_WRAP:
      return "CKM_AES_KEY_WRAP";
    case CKM_AES_KEY_WRAP_PAD:
      return "CKM_AES_KEY_WRAP_PAD";
    case CKM_GENERIC_SECRET_KEY_GEN:
      return "CKM_GENERIC_SECRET_KEY_GEN";
    case CKM_SHA256_HMAC:
      return "CKM_SHA256_HMAC";
    default: {
      char text[24];
      std::snprintf(text, sizeof text, "CKM_0x%08lX", static_cast<unsigned long>(mechanism));
      return text;
    }
  }
}

bool MechanismSupport::AdmitsAes256() const {
  if (min_key_size == 0 && max_key_size == 0) return true;
  // AES key sizes are bytes by the standard (16-32); a maximum above 32 can only be bits (128-256).
  const CK_ULONG wanted = max_key_size > 32 ? 256 : 32;
  return min_key_size <= wanted && wanted <= max_key_size;
}

std::vector<std::string> MechanismSupport::FlagNames() const {
  std::vector<std::string> names;
  for (const auto& [flag, name] : kMechanismFlagNames) {
    if ((flags & flag) != 0) names.emplace_back(name);
  }
  return names;
}

std::string MechanismSupport::Describe() const {
  if (!listed) return StrCat(name, " (not offered)");
  std::string text = StrCat(name, " (", flags == 0 ? "no usage flags" : FlagList(flags));
  if (min_key_size != 0 || max_key_size != 0) StrAppend(text, "; key size ", min_key_size, "-", max_key_size);
  return text + ")";
}

std::string ModuleIdentity::Describe() const {
  return StrCat("'", library_description, "' ", library_version, " by ", manufacturer);
}

const MechanismSupport& TokenCapabilities::Of(CK_MECHANISM_TYPE mechanism) const {
  for (const MechanismSupport& support : mechanisms) {
    if (support.type == mechanism) return support;
  }
  static const MechanismSupport kUnlisted{};
  return kUnlisted;
}

std::string TokenCapabilities::Describe() const {
  return StrCat("token '", token_label, "' (", token_model, " by ", token_manufacturer, ") of module ",
                module.Describe());
}

std::vector<std::string> TokenCapabilities::Offered() const {
  std::vector<std::string> offered;
  for (const MechanismSupport& support : mechanisms) {
    if (support.listed) offered.push_back(support.Describe());
  }
  return offered;
}

std::vector<std::string> MissingForRecipient(const TokenCapabilities& token, bool to_create) {
  std::vector<std::string> missing;
  const auto check = [&](const EcNeed& need) {
    const MechanismSupport& support = token.Of(need.mechanism);
    if (!support.listed) {
      // Named here: Of() gives an unnamed entry for a mechanism the capabilities were read without.
      missing.push_back(StrCat(MechanismName(need.mechanism), " (not offered)"));
    } else if (std::optional<std::string> lack = Lack(support, Need{need.mechanism, need.flags, false})) {
      missing.push_back(*std::move(lack));
    } else if (!(support.min_key_size == 0 && support.max_key_size == 0) &&
               (support.min_key_size > kP256KeyBits || support.max_key_size < kP256KeyBits)) {
      missing.push_back(StrCat(support.name, " for P-256 keys (key size ", support.min_key_size, "-",
                               support.max_key_size, " bits)"));
    }
  };
  if (to_create) {
    for (const EcNeed& need : kRecipientCreate) check(need);
  } else {
    for (const EcNeed& need : kRecipientUse) check(need);
  }
  return missing;
}

Status CanHoldRecipient(const TokenCapabilities& token, bool to_create) {
  const std::vector<std::string> missing = MissingForRecipient(token, to_create);
  if (missing.empty()) return OkStatus();
  return FailedPreconditionError(StrCat(token.Describe(), " cannot ", to_create ? "hold" : "use",
                                        " a recipient key (ECC P-256, ECDH): it needs ", StrJoin(missing, ", "), "; ",
                                        OfferedText(token)));
}

StatusOr<ModuleIdentity> ReadModuleIdentity(CK_FUNCTION_LIST* api) {
  StatusOr<CK_INFO> info = p11::ModuleInfo(api);
  if (!info.ok()) return info.status();
  ModuleIdentity module;
  module.manufacturer = TrimPadded(info->manufacturerID, sizeof info->manufacturerID);
  module.library_description = TrimPadded(info->libraryDescription, sizeof info->libraryDescription);
  module.library_version = VersionText(info->libraryVersion);
  module.cryptoki_version = VersionText(info->cryptokiVersion);
  return module;
}

StatusOr<TokenCapabilities> ReadTokenCapabilities(CK_FUNCTION_LIST* api, CK_SLOT_ID slot) {
  TokenCapabilities token;
  StatusOr<ModuleIdentity> module = ReadModuleIdentity(api);
  if (!module.ok()) return module.status();
  token.module = *std::move(module);

  StatusOr<CK_TOKEN_INFO> info = p11::TokenInfoOf(api, slot);
  if (!info.ok()) return info.status();
  token.token_label = TrimPadded(info->label, sizeof info->label);
  token.token_model = TrimPadded(info->model, sizeof info->model);
  token.token_manufacturer = TrimPadded(info->manufacturerID, sizeof info->manufacturerID);
  token.token_flags = info->flags;

  StatusOr<std::vector<CK_MECHANISM_TYPE>> listed = p11::MechanismList(api, slot);
  if (!listed.ok()) return listed.status();
  token.mechanism_count = listed->size();
  for (CK_MECHANISM_TYPE type : kMechanismsOfInterest) {
    MechanismSupport support;
    support.type = type;
    support.name = MechanismName(type);
    for (CK_MECHANISM_TYPE l : *listed) support.listed = support.listed || l == type;
    if (support.listed) {
      StatusOr<std::optional<CK_MECHANISM_INFO>> mechanism = p11::MechanismInfo(api, slot, type);
      if (!mechanism.ok()) return mechanism.status();
      // Listed but unknown to C_GetMechanismInfo: the module contradicts itself; it cannot be relied on.
      support.listed = mechanism->has_value();
      if (support.listed) {
        support.flags = (*mechanism)->flags;
        support.min_key_size = (*mechanism)->ulMinKeySize;
        support.max_key_size = (*mechanism)->ulMaxKeySize;
      }
    }
    token.mechanisms.push_back(std::move(support));
  }
  return token;
}

bool IsTpm2Pkcs11(const ModuleIdentity& module) {
  return module.manufacturer == "tpm2-software.github.io" || module.library_description == "TPM2.0 Cryptoki";
}

Status RefuseTpm2Pkcs11(const ModuleIdentity& module) {
  if (!IsTpm2Pkcs11(module)) return OkStatus();
  return FailedPreconditionError(
      StrCat("this PKCS#11 module is tpm2-pkcs11 (", module.Describe(),
             "): a TPM 2.0 behind PKCS#11, which offers neither AES-GCM nor on-device generation of the secret keys "
             "trousseau-hsm needs. Use trousseau-hsm's native TPM 2.0 backend on that TPM instead of this module: "
             "`trousseau-hsm-init tpm init --tpm-tcti TCTI --tpm-key-dir DIR`, then the plugin with `--tpm-tcti TCTI "
             "--tpm-key-dir DIR` and no --pkcs11-uri (README, \"Run it on a TPM 2.0\")"));
}

std::vector<std::string> TokenFlagNames(CK_FLAGS flags) {
  static constexpr std::pair<CK_FLAGS, std::string_view> kNames[] = {
      {CKF_TOKEN_INITIALIZED, "initialized"},
      {CKF_USER_PIN_INITIALIZED, "user PIN set"},
      {CKF_LOGIN_REQUIRED, "login required"},
      {CKF_PROTECTED_AUTHENTICATION_PATH, "PIN pad"},
      {CKF_WRITE_PROTECTED, "write-protected"},
      {CKF_RNG, "random number generator"},
      {CKF_USER_PIN_COUNT_LOW, "user PIN: wrong tries counted"},
      {CKF_USER_PIN_FINAL_TRY, "user PIN: final try"},
      {CKF_USER_PIN_LOCKED, "user PIN locked"},
      {CKF_USER_PIN_TO_BE_CHANGED, "user PIN to be changed"},
      {CKF_SO_PIN_LOCKED, "SO PIN locked"},
      {CKF_SO_PIN_TO_BE_CHANGED, "SO PIN to be changed"},
  };
  std::vector<std::string> names;
  for (const auto& [flag, name] : kNames) {
    if ((flags & flag) != 0) names.emplace_back(name);
  }
  return names;
}

std::vector<std::string> MissingForNewKeys(const TokenCapabilities& token, KeyScheme scheme) {
  std::vector<std::string> missing =
      scheme == KeyScheme::kAesCbcHmac ? Lacks(token, kCbcHmacNewKeys) : Lacks(token, kGcmNewKeys);
  if ((token.token_flags & CKF_WRITE_PROTECTED) != 0) missing.push_back("a token that is not write-protected");
  return missing;
}

std::vector<std::string> MissingToServe(const TokenCapabilities& token, KeyScheme scheme, GcmIvSource iv_source) {
  if (scheme == KeyScheme::kAesCbcHmac) return Lacks(token, kCbcHmacServe);
  return iv_source == GcmIvSource::kDevice ? Lacks(token, kGcmDeviceIvServe) : Lacks(token, kGcmServe);
}

StatusOr<KeyScheme> SchemeForNewKeys(const TokenCapabilities& token) {
  if (Status tpm = RefuseTpm2Pkcs11(token.module); !tpm.ok()) return tpm;
  // In order of preference: one key and one device operation per seal before two of each.
  std::vector<std::string> per_scheme;
  for (KeyScheme scheme : {KeyScheme::kAesGcm, KeyScheme::kAesCbcHmac}) {
    std::vector<std::string> missing = MissingForNewKeys(token, scheme);
    if (missing.empty()) return scheme;
    per_scheme.push_back(StrCat(SchemeName(scheme), " needs ", StrJoin(missing, ", ")));
  }
  return FailedPreconditionError(StrCat(token.Describe(),
                                        " cannot hold trousseau-hsm keys: ", StrJoin(per_scheme, "; "), ". ",
                                        OfferedText(token), ". See ", kReadmeSection, "."));
}

Status CanServe(const TokenCapabilities& token, KeyScheme scheme, GcmIvSource iv_source) {
  if (Status tpm = RefuseTpm2Pkcs11(token.module); !tpm.ok()) return tpm;
  std::vector<std::string> missing = MissingToServe(token, scheme, iv_source);
  if (missing.empty()) return OkStatus();
  const bool device_iv = scheme == KeyScheme::kAesGcm && iv_source == GcmIvSource::kDevice;
  return FailedPreconditionError(StrCat(token.Describe(), " cannot serve ", SchemeName(scheme), " key versions",
                                        device_iv ? " with IVs the device chooses" : "", ": it needs ",
                                        StrJoin(missing, ", "), ". ", OfferedText(token), ". See ", kReadmeSection,
                                        "."));
}

}  // namespace trousseau::hsm
