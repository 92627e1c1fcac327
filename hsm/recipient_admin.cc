#include "hsm/recipient_admin.h"

#include <openssl/rand.h>

#include "core/strings.h"
#include "hsm/capabilities.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/ecdh.h"
#include "hsm/p11/provisioning_calls.h"

namespace trousseau::hsm {
namespace {

// Random rather than a number: the CKA_ID only pairs the two halves, and must not meet a KEK version's
// CKA_ID on tokens that keep CKA_IDs unique (NSS softoken, see key_admin.h).
constexpr size_t kRecipientIdSize = 16;

StatusOr<std::string> FreshId() {
  std::string id(kRecipientIdSize, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(id.data()), static_cast<int>(id.size())) != 1) {
    return InternalError("no random bytes for the recipient key's CKA_ID");
  }
  return id;
}

// The pair the token made is not the one asked for: take it off the token, and say why (and whether
// that failed too).
Status Withdraw(const Session& session, const p11::KeyPairHandles& made, Status why) {
  std::vector<std::string> failures;
  for (CK_OBJECT_HANDLE object : {made.private_key, made.public_key}) {
    if (Status s = p11::DestroyObject(session, object); !s.ok()) failures.emplace_back(s.message());
  }
  if (failures.empty()) return Status(why.code(), StrCat(why.message(), "; the key pair was destroyed again"));
  return Status(why.code(), StrCat(why.message(), "; destroying the key pair failed too (", StrJoin(failures, "; "),
                                   "): delete it with the token's own tool"));
}

}  // namespace

StatusOr<RecipientKeyInfo> CreateRecipientKey(const Session& session, CK_SLOT_ID slot, std::string_view label) {
  if (label.empty()) return InvalidArgumentError("the recipient key needs a label");
  StatusOr<TokenCapabilities> capabilities = ReadTokenCapabilities(session.api(), slot);
  if (!capabilities.ok()) return capabilities.status();
  if (Status s = CanHoldRecipient(*capabilities); !s.ok()) return s;
  StatusOr<bool> in_use = RecipientLabelInUse(session, label);
  if (!in_use.ok()) return in_use.status();
  if (*in_use) {
    return AlreadyExistsError(StrCat("a key labelled '", label,
                                     "' is already on the token; the recipient key is made once (show it instead)"));
  }
  StatusOr<std::string> id = FreshId();
  if (!id.ok()) return id.status();

  p11::AttributeTemplate public_template;
  public_template.Add(CKA_EC_PARAMS, p11::kP256EcParams)
      .Add(CKA_LABEL, label)
      .Add(CKA_ID, *id)
      .Add(CKA_TOKEN, true)
      .Add(CKA_PRIVATE, false)  // the point is public: anyone may wrap to it
      .Add(CKA_DERIVE, false)
      .Add(CKA_VERIFY, false);
  p11::AttributeTemplate private_template;
  private_template.Add(CKA_LABEL, label)
      .Add(CKA_ID, *id)
      .Add(CKA_TOKEN, true)
      .Add(CKA_PRIVATE, true)
      .Add(CKA_SENSITIVE, true)
      .Add(CKA_EXTRACTABLE, false)
      .Add(CKA_DERIVE, true)
      .Add(CKA_SIGN, false)
      .Add(CKA_DECRYPT, false)
      .Add(CKA_UNWRAP, false);
  StatusOr<p11::KeyPairHandles> made =
      p11::GenerateKeyPair(session, CKM_EC_KEY_PAIR_GEN, public_template, private_template,
                           StrCat("generating the P-256 recipient key '", label, "'"));
  if (!made.ok()) return made.status();
  StatusOr<RecipientKeyInfo> info = ShowRecipient(session, label);
  if (!info.ok()) return Withdraw(session, *made, info.status());
  if (!info->violation.empty()) {
    return Withdraw(session, *made,
                    FailedPreconditionError(
                        StrCat("the token made the recipient key '", label, "' other than asked: ", info->violation)));
  }
  return info;
}

}  // namespace trousseau::hsm
