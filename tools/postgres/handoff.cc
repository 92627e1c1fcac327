#include "tools/postgres/handoff.h"

#include <cstring>
#include <utility>

namespace trousseau::postgres {
namespace {

// PostgreSQL's NAMEDATALEN - 1: a longer name is truncated by the server in ALTER ROLE (with only a NOTICE) but
// not in a comparison with a parameter, so the two would name different roles.
constexpr size_t kMaxRoleNameLength = 63;

constexpr const char* kReadVerifierSql = "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1";

// ALTER ROLE <quoted role> PASSWORD <literal> | NULL, in a wiped, NUL-terminated buffer. ALTER ROLE is a utility
// statement and takes no bind parameters: the verifier is quoted with PQescapeLiteral instead.
StatusOr<SecureBytes> AlterRoleSql(PGconn* conn, std::string_view quoted_role, const SecureBytes* verifier) {
  std::string_view literal = "NULL";
  char* escaped = nullptr;
  if (verifier != nullptr) {
    escaped = PQescapeLiteral(conn, reinterpret_cast<const char*>(verifier->data()), verifier->size());
    if (escaped == nullptr) return InternalError("the verifier could not be quoted: " + ConnectionError(conn));
    literal = escaped;
  }
  constexpr std::string_view kAlter = "ALTER ROLE ";
  constexpr std::string_view kPassword = " PASSWORD ";
  SecureBytes sql(kAlter.size() + quoted_role.size() + kPassword.size() + literal.size() + 1);
  size_t pos = 0;
  for (std::string_view part : {kAlter, quoted_role, kPassword, literal}) {
    std::memcpy(sql.data() + pos, part.data(), part.size());
    pos += part.size();
  }
  sql.data()[pos] = 0;
  if (escaped != nullptr) {
    WipeMemory(escaped, std::strlen(escaped));
    PQfreemem(escaped);
  }
  return sql;
}

}  // namespace

StatusOr<PostgresHandOff> PostgresHandOff::Begin(std::string_view admin_dsn, std::string_view role,
                                                 const HandOffOptions& options) {
  if (role.empty()) return InvalidArgumentError("the PostgreSQL role name is empty");
  if (role.size() > kMaxRoleNameLength) {
    return InvalidArgumentError("the PostgreSQL role name is longer than " + std::to_string(kMaxRoleNameLength) +
                                " bytes (the server would truncate it)");
  }
  if (role.find('\0') != std::string_view::npos) return InvalidArgumentError("the PostgreSQL role name holds a NUL");

  StatusOr<PgConnection> connection = PgConnection::Open(admin_dsn, options.connect);
  if (!connection.ok()) return connection.status();
  PostgresHandOff handoff(std::move(*connection), std::string(role), options);

  StatusOr<std::string> quoted = handoff.connection_.QuoteIdentifier(role);
  if (!quoted.ok()) return quoted.status();
  handoff.quoted_role_ = std::move(*quoted);

  if (Status s = handoff.HideSession(); !s.ok()) return s;

  StatusOr<PgResult> exists = handoff.connection_.Exec(
      "looking up the role",
      "SELECT rolcanlogin, rolvaliduntil IS NOT NULL AND rolvaliduntil < now() FROM pg_catalog.pg_roles "
      "WHERE rolname = $1",
      {handoff.role_});
  if (!exists.ok()) return exists.status();
  if (exists->rows() == 0) {
    return NotFoundError("PostgreSQL role \"" + handoff.role_ +
                         "\" does not exist (the hand-off sets a password; it does not create roles)");
  }
  if (exists->Value(0, 0) != "t") {
    handoff.notes_.push_back("role \"" + handoff.role_ + "\" has NOLOGIN: the password will not let it log in");
  }
  if (exists->Value(0, 1) == "t") {
    handoff.notes_.push_back("role \"" + handoff.role_ +
                             "\"'s VALID UNTIL is past: the password will not let it log in until that is changed");
  }

  StatusOr<Verifier> previous = handoff.ReadVerifier("reading the role's current verifier");
  if (previous.ok()) {
    handoff.previous_ = std::move(*previous);
  } else if (IsPermissionDenied(previous.status())) {
    if (!options.allow_no_rollback) {
      return FailedPreconditionError(
          "the admin role cannot read role \"" + handoff.role_ +
          "\"'s current verifier (pg_authid needs a superuser), so if writing the Secret failed afterwards, the "
          "previous password could not be set back and the role would keep a password nobody has; use a superuser "
          "DSN, or allow the hand-off without rollback explicitly");
    }
    handoff.notes_.push_back("the previous password of role \"" + handoff.role_ +
                             "\" could not be read (not a superuser): no rollback is possible");
  } else {
    return previous.status();
  }
  return handoff;
}

Status PostgresHandOff::HideSession() {
  const std::string timeout = std::to_string(options_.statement_timeout_seconds * 1000);
  for (const std::string& sql :
       {"SET statement_timeout = " + timeout, "SET lock_timeout = " + timeout, std::string("SET search_path = ''")}) {
    StatusOr<PgResult> r = connection_.Exec("setting up the session", sql.c_str());
    if (!r.ok()) return r.status();
  }
  // Settings only a superuser (or a role granted SET on them) may change. Without them the server may write the
  // ALTER ROLE statement, with the verifier (never the password), to its log or statistics.
  struct Hide {
    const char* sql;
    const char* what;
  };
  static constexpr Hide kHide[] = {
      {"SET log_statement = 'none'", "log_statement"},
      {"SET log_min_duration_statement = -1", "log_min_duration_statement"},
      {"SET log_min_duration_sample = -1", "log_min_duration_sample"},
      {"SET log_transaction_sample_rate = 0", "log_transaction_sample_rate"},
      {"SET log_min_error_statement = 'panic'", "log_min_error_statement"},
      {"SET track_activities = off", "track_activities"},
      {"SET pg_stat_statements.track = 'none'", "pg_stat_statements.track"},
  };
  std::string refused;
  std::string first_reason;
  for (const Hide& hide : kHide) {
    StatusOr<PgResult> r = connection_.Exec(hide.what, hide.sql);
    if (r.ok()) continue;
    if (IsUnavailable(r.status())) return r.status();
    refused += (refused.empty() ? "" : ", ") + std::string(hide.what);
    if (first_reason.empty()) first_reason = r.status().message();
  }
  if (!refused.empty()) {
    notes_.push_back("could not turn off " + refused + " for this session (" + first_reason +
                     "): the server may record the ALTER ROLE statement, which holds the verifier (not the password)");
  }
  return OkStatus();
}

StatusOr<PostgresHandOff::Verifier> PostgresHandOff::ReadVerifier(std::string_view what) {
  StatusOr<PgResult> r = connection_.Exec(what, kReadVerifierSql, {role_});
  if (!r.ok()) return r.status();
  if (r->rows() != 1) return NotFoundError("PostgreSQL role \"" + role_ + "\" no longer exists");
  Verifier v;
  v.is_null = r->IsNull(0, 0);
  if (!v.is_null) v.text = SecureBytes::CopyOf(r->Value(0, 0));
  return v;
}

void PostgresHandOff::RollbackTransaction() {
  if (PQstatus(connection_.get()) != CONNECTION_OK) return;
  StatusOr<PgResult> r = connection_.Exec("ROLLBACK", "ROLLBACK");
  (void)r;  // a failed ROLLBACK leaves nothing committed either
}

Status PostgresHandOff::Swap(const Verifier* expected, const Verifier& next, std::string_view what) {
  const std::string prefix(what);
  if (StatusOr<PgResult> r = connection_.Exec(prefix, "BEGIN"); !r.ok()) return r.status();
  if (expected != nullptr) {
    StatusOr<Verifier> current = ReadVerifier(prefix);
    if (!current.ok()) {
      RollbackTransaction();
      return current.status();
    }
    if (!current->Equals(*expected)) {
      RollbackTransaction();
      return Status(StatusCode::kAborted, "role \"" + role_ + "\"'s password was changed by someone else " +
                                              "meanwhile, so it was not touched");
    }
  }
  StatusOr<SecureBytes> sql = AlterRoleSql(connection_.get(), quoted_role_, next.is_null ? nullptr : &next.text);
  if (!sql.ok()) {
    RollbackTransaction();
    return sql.status();
  }
  if (StatusOr<PgResult> r = connection_.Exec(prefix, reinterpret_cast<const char*>(sql->data())); !r.ok()) {
    RollbackTransaction();
    return r.status();
  }
  if (expected != nullptr) {
    StatusOr<Verifier> stored = ReadVerifier(prefix);
    if (!stored.ok()) {
      RollbackTransaction();
      return stored.status();
    }
    if (!stored->Equals(next)) {
      RollbackTransaction();
      return InternalError(prefix + ": the server stored something else than the verifier sent (a password hook?)");
    }
  }
  if (StatusOr<PgResult> r = connection_.Exec(prefix, "COMMIT"); !r.ok()) {
    if (IsUnavailable(r.status())) {
      state_ = RoleState::kUnknown;
      return Status(StatusCode::kUnknown, r.status().message() +
                                              "; the connection was lost while committing, so role \"" + role_ +
                                              "\" may hold either password: check it");
    }
    return r.status();
  }
  return OkStatus();
}

Status PostgresHandOff::Apply(std::string_view password) {
  if (applied_once_) return FailedPreconditionError("the PostgreSQL hand-off was applied already");
  StatusOr<SecureBytes> verifier = ScramSha256Verifier(password, options_.scram_iterations);
  if (!verifier.ok()) return verifier.status();
  if (!connection_.EnsureConnected()) {
    return UnavailableError("the connection to PostgreSQL was lost before the ALTER ROLE: " +
                            ConnectionError(connection_.get()) + "; role \"" + role_ + "\" is unchanged");
  }
  applied_once_ = true;
  Verifier next;
  next.is_null = false;
  next.text = std::move(*verifier);
  Status s = Swap(previous_.has_value() ? &*previous_ : nullptr, next, "setting the role's new password");
  if (!s.ok()) {
    if (state_ == RoleState::kUnknown) return s;
    return Status(s.code(), s.message() + "; role \"" + role_ + "\" is unchanged");
  }
  applied_ = std::move(next);
  state_ = RoleState::kNewPassword;
  return OkStatus();
}

Status PostgresHandOff::Rollback() {
  if (state_ == RoleState::kUnchanged || state_ == RoleState::kRestored) return OkStatus();
  const std::string still = "; role \"" + role_ + "\" still has the new password";
  if (state_ == RoleState::kUnknown) {
    return Status(StatusCode::kUnknown, "the earlier ALTER ROLE may or may not have been committed; role \"" + role_ +
                                            "\" was not touched again: check it");
  }
  if (!previous_.has_value()) {
    return FailedPreconditionError("cannot roll back: the previous password of role \"" + role_ +
                                   "\" could not be read (the admin is not a superuser)" + still);
  }
  if (!connection_.EnsureConnected()) {
    return UnavailableError("cannot roll back: the connection to PostgreSQL is lost (" +
                            ConnectionError(connection_.get()) + ")" + still);
  }
  Status s = Swap(&applied_, *previous_, "setting the role's previous password back");
  if (!s.ok()) {
    if (state_ == RoleState::kUnknown) return s;
    if (s.code() == StatusCode::kAborted) return s;  // someone else's password: neither ours nor the previous one
    return Status(s.code(), "cannot roll back: " + s.message() + still);
  }
  state_ = RoleState::kRestored;
  return OkStatus();
}

std::string PostgresHandOff::Describe() const {
  const std::string who = "PostgreSQL role \"" + role_ + "\"";
  switch (state_) {
    case RoleState::kUnchanged:
      return who + " is unchanged (it keeps its previous password)";
    case RoleState::kNewPassword:
      return who + " has the new password";
    case RoleState::kRestored:
      return who + " has its previous password again";
    case RoleState::kUnknown:
      break;
  }
  return who + " may have the new password or the previous one (the connection was lost while committing)";
}

}  // namespace trousseau::postgres
