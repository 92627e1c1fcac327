// Attestation of TPM recipient keys (issue 14, docs/ha.md) on real swtpm instances manufactured with an
// EK certificate by swtpm_setup + swtpm_localca, as a TPM maker would: the evidence a node's TPM gives
// verifies against the maker's CA, a challenge made in software opens only in that TPM, and evidence
// for another key, member, TPM or CA does not pass.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/program_runner.h"
#include "tests/tpm/swtpm.h"
#include "tpm/attestation.h"
#include "tpm/attestation_evidence.h"
#include "tpm/recipient_provisioning.h"

namespace trousseau::tpm {
namespace {

using testing::Swtpm;
using testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Node {
  std::unique_ptr<Swtpm> tpm;
  RecipientConfig config;
  RecipientInfo recipient;
};

class TpmAttestationTest : public ::testing::Test {
 protected:
  // A node whose TPM was made by the maker whose CA lives in `ca`, with a recipient key.
  Node MakeNode(const std::string& name, const std::string& ca) {
    Node node;
    node.tpm = Swtpm::StartManufactured(dir_.path() + "/" + name, ca);
    EXPECT_NE(node.tpm, nullptr) << "swtpm_setup --create-ek-cert failed: see " << dir_.path() << "/" << name;
    if (!node.tpm) return node;
    node.config = RecipientConfig{.tcti = node.tpm->Tcti(), .recipient_dir = dir_.path() + "/" + name + "/rk"};
    StatusOr<RecipientInfo> info = CreateRecipientKey(node.config);
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    if (info.ok()) node.recipient = *std::move(info);
    return node;
  }

  TempDir dir_;
  const std::string maker_ca_ = dir_.path() + "/maker-ca";
};

TEST_F(TpmAttestationTest, EvidenceFromAGenuineTpmVerifiesAndOnlyThatTpmAnswersTheChallenge) {
  Node node = MakeNode("cp-1", maker_ca_);
  ASSERT_TRUE(node.tpm);
  const std::string qualifying = AttestationQualifyingData("cp-1", node.recipient.public_point);
  StatusOr<RecipientEvidence> evidence = AttestRecipient(node.config, qualifying);
  ASSERT_TRUE(evidence.ok()) << evidence.status().ToString();
  EXPECT_FALSE(evidence->ek_certificate.empty()) << "swtpm_setup wrote the RSA EK certificate to 0x01c00002";

  StatusOr<std::string> ak_name =
      VerifyRecipientEvidence(*evidence, node.recipient.public_point, node.recipient.tpm_name, qualifying);
  ASSERT_TRUE(ak_name.ok()) << ak_name.status().ToString();
  EXPECT_TRUE(VerifyEkCertificate(*evidence, ReadFile(maker_ca_ + "/ca-bundle.pem")).ok())
      << VerifyEkCertificate(*evidence, ReadFile(maker_ca_ + "/ca-bundle.pem")).ToString();

  const SecureBytes secret = SecureBytes::CopyOf("a challenge only cp-1 TPM opens.");
  StatusOr<CredentialChallenge> challenge = MakeCredential(evidence->ek_public, *ak_name, secret);
  ASSERT_TRUE(challenge.ok()) << challenge.status().ToString();
  StatusOr<SecureBytes> answer = AnswerChallenge(node.config, challenge->credential_blob, challenge->encrypted_secret);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  EXPECT_EQ(answer->view(), secret.view());

  // Another TPM (even of the same maker) cannot open it.
  Node other = MakeNode("cp-2", maker_ca_);
  ASSERT_TRUE(other.tpm);
  StatusOr<SecureBytes> stolen = AnswerChallenge(other.config, challenge->credential_blob, challenge->encrypted_secret);
  EXPECT_FALSE(stolen.ok());
  EXPECT_EQ(stolen.status().code(), StatusCode::kInvalidArgument) << stolen.status().ToString();
  StatusOr<RecipientEvidence> after = AttestRecipient(other.config, qualifying);
  EXPECT_TRUE(after.ok()) << "the TPM refused the challenge and goes on serving: " << after.status().ToString();

  // A challenge made for another attestation key name does not open in cp-1's TPM either.
  std::string wrong_name = *ak_name;
  wrong_name.back() ^= 1;
  StatusOr<CredentialChallenge> misdirected = MakeCredential(evidence->ek_public, wrong_name, secret);
  ASSERT_TRUE(misdirected.ok());
  EXPECT_FALSE(AnswerChallenge(node.config, misdirected->credential_blob, misdirected->encrypted_secret).ok());
}

TEST_F(TpmAttestationTest, EvidenceForAnotherMemberKeyTpmOrMakerIsRefused) {
  Node a = MakeNode("cp-1", maker_ca_);
  Node b = MakeNode("cp-2", dir_.path() + "/another-maker-ca");
  ASSERT_TRUE(a.tpm && b.tpm);
  const std::string qualifying = AttestationQualifyingData("cp-1", a.recipient.public_point);
  StatusOr<RecipientEvidence> evidence = AttestRecipient(a.config, qualifying);
  ASSERT_TRUE(evidence.ok()) << evidence.status().ToString();

  // Presented for another member id, or for another public key (a software key the attacker holds).
  EXPECT_EQ(VerifyRecipientEvidence(*evidence, a.recipient.public_point, a.recipient.tpm_name,
                                    AttestationQualifyingData("cp-9", a.recipient.public_point))
                .status()
                .code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(VerifyRecipientEvidence(*evidence, b.recipient.public_point, "", qualifying).status().code(),
            StatusCode::kPermissionDenied);
  // Another key's public area slipped in beside cp-1's certification.
  RecipientEvidence swapped = *evidence;
  swapped.recipient_public = b.recipient.public_area;
  EXPECT_EQ(
      VerifyRecipientEvidence(swapped, b.recipient.public_point, b.recipient.tpm_name, qualifying).status().code(),
      StatusCode::kPermissionDenied);
  // Every byte of the certification and of the signature counts.
  for (std::string RecipientEvidence::*field :
       {&RecipientEvidence::certify_info, &RecipientEvidence::certify_signature}) {
    for (size_t at = 0; at < (evidence.value().*field).size(); at += 7) {
      RecipientEvidence altered = *evidence;
      (altered.*field)[at] ^= 0x01;
      EXPECT_FALSE(VerifyRecipientEvidence(altered, a.recipient.public_point, a.recipient.tpm_name, qualifying).ok())
          << "byte " << at;
    }
  }
  // cp-1's EK certificate does not chain to the other maker's CA; cp-2's certificate is not cp-1's EK.
  const Status foreign_ca = VerifyEkCertificate(*evidence, ReadFile(dir_.path() + "/another-maker-ca/ca-bundle.pem"));
  EXPECT_EQ(foreign_ca.code(), StatusCode::kPermissionDenied) << foreign_ca.ToString();
  StatusOr<RecipientEvidence> b_evidence = AttestRecipient(b.config, qualifying);
  ASSERT_TRUE(b_evidence.ok());
  RecipientEvidence borrowed_certificate = *evidence;
  borrowed_certificate.ek_certificate = b_evidence->ek_certificate;
  EXPECT_EQ(VerifyEkCertificate(borrowed_certificate, ReadFile(dir_.path() + "/another-maker-ca/ca-bundle.pem")).code(),
            StatusCode::kPermissionDenied);
  RecipientEvidence no_certificate = *evidence;
  no_certificate.ek_certificate.clear();
  EXPECT_EQ(VerifyEkCertificate(no_certificate, ReadFile(maker_ca_ + "/ca-bundle.pem")).code(),
            StatusCode::kPermissionDenied);
}

// The same with the tools, as a node operator and an administrator run them.
TEST_F(TpmAttestationTest, TheToolsAddAnAttestedMemberAndRefuseAnyOtherAnswer) {
  testing::ProgramRunner tool(dir_.path(), "tool");
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    return tool.Run(args);
  };
  auto write = [](const std::string& path, const std::string& text) { std::ofstream(path) << text; };
  const std::string d = dir_.path();
  std::unique_ptr<Swtpm> tpm = Swtpm::StartManufactured(d + "/cp-1", maker_ca_);
  std::unique_ptr<Swtpm> other = Swtpm::StartManufactured(d + "/cp-2", maker_ca_);
  ASSERT_TRUE(tpm && other);
  const std::string bundle = maker_ca_ + "/ca-bundle.pem";
  ASSERT_EQ(
      run({"tpm", "recipient", "create", "--tpm-tcti", tpm->Tcti(), "--tpm-recipient-dir", d + "/rk1", "--id", "cp-1"})
          .code,
      0);
  testing::ProgramRun exported = run({"tpm", "recipient", "export", "--attest", "--tpm-tcti", tpm->Tcti(),
                                      "--tpm-recipient-dir", d + "/rk1", "--id", "cp-1"});
  ASSERT_EQ(exported.code, 0) << exported.all();
  EXPECT_NE(exported.out.find("\"attestation\""), std::string::npos);
  write(d + "/cp-1.json", exported.out);
  testing::ProgramRun plain =
      run({"tpm", "recipient", "export", "--tpm-tcti", tpm->Tcti(), "--tpm-recipient-dir", d + "/rk1", "--id", "cp-1"});
  write(d + "/cp-1-plain.json", plain.out);

  testing::ProgramRun challenged =
      run({"recipients", "challenge", "--member", d + "/cp-1.json", "--ek-ca", bundle, "--out", d + "/c.json"});
  ASSERT_EQ(challenged.code, 0) << challenged.all();
  // cp-2's TPM cannot answer cp-1's challenge.
  testing::ProgramRun stolen =
      run({"tpm", "recipient", "activate", "--tpm-tcti", other->Tcti(), "--challenge", d + "/c.json"});
  EXPECT_EQ(stolen.code, 1) << stolen.all();
  EXPECT_NE(stolen.err.find("not made for this TPM"), std::string::npos) << stolen.all();
  testing::ProgramRun answered =
      run({"tpm", "recipient", "activate", "--tpm-tcti", tpm->Tcti(), "--challenge", d + "/c.json"});
  ASSERT_EQ(answered.code, 0) << answered.all();
  write(d + "/answer", answered.out);
  write(d + "/wrong-answer", std::string(64, 'a') + "\n");

  auto add = [&](const std::string& member, const std::string& answer) {
    return run({"recipients", "add", "--set", d + "/set.json", "--name", "prod", "--member", member, "--ek-ca", bundle,
                "--challenge", d + "/c.json", "--answer", answer});
  };
  testing::ProgramRun wrong = add(d + "/cp-1.json", d + "/wrong-answer");
  EXPECT_EQ(wrong.code, 1) << wrong.all();
  EXPECT_NE(wrong.err.find("does not open the challenge"), std::string::npos) << wrong.all();
  testing::ProgramRun unattested = add(d + "/cp-1-plain.json", d + "/answer");
  EXPECT_EQ(unattested.code, 1) << unattested.all();
  EXPECT_NE(unattested.err.find("carries no attestation"), std::string::npos) << unattested.all();
  testing::ProgramRun other_ca = run({"recipients", "challenge", "--member", d + "/cp-1.json", "--ek-ca",
                                      d + "/cp-1/localca.conf", "--out", d + "/c2.json"});
  EXPECT_NE(other_ca.code, 0) << "a file with no CA certificate is no trust anchor";
  std::ifstream no_set(d + "/set.json");
  EXPECT_FALSE(no_set.good()) << "nothing refused may reach the set";

  testing::ProgramRun added = add(d + "/cp-1.json", d + "/answer");
  ASSERT_EQ(added.code, 0) << added.all();
  EXPECT_NE(added.out.find("attested: the key is fixedTPM"), std::string::npos) << added.out;
}

}  // namespace
}  // namespace trousseau::tpm
