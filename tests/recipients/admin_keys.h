// Administrator keys and signed sets for the recipient tests: fresh Ed25519 key pairs (OpenSSL), as
// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` would write them.
#pragma once

#include <string>
#include <vector>

#include "recipients/recipient_set.h"

namespace trousseau::testing {

struct AdminKeyPair {
  std::string private_pem;
  std::string public_pem;
};
AdminKeyPair MakeAdminKey();

// A set `name` at `epoch` whose members are `points` (ids node-0, node-1, ...; device "tpm2"), with a
// fresh sealing key when the members make a valid set.
recipients::RecipientSet MakeSet(const std::string& name, uint64_t epoch, const std::vector<std::string>& points);
// `set` with a signature of each of `admins` added.
recipients::RecipientSet Signed(recipients::RecipientSet set, const std::vector<AdminKeyPair>& admins);
recipients::AdminPolicy PolicyOf(const std::vector<AdminKeyPair>& admins, size_t threshold = 1);

}  // namespace trousseau::testing
