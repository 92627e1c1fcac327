// `trousseau-bench recipients`: what multi-node mode costs (docs/benchmarks.md, issue 14 (c)). Encrypt
// seals to every member of the set in software (no device call), so its cost grows with the number of
// members; Decrypt adds one device ECDH (TPM2_ECDH_ZGen) to the software work, whatever the set size.
#pragma once

#include <string>

namespace trousseau::bench {

struct RecipientsOptions {
  int iterations = 2000;
  // The device part of Decrypt, measured when both are given: a TPM and a recipient key made with
  // `trousseau-hsm-init tpm recipient create`.
  std::string tcti;
  std::string recipient_dir;
  bool json = false;
};

int RunRecipients(const RecipientsOptions& options);

}  // namespace trousseau::bench
