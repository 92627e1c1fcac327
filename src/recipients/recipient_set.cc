#include "recipients/recipient_set.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <array>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "core/big_endian.h"
#include "core/strings.h"
#include "recipients/p256.h"
#include "recipients/sealing_key.h"

namespace trousseau::recipients {
namespace {

using json = nlohmann::json;

constexpr std::string_view kKind = "trousseau-hsm/recipient-set";
constexpr std::string_view kSigningDomain = "trousseau-hsm recipient set v1";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void AppendField(std::string& out, std::string_view field) {
  std::array<uint8_t, 4> len{};
  StoreBigEndian<4>(field.size(), len);
  out.append(reinterpret_cast<const char*>(len.data()), len.size());
  out.append(field);
}

std::string Sha256(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest.data()), len);
}

// A required string member of `object`; INVALID_ARGUMENT names `where`.`key`.
StatusOr<std::string> StringField(const json& object, std::string_view key, std::string_view where) {
  auto it = object.find(std::string(key));
  if (it == object.end() || !it->is_string()) {
    return InvalidArgumentError(StrCat("recipient set: ", where, key, " must be a string"));
  }
  return it->get<std::string>();
}

Status OnlyKnownFields(const json& object, const std::set<std::string>& known, std::string_view where) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (!known.contains(it.key())) {
      return InvalidArgumentError(StrCat("recipient set: unknown field ", where, QuoteForMessage(it.key()),
                                         " (a signed set may hold nothing its signatures do not cover)"));
    }
  }
  return OkStatus();
}

StatusOr<Recipient> MemberFromJson(const json& m) {
  if (!m.is_object()) return InvalidArgumentError("recipient set: each recipient must be an object");
  if (Status s = OnlyKnownFields(m, {"id", "device", "public_key", "tpm_name"}, "recipients[]."); !s.ok()) return s;
  Recipient r;
  StatusOr<std::string> id = StringField(m, "id", "recipients[].");
  StatusOr<std::string> device = StringField(m, "device", "recipients[].");
  StatusOr<std::string> key_hex = StringField(m, "public_key", "recipients[].");
  if (!id.ok()) return id.status();
  if (!device.ok()) return device.status();
  if (!key_hex.ok()) return key_hex.status();
  r.id = *std::move(id);
  r.device = *std::move(device);
  StatusOr<std::string> key = HexDecode(*key_hex, StrCat("recipient '", r.id, "' public_key"));
  if (!key.ok()) return key.status();
  r.public_key = *std::move(key);
  if (m.contains("tpm_name")) {
    StatusOr<std::string> tpm_hex = StringField(m, "tpm_name", "recipients[].");
    if (!tpm_hex.ok()) return tpm_hex.status();
    StatusOr<std::string> tpm_name = HexDecode(*tpm_hex, StrCat("recipient '", r.id, "' tpm_name"));
    if (!tpm_name.ok()) return tpm_name.status();
    r.tpm_name = *std::move(tpm_name);
  }
  return r;
}

json MemberToJson(const Recipient& r) {
  json m = {{"id", r.id}, {"device", r.device}, {"public_key", HexEncode(r.public_key)}};
  if (!r.tpm_name.empty()) m["tpm_name"] = HexEncode(r.tpm_name);
  return m;
}

}  // namespace

Status CheckRecipientSet(const RecipientSet& set) {
  if (!ValidName(set.name)) {
    return InvalidArgumentError(
        StrCat("recipient set: name ", QuoteForMessage(set.name), " must be 1-63 characters of A-Z a-z 0-9 . _ -"));
  }
  if (set.epoch == 0) return InvalidArgumentError("recipient set: epoch must be at least 1");
  if (set.recipients.empty()) return InvalidArgumentError("recipient set: it has no recipients");
  if (set.recipients.size() > kMaxRecipients) {
    return InvalidArgumentError(StrCat("recipient set: ", set.recipients.size(), " recipients; at most ",
                                       kMaxRecipients, " fit in kube-apiserver's 1024-byte ciphertext"));
  }
  std::set<std::string> ids, keys;
  for (const Recipient& r : set.recipients) {
    if (!ValidName(r.id)) {
      return InvalidArgumentError(StrCat("recipient set: recipient id ", QuoteForMessage(r.id),
                                         " must be 1-63 characters of A-Z a-z 0-9 . _ -"));
    }
    if (r.device != "tpm2" && r.device != "pkcs11") {
      return InvalidArgumentError(StrCat("recipient set: recipient '", r.id, "' has device ", QuoteForMessage(r.device),
                                         "; it must be tpm2 or pkcs11"));
    }
    StatusOr<std::string> point = UncompressedPoint(r.public_key);
    if (!point.ok() || *point != r.public_key) {
      return InvalidArgumentError(
          StrCat("recipient set: recipient '", r.id, "' has no valid uncompressed P-256 public key"));
    }
    if (!ids.insert(r.id).second)
      return InvalidArgumentError(StrCat("recipient set: two recipients named '", r.id, "'"));
    if (!keys.insert(r.public_key).second) {
      return InvalidArgumentError(StrCat("recipient set: recipient '", r.id, "' has the public key of another member"));
    }
  }
  return OkStatus();
}

StatusOr<RecipientSet> ParseRecipientSet(std::string_view json_text) {
  const json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return InvalidArgumentError("recipient set: not a JSON object");
  if (Status s = OnlyKnownFields(doc, {"kind", "name", "epoch", "recipients", "sealing_key", "signatures"}, "");
      !s.ok()) {
    return s;
  }
  StatusOr<std::string> kind = StringField(doc, "kind", "");
  if (!kind.ok()) return kind.status();
  if (*kind != kKind) return InvalidArgumentError(StrCat("recipient set: kind must be \"", kKind, "\""));
  RecipientSet set;
  StatusOr<std::string> name = StringField(doc, "name", "");
  if (!name.ok()) return name.status();
  set.name = *std::move(name);
  auto epoch = doc.find("epoch");
  if (epoch == doc.end() || !epoch->is_number_unsigned()) {
    return InvalidArgumentError("recipient set: epoch must be a positive integer");
  }
  set.epoch = epoch->get<uint64_t>();
  auto members = doc.find("recipients");
  if (members == doc.end() || !members->is_array())
    return InvalidArgumentError("recipient set: recipients must be a list");
  for (const json& m : *members) {
    StatusOr<Recipient> r = MemberFromJson(m);
    if (!r.ok()) return r.status();
    set.recipients.push_back(*std::move(r));
  }
  if (Status s = CheckRecipientSet(set); !s.ok()) return s;
  if (auto sealing = doc.find("sealing_key"); sealing != doc.end()) {
    if (!sealing->is_string()) return InvalidArgumentError("recipient set: sealing_key must be a string");
    StatusOr<std::string> raw = HexDecode(sealing->get<std::string>(), "sealing_key");
    if (!raw.ok()) return raw.status();
    set.sealing_key = *std::move(raw);
  }
  if (Status s = CheckSealingKey(set); !s.ok()) return s;
  if (auto sigs = doc.find("signatures"); sigs != doc.end()) {
    if (!sigs->is_array()) return InvalidArgumentError("recipient set: signatures must be a list");
    for (const json& sig : *sigs) {
      if (!sig.is_object()) return InvalidArgumentError("recipient set: each signature must be an object");
      if (Status s = OnlyKnownFields(sig, {"signer", "signature"}, "signatures[]."); !s.ok()) return s;
      StatusOr<std::string> signer = StringField(sig, "signer", "signatures[].");
      StatusOr<std::string> hex = StringField(sig, "signature", "signatures[].");
      if (!signer.ok()) return signer.status();
      if (!hex.ok()) return hex.status();
      StatusOr<std::string> raw = HexDecode(*hex, "a signature");
      if (!raw.ok()) return raw.status();
      set.signatures.push_back({.signer = *std::move(signer), .signature = *std::move(raw)});
    }
  }
  return set;
}

std::string SerializeRecipientSet(const RecipientSet& set) {
  json doc = json::object();
  doc["kind"] = kKind;
  doc["name"] = set.name;
  doc["epoch"] = set.epoch;
  json members = json::array();
  for (const Recipient& r : set.recipients) members.push_back(MemberToJson(r));
  doc["recipients"] = std::move(members);
  doc["sealing_key"] = HexEncode(set.sealing_key);
  json sigs = json::array();
  for (const SetSignature& s : set.signatures) {
    sigs.push_back({{"signer", s.signer}, {"signature", HexEncode(s.signature)}});
  }
  doc["signatures"] = std::move(sigs);
  return doc.dump(2) + "\n";
}

std::string SigningBytes(const RecipientSet& set) {
  std::string out;
  AppendField(out, kSigningDomain);
  AppendField(out, set.name);
  std::array<uint8_t, 8> epoch{};
  StoreBigEndian<8>(set.epoch, epoch);
  AppendField(out, {reinterpret_cast<const char*>(epoch.data()), epoch.size()});
  std::array<uint8_t, 4> count{};
  StoreBigEndian<4>(set.recipients.size(), count);
  out.append(reinterpret_cast<const char*>(count.data()), count.size());
  for (const Recipient& r : set.recipients) {
    AppendField(out, r.id);
    AppendField(out, r.device);
    AppendField(out, r.public_key);
    AppendField(out, r.tpm_name);
  }
  AppendField(out, set.sealing_key);
  return out;
}

std::string SetDigest(const RecipientSet& set) { return Sha256(SigningBytes(set)); }

StatusOr<AdminKey> AdminKey::FromPem(std::string_view pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) return InvalidArgumentError("administrator key: not a PEM public key (openssl pkey -pubout writes one)");
  if (!EVP_PKEY_is_a(key.get(), "ED25519")) return InvalidArgumentError("administrator key: not an Ed25519 key");
  AdminKey admin;
  admin.raw_.resize(32);
  size_t len = admin.raw_.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(admin.raw_.data()), &len) != 1 ||
      len != 32) {
    return InvalidArgumentError("administrator key: cannot read the Ed25519 public key");
  }
  admin.id_ = HexEncode(Sha256(admin.raw_).substr(0, 8));
  return admin;
}

bool AdminKey::Verifies(std::string_view message, std::string_view signature) const {
  std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw_.data()), raw_.size()));
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  return key && ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
         EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                          reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
}

Status VerifySet(const RecipientSet& set, const AdminPolicy& policy) {
  if (policy.keys.empty() || policy.threshold == 0) {
    return FailedPreconditionError("no administrator key configured to verify recipient sets with");
  }
  const std::string message = SigningBytes(set);
  std::set<std::string> good;
  std::vector<std::string> bad;
  for (const SetSignature& sig : set.signatures) {
    bool matched = false;
    for (const AdminKey& key : policy.keys) {
      if (key.id() != sig.signer) continue;
      matched = true;
      if (key.Verifies(message, sig.signature)) {
        good.insert(key.id());
      } else {
        bad.push_back(StrCat(sig.signer, " (does not verify)"));
      }
    }
    if (!matched) bad.push_back(StrCat(QuoteForMessage(sig.signer), " (not a configured administrator key)"));
  }
  if (good.size() >= policy.threshold) return OkStatus();
  std::vector<std::string> valid(good.begin(), good.end());
  return PermissionDeniedError(StrCat("recipient set '", set.name, "' epoch ", set.epoch, " has ", good.size(),
                                      " valid administrator signature(s)", good.empty() ? "" : " (",
                                      StrJoin(valid, ", "), good.empty() ? "" : ")", ", ", policy.threshold, " needed",
                                      bad.empty() ? "" : "; ignored: ", StrJoin(bad, ", ")));
}

StatusOr<SetSignature> SignSet(const RecipientSet& set, std::string_view private_pem) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(private_pem.data(), static_cast<int>(private_pem.size())));
  std::unique_ptr<EVP_PKEY, PkeyFree> key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr)
                                              : nullptr);
  if (!key || !EVP_PKEY_is_a(key.get(), "ED25519")) {
    return InvalidArgumentError("administrator private key: not an unencrypted Ed25519 PEM private key");
  }
  std::string raw_pub(32, '\0');
  size_t len = raw_pub.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), reinterpret_cast<unsigned char*>(raw_pub.data()), &len) != 1) {
    return InternalError("cannot read the administrator key's public half");
  }
  const std::string message = SigningBytes(set);
  std::string signature(64, '\0');
  size_t sig_len = signature.size();
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &sig_len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1) {
    return InternalError("Ed25519 signing failed");
  }
  signature.resize(sig_len);
  return SetSignature{.signer = HexEncode(Sha256(raw_pub).substr(0, 8)), .signature = std::move(signature)};
}

StatusOr<Recipient> ParseMember(std::string_view json_text) {
  const json doc = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return InvalidArgumentError("recipient: not JSON");
  StatusOr<Recipient> r = MemberFromJson(doc);
  if (!r.ok()) return r.status();
  // The checks a set applies to each member.
  RecipientSet alone{.name = "check", .epoch = 1, .recipients = {*r}, .sealing_key = "", .signatures = {}};
  if (Status s = CheckRecipientSet(alone); !s.ok()) return s;
  return r;
}

std::string SerializeMember(const Recipient& member) { return MemberToJson(member).dump(2) + "\n"; }

}  // namespace trousseau::recipients
