#include "hsm/recipient_key.h"

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include <memory>
#include <optional>

#include "core/recipient_device.h"
#include "core/strings.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/ecdh.h"
#include "hsm/p11/object_finder.h"

namespace trousseau::hsm {
namespace {

p11::AttributeTemplate LabelledKeys(CK_OBJECT_CLASS object_class, std::string_view label) {
  p11::AttributeTemplate match;
  match.Add(CKA_CLASS, CK_ULONG{object_class}).Add(CKA_LABEL, label);
  return match;
}

StatusOr<RecipientKeyPolicy> ReadPolicy(const Session& session, CK_OBJECT_HANDLE private_key) {
  const size_t flag = sizeof(CK_BBOOL);
  StatusOr<p11::AttributeReader> read = p11::AttributeReader::Read(session, private_key,
                                                                   {{CKA_KEY_TYPE, sizeof(CK_ULONG)},
                                                                    {CKA_EC_PARAMS, 64},
                                                                    {CKA_TOKEN, flag},
                                                                    {CKA_PRIVATE, flag},
                                                                    {CKA_SENSITIVE, flag},
                                                                    {CKA_EXTRACTABLE, flag},
                                                                    {CKA_ALWAYS_SENSITIVE, flag},
                                                                    {CKA_NEVER_EXTRACTABLE, flag},
                                                                    {CKA_DERIVE, flag},
                                                                    {CKA_SIGN, flag},
                                                                    {CKA_DECRYPT, flag},
                                                                    {CKA_UNWRAP, flag}});
  if (!read.ok()) return read.status();
  RecipientKeyPolicy policy;
  policy.is_p256 = read->Ulong(CKA_KEY_TYPE) == CK_ULONG{CKK_EC} && read->Bytes(CKA_EC_PARAMS) == p11::kP256EcParams;
  policy.token = read->Bool(CKA_TOKEN).value_or(false);
  policy.is_private = read->Bool(CKA_PRIVATE).value_or(false);
  policy.sensitive = read->Bool(CKA_SENSITIVE).value_or(false);
  policy.extractable = read->Bool(CKA_EXTRACTABLE).value_or(true);
  policy.always_sensitive = read->Bool(CKA_ALWAYS_SENSITIVE).value_or(false);
  policy.never_extractable = read->Bool(CKA_NEVER_EXTRACTABLE).value_or(false);
  policy.derive = read->Bool(CKA_DERIVE).value_or(false);
  // Usages a module does not report are taken as allowed: the refusal names them.
  policy.sign = read->Bool(CKA_SIGN).value_or(true);
  policy.decrypt = read->Bool(CKA_DECRYPT).value_or(true);
  policy.unwrap = read->Bool(CKA_UNWRAP).value_or(true);
  return policy;
}

}  // namespace

std::string RecipientPolicyViolation(const RecipientKeyPolicy& policy) {
  if (!policy.is_p256) return "it is not an ECC P-256 key (CKK_EC with CKA_EC_PARAMS prime256v1)";
  if (!policy.token) return "it is not a token object (CKA_TOKEN=false): it ends with the session that made it";
  if (!policy.is_private) {
    return "it is not private (CKA_PRIVATE=false): any process that can open a session could use it without the PIN";
  }
  if (!policy.sensitive) return "it is not sensitive (CKA_SENSITIVE=false): its value could be read";
  if (policy.extractable) return "it is extractable (CKA_EXTRACTABLE=true): its value could leave the HSM";
  if (!policy.never_extractable) {
    return "it was extractable once (CKA_NEVER_EXTRACTABLE=false): a copy of its value may exist outside the HSM";
  }
  if (!policy.derive) return "it may not derive (CKA_DERIVE=false): ECDH needs it";
  if (policy.sign || policy.decrypt || policy.unwrap) {
    std::vector<std::string> extra;
    if (policy.sign) extra.emplace_back("sign");
    if (policy.decrypt) extra.emplace_back("decrypt");
    if (policy.unwrap) extra.emplace_back("unwrap");
    return StrCat("it may ", StrJoin(extra, ", "), " too (a recipient key does ECDH only: CKA_DERIVE alone)");
  }
  return "";
}

StatusOr<RecipientKeyObjects> FindRecipientKey(const Session& session, std::string_view label) {
  p11::AttributeTemplate private_match = LabelledKeys(CKO_PRIVATE_KEY, label);
  private_match.Add(CKA_KEY_TYPE, CK_ULONG{CKK_EC});
  StatusOr<std::vector<CK_OBJECT_HANDLE>> privates = p11::FindObjects(session, private_match);
  if (!privates.ok()) return privates.status();
  if (privates->empty()) return NotFoundError(StrCat("no recipient key '", label, "' on the token"));
  if (privates->size() > 1) {
    return FailedPreconditionError(StrCat("there are ", privates->size(), " EC private keys labelled '", label,
                                          "': which one is the recipient key would be a guess; keep one"));
  }
  RecipientKeyObjects found;
  found.private_key = privates->front();
  StatusOr<p11::AttributeReader> id = p11::AttributeReader::Read(session, found.private_key, {{CKA_ID, 256}});
  if (!id.ok()) return id.status();
  found.id = id->Bytes(CKA_ID).value_or("");
  p11::AttributeTemplate public_match = LabelledKeys(CKO_PUBLIC_KEY, label);
  public_match.Add(CKA_KEY_TYPE, CK_ULONG{CKK_EC}).Add(CKA_ID, found.id);
  StatusOr<std::vector<CK_OBJECT_HANDLE>> publics = p11::FindObjects(session, public_match);
  if (!publics.ok()) return publics.status();
  if (publics->empty()) {
    return FailedPreconditionError(StrCat("the recipient key '", label, "' has no public key beside it (CKA_ID ",
                                          HexEncode(found.id), "): its point cannot be given to the recipient set"));
  }
  found.public_key = publics->front();
  return found;
}

StatusOr<bool> RecipientLabelInUse(const Session& session, std::string_view label) {
  for (CK_OBJECT_CLASS object_class : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    p11::AttributeTemplate match = LabelledKeys(object_class, label);
    StatusOr<std::vector<CK_OBJECT_HANDLE>> found = p11::FindObjects(session, match);
    if (!found.ok()) return found.status();
    if (!found->empty()) return true;
  }
  return false;
}

StatusOr<RecipientKeyInfo> ShowRecipient(const Session& session, std::string_view label) {
  StatusOr<RecipientKeyObjects> objects = FindRecipientKey(session, label);
  if (!objects.ok()) return objects.status();
  RecipientKeyInfo info;
  info.label = std::string(label);
  info.id = objects->id;
  StatusOr<std::string> point = p11::ReadP256PublicPoint(session, objects->public_key);
  if (!point.ok()) return point.status();
  if (Status on_curve = CheckP256Point(*point); !on_curve.ok()) {
    return FailedPreconditionError(
        StrCat("the recipient key '", label, "' has a bad public point: ", on_curve.message()));
  }
  info.public_point = *std::move(point);
  StatusOr<RecipientKeyPolicy> policy = ReadPolicy(session, objects->private_key);
  if (!policy.ok()) return policy.status();
  info.policy = *policy;
  info.violation = RecipientPolicyViolation(info.policy);
  return info;
}

Status CheckP256Point(std::string_view point) {
  if (point.size() != kP256PointSize || point[0] != '\x04') {
    return InvalidArgumentError(StrCat("the point is not an uncompressed P-256 point (", point.size(),
                                       " bytes; 65 starting with 0x04 expected)"));
  }
  const std::unique_ptr<EC_GROUP, decltype(&EC_GROUP_free)> group(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1),
                                                                  EC_GROUP_free);
  if (!group) return InternalError("OpenSSL has no P-256 group");
  const std::unique_ptr<EC_POINT, decltype(&EC_POINT_free)> decoded(EC_POINT_new(group.get()), EC_POINT_free);
  if (!decoded) return InternalError("out of memory for an EC point");
  // EC_POINT_oct2point refuses coordinates outside the field and points that are not on the curve.
  if (EC_POINT_oct2point(group.get(), decoded.get(), reinterpret_cast<const unsigned char*>(point.data()), point.size(),
                         nullptr) != 1 ||
      EC_POINT_is_on_curve(group.get(), decoded.get(), nullptr) != 1) {
    ERR_clear_error();  // the caller's bytes, not an OpenSSL fault: nothing left for a later caller to misread
    return InvalidArgumentError("the point is not on the P-256 curve");
  }
  return OkStatus();
}

}  // namespace trousseau::hsm
