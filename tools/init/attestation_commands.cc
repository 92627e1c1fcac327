#include "tools/init/attestation_commands.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/secure_bytes.h"
#include "core/strings.h"
#include "recipients/p256.h"
#include "tools/init/init_tool.h"
#include "tpm/attestation.h"

namespace trousseau::init {
namespace {

using json = nlohmann::json;

constexpr std::string_view kChallengeKind = "trousseau-hsm/attestation-challenge";
constexpr size_t kAnswerSize = 32;

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError(StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Sha256(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest.data()), len);
}

StatusOr<std::string> HexField(const json& object, const char* key, std::string_view where) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return InvalidArgumentError(StrCat(where, key, " must be a hex string"));
  return recipients::HexDecode(it->get<std::string>(), StrCat(where, key));
}

struct Challenge {
  std::string member_id;
  std::string public_key;
  std::string ak_name;
  tpm::CredentialChallenge credential;
  std::string answer_sha256;
};

StatusOr<Challenge> ReadChallenge(const std::string& path) {
  StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  const json doc = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("kind", "") != kChallengeKind) {
    return InvalidArgumentError(StrCat(path, ": not an attestation challenge (recipients challenge writes one)"));
  }
  Challenge c;
  if (!doc.contains("member") || !doc["member"].is_string()) return InvalidArgumentError(StrCat(path, ": no member"));
  c.member_id = doc["member"].get<std::string>();
  const std::string where = StrCat(path, ": ");
  for (auto [key, field] :
       {std::pair{"public_key", &c.public_key}, std::pair{"ak_name", &c.ak_name},
        std::pair{"credential_blob", &c.credential.credential_blob},
        std::pair{"encrypted_secret", &c.credential.encrypted_secret}, std::pair{"answer_sha256", &c.answer_sha256}}) {
    StatusOr<std::string> value = HexField(doc, key, where);
    if (!value.ok()) return value.status();
    *field = *std::move(value);
  }
  return c;
}

StatusOr<std::string> ReadCaBundle(const std::string& path) {
  StatusOr<std::string> pem = ReadText(path);
  if (!pem.ok()) return InvalidArgumentError(StrCat("--ek-ca ", path, ": cannot read it"));
  return pem;
}

// The evidence, the EK certificate; returns the AK name.
StatusOr<std::string> VerifyEvidence(const MemberFile& member, const std::string& ca_pem) {
  if (member.member.device != "tpm2") {
    return InvalidArgumentError(StrCat("member '", member.member.id, "' is no TPM: only TPM members are attested"));
  }
  if (!member.evidence.has_value()) {
    return PermissionDeniedError(
        StrCat("member '", member.member.id, "' carries no attestation: export it with tpm recipient export --attest"));
  }
  const std::string qualifying = tpm::AttestationQualifyingData(member.member.id, member.member.public_key);
  StatusOr<std::string> ak_name =
      tpm::VerifyRecipientEvidence(*member.evidence, member.member.public_key, member.member.tpm_name, qualifying);
  if (!ak_name.ok()) return ak_name.status();
  if (Status s = tpm::VerifyEkCertificate(*member.evidence, ca_pem); !s.ok()) return s;
  return ak_name;
}

}  // namespace

json EvidenceToJson(const tpm::RecipientEvidence& e) {
  return {{"ek_public", HexEncode(e.ek_public)},       {"ek_certificate", HexEncode(e.ek_certificate)},
          {"ak_public", HexEncode(e.ak_public)},       {"recipient_public", HexEncode(e.recipient_public)},
          {"certify_info", HexEncode(e.certify_info)}, {"certify_signature", HexEncode(e.certify_signature)}};
}

StatusOr<tpm::RecipientEvidence> EvidenceFromJson(const json& object) {
  if (!object.is_object()) return InvalidArgumentError("attestation must be an object");
  tpm::RecipientEvidence e;
  for (auto [key, field] :
       {std::pair{"ek_public", &e.ek_public}, std::pair{"ek_certificate", &e.ek_certificate},
        std::pair{"ak_public", &e.ak_public}, std::pair{"recipient_public", &e.recipient_public},
        std::pair{"certify_info", &e.certify_info}, std::pair{"certify_signature", &e.certify_signature}}) {
    StatusOr<std::string> value = HexField(object, key, "attestation.");
    if (!value.ok()) return value.status();
    *field = *std::move(value);
  }
  return e;
}

StatusOr<MemberFile> ReadMemberFile(const std::string& path) {
  StatusOr<std::string> text = ReadText(path);
  if (!text.ok()) return text.status();
  json doc = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return InvalidArgumentError(StrCat(path, ": not a member JSON object"));
  MemberFile file;
  if (auto it = doc.find("attestation"); it != doc.end()) {
    StatusOr<tpm::RecipientEvidence> evidence = EvidenceFromJson(*it);
    if (!evidence.ok()) return InvalidArgumentError(StrCat(path, ": ", evidence.status().message()));
    file.evidence = *std::move(evidence);
    doc.erase(it);
  }
  StatusOr<recipients::Recipient> member = recipients::ParseMember(doc.dump());
  if (!member.ok()) return InvalidArgumentError(StrCat(path, ": ", member.status().message()));
  file.member = *std::move(member);
  return file;
}

int RecipientsChallenge(const AttestationOptions& options) {
  StatusOr<MemberFile> member = ReadMemberFile(options.member_file);
  if (!member.ok()) return Fail(kExitUsage, member.status().message());
  StatusOr<std::string> ca = ReadCaBundle(options.ek_ca_file);
  if (!ca.ok()) return Fail(kExitUsage, ca.status().message());
  StatusOr<std::string> ak_name = VerifyEvidence(*member, *ca);
  if (!ak_name.ok()) {
    return Fail(IsInvalidArgument(ak_name.status()) ? kExitUsage : kExitFailed,
                StrCat("not attested: ", ak_name.status().message()));
  }
  SecureBytes answer(kAnswerSize);
  if (RAND_priv_bytes(answer.data(), static_cast<int>(answer.size())) != 1) {
    return Fail(kExitFailed, "the system random number generator failed");
  }
  StatusOr<tpm::CredentialChallenge> credential = tpm::MakeCredential(member->evidence->ek_public, *ak_name, answer);
  if (!credential.ok()) return Fail(kExitFailed, credential.status().message());
  const json doc = {{"kind", kChallengeKind},
                    {"member", member->member.id},
                    {"public_key", HexEncode(member->member.public_key)},
                    {"ak_name", HexEncode(*ak_name)},
                    {"credential_blob", HexEncode(credential->credential_blob)},
                    {"encrypted_secret", HexEncode(credential->encrypted_secret)},
                    {"answer_sha256", HexEncode(Sha256(answer.view()))}};
  std::ofstream out(options.challenge_file, std::ios::binary | std::ios::trunc);
  out << doc.dump(2) << "\n";
  out.close();
  if (!out) return Fail(kExitFailed, StrCat("cannot write ", options.challenge_file));
  std::cout << "member '" << member->member.id << "': evidence and EK certificate verified; challenge written to "
            << options.challenge_file << ". Run `tpm recipient activate --challenge` on that node and give its answer "
            << "to `recipients add --answer`\n";
  return kExitOk;
}

int TpmRecipientActivate(const AttestationOptions& options) {
  StatusOr<Challenge> challenge = ReadChallenge(options.challenge_file);
  if (!challenge.ok()) return Fail(kExitUsage, challenge.status().message());
  const tpm::RecipientConfig config{.tcti = options.tcti, .recipient_dir = options.recipient_dir};
  StatusOr<SecureBytes> answer =
      tpm::AnswerChallenge(config, challenge->credential.credential_blob, challenge->credential.encrypted_secret);
  if (!answer.ok()) return Fail(kExitFailed, answer.status().message());
  // A one-time proof for the administrators, public like the challenge: printed for them to carry.
  std::cout << HexEncode(answer->view()) << "\n";
  return kExitOk;
}

StatusOr<std::string> CheckAttestedMember(const MemberFile& member, const AttestationOptions& options) {
  if (options.challenge_file.empty() || options.answer_file.empty()) {
    return InvalidArgumentError(
        "--ek-ca needs --challenge (from recipients challenge) and --answer (what tpm "
        "recipient activate printed on the node)");
  }
  StatusOr<std::string> ca = ReadCaBundle(options.ek_ca_file);
  if (!ca.ok()) return ca.status();
  StatusOr<std::string> ak_name = VerifyEvidence(member, *ca);
  if (!ak_name.ok()) return ak_name.status();
  StatusOr<Challenge> challenge = ReadChallenge(options.challenge_file);
  if (!challenge.ok()) return challenge.status();
  if (challenge->member_id != member.member.id || challenge->public_key != member.member.public_key ||
      challenge->ak_name != *ak_name) {
    return PermissionDeniedError(StrCat(options.challenge_file, " was made for another member or TPM"));
  }
  StatusOr<std::string> answer_text = ReadText(options.answer_file);
  if (!answer_text.ok()) return answer_text.status();
  std::string hex = *answer_text;
  std::erase_if(hex, [](char c) { return c == '\n' || c == '\r' || c == ' '; });
  StatusOr<std::string> answer = recipients::HexDecode(hex, "the answer");
  if (!answer.ok()) return answer.status();
  if (Sha256(*answer) != challenge->answer_sha256) {
    return PermissionDeniedError(
        "the answer does not open the challenge: it did not come from the TPM that holds "
        "this endorsement key and attestation key");
  }
  return StrCat("attested: the key is fixedTPM in a TPM whose EK certificate chains to ", options.ek_ca_file,
                ", proven by TPM2_Certify and TPM2_ActivateCredential");
}

}  // namespace trousseau::init
