// A libpq connection for administration over TLS, and its query results, as RAII types.
//
// The DSN (libpq's key=value form or a postgresql:// URI) comes from memory: the caller reads it from a Secret or
// from a file only its owner can read, never from argv or the environment. It must ask for a verified server
// certificate (sslmode=verify-full or verify-ca); sslmode=require (TLS without checking who answers) is taken only
// when the caller allows it explicitly; anything weaker, or no sslmode at all, is refused before connecting. Every
// copy made here of the DSN (and so of the admin password in it) is wiped once libpq has it, and libpq wipes its own
// copy of the password when the connection is closed (PQfinish).
#pragma once

#include <libpq-fe.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace trousseau::postgres {

struct ConnectOptions {
  // Take sslmode=require: the connection is encrypted but the server's certificate is not checked, so whoever
  // sits in the path can pose as the server, read what is sent (the SCRAM verifier) and, if it asks for password
  // authentication, the admin password. Only for a server reached over a path the operator trusts.
  bool allow_sslmode_require = false;
  // libpq's connect_timeout when the DSN sets none.
  int connect_timeout_seconds = 10;
  // fallback_application_name: how the session shows in pg_stat_activity and the server log.
  std::string application_name = "trousseau-postgres-handoff";
};

// A query result. Its values are wiped before libpq frees it (a result may hold a password verifier).
class PgResult {
 public:
  PgResult() = default;
  explicit PgResult(PGresult* result) : result_(result) {}
  ~PgResult() { Reset(); }
  PgResult(PgResult&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
  PgResult& operator=(PgResult&& other) noexcept;
  PgResult(const PgResult&) = delete;
  PgResult& operator=(const PgResult&) = delete;

  int rows() const { return result_ == nullptr ? 0 : PQntuples(result_); }
  bool IsNull(int row, int column) const { return PQgetisnull(result_, row, column) == 1; }
  std::string_view Value(int row, int column) const;

 private:
  void Reset();
  PGresult* result_ = nullptr;
};

class PgConnection {
 public:
  // Checks the DSN's sslmode, connects, and checks that the session uses TLS (libpq ignores sslmode on a
  // Unix-domain socket: such a DSN is refused after connecting). Errors never quote the DSN.
  static StatusOr<PgConnection> Open(std::string_view dsn, const ConnectOptions& options = {});

  ~PgConnection();
  PgConnection(PgConnection&& other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }
  PgConnection& operator=(PgConnection&& other) noexcept;
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement, with text parameters ($1, $2, ...) if any. `what` says what the statement is for, in
  // the error: "<what>: <SQLSTATE> <the server's primary message>" (never the statement, which may hold a
  // verifier). A lost connection is UNAVAILABLE; insufficient privilege PERMISSION_DENIED.
  StatusOr<PgResult> Exec(std::string_view what, const char* sql, const std::vector<std::string>& params = {});

  // Whether the connection is up; if not, one attempt to reconnect with the parameters libpq kept.
  bool EnsureConnected();

  // PQescapeIdentifier / PQescapeLiteral (with the connection's encoding), or an error.
  StatusOr<std::string> QuoteIdentifier(std::string_view identifier);

  PGconn* get() const { return conn_; }

 private:
  explicit PgConnection(PGconn* conn) : conn_(conn) {}
  PGconn* conn_ = nullptr;
};

// The connection's error message on one line (libpq ends it with a newline, and may hold several lines).
std::string ConnectionError(PGconn* conn);

}  // namespace trousseau::postgres
