#include "recipients_bench.h"

#include <openssl/rand.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <vector>

#include "core/envelope.h"
#include "core/strings.h"
#include "recipients/multi_wrap.h"
#include "recipients/p256.h"
#include "recipients/sealing_key.h"
#include "stats.h"
#include "tpm/tpm_backend.h"

namespace trousseau::bench {
namespace {

using Clock = std::chrono::steady_clock;

// A set of `members` random P-256 keys (only their public points matter to Encrypt).
StatusOr<recipients::RecipientSet> RandomSet(size_t members) {
  recipients::RecipientSet set{.name = "bench", .epoch = 1, .recipients = {}, .sealing_key = {}, .signatures = {}};
  for (size_t i = 0; i < members; ++i) {
    StatusOr<recipients::EphemeralKey> key = recipients::EphemeralKey::Generate();
    if (!key.ok()) return key.status();
    set.recipients.push_back(
        {.id = StrCat("node-", i), .device = "tpm2", .public_key = key->public_point(), .tpm_name = ""});
  }
  return set;
}

std::string Us(double us) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f", us);
  return text;
}

std::string Ratio(double ratio) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1fx", ratio);
  return text;
}

}  // namespace

int RunRecipients(const RecipientsOptions& options) {
  const std::string seed(32, 's');  // kube-apiserver's DEK seed size
  const std::string aad = EncodeEnvelopeHeader(1, kEnvelopeFormatV3);
  // The epoch's tag key, as a node holds it once it has opened the sealing secret.
  SecureBytes tag_key(32);
  RAND_bytes(tag_key.data(), static_cast<int>(tag_key.size()));
  Json json;
  json.Open().OpenArray("encrypt");
  std::cerr << "multi-recipient Encrypt (software only), " << options.iterations << " iterations each\n"
            << "members  ciphertext_bytes  p50_us  p99_us  vs_1_member\n";
  double one = 0;
  for (size_t members : {size_t{1}, size_t{3}, size_t{7}, size_t{9}, recipients::kMaxRecipients}) {
    StatusOr<recipients::RecipientSet> set = RandomSet(members);
    if (!set.ok()) {
      std::cerr << set.status().message() << "\n";
      return 1;
    }
    std::vector<int64_t> ns;
    size_t size = 0;
    for (int i = 0; i < options.iterations; ++i) {
      const auto start = Clock::now();
      StatusOr<std::string> sealed = recipients::SealToSet(*set, seed, aad);
      StatusOr<std::string> tag =
          sealed.ok() ? recipients::SenderTag(tag_key, aad, *sealed) : StatusOr<std::string>(sealed.status());
      ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
      if (!tag.ok()) {
        std::cerr << tag.status().message() << "\n";
        return 1;
      }
      size = aad.size() + sealed->size() + tag->size();
    }
    const Summary s = Summarize(ns);
    if (members == 1) one = s.p50_us;
    std::cerr << members << "  " << size << "  " << Us(s.p50_us) << "  " << Us(s.p99_us) << "  "
              << Ratio(one > 0 ? s.p50_us / one : 0) << "\n";
    json.Open().Int("members", static_cast<int64_t>(members)).Int("ciphertext_bytes", static_cast<int64_t>(size));
    json.Summ("seal", s).Close();
  }
  json.CloseArray();

  if (!options.tcti.empty() && !options.recipient_dir.empty()) {
    StatusOr<std::unique_ptr<tpm::TpmBackend>> tpm =
        tpm::TpmBackend::Create({.tcti = options.tcti, .key_dir = "", .recipient_dir = options.recipient_dir});
    if (!tpm.ok()) {
      std::cerr << tpm.status().message() << "\n";
      return 1;
    }
    RecipientDevice* device = (*tpm)->AsRecipient();
    StatusOr<recipients::EphemeralKey> peer = recipients::EphemeralKey::Generate();
    if (!peer.ok() || !device->RecipientPublicPoint(KeyBackend::DefaultDeadline()).ok()) {
      std::cerr << "the TPM recipient key does not load\n";
      return 1;
    }
    std::vector<int64_t> ns;
    for (int i = 0; i < options.iterations; ++i) {
      const auto start = Clock::now();
      StatusOr<SecureBytes> z = device->RecipientSharedSecret(peer->public_point(), KeyBackend::DefaultDeadline());
      ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
      if (!z.ok()) {
        std::cerr << z.status().message() << "\n";
        return 1;
      }
    }
    const Summary s = Summarize(ns);
    std::cerr << "Decrypt's device part (TPM2_ECDH_ZGen on " << options.tcti << "): p50 " << Us(s.p50_us) << " us, p99 "
              << Us(s.p99_us) << " us\n";
    json.Summ("tpm_ecdh_zgen", s);
  }
  json.Close();
  if (options.json) std::cout << json.text() << "\n";
  return 0;
}

}  // namespace trousseau::bench
