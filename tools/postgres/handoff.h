// Handing a generated password to PostgreSQL without the database ever receiving it: the SCRAM-SHA-256 verifier
// is computed here (scram.h) and set with ALTER ROLE over a TLS connection (pg_connection.h).
//
// The caller's order (trousseauctl secret generate --postgres-role ROLE --postgres-dsn-secret S):
//   1. Begin(admin DSN, ROLE): connect, check the role exists, hide this session's statements from the server's
//      logs and statistics where the admin may, and read the role's current verifier (for a rollback).
//   2. Apply(password): set the new verifier. On error the role is unchanged (state() says so) unless the
//      connection was lost while committing, which is then said (kUnknown).
//   3. Write the password into the Kubernetes Secret. If that fails: Rollback(), which sets the previous verifier
//      back (only if nobody changed the role in between), and report both sides with Describe().
// The plaintext password never leaves this process: only its verifier is sent. The verifier is still sensitive
// (with it, an offline guess of the password, or with a recorded SCRAM exchange, a login as the role): it is
// never logged or put in an error, and the session asks the server not to log or record the ALTER ROLE.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tools/postgres/pg_connection.h"
#include "tools/postgres/scram.h"

namespace trousseau::postgres {

struct HandOffOptions {
  ConnectOptions connect;
  // Proceed when the admin role cannot read the role's current verifier (pg_authid needs a superuser): then a
  // failed Secret write cannot be rolled back and the role keeps a password nobody has.
  bool allow_no_rollback = false;
  uint32_t scram_iterations = kScramMinIterations;
  // statement_timeout and lock_timeout of the session (an ALTER ROLE waiting on a lock fails instead of hanging).
  int statement_timeout_seconds = 30;
};

class PostgresHandOff {
 public:
  enum class RoleState {
    kUnchanged,    // the role has the password it had before Begin
    kNewPassword,  // Apply set the new verifier
    kRestored,     // Rollback set the previous verifier back
    kUnknown,      // the connection was lost while committing: either could hold
  };

  // Connects with `admin_dsn` (see pg_connection.h; never from argv) and prepares the hand-off for `role`.
  // NOT_FOUND if the role does not exist; FAILED_PRECONDITION if its verifier cannot be read and
  // options.allow_no_rollback is not set.
  static StatusOr<PostgresHandOff> Begin(std::string_view admin_dsn, std::string_view role,
                                         const HandOffOptions& options = {});

  // Sets the role's password to `password` (printable ASCII) by its SCRAM-SHA-256 verifier with a fresh salt.
  // With a readable previous verifier, it first checks that nobody changed the role since Begin (ABORTED if so),
  // and afterwards that the server stored exactly this verifier. Once only.
  Status Apply(std::string_view password);

  // After Apply: sets the previous verifier back (or no password, if the role had none), if the role still has
  // the one Apply set. OK (and nothing done) before Apply. The message of an error says where the role stands.
  Status Rollback();

  RoleState state() const { return state_; }
  bool can_roll_back() const { return previous_.has_value(); }
  const std::string& role() const { return role_; }
  // One sentence on where the role stands, for the operator (no secret in it).
  std::string Describe() const;
  // What the session could not do to keep the verifier out of the server's logs and statistics (an admin that
  // is not a superuser may not change those settings), one sentence each; empty when everything was hidden.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  // The role's verifier as pg_authid holds it (rolpassword; no password is NULL).
  struct Verifier {
    bool is_null = true;
    SecureBytes text;
    bool Equals(const Verifier& other) const {
      return is_null == other.is_null && (is_null || text.view() == other.text.view());
    }
  };

  PostgresHandOff(PgConnection connection, std::string role, HandOffOptions options)
      : connection_(std::move(connection)), role_(std::move(role)), options_(std::move(options)) {}

  Status HideSession();
  StatusOr<Verifier> ReadVerifier(std::string_view what);
  // In one transaction: check the role has `expected` (when known), set `next`, check it holds. Leaves the
  // transaction rolled back on error.
  Status Swap(const Verifier* expected, const Verifier& next, std::string_view what);
  void RollbackTransaction();

  PgConnection connection_;
  std::string role_;
  std::string quoted_role_;
  HandOffOptions options_;
  std::optional<Verifier> previous_;  // nullopt: could not be read
  Verifier applied_;
  RoleState state_ = RoleState::kUnchanged;
  bool applied_once_ = false;
  std::vector<std::string> notes_;
};

}  // namespace trousseau::postgres
