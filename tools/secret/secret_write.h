// How `secret generate` and `secret inject` put a value into a Secret, in two steps so that nothing is
// generated (or asked of a device) for a write that would be refused anyway:
//   PlanWrite   reads the Secret and decides: create it; add the key; or (--rotate) replace the key's
//               value, keeping the old one under KEY.previous with --keep-previous. Refused: a key that
//               exists without --rotate, --rotate of a missing Secret or key.
//   ApplyWrite  (after the value is made) hands it to a HandOff first if there is one (a database that
//               must take it; if that fails the Secret is left unchanged), then POSTs the new Secret or
//               PATCHes it with the read resourceVersion as precondition (a concurrent writer gives one
//               409 line, nothing is overwritten). If the Secret write fails after a hand-off, the hand-off
//               is rolled back and the error says what state each side is in.
#pragma once

#include <optional>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tools/kube/secrets_client.h"

namespace trousseau::secret {

// A service that takes a generated value before the Secret holds it (docs/secrets.md, "Hand-offs").
class HandOff {
 public:
  virtual ~HandOff() = default;
  virtual std::string Describe() const = 0;  // "PostgreSQL role 'app'"
  virtual Status Apply(const SecureBytes& value) = 0;
  virtual Status Rollback() = 0;  // back to the state before Apply
};

struct WriteTarget {
  std::string ns;
  std::string name;
  std::string key;
  bool rotate = false;
  bool keep_previous = false;
};

struct WritePlan {
  std::optional<kube::SecretSnapshot> existing;  // nullopt: the Secret is created
};

StatusOr<WritePlan> PlanWrite(kube::SecretsClient& client, const WriteTarget& target);

// `what_done` (on success): "created secret ns/name with key K" etc., for the operator (no value).
Status ApplyWrite(kube::SecretsClient& client, const WriteTarget& target, const WritePlan& plan,
                  const SecureBytes& value, const kube::Annotations& annotations, HandOff* hand_off,
                  std::string& what_done);

// RFC 3339 UTC, seconds: 2026-12-06T07:08:35Z.
std::string Rfc3339UtcNow();

}  // namespace trousseau::secret
