#include "tools/postgres/pg_connection.h"

#include <cstring>
#include <optional>

#include "core/secure_bytes.h"

namespace trousseau::postgres {
namespace {

// The libpq-allocated parse of a DSN; every value is wiped before libpq frees it.
class ParsedConninfo {
 public:
  explicit ParsedConninfo(PQconninfoOption* options) : options_(options) {}
  ~ParsedConninfo() {
    if (options_ == nullptr) return;
    for (PQconninfoOption* o = options_; o->keyword != nullptr; ++o) {
      if (o->val != nullptr) WipeMemory(o->val, std::strlen(o->val));
    }
    PQconninfoFree(options_);
  }
  ParsedConninfo(const ParsedConninfo&) = delete;
  ParsedConninfo& operator=(const ParsedConninfo&) = delete;

  PQconninfoOption* get() const { return options_; }
  // The value of `keyword`, or nullopt when the DSN does not set it.
  std::optional<std::string_view> Get(std::string_view keyword) const {
    for (PQconninfoOption* o = options_; o->keyword != nullptr; ++o) {
      if (keyword == o->keyword && o->val != nullptr) return std::string_view(o->val);
    }
    return std::nullopt;
  }

 private:
  PQconninfoOption* options_;
};

std::string OneLine(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  for (char& c : text) {
    if (c == '\n' || c == '\t') c = ' ';
  }
  return text;
}

Status CheckSslMode(const ParsedConninfo& parsed, const ConnectOptions& options) {
  const std::optional<std::string_view> mode = parsed.Get("sslmode");
  if (!mode.has_value()) {
    return InvalidArgumentError(
        "the PostgreSQL admin DSN sets no sslmode; set sslmode=verify-full (or verify-ca) with sslrootcert, so the "
        "connection uses TLS and the server's certificate is checked");
  }
  if (*mode == "verify-full" || *mode == "verify-ca") return OkStatus();
  if (*mode == "require") {
    if (options.allow_sslmode_require) return OkStatus();
    return InvalidArgumentError(
        "the PostgreSQL admin DSN has sslmode=require, which encrypts but does not check the server's certificate: "
        "whoever sits in the path could pose as the server and read the verifier (and ask for the admin password in "
        "clear); use sslmode=verify-full with sslrootcert, or allow sslmode=require explicitly for a path you trust");
  }
  if (*mode == "disable" || *mode == "allow" || *mode == "prefer") {
    return InvalidArgumentError("the PostgreSQL admin DSN has sslmode=" + std::string(*mode) +
                                ", which does not guarantee TLS; use sslmode=verify-full with sslrootcert");
  }
  return InvalidArgumentError(
      "the PostgreSQL admin DSN has an sslmode libpq does not know; use sslmode=verify-full with sslrootcert");
}

}  // namespace

std::string ConnectionError(PGconn* conn) {
  if (conn == nullptr) return "libpq could not allocate a connection";
  return OneLine(PQerrorMessage(conn));
}

PgResult& PgResult::operator=(PgResult&& other) noexcept {
  if (this != &other) {
    Reset();
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}

std::string_view PgResult::Value(int row, int column) const {
  return {PQgetvalue(result_, row, column), static_cast<size_t>(PQgetlength(result_, row, column))};
}

void PgResult::Reset() {
  if (result_ == nullptr) return;
  const int rows = PQntuples(result_);
  const int columns = PQnfields(result_);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < columns; ++c) {
      WipeMemory(PQgetvalue(result_, r, c), static_cast<size_t>(PQgetlength(result_, r, c)));
    }
  }
  PQclear(result_);
  result_ = nullptr;
}

StatusOr<PgConnection> PgConnection::Open(std::string_view dsn, const ConnectOptions& options) {
  if (dsn.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("the PostgreSQL admin DSN holds a NUL byte");
  }
  // libpq wants a C string: a wiped copy with its terminator.
  SecureBytes text(dsn.size() + 1);
  std::memcpy(text.data(), dsn.data(), dsn.size());
  text.data()[dsn.size()] = 0;

  char* parse_error = nullptr;
  ParsedConninfo parsed(PQconninfoParse(reinterpret_cast<const char*>(text.data()), &parse_error));
  if (parse_error != nullptr) {
    // libpq's message may quote a piece of the DSN, which may be the password: it is not shown.
    WipeMemory(parse_error, std::strlen(parse_error));
    PQfreemem(parse_error);
  }
  if (parsed.get() == nullptr) {
    return InvalidArgumentError(
        "the PostgreSQL admin DSN could not be parsed (libpq's reason is not shown, as it may quote the DSN); "
        "expected key=value pairs (host=... sslmode=verify-full ...) or a postgresql:// URI");
  }
  if (Status s = CheckSslMode(parsed, options); !s.ok()) return s;

  std::vector<const char*> keywords;
  std::vector<const char*> values;
  const std::string timeout = std::to_string(options.connect_timeout_seconds);
  for (PQconninfoOption* o = parsed.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    keywords.push_back(o->keyword);
    values.push_back(o->val);
  }
  if (!parsed.Get("connect_timeout").has_value()) {
    keywords.push_back("connect_timeout");
    values.push_back(timeout.c_str());
  }
  if (!options.application_name.empty()) {
    keywords.push_back("fallback_application_name");
    values.push_back(options.application_name.c_str());
  }
  keywords.push_back(nullptr);
  values.push_back(nullptr);

  PgConnection connection(PQconnectdbParams(keywords.data(), values.data(), /*expand_dbname=*/0));
  if (connection.conn_ == nullptr || PQstatus(connection.conn_) != CONNECTION_OK) {
    return UnavailableError("could not connect to PostgreSQL: " + ConnectionError(connection.conn_));
  }
  if (PQsslInUse(connection.conn_) != 1) {
    return FailedPreconditionError(
        "the PostgreSQL connection does not use TLS (libpq ignores sslmode on a Unix-domain socket); the hand-off "
        "needs TLS: give a host name and sslmode=verify-full");
  }
  return connection;
}

PgConnection::~PgConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

PgConnection& PgConnection::operator=(PgConnection&& other) noexcept {
  if (this != &other) {
    if (conn_ != nullptr) PQfinish(conn_);
    conn_ = other.conn_;
    other.conn_ = nullptr;
  }
  return *this;
}

bool PgConnection::EnsureConnected() {
  if (conn_ == nullptr) return false;
  if (PQstatus(conn_) == CONNECTION_OK) return true;
  PQreset(conn_);
  return PQstatus(conn_) == CONNECTION_OK && PQsslInUse(conn_) == 1;
}

StatusOr<PgResult> PgConnection::Exec(std::string_view what, const char* sql, const std::vector<std::string>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const std::string& p : params) values.push_back(p.c_str());
  PGresult* raw = PQexecParams(conn_, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr,
                               /*resultFormat=*/0);
  PgResult result(raw);  // owns (and wipes) it from here on
  const ExecStatusType status = raw == nullptr ? PGRES_FATAL_ERROR : PQresultStatus(raw);
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return result;

  const std::string prefix(what);
  if (raw == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    return UnavailableError(prefix + ": the connection to PostgreSQL was lost: " + ConnectionError(conn_));
  }
  const char* sqlstate = PQresultErrorField(raw, PG_DIAG_SQLSTATE);
  const char* primary = PQresultErrorField(raw, PG_DIAG_MESSAGE_PRIMARY);
  const std::string code = sqlstate == nullptr ? "" : sqlstate;
  std::string message = prefix + ": " + (code.empty() ? "" : code + " ") +
                        (primary == nullptr ? OneLine(PQresStatus(status)) : OneLine(primary));
  if (code == "42501") return PermissionDeniedError(std::move(message));
  if (code == "42704") return NotFoundError(std::move(message));
  if (code == "57014") return Status(StatusCode::kDeadlineExceeded, std::move(message));
  return FailedPreconditionError(std::move(message));
}

StatusOr<std::string> PgConnection::QuoteIdentifier(std::string_view identifier) {
  char* quoted = PQescapeIdentifier(conn_, identifier.data(), identifier.size());
  if (quoted == nullptr) return InvalidArgumentError("the name could not be quoted: " + ConnectionError(conn_));
  std::string out(quoted);
  PQfreemem(quoted);
  return out;
}

}  // namespace trousseau::postgres
