// `secret generate --postgres-role ROLE` (issue 15, use case 3): the PostgreSQL hand-off library
// (tools/postgres, docs/secrets.md "PostgreSQL hand-off") as the HandOff that ApplyWrite calls
// (tools/secret/secret_write.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "tools/kube/secrets_client.h"
#include "tools/secret/secret_write.h"

namespace trousseauctl {

struct PostgresOptions {
  std::string role;
  std::string dsn_secret;       // a Secret in the target's namespace holding the admin DSN ...
  std::string dsn_key = "dsn";  // ... under this key
  std::string dsn_file;         // or an owner-only file holding it
  bool allow_no_rollback = false;
  bool allow_sslmode_require = false;
};

// Whether the flags make sense together (without connecting): the role with exactly one DSN source, no DSN
// source without the role.
trousseau::Status CheckPostgresOptions(const PostgresOptions& options);

// Reads the admin DSN (from the Secret through `client`, or from the file), connects and prepares the hand-off
// (the library's Begin: the role exists, its current verifier is read for a rollback). The DSN is wiped once
// used. `notes`: what the library could not hide from the server's logs, one sentence each.
trousseau::StatusOr<std::unique_ptr<trousseau::secret::HandOff>> OpenPostgresHandOff(
    trousseau::kube::SecretsClient& client, const std::string& ns, const PostgresOptions& options,
    std::vector<std::string>& notes);

}  // namespace trousseauctl
