// Multi-recipient envelopes: every member opens the same secret with its own key, nobody else does,
// and no byte of the envelope can change unnoticed.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "core/envelope.h"
#include "recipients/multi_wrap.h"
#include "recipients/sealing_key.h"
#include "tests/recipients/admin_keys.h"
#include "tests/testing/software_recipient.h"

namespace trousseau {
namespace {

using recipients::ParsedWraps;
using recipients::RecipientSet;
using testing::SoftwareRecipient;

struct Members {
  explicit Members(size_t n) {
    for (size_t i = 0; i < n; ++i) devices.push_back(std::make_unique<SoftwareRecipient>());
    std::vector<std::string> points;
    for (const auto& d : devices) points.push_back(d->public_point());
    set = testing::MakeSet("prod", 7, points);
  }
  // Opens `sealed` as member `index` would on its device.
  StatusOr<SecureBytes> OpenAs(size_t index, std::string_view sealed, std::string_view aad) {
    StatusOr<ParsedWraps> parsed = recipients::ParseWraps(set, sealed, aad);
    if (!parsed.ok()) return parsed.status();
    StatusOr<SecureBytes> z = devices[index]->RecipientSharedSecret(parsed->ephemeral_point, Deadline::max());
    if (!z.ok()) return z.status();
    return recipients::OpenWithSharedSecret(set, *parsed, index, *z);
  }
  std::vector<std::unique_ptr<SoftwareRecipient>> devices;
  RecipientSet set;
};

const std::string kAad = EncodeEnvelopeHeader(7, kEnvelopeFormatV3);
const std::string kSeed(32, 's');

TEST(MultiWrap, EveryMemberOpensTheSameSecret) {
  Members members(3);
  StatusOr<std::string> sealed = recipients::SealToSet(members.set, kSeed, kAad);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->size(), kSeed.size() + recipients::SealOverheadFor(3));
  for (size_t i = 0; i < 3; ++i) {
    StatusOr<SecureBytes> opened = members.OpenAs(i, *sealed, kAad);
    ASSERT_TRUE(opened.ok()) << i << ": " << opened.status().ToString();
    EXPECT_EQ(opened->view(), kSeed);
  }
}

TEST(MultiWrap, AKeyOutsideTheSetOpensNothing) {
  Members members(2);
  StatusOr<std::string> sealed = recipients::SealToSet(members.set, kSeed, kAad);
  ASSERT_TRUE(sealed.ok());
  SoftwareRecipient outsider;
  StatusOr<ParsedWraps> parsed = recipients::ParseWraps(members.set, *sealed, kAad);
  ASSERT_TRUE(parsed.ok());
  StatusOr<SecureBytes> z = outsider.RecipientSharedSecret(parsed->ephemeral_point, Deadline::max());
  ASSERT_TRUE(z.ok());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(recipients::OpenWithSharedSecret(members.set, *parsed, i, *z).status().code(),
              StatusCode::kInvalidArgument);
  }
}

TEST(MultiWrap, SevenControlPlaneNodesAndTwoHsmsFitInOneCiphertextAndEighteenMembersAtMost) {
  for (size_t n : {size_t{9}, recipients::kMaxRecipients}) {
    Members members(n);
    StatusOr<std::string> sealed = recipients::SealToSet(members.set, kSeed, kAad);
    ASSERT_TRUE(sealed.ok());
    EXPECT_LE(kAad.size() + sealed->size() + recipients::kSenderTagSize, 1024u) << n << " members, tag included";
    EXPECT_EQ(sealed->size() + recipients::kSenderTagSize, kSeed.size() + recipients::TaggedSealOverheadFor(n));
    StatusOr<SecureBytes> last = members.OpenAs(n - 1, *sealed, kAad);
    ASSERT_TRUE(last.ok()) << last.status().ToString();
  }
  EXPECT_GT(kEnvelopeHeaderSize + kSeed.size() + recipients::TaggedSealOverheadFor(recipients::kMaxRecipients + 1),
            1024u)
      << "kMaxRecipients is the largest set that fits";
}

TEST(MultiWrap, EveryByteIsAuthenticated) {
  Members members(2);
  StatusOr<std::string> sealed = recipients::SealToSet(members.set, kSeed, kAad);
  ASSERT_TRUE(sealed.ok());
  for (size_t at = 0; at < sealed->size(); ++at) {
    std::string forged = *sealed;
    forged[at] ^= 0x01;
    for (size_t member = 0; member < 2; ++member) {
      StatusOr<SecureBytes> opened = members.OpenAs(member, forged, kAad);
      EXPECT_FALSE(opened.ok()) << "byte " << at << " member " << member << ": every member refuses alike";
      if (!opened.ok()) {
        EXPECT_TRUE(opened.status().code() == StatusCode::kInvalidArgument ||
                    opened.status().code() == StatusCode::kNotFound)
            << opened.status().ToString();
      }
    }
  }
  // The envelope header (format, epoch) is authenticated too.
  EXPECT_FALSE(members.OpenAs(0, *sealed, EncodeEnvelopeHeader(8, kEnvelopeFormatV3)).ok());
}

TEST(MultiWrap, AWrapDroppedOrMovedToAnotherEnvelopeFails) {
  Members members(3);
  StatusOr<std::string> a = recipients::SealToSet(members.set, kSeed, kAad);
  StatusOr<std::string> b = recipients::SealToSet(members.set, std::string(32, 't'), kAad);
  ASSERT_TRUE(a.ok() && b.ok());
  // Member 1's wrap of envelope b pasted into envelope a.
  std::string moved = *a;
  const size_t wrap1 = 33 + 1 + 49;
  moved.replace(wrap1, 49, b->substr(wrap1, 49));
  EXPECT_EQ(members.OpenAs(1, moved, kAad).status().code(), StatusCode::kInvalidArgument);
  // Member 2's wrap removed and the count lowered: the others' wraps no longer authenticate.
  std::string dropped = a->substr(0, 33) + std::string(1, '\x02') + a->substr(34, 2 * 49) + a->substr(34 + 3 * 49);
  EXPECT_FALSE(members.OpenAs(0, dropped, kAad).ok());
  EXPECT_EQ(members.OpenAs(2, dropped, kAad).status().code(), StatusCode::kNotFound);
}

TEST(MultiWrap, MalformedEnvelopesAreRefusedBeforeAnyDeviceCall) {
  Members members(2);
  EXPECT_EQ(recipients::ParseWraps(members.set, "", kAad).status().code(), StatusCode::kInvalidArgument);
  StatusOr<std::string> sealed = recipients::SealToSet(members.set, kSeed, kAad);
  ASSERT_TRUE(sealed.ok());
  std::string too_many = *sealed;
  too_many[33] = 9;  // more wraps than the bytes hold
  EXPECT_EQ(recipients::ParseWraps(members.set, too_many, kAad).status().code(), StatusCode::kInvalidArgument);
  std::string outside = *sealed;
  outside[34] = 5;  // a wrap for member 5 of a set of 2
  EXPECT_EQ(recipients::ParseWraps(members.set, outside, kAad).status().code(), StatusCode::kInvalidArgument);
  std::string twice = *sealed;
  twice[34 + 49] = 0;  // two wraps for member 0
  EXPECT_EQ(recipients::ParseWraps(members.set, twice, kAad).status().code(), StatusCode::kInvalidArgument);
  std::string off_curve = *sealed;
  off_curve[0] = 0x05;  // not a compressed point prefix
  EXPECT_EQ(recipients::ParseWraps(members.set, off_curve, kAad).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(members.devices[0]->shared_secrets_computed(), 0);
}

}  // namespace
}  // namespace trousseau
