// The PKCS#11 seam (hsm/p11/) on a real SoftHSM token: the object finder, the attribute reader, the
// slot list, session copies, GCM returning Status, and the one error classifier.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "hsm/admin.h"
#include "hsm/key_family.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/gcm.h"
#include "hsm/p11/object_finder.h"
#include "hsm/pkcs11_error.h"
#include "hsm/pkcs11_uri.h"
#include "tools/support/softhsm_token.h"

namespace trousseau {
namespace {

using hsm::Session;
using support::SoftHsmToken;

class SeamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create("seam-test");
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
    ASSERT_TRUE(token_->GenerateKek(2).ok());
    ASSERT_TRUE(token_->GenerateKek(1, "other-family").ok());
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
    ASSERT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
    admin_ = *std::move(admin);
  }

  const Session& session() const { return admin_->session(); }

  std::vector<CK_OBJECT_HANDLE> FindFamily(const std::string& label) {
    hsm::p11::AttributeTemplate match;
    match.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY}).Add(CKA_LABEL, label).Add(CKA_TOKEN, true);
    StatusOr<std::vector<CK_OBJECT_HANDLE>> found = hsm::p11::FindObjects(session(), match);
    EXPECT_TRUE(found.ok()) << found.status().ToString();
    return found.ok() ? *found : std::vector<CK_OBJECT_HANDLE>{};
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::unique_ptr<hsm::AdminSession> admin_;
};

TEST_F(SeamTest, ObjectFinderFindsExactlyTheMatchingObjects) {
  EXPECT_EQ(FindFamily("kek").size(), 2u);
  EXPECT_EQ(FindFamily("other-family").size(), 1u);
  EXPECT_TRUE(FindFamily("no-such-family").empty());
}

TEST_F(SeamTest, ObjectFinderEndsItsSearchEvenWhenDroppedEarly) {
  hsm::p11::AttributeTemplate match;
  match.Add(CKA_LABEL, std::string_view("kek"));
  {
    StatusOr<hsm::p11::ObjectFinder> finder = hsm::p11::ObjectFinder::Start(session(), match);
    ASSERT_TRUE(finder.ok()) << finder.status().ToString();
    // While it is active, the session cannot start another search (CKR_OPERATION_ACTIVE).
    hsm::p11::AttributeTemplate other;
    other.Add(CKA_LABEL, std::string_view("other-family"));
    EXPECT_FALSE(hsm::p11::ObjectFinder::Start(session(), other).ok());
  }  // dropped without reading: C_FindObjectsFinal must still run
  EXPECT_EQ(FindFamily("kek").size(), 2u);
}

TEST_F(SeamTest, AttributeReaderGivesTypedValuesAndLeavesUnreadableOnesOut) {
  std::vector<CK_OBJECT_HANDLE> keys = FindFamily("kek");
  ASSERT_FALSE(keys.empty());
  StatusOr<hsm::p11::AttributeReader> attrs =
      hsm::p11::AttributeReader::Read(session(), keys.front(),
                                      {{CKA_KEY_TYPE, sizeof(CK_KEY_TYPE)},
                                       {CKA_VALUE_LEN, sizeof(CK_ULONG)},
                                       {CKA_SENSITIVE, sizeof(CK_BBOOL)},
                                       {CKA_EXTRACTABLE, sizeof(CK_BBOOL)},
                                       {CKA_LABEL, 64},
                                       {CKA_VALUE, 64}});  // the key itself: sensitive, so the token must not return it
  ASSERT_TRUE(attrs.ok()) << attrs.status().ToString();
  EXPECT_EQ(attrs->Ulong(CKA_KEY_TYPE), CK_ULONG{CKK_AES});
  EXPECT_EQ(attrs->Ulong(CKA_VALUE_LEN), CK_ULONG{32});
  EXPECT_EQ(attrs->Bool(CKA_SENSITIVE), true);
  EXPECT_EQ(attrs->Bool(CKA_EXTRACTABLE), false);
  EXPECT_EQ(attrs->Bytes(CKA_LABEL), std::string("kek"));
  EXPECT_EQ(attrs->Bytes(CKA_VALUE), std::nullopt);
  // Asked as the wrong type, a value is absent rather than misread.
  EXPECT_EQ(attrs->Bool(CKA_VALUE_LEN), std::nullopt);
  EXPECT_EQ(attrs->Ulong(CKA_LABEL), std::nullopt);
}

// Another process may destroy a key between C_FindObjects and the read of its attributes (concurrent
// rotations do, withdrawing a version they lost): a listing then lists what is there instead of failing.
TEST_F(SeamTest, AKeyDestroyedAfterItWasFoundIsAbsentFromListingsNotAnError) {
  std::vector<CK_OBJECT_HANDLE> keys = FindFamily("kek");
  ASSERT_EQ(keys.size(), 2u);
  const std::vector<hsm::p11::AttributeReader::Request> label = {{CKA_LABEL, 64}};
  ASSERT_TRUE(hsm::p11::DestroyObject(session(), keys[0]).ok());

  EXPECT_FALSE(hsm::p11::AttributeReader::Read(session(), keys[0], label).ok()) << "Read still reports it";
  StatusOr<std::optional<hsm::p11::AttributeReader>> gone =
      hsm::p11::AttributeReader::ReadIfPresent(session(), keys[0], label);
  ASSERT_TRUE(gone.ok()) << gone.status().ToString();
  EXPECT_FALSE(gone->has_value());
  StatusOr<std::optional<hsm::p11::AttributeReader>> kept =
      hsm::p11::AttributeReader::ReadIfPresent(session(), keys[1], label);
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  ASSERT_TRUE(kept->has_value());
  EXPECT_EQ((*kept)->Bytes(CKA_LABEL), std::string("kek"));

  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily(session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  EXPECT_EQ(family->size(), 1u);
  StatusOr<std::vector<hsm::TokenSecretKey>> all = hsm::ListTokenSecretKeys(session());
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), 2u) << "kek version 2 and other-family version 1";
}

TEST_F(SeamTest, ListKeyFamilyReadsVersionsAndPolicyThroughTheReader) {
  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily(session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  ASSERT_EQ(family->size(), 2u);
  EXPECT_EQ((*family)[0].version, 1u);
  EXPECT_EQ((*family)[1].version, 2u);
  EXPECT_TRUE((*family)[0].modifiable);
  EXPECT_FALSE((*family)[1].modifiable);
  EXPECT_EQ(hsm::KekFamilyViolation(*family), "");
  ASSERT_TRUE(token_->GenerateUnsafeKey(3).ok());
  family = hsm::ListKeyFamily(session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  EXPECT_EQ(hsm::KekFamilyViolation(*family),
            "version 3: it is extractable (CKA_EXTRACTABLE=true): its value could leave the HSM");
}

TEST_F(SeamTest, SlotListShowsTheTokenAndFindTokenMatchesItByLabel) {
  StatusOr<std::vector<CK_SLOT_ID>> slots = hsm::p11::SlotsWithToken(admin_->api());
  ASSERT_TRUE(slots.ok()) << slots.status().ToString();
  EXPECT_NE(std::find(slots->begin(), slots->end(), admin_->token().slot), slots->end());
  StatusOr<std::vector<hsm::TokenSlot>> tokens = hsm::TokensPresent(admin_->api());
  ASSERT_TRUE(tokens.ok());
  int labelled = 0;
  for (const hsm::TokenSlot& t : *tokens) labelled += t.initialized() && t.Label() == "seam-test";
  EXPECT_EQ(labelled, 1);
}

TEST_F(SeamTest, GcmRoundTripAndATamperedTagIsInvalidArgument) {
  std::vector<CK_OBJECT_HANDLE> keys = FindFamily("kek");
  ASSERT_FALSE(keys.empty());
  NonceSequence ivs;
  StatusOr<GcmIv> iv = ivs.Next();
  ASSERT_TRUE(iv.ok());
  std::string sealed;
  ASSERT_TRUE(hsm::GcmSeal(session(), keys.front(), *iv, "aad", "plain text", sealed).ok());
  ASSERT_EQ(sealed.size(), std::string("plain text").size() + hsm::kGcmTagSize);
  SecureBytes opened;
  Status ok = hsm::GcmOpen(session(), keys.front(), *iv, "aad", sealed, opened);
  ASSERT_TRUE(ok.ok()) << ok.ToString();
  EXPECT_EQ(opened.view(), "plain text");
  sealed.back() = static_cast<char>(sealed.back() ^ 1);
  Status tampered = hsm::GcmOpen(session(), keys.front(), *iv, "aad", sealed, opened);
  EXPECT_EQ(tampered.code(), StatusCode::kInvalidArgument) << tampered.ToString();
}

TEST_F(SeamTest, ACallOnAClosedSessionIsAConnectionLoss) {
  std::vector<CK_OBJECT_HANDLE> keys = FindFamily("kek");
  ASSERT_FALSE(keys.empty());
  CK_SESSION_HANDLE gone;
  {
    StatusOr<Session> extra = hsm::p11::OpenSession(admin_->api(), admin_->token().slot, false);
    ASSERT_TRUE(extra.ok()) << extra.status().ToString();
    gone = extra->handle();
  }  // closed here
  Session stale(admin_->api(), gone);
  NonceSequence ivs;
  StatusOr<GcmIv> iv = ivs.Next();
  ASSERT_TRUE(iv.ok());
  std::string sealed;
  Status failed = hsm::GcmSeal(stale, keys.front(), *iv, "aad", "x", sealed);
  stale.Release();  // not ours to close again
  EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
  EXPECT_NE(failed.message().find("CKR_SESSION_HANDLE_INVALID"), std::string_view::npos) << failed.ToString();
}

TEST_F(SeamTest, SessionCopyLivesInTheSessionOnly) {
  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily(session(), "kek");
  ASSERT_TRUE(family.ok());
  StatusOr<CK_OBJECT_HANDLE> copy = hsm::CopyToSessionObject(session(), (*family)[0].handle);  // modifiable: copies
  ASSERT_TRUE(copy.ok()) << copy.status().ToString();
  StatusOr<hsm::p11::AttributeReader> attrs =
      hsm::p11::AttributeReader::Read(session(), *copy, {{CKA_TOKEN, 1}, {CKA_SENSITIVE, 1}, {CKA_EXTRACTABLE, 1}});
  ASSERT_TRUE(attrs.ok()) << attrs.status().ToString();
  EXPECT_EQ(attrs->Bool(CKA_TOKEN), false);
  EXPECT_EQ(attrs->Bool(CKA_SENSITIVE), true);
  EXPECT_EQ(attrs->Bool(CKA_EXTRACTABLE), false);
  EXPECT_EQ(FindFamily("kek").size(), 2u) << "the copy is not a token object";
  EXPECT_TRUE(hsm::p11::DestroyObject(session(), *copy).ok());
}

TEST_F(SeamTest, AWrongPinIsPermissionDenied) {
  StatusOr<Session> other = hsm::p11::OpenSession(admin_->api(), admin_->token().slot, false);
  ASSERT_TRUE(other.ok());
  hsm::p11::Logout(*other);  // one login covers every session: end it to try another PIN
  const SecureBytes wrong = SecureBytes::CopyOf("00000000");
  Status refused = hsm::p11::Login(*other, CKU_USER, &wrong, "user PIN", "");
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied) << refused.ToString();
  EXPECT_EQ(refused.message(), "the token rejected the user PIN (CKR_PIN_INCORRECT)");
}

// The one classifier (hsm/pkcs11_error.cc): what each code means to the breaker.
TEST(ErrorClassifierTest, EachCodeHasItsOneMeaning) {
  struct Row {
    CK_RV rv;
    bool connection_lost;
    bool tag_mismatch;  // only consulted after C_DecryptInit took key and IV
    bool pin_rejected;
  };
  const Row table[] = {
      {CKR_DEVICE_ERROR, true, false, false},
      {CKR_DEVICE_REMOVED, true, false, false},
      {CKR_DEVICE_MEMORY, true, false, false},
      {CKR_TOKEN_NOT_PRESENT, true, false, false},
      {CKR_TOKEN_NOT_RECOGNIZED, true, false, false},
      {CKR_SESSION_CLOSED, true, false, false},
      {CKR_SESSION_HANDLE_INVALID, true, false, false},
      {CKR_CRYPTOKI_NOT_INITIALIZED, true, false, false},
      {CKR_USER_NOT_LOGGED_IN, true, false, false},
      {CKR_OBJECT_HANDLE_INVALID, true, false, false},
      {CKR_KEY_HANDLE_INVALID, true, false, false},
      {CKR_SLOT_ID_INVALID, true, false, false},
      {CKR_GENERAL_ERROR, true, true, false},
      {CKR_FUNCTION_FAILED, true, true, false},
      {CKR_ENCRYPTED_DATA_INVALID, false, true, false},
      {CKR_ENCRYPTED_DATA_LEN_RANGE, false, true, false},
      {CKR_DATA_INVALID, false, true, false},
      {CKR_DATA_LEN_RANGE, false, true, false},
      {CKR_PIN_INCORRECT, false, false, true},
      {CKR_PIN_INVALID, false, false, true},
      {CKR_PIN_LEN_RANGE, false, false, true},
      {CKR_PIN_EXPIRED, false, false, true},
      {CKR_PIN_LOCKED, false, false, true},
      {CKR_MECHANISM_INVALID, false, false, false},
      {CKR_KEY_TYPE_INCONSISTENT, false, false, false},
      {CKR_ATTRIBUTE_READ_ONLY, false, false, false},
      {CKR_HOST_MEMORY, false, false, false},
      {CKR_OPERATION_ACTIVE, false, false, false},
  };
  for (const Row& row : table) {
    SCOPED_TRACE(hsm::RvName(row.rv));
    EXPECT_EQ(hsm::IsConnectionLost(row.rv), row.connection_lost);
    EXPECT_EQ(hsm::IsTagMismatch(row.rv), row.tag_mismatch);
    EXPECT_EQ(hsm::IsPinRejected(row.rv), row.pin_rejected);
    const Status status = hsm::RvStatus(row.rv, "step");
    EXPECT_EQ(status.code(), row.connection_lost ? StatusCode::kUnavailable : StatusCode::kInternal);
    EXPECT_EQ(status.message(), "step: " + hsm::RvName(row.rv));
  }
}

}  // namespace
}  // namespace trousseau
