// Recipient sets as administrators write, sign and distribute them, and as every node accepts them.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "recipients/p256.h"
#include "core/strings.h"
#include "recipients/multi_wrap.h"
#include "recipients/recipient_set.h"
#include "recipients/sealing_key.h"
#include "recipients/set_store.h"
#include "tests/recipients/admin_keys.h"
#include "tests/testing/software_recipient.h"

namespace trousseau {
namespace {

using recipients::RecipientSet;
using testing::MakeAdminKey;
using testing::MakeSet;
using testing::PolicyOf;
using testing::Signed;
using testing::SoftwareRecipient;

std::vector<std::string> Points(size_t n) {
  std::vector<std::string> points;
  for (size_t i = 0; i < n; ++i) points.push_back(SoftwareRecipient().public_point());
  return points;
}

TEST(RecipientSet, SurvivesTheFileRoundTripWithItsSignatures) {
  const testing::AdminKeyPair admin = MakeAdminKey();
  RecipientSet set = MakeSet("prod", 3, Points(3));
  set.recipients[1].device = "pkcs11";
  set.recipients[0].tpm_name = std::string("\x00\x0b\x12\x34", 4);
  set = Signed(set, {admin});
  StatusOr<RecipientSet> parsed = recipients::ParseRecipientSet(recipients::SerializeRecipientSet(set));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->name, "prod");
  EXPECT_EQ(parsed->epoch, 3u);
  ASSERT_EQ(parsed->recipients.size(), 3u);
  EXPECT_EQ(parsed->recipients[1].device, "pkcs11");
  EXPECT_EQ(parsed->recipients[0].tpm_name, set.recipients[0].tpm_name);
  EXPECT_EQ(recipients::SetDigest(*parsed), recipients::SetDigest(set));
  ASSERT_EQ(parsed->signatures.size(), 1u);
  EXPECT_TRUE(recipients::VerifySet(*parsed, PolicyOf({admin})).ok());
}

TEST(RecipientSet, SignedByTheAdministratorIsAcceptedAndAnyChangeAfterSigningIsNot) {
  const testing::AdminKeyPair admin = MakeAdminKey();
  const RecipientSet set = Signed(MakeSet("prod", 1, Points(3)), {admin});
  EXPECT_TRUE(recipients::VerifySet(set, PolicyOf({admin})).ok());

  RecipientSet added = set;  // an attacker adds their own key to a signed set
  added.recipients.push_back({.id = "intruder", .device = "tpm2", .public_key = Points(1)[0], .tpm_name = ""});
  EXPECT_EQ(recipients::VerifySet(added, PolicyOf({admin})).code(), StatusCode::kPermissionDenied);
  RecipientSet renumbered = set;
  renumbered.epoch = 2;
  EXPECT_EQ(recipients::VerifySet(renumbered, PolicyOf({admin})).code(), StatusCode::kPermissionDenied);
  RecipientSet swapped = set;
  std::swap(swapped.recipients[0].public_key, swapped.recipients[1].public_key);
  EXPECT_EQ(recipients::VerifySet(swapped, PolicyOf({admin})).code(), StatusCode::kPermissionDenied);

  const RecipientSet unsigned_set = MakeSet("prod", 1, Points(1));
  const Status refused = recipients::VerifySet(unsigned_set, PolicyOf({admin}));
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.message().find("0 valid administrator signature"), std::string::npos) << refused.message();
}

TEST(RecipientSet, ASignatureOfAKeyNotConfiguredCountsForNothing) {
  const testing::AdminKeyPair admin = MakeAdminKey(), stranger = MakeAdminKey();
  const RecipientSet set = Signed(MakeSet("prod", 1, Points(2)), {stranger});
  const Status refused = recipients::VerifySet(set, PolicyOf({admin}));
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.message().find("not a configured administrator key"), std::string::npos) << refused.message();
}

TEST(RecipientSet, KOfNNeedsKDistinctAdministrators) {
  const std::vector<testing::AdminKeyPair> admins = {MakeAdminKey(), MakeAdminKey(), MakeAdminKey()};
  const RecipientSet base = MakeSet("prod", 1, Points(3));
  EXPECT_FALSE(recipients::VerifySet(Signed(base, {admins[0]}), PolicyOf(admins, 2)).ok());
  EXPECT_FALSE(recipients::VerifySet(Signed(base, {admins[0], admins[0]}), PolicyOf(admins, 2)).ok())
      << "one administrator signing twice is still one";
  EXPECT_TRUE(recipients::VerifySet(Signed(base, {admins[0], admins[2]}), PolicyOf(admins, 2)).ok());
}

TEST(RecipientSet, MalformedFilesAreRefusedNamingTheField) {
  const std::string good = recipients::SerializeRecipientSet(MakeSet("prod", 1, Points(2)));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json doc = nlohmann::json::parse(good);
    edit(doc);
    return recipients::ParseRecipientSet(doc.dump()).status();
  };
  EXPECT_TRUE(recipients::ParseRecipientSet(good).ok());
  EXPECT_NE(with([](auto& d) { d["comment"] = "x"; }).message().find("unknown field"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["recipients"][0]["extra"] = 1; }).message().find("unknown field"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["epoch"] = 0; }).message().find("epoch"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["epoch"] = "1"; }).message().find("epoch"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["name"] = "a b"; }).message().find("name"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["kind"] = "other"; }).message().find("kind"), std::string::npos);
  EXPECT_NE(with([](auto& d) { d["recipients"][1]["id"] = d["recipients"][0]["id"]; }).message().find("two recipients"),
            std::string::npos);
  EXPECT_NE(with([](auto& d) { d["recipients"][1]["public_key"] = d["recipients"][0]["public_key"]; })
                .message()
                .find("public key of another member"),
            std::string::npos);
  EXPECT_NE(with([](auto& d) { d["recipients"][0]["device"] = "hsm"; }).message().find("tpm2 or pkcs11"),
            std::string::npos);
  // A point off the curve: the last byte of Y changed.
  EXPECT_NE(with([](auto& d) {
              std::string hex = d["recipients"][0]["public_key"];
              hex.back() = hex.back() == '0' ? '1' : '0';
              d["recipients"][0]["public_key"] = hex;
            })
                .message()
                .find("valid uncompressed P-256"),
            std::string::npos);
  EXPECT_FALSE(recipients::ParseRecipientSet("not json").ok());
}

TEST(RecipientSet, EveryEpochCarriesASealingKeyForEveryMemberCoveredByTheSignatures) {
  const testing::AdminKeyPair admin = MakeAdminKey();
  const RecipientSet set = Signed(MakeSet("prod", 1, Points(3)), {admin});
  EXPECT_TRUE(recipients::CheckSealingKey(set).ok());
  EXPECT_EQ(set.sealing_key.size(), recipients::SealOverheadFor(3) + recipients::kSealingSecretSize)
      << "one wrap per member around a 32-byte secret";

  RecipientSet redrawn = set;  // someone swaps in a sealing secret of their own
  ASSERT_TRUE(recipients::DrawSealingKey(redrawn).ok());
  EXPECT_NE(redrawn.sealing_key, set.sealing_key) << "each epoch draws a fresh secret";
  EXPECT_EQ(recipients::VerifySet(redrawn, PolicyOf({admin})).code(), StatusCode::kPermissionDenied);
  EXPECT_NE(recipients::SetDigest(redrawn), recipients::SetDigest(set));

  const std::string good = recipients::SerializeRecipientSet(set);
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json doc = nlohmann::json::parse(good);
    edit(doc);
    return recipients::ParseRecipientSet(doc.dump()).status();
  };
  const Status missing = with([](auto& d) { d.erase("sealing_key"); });
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("no sealing_key"), std::string::npos) << missing.message();
  EXPECT_NE(with([](auto& d) { d["sealing_key"] = std::string(d["sealing_key"]).substr(2); }).message().find("bytes"),
            std::string::npos);
  EXPECT_NE(with([](auto& d) { d["sealing_key"] = 7; }).message().find("sealing_key must be a string"),
            std::string::npos);
  // A set whose sealing key leaves a member out (sealed for the first two members only).
  RecipientSet two = MakeSet("prod", 1, {set.recipients[0].public_key, set.recipients[1].public_key});
  EXPECT_FALSE(with([&](auto& d) { d["sealing_key"] = HexEncode(two.sealing_key); }).ok());
}

TEST(RecipientSet, AtMostAsManyMembersAsFitInOneCiphertext) {
  EXPECT_TRUE(recipients::CheckRecipientSet(MakeSet("prod", 1, Points(recipients::kMaxRecipients))).ok());
  EXPECT_FALSE(recipients::CheckRecipientSet(MakeSet("prod", 1, Points(recipients::kMaxRecipients + 1))).ok());
  EXPECT_FALSE(recipients::CheckRecipientSet(MakeSet("prod", 1, {})).ok());
}

class SetStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("set-store-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    options_.set_file = (dir_ / "set.json").string();
    options_.state_dir = (dir_ / "state").string();
    options_.policy = PolicyOf({admin_});
    points_ = Points(3);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Distribute(const RecipientSet& set) {
    std::ofstream(options_.set_file) << recipients::SerializeRecipientSet(set);
  }
  std::vector<uint64_t> Epochs() {
    StatusOr<std::vector<RecipientSet>> sets = recipients::LoadAcceptedSets(options_);
    EXPECT_TRUE(sets.ok()) << sets.status().ToString();
    std::vector<uint64_t> epochs;
    if (sets.ok()) {
      for (const RecipientSet& s : *sets) epochs.push_back(s.epoch);
    }
    return epochs;
  }

  std::filesystem::path dir_;
  testing::AdminKeyPair admin_ = MakeAdminKey();
  recipients::SetStoreOptions options_;
  std::vector<std::string> points_;
};

TEST_F(SetStoreTest, EveryAcceptedEpochIsKeptSoOldEnvelopesStillOpen) {
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  EXPECT_EQ(Epochs(), (std::vector<uint64_t>{1}));
  Distribute(Signed(MakeSet("prod", 2, {points_[0], points_[1]}), {admin_}));
  EXPECT_EQ(Epochs(), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Epochs(), (std::vector<uint64_t>{1, 2})) << "loading again changes nothing";
  struct stat st {};
  ASSERT_EQ(::stat(options_.state_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(SetStoreTest, ALowerEpochIsRefusedAndStoresNothing) {
  Distribute(Signed(MakeSet("prod", 5, points_), {admin_}));
  ASSERT_EQ(Epochs(), (std::vector<uint64_t>{5}));
  Distribute(Signed(MakeSet("prod", 4, points_), {admin_}));
  const Status refused = recipients::LoadAcceptedSets(options_).status();
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("never goes back"), std::string::npos) << refused.message();
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(options_.state_dir) / "epoch-4.json"));
}

TEST_F(SetStoreTest, AnEpochOnceAcceptedNeverChangesMembers) {
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  ASSERT_EQ(Epochs(), (std::vector<uint64_t>{1}));
  Distribute(Signed(MakeSet("prod", 1, {points_[0]}), {admin_}));
  const Status refused = recipients::LoadAcceptedSets(options_).status();
  EXPECT_NE(refused.message().find("needs a new epoch"), std::string::npos) << refused.message();
}

TEST_F(SetStoreTest, UnsignedForgedOrForeignSetsAreRefused) {
  Distribute(MakeSet("prod", 1, points_));
  EXPECT_EQ(recipients::LoadAcceptedSets(options_).status().code(), StatusCode::kFailedPrecondition);
  Distribute(Signed(MakeSet("prod", 1, points_), {MakeAdminKey()}));
  const Status forged = recipients::LoadAcceptedSets(options_).status();
  EXPECT_EQ(forged.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(forged.message().find("not a configured administrator key"), std::string::npos) << forged.message();
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(options_.state_dir) / "epoch-1.json"));
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  ASSERT_EQ(Epochs(), (std::vector<uint64_t>{1}));
  Distribute(Signed(MakeSet("other-cluster", 2, points_), {admin_}));
  EXPECT_NE(recipients::LoadAcceptedSets(options_).status().message().find("one node, one set"), std::string::npos);
}

TEST_F(SetStoreTest, AStoreThatFailsLeavesNoPartialFileBehind) {
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  const std::filesystem::path state(options_.state_dir);
  // Just before the store, something takes the epoch's file name (a directory with content), so the
  // rename over it fails.
  const Status refused = recipients::LoadAcceptedSets(options_, [&](const RecipientSet&) {
                           std::filesystem::create_directories(state / "epoch-1.json" / "in-the-way");
                           return OkStatus();
                         }).status();
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("cannot store"), std::string::npos) << refused.message();
  for (const auto& entry : std::filesystem::directory_iterator(state)) {
    EXPECT_EQ(entry.path().filename(), "epoch-1.json") << "left behind: " << entry.path();
  }
}

TEST_F(SetStoreTest, AStateDirectoryOthersCanWriteIsRefused) {
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  std::filesystem::create_directories(options_.state_dir);
  ::chmod(options_.state_dir.c_str(), 0777);
  const Status refused = recipients::LoadAcceptedSets(options_).status();
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("chmod 700"), std::string::npos) << refused.message();
}

TEST_F(SetStoreTest, AStoredSetWhoseSignerIsNoLongerTrustedIsNamed) {
  Distribute(Signed(MakeSet("prod", 1, points_), {admin_}));
  ASSERT_EQ(Epochs(), (std::vector<uint64_t>{1}));
  const testing::AdminKeyPair successor = MakeAdminKey();
  options_.policy = PolicyOf({successor});
  Distribute(Signed(MakeSet("prod", 2, points_), {successor}));
  const Status refused = recipients::LoadAcceptedSets(options_).status();
  EXPECT_NE(refused.message().find("epoch-1.json (accepted earlier)"), std::string::npos) << refused.message();
}

}  // namespace
}  // namespace trousseau
