#include "tools/init/recipient_commands.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "core/key_id.h"
#include "core/secure_bytes.h"
#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/pin_source.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/recipient_admin.h"
#include "recipients/recipient_backend.h"
#include "recipients/recipient_set.h"
#include "recipients/sealing_key.h"
#include "tools/init/init_tool.h"
#include "tpm/attestation.h"
#include "tpm/recipient_provisioning.h"

namespace trousseau::init {
namespace {

using recipients::Recipient;
using recipients::RecipientSet;

int Fail(int code, std::string_view message) {
  std::cerr << kToolName << ": " << message << "\n";
  return code;
}

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return FailedPreconditionError(StrCat("cannot read ", path, ": ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Written next to the file and renamed over it: a reader never sees half a set.
Status WriteText(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return FailedPreconditionError(StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  }
  ::chmod(tmp.c_str(), 0644);  // public: members and signatures only
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return FailedPreconditionError(StrCat("cannot replace ", path, ": ", std::strerror(errno)));
  }
  return OkStatus();
}

StatusOr<RecipientSet> LoadSet(const std::string& path) {
  StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  StatusOr<RecipientSet> set = recipients::ParseRecipientSet(*text);
  if (!set.ok()) return InvalidArgumentError(StrCat(path, ": ", set.status().message()));
  return set;
}

std::string KeyIdOf(const RecipientSet& set) {
  return DeriveKeyId(recipients::kRecipientBackendKind, recipients::kRecipientFamilyLabel, set.epoch,
                     recipients::SetDigest(set));
}

// A changed membership is a new epoch, and the old signatures no longer cover it. The epoch gets a
// sealing secret of its own, drawn here and sealed to the new members only (no one sees it, and a
// member removed now cannot seal envelopes of this epoch).
int WriteNewEpoch(const RecipientsOptions& options, RecipientSet set, std::string_view what) {
  set.signatures.clear();
  if (Status s = recipients::CheckRecipientSet(set); !s.ok()) return Fail(kExitUsage, s.message());
  if (Status s = recipients::DrawSealingKey(set); !s.ok()) return Fail(kExitFailed, s.message());
  if (Status s = WriteText(options.set_file, recipients::SerializeRecipientSet(set)); !s.ok()) {
    return Fail(kExitFailed, s.message());
  }
  std::cout << what << ": set '" << set.name << "' epoch " << set.epoch << ", " << set.recipients.size()
            << " member(s), unsigned. Sign it (recipients sign) and distribute it to every node\n";
  return kExitOk;
}

int PrintMember(Recipient member, const std::optional<tpm::RecipientEvidence>& evidence = std::nullopt) {
  if (Status s = recipients::ParseMember(recipients::SerializeMember(member)).status(); !s.ok()) {
    return Fail(kExitUsage, s.message());  // e.g. an id that is no valid member name
  }
  if (!evidence.has_value()) {
    std::cout << recipients::SerializeMember(member);
    return kExitOk;
  }
  nlohmann::json doc = nlohmann::json::parse(recipients::SerializeMember(member));
  doc["attestation"] = EvidenceToJson(*evidence);
  std::cout << doc.dump(2) << "\n";
  return kExitOk;
}

int TpmRecipient(const RecipientKeyOptions& options, bool create) {
  if (options.id.empty()) return Fail(kExitUsage, "--id (this member's name in the set) is required");
  const tpm::RecipientConfig config{.tcti = options.tcti, .recipient_dir = options.recipient_dir};
  StatusOr<tpm::RecipientInfo> info = create ? tpm::CreateRecipientKey(config) : tpm::ShowRecipient(config);
  if (!info.ok()) {
    const bool usage =
        info.status().code() == StatusCode::kFailedPrecondition || info.status().code() == StatusCode::kAlreadyExists;
    return Fail(usage ? kExitUsage : kExitFailed, info.status().message());
  }
  if (!info->fixed_tpm || !info->fixed_parent || !info->sensitive_data_origin) {
    return Fail(kExitFailed, "the TPM recipient key is not fixedTPM | fixedParent | sensitiveDataOrigin");
  }
  if (create) std::cerr << kToolName << ": created the TPM recipient key in " << options.recipient_dir << "\n";
  std::optional<tpm::RecipientEvidence> evidence;
  if (options.attest) {
    StatusOr<tpm::RecipientEvidence> attested =
        tpm::AttestRecipient(config, tpm::AttestationQualifyingData(options.id, info->public_point));
    if (!attested.ok()) return Fail(kExitFailed, StrCat("attesting the key: ", attested.status().message()));
    if (attested->ek_certificate.empty()) {
      std::cerr << kToolName << ": note: this TPM holds no RSA EK certificate (NV 0x01c00002); administrators "
                << "cannot tie it to a TPM maker\n";
    }
    evidence = *std::move(attested);
  }
  return PrintMember({.id = options.id, .device = "tpm2", .public_key = info->public_point, .tpm_name = info->tpm_name},
                     evidence);
}

int Pkcs11Recipient(const RecipientKeyOptions& options, bool create) {
  if (options.id.empty()) return Fail(kExitUsage, "--id (this member's name in the set) is required");
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(options.pkcs11_uri, hsm::KeyFamilyInUri::kOptionalWithRecipient);
  if (!uri.ok()) return Fail(kExitUsage, uri.status().message());
  if (!uri->recipient_label().has_value()) {
    return Fail(kExitUsage,
                "the URI names no recipient key: add x-recipient=LABEL (e.g. x-recipient=trousseau-recipient)");
  }
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
  if (!admin.ok()) {
    const bool config = admin.status().code() == StatusCode::kFailedPrecondition ||
                        admin.status().code() == StatusCode::kInvalidArgument;
    return Fail(config ? kExitUsage : kExitFailed, admin.status().message());
  }
  const std::string& label = *uri->recipient_label();
  StatusOr<hsm::RecipientKeyInfo> info =
      create ? hsm::CreateRecipientKey((*admin)->session(), (*admin)->token().slot, label)
             : hsm::ShowRecipient((*admin)->session(), label);
  if (!info.ok()) {
    const bool usage =
        info.status().code() == StatusCode::kFailedPrecondition || info.status().code() == StatusCode::kAlreadyExists;
    return Fail(usage ? kExitUsage : kExitFailed, info.status().message());
  }
  if (!info->violation.empty()) {
    return Fail(kExitFailed, StrCat("recipient key '", label, "': ", info->violation, "; the plugin would refuse it"));
  }
  if (create) {
    std::cerr << kToolName << ": created recipient key pair '" << label << "' on " << uri->token_description() << "\n";
  }
  return PrintMember({.id = options.id, .device = "pkcs11", .public_key = info->public_point, .tpm_name = ""});
}

}  // namespace

int TpmRecipientCreate(const RecipientKeyOptions& options) { return TpmRecipient(options, /*create=*/true); }
int TpmRecipientExport(const RecipientKeyOptions& options) { return TpmRecipient(options, /*create=*/false); }
int Pkcs11RecipientCreate(const RecipientKeyOptions& options) { return Pkcs11Recipient(options, /*create=*/true); }
int Pkcs11RecipientExport(const RecipientKeyOptions& options) { return Pkcs11Recipient(options, /*create=*/false); }

int RecipientsAdd(const RecipientsOptions& options) {
  StatusOr<MemberFile> member_file = ReadMemberFile(options.member_file);
  if (!member_file.ok()) return Fail(kExitUsage, member_file.status().message());
  std::string attested;
  if (!options.attestation.ek_ca_file.empty()) {
    StatusOr<std::string> checked = CheckAttestedMember(*member_file, options.attestation);
    if (!checked.ok()) {
      return Fail(IsInvalidArgument(checked.status()) ? kExitUsage : kExitFailed,
                  StrCat("member '", member_file->member.id, "' not added: ", checked.status().message()));
    }
    attested = *std::move(checked);
  }
  std::optional<Recipient> member = std::move(member_file->member);
  RecipientSet set;
  if (::access(options.set_file.c_str(), F_OK) == 0) {
    StatusOr<RecipientSet> loaded = LoadSet(options.set_file);
    if (!loaded.ok()) return Fail(kExitUsage, loaded.status().message());
    set = *std::move(loaded);
    if (!options.name.empty() && options.name != set.name) {
      return Fail(kExitUsage, StrCat(options.set_file, " is set '", set.name, "', not '", options.name, "'"));
    }
    ++set.epoch;
  } else {
    if (options.name.empty()) {
      return Fail(kExitUsage, StrCat(options.set_file, " does not exist; give --name to start a new set"));
    }
    set.name = options.name;
    set.epoch = 1;
  }
  for (const Recipient& r : set.recipients) {
    if (r.id == member->id) return Fail(kExitUsage, StrCat("set '", set.name, "' already has member '", r.id, "'"));
  }
  const std::string added =
      StrCat("added '", member->id, "' (", member->device, ", ",
             attested.empty() ? "not attested: nothing proves where its key lives" : attested, ")");
  set.recipients.push_back(*std::move(member));
  return WriteNewEpoch(options, std::move(set), added);
}

int RecipientsRemove(const RecipientsOptions& options) {
  StatusOr<RecipientSet> loaded = LoadSet(options.set_file);
  if (!loaded.ok()) return Fail(kExitUsage, loaded.status().message());
  RecipientSet set = *std::move(loaded);
  const size_t before = set.recipients.size();
  std::erase_if(set.recipients, [&](const Recipient& r) { return r.id == options.id; });
  if (set.recipients.size() == before) {
    return Fail(kExitUsage, StrCat("set '", set.name, "' has no member '", options.id, "'"));
  }
  if (set.recipients.empty()) return Fail(kExitUsage, StrCat("'", options.id, "' is the last member of the set"));
  ++set.epoch;
  return WriteNewEpoch(options, std::move(set), StrCat("removed '", options.id, "'"));
}

int RecipientsSign(const RecipientsOptions& options) {
  StatusOr<RecipientSet> loaded = LoadSet(options.set_file);
  if (!loaded.ok()) return Fail(kExitUsage, loaded.status().message());
  RecipientSet set = *std::move(loaded);
  // The private key is checked as a PIN file is: a regular file only its owner can read.
  StatusOr<SecureBytes> key = hsm::ReadSecretFile(options.admin_key_file, "administrator key file");
  if (!key.ok()) return Fail(kExitUsage, key.status().message());
  std::string pem;
  pem.reserve(key->size() + 1);  // one buffer, the one wiped below: no copy left behind by a reallocation
  pem.append(key->view());
  pem.push_back('\n');
  StatusOr<recipients::SetSignature> signature = recipients::SignSet(set, pem);
  WipeMemory(pem.data(), pem.size());
  if (!signature.ok()) return Fail(kExitUsage, signature.status().message());
  for (const recipients::SetSignature& existing : set.signatures) {
    if (existing.signer == signature->signer) {
      return Fail(kExitUsage, StrCat("administrator key ", signature->signer, " has signed this set already"));
    }
  }
  set.signatures.push_back(*std::move(signature));
  if (Status s = WriteText(options.set_file, recipients::SerializeRecipientSet(set)); !s.ok()) {
    return Fail(kExitFailed, s.message());
  }
  std::cout << "signed set '" << set.name << "' epoch " << set.epoch << " with administrator key "
            << set.signatures.back().signer << " (" << set.signatures.size() << " signature(s))\n";
  return kExitOk;
}

int RecipientsShow(const RecipientsOptions& options) {
  StatusOr<RecipientSet> loaded = LoadSet(options.set_file);
  if (!loaded.ok()) return Fail(kExitUsage, loaded.status().message());
  const RecipientSet& set = *loaded;
  std::optional<Status> verified;
  if (!options.admin_public_keys.empty()) {
    recipients::AdminPolicy policy{.keys = {}, .threshold = options.threshold};
    for (const std::string& path : options.admin_public_keys) {
      StatusOr<std::string> pem = ReadText(path);
      if (!pem.ok()) return Fail(kExitUsage, pem.status().message());
      StatusOr<recipients::AdminKey> key = recipients::AdminKey::FromPem(*pem);
      if (!key.ok()) return Fail(kExitUsage, StrCat(path, ": ", key.status().message()));
      policy.keys.push_back(*std::move(key));
    }
    verified = recipients::VerifySet(set, policy);
  }
  const std::string key_id = KeyIdOf(set);
  if (options.json) {
    std::cout << "{\"name\":" << JsonQuote(set.name) << ",\"epoch\":" << set.epoch
              << ",\"key_id\":" << JsonQuote(key_id) << ",\"members\":[";
    for (size_t i = 0; i < set.recipients.size(); ++i) {
      const Recipient& r = set.recipients[i];
      std::cout << (i ? "," : "") << "{\"index\":" << i << ",\"id\":" << JsonQuote(r.id)
                << ",\"device\":" << JsonQuote(r.device) << ",\"public_key\":" << JsonQuote(HexEncode(r.public_key))
                << "}";
    }
    std::cout << "],\"signers\":[";
    for (size_t i = 0; i < set.signatures.size(); ++i) {
      std::cout << (i ? "," : "") << JsonQuote(set.signatures[i].signer);
    }
    std::cout << "]";
    if (verified) {
      std::cout << ",\"verified\":" << (verified->ok() ? "true" : "false");
      if (!verified->ok()) std::cout << ",\"verify_error\":" << JsonQuote(verified->message());
    }
    std::cout << "}\n";
  } else {
    std::cout << "recipient set '" << set.name << "' epoch " << set.epoch << ": " << set.recipients.size()
              << " member(s)\n";
    for (size_t i = 0; i < set.recipients.size(); ++i) {
      const Recipient& r = set.recipients[i];
      std::cout << "  " << i << "  " << r.id << "  " << r.device << "  public key "
                << HexEncode(r.public_key).substr(0, 16) << "…\n";
    }
    std::cout << "key_id: " << key_id << " (what every plugin holding this set reports)\n";
    std::cout << "sealing key: " << set.sealing_key.size() << " bytes, sealed to all " << set.recipients.size()
              << " member(s) (envelopes are tagged under it: only members can seal)\n";
    std::cout << "signatures: " << set.signatures.size();
    for (const recipients::SetSignature& sig : set.signatures) std::cout << " " << sig.signer;
    std::cout << "\n";
    if (verified) std::cout << (verified->ok() ? "verified" : StrCat("NOT verified: ", verified->message())) << "\n";
  }
  if (verified && !verified->ok()) return kExitFailed;
  return kExitOk;
}

}  // namespace trousseau::init
