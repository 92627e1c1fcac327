// A real PostgreSQL 15 for the hand-off tests: its own cluster in a temporary directory, TLS with a CA and a
// server certificate made here with openssl, log_statement=all to its log file, pg_stat_statements loaded and
// created. Listens on 127.0.0.1 on a free port, and on a Unix-domain socket in its directory. Run as nobody (uid 65534)
// when the test runs as root (CI does; postgres refuses root), with setpriv.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace trousseau::testing {

class PostgresServer {
 public:
  PostgresServer() = default;
  ~PostgresServer();  // stops the server and removes its directory
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Where the PostgreSQL 15 programs are ($TROUSSEAU_PG_BINDIR or Debian's /usr/lib/postgresql/15/bin), or empty
  // when initdb is not there (the caller skips, or fails under CI).
  static std::string FindBinDir();

  // Creates, configures and starts the cluster; false with `error` set when it cannot.
  bool Start(const std::string& bin_dir, std::string& error);
  void Stop();

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  const std::string& ca_path() const { return ca_path_; }
  // A CA that did not sign the server's certificate.
  const std::string& other_ca_path() const { return other_ca_path_; }
  const std::string& admin_password() const { return admin_password_; }

  // A DSN for `user` with `password`, TLS checked against `ca` (the server's CA by default; "-": no sslrootcert).
  std::string Dsn(const std::string& user, const std::string& password, const std::string& sslmode = "verify-full",
                  const std::string& ca = "") const;
  std::string AdminDsn() const { return Dsn("admin", admin_password_); }

  // Runs `sql` as the superuser admin; false with `error` when it fails. `rows` gets the first column's values.
  bool AdminExec(const std::string& sql, std::string& error, std::vector<std::string>* rows = nullptr) const;
  // Whether `user` logs in with `password` over verified TLS; `error` gets libpq's reason when not.
  bool CanLogIn(const std::string& user, const std::string& password, std::string* error = nullptr) const;
  // The server's log so far (stderr of the postmaster, which has log_statement=all).
  std::string Log() const;
  // Every query text in pg_stat_statements, one a line.
  std::string StatementStatistics() const;

 private:
  std::string dir_;
  std::string ca_path_;
  std::string other_ca_path_;
  std::string log_path_;
  std::string admin_password_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool as_nobody_ = false;
};

// A random printable password of `length` characters (letters and digits), from OpenSSL's CSPRNG.
std::string RandomPassword(size_t length = 32);

}  // namespace trousseau::testing
