// What a token can do for trousseau-hsm, read from the module and the token themselves (C_GetInfo,
// C_GetTokenInfo, C_GetMechanismList/Info) rather than assumed: SoftHSM has everything, but
// opencryptoki's soft token has no AES-GCM, and tpm2-pkcs11 is a TPM, for which the native TPM backend
// is the right answer. From these answers: the scheme new keys get (SchemeForNewKeys), whether the
// schemes of the existing versions can serve here (CanServe), and, when nothing fits, ONE message that
// names what is missing for each scheme and what the token does offer (README "What your HSM must offer").
// No login is needed: mechanism lists are public.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/key_scheme.h"
#include "hsm/pkcs11.h"

namespace trousseau::hsm {

// The mechanisms trousseau-hsm uses, in the order the tools show them.
inline constexpr CK_MECHANISM_TYPE kMechanismsOfInterest[] = {
    CKM_AES_KEY_GEN,             // every scheme: the AES-256 key of a version
    CKM_AES_GCM,                 // aes-gcm: seal and open
    CKM_AES_ECB,                 // aes-gcm with IVs the device chooses: the key fingerprint
    CKM_AES_CBC_PAD,             // aes-cbc-hmac: encrypt and decrypt
    CKM_GENERIC_SECRET_KEY_GEN,  // aes-cbc-hmac: the HMAC key of a version
    CKM_SHA256_HMAC,             // aes-cbc-hmac: the MAC, and its part of the fingerprint
    CKM_EC_KEY_PAIR_GEN,         // recipient key (multi-recipient envelopes): the P-256 key pair
    CKM_ECDH1_DERIVE,            // recipient key: ECDH with a wrap's ephemeral point
};

// "CKM_AES_GCM"; "CKM_0x00001087" for a mechanism not named here.
std::string MechanismName(CK_MECHANISM_TYPE mechanism);

// What the token says of one mechanism.
struct MechanismSupport {
  CK_MECHANISM_TYPE type = 0;
  std::string name;     // MechanismName(type)
  bool listed = false;  // in C_GetMechanismList (the rest is zero when it is not)
  CK_FLAGS flags = 0;   // CKF_ENCRYPT, CKF_DECRYPT, CKF_SIGN, CKF_VERIFY, CKF_GENERATE, ...
  // As the module reports them: bytes for AES by the standard, bits on some modules; 0-0 is "not said".
  CK_ULONG min_key_size = 0;
  CK_ULONG max_key_size = 0;

  bool Has(CK_FLAGS wanted) const { return listed && (flags & wanted) == wanted; }
  // Whether the reported key sizes admit an AES-256 key, in bytes (32) or, where the maximum can only
  // be bits (above 32), in bits (256). Unreported sizes (0-0) admit it.
  bool AdmitsAes256() const;
  // "encrypt", "decrypt", "sign", "verify", "generate", "wrap", "unwrap", "derive" (those that are set).
  std::vector<std::string> FlagNames() const;
  // "CKM_AES_GCM (encrypt, decrypt; key size 16-32)", or "CKM_AES_GCM (not offered)".
  std::string Describe() const;
};

// The module, from C_GetInfo.
struct ModuleIdentity {
  std::string manufacturer;         // manufacturerID, without padding
  std::string library_description;  // libraryDescription, without padding
  std::string library_version;      // "3.8"
  std::string cryptoki_version;     // "2.40"

  // "'Meta PKCS11 LIBRARY' 3.8 by IBM"
  std::string Describe() const;
};

struct TokenCapabilities {
  ModuleIdentity module;
  std::string token_label;
  std::string token_model;
  std::string token_manufacturer;
  CK_FLAGS token_flags = 0;
  size_t mechanism_count = 0;                // every mechanism the token lists
  std::vector<MechanismSupport> mechanisms;  // kMechanismsOfInterest, in that order

  // The entry of a mechanism of kMechanismsOfInterest (an unlisted one for any other).
  const MechanismSupport& Of(CK_MECHANISM_TYPE mechanism) const;
  // "token 'trousseau-ock' (IBM SoftTok by IBM Corp.) of module 'Meta PKCS11 LIBRARY' 3.8 by IBM"
  std::string Describe() const;
  // The listed mechanisms of interest, described (MechanismSupport::Describe), for messages.
  std::vector<std::string> Offered() const;
};

// C_GetInfo. Needs an initialised module.
StatusOr<ModuleIdentity> ReadModuleIdentity(CK_FUNCTION_LIST* api);

// C_GetInfo, then C_GetTokenInfo, C_GetMechanismList and C_GetMechanismInfo of `slot` for each mechanism
// of interest that is listed. No session or login needed. Errors follow the seam (UNAVAILABLE: the
// connection is lost).
StatusOr<TokenCapabilities> ReadTokenCapabilities(CK_FUNCTION_LIST* api, CK_SLOT_ID slot);

// tpm2-pkcs11 (C_GetInfo manufacturerID "tpm2-software.github.io", library "TPM2.0 Cryptoki"): a TPM 2.0
// behind PKCS#11, without AES-GCM or secret key generation. Pure: decided on the C_GetInfo strings.
bool IsTpm2Pkcs11(const ModuleIdentity& module);
// FAILED_PRECONDITION for tpm2-pkcs11, saying to use trousseau-hsm's native TPM 2.0 backend on that TPM
// instead; OK for any other module. Call it right after C_Initialize, before looking for the token
// (tpm2-pkcs11's token is often not even initialised).
Status RefuseTpm2Pkcs11(const ModuleIdentity& module);

// The names of the token flags that matter to an operator ("login required", "write-protected", "user PIN
// locked", ...), in a fixed order.
std::vector<std::string> TokenFlagNames(CK_FLAGS flags);

// What the token lacks to create keys of `scheme` (empty: nothing), each as one phrase such as
// "CKM_AES_GCM (not offered)" or "CKM_SHA256_HMAC with sign (has verify)".
std::vector<std::string> MissingForNewKeys(const TokenCapabilities& token, KeyScheme scheme);
// What the token lacks to seal and open with versions of `scheme` (no key generation needed); for
// aes-gcm with IVs the device chooses, CKM_AES_ECB too (the key fingerprint).
std::vector<std::string> MissingToServe(const TokenCapabilities& token, KeyScheme scheme,
                                        GcmIvSource iv_source = GcmIvSource::kCaller);

// What the token lacks to hold a recipient key (docs/tpm-ha.md "Recipient keys"; empty: nothing): to
// make one, CKM_EC_KEY_PAIR_GEN with generate key pair; to use it, CKM_ECDH1_DERIVE with derive; both
// for 256-bit keys (EC key sizes are bits; unreported sizes admit it). `to_create` false: only what
// opening wraps needs (the plugin, on a key made elsewhere).
std::vector<std::string> MissingForRecipient(const TokenCapabilities& token, bool to_create = true);
// OK if MissingForRecipient is empty, else FAILED_PRECONDITION naming what is missing and what the
// token offers.
Status CanHoldRecipient(const TokenCapabilities& token, bool to_create = true);

// The scheme new keys get on this token: aes-gcm if it generates AES-256 keys and does AES-GCM encrypt
// and decrypt; else aes-cbc-hmac if it generates AES-256 keys and generic secrets, does AES-CBC-PAD
// encrypt/decrypt and SHA256-HMAC sign/verify; else FAILED_PRECONDITION with one message naming what is
// missing for each scheme and what the token offers. tpm2-pkcs11: RefuseTpm2Pkcs11's message.
StatusOr<KeyScheme> SchemeForNewKeys(const TokenCapabilities& token);

// OK if versions of `scheme` can seal and open on this token (MissingToServe is empty), else
// FAILED_PRECONDITION naming the scheme, what is missing and what the token offers. The plugin calls it
// once per scheme among the versions it loads.
Status CanServe(const TokenCapabilities& token, KeyScheme scheme, GcmIvSource iv_source = GcmIvSource::kCaller);

}  // namespace trousseau::hsm
