#include "tests/postgres/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace trousseau::testing {
namespace {

constexpr uid_t kNobody = 65534;

// Starts argv (argv[0] looked up in PATH) with stdout and stderr appended to `log_path`; the pid, or -1.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
  execvp(args[0], args.data());
  _exit(127);
}

// Runs argv to its end (60 s at most); its exit code, 128 + signal, or -1.
int Run(const std::vector<std::string>& argv, const std::string& log_path) {
  const pid_t pid = Spawn(argv, log_path);
  if (pid < 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// The DSN value quoted for libpq's key=value form.
std::string Quoted(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

}  // namespace

std::string RandomPassword(size_t length) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  while (out.size() < length) {
    unsigned char byte = 0;
    if (RAND_bytes(&byte, 1) != 1) std::abort();
    if (byte >= 248) continue;  // 248 = 4 * 62: no bias
    out += kAlphabet[byte % 62];
  }
  return out;
}

std::string PostgresServer::FindBinDir() {
  const char* env = std::getenv("TROUSSEAU_PG_BINDIR");
  const std::string dir = env != nullptr && *env != '\0' ? env : "/usr/lib/postgresql/15/bin";
  return access((dir + "/initdb").c_str(), X_OK) == 0 && access((dir + "/postgres").c_str(), X_OK) == 0 ? dir : "";
}

PostgresServer::~PostgresServer() {
  Stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

bool PostgresServer::Start(const std::string& bin_dir, std::string& error) {
  char dir_template[] = "/tmp/trousseau-pg.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    error = "mkdtemp failed";
    return false;
  }
  dir_ = dir_template;
  const std::string tool_log = dir_ + "/tools.log";
  as_nobody_ = geteuid() == 0;
  std::vector<std::string> as_user;
  if (as_nobody_) {
    if (access("/usr/bin/setpriv", X_OK) != 0) {
      error = "running as root and /usr/bin/setpriv (util-linux) is missing: postgres refuses to run as root";
      return false;
    }
    as_user = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
  }
  auto own = [&](const std::string& path) { return !as_nobody_ || chown(path.c_str(), kNobody, kNobody) == 0; };

  // The CA, the server's certificate for localhost and 127.0.0.1, and a CA that signed nothing here.
  ca_path_ = dir_ + "/ca.crt";
  other_ca_path_ = dir_ + "/other-ca.crt";
  const std::string key = dir_ + "/server.key";
  const std::string cert = dir_ + "/server.crt";
  const std::string ext = dir_ + "/server.ext";
  WriteFile(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  const std::vector<std::vector<std::string>> openssl_steps = {
      {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir_ + "/ca.key", "-out", ca_path_, "-days", "2", "-subj", "/CN=trousseau test CA"},
      {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
       dir_ + "/other-ca.key", "-out", other_ca_path_, "-days", "2", "-subj", "/CN=trousseau other CA"},
      {"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out",
       dir_ + "/server.csr", "-subj", "/CN=localhost"},
      {"openssl", "x509", "-req", "-in", dir_ + "/server.csr", "-CA", ca_path_, "-CAkey", dir_ + "/ca.key",
       "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext},
  };
  for (const auto& step : openssl_steps) {
    if (Run(step, tool_log) != 0) {
      error = "openssl " + step[1] + " failed: " + ReadFile(tool_log);
      return false;
    }
  }
  chmod(key.c_str(), 0600);
  if (!own(dir_) || !own(key) || !own(cert)) {
    error = "chown to nobody failed";
    return false;
  }

  // initdb with a superuser "admin" whose password is in a file only while initdb runs.
  admin_password_ = RandomPassword(24);
  const std::string pwfile = dir_ + "/admin.pw";
  WriteFile(pwfile, admin_password_ + "\n");
  chmod(pwfile.c_str(), 0600);
  own(pwfile);
  const std::string data = dir_ + "/data";
  std::vector<std::string> initdb = as_user;
  for (const std::string& a : {bin_dir + "/initdb", std::string("-D"), data, std::string("-U"), std::string("admin"),
                               std::string("--auth=scram-sha-256"), "--pwfile=" + pwfile, std::string("-E"),
                               std::string("UTF8"), std::string("--locale=C"), std::string("--no-sync")}) {
    initdb.push_back(a);
  }
  const int initdb_code = Run(initdb, tool_log);
  std::filesystem::remove(pwfile);
  if (initdb_code != 0) {
    error = "initdb failed (" + std::to_string(initdb_code) + "): " + ReadFile(tool_log);
    return false;
  }
  // TLS, plain TCP and the Unix socket all accepted by the server: refusing a DSN without TLS is the client's job
  // under test.
  if (!WriteFile(data + "/pg_hba.conf",
                 "local   all all scram-sha-256\n"
                 "hostssl all all 127.0.0.1/32 scram-sha-256\n"
                 "host    all all 127.0.0.1/32 scram-sha-256\n")) {
    error = "could not write pg_hba.conf";
    return false;
  }

  log_path_ = dir_ + "/server.log";
  for (int attempt = 0; attempt < 3 && pid_ < 0; ++attempt) {
    port_ = FreePort();
    std::vector<std::string> postgres = as_user;
    for (const std::string& a : {bin_dir + "/postgres",
                                 std::string("-D"),
                                 data,
                                 std::string("-p"),
                                 std::to_string(port_),
                                 std::string("-c"),
                                 std::string("listen_addresses=127.0.0.1"),
                                 std::string("-c"),
                                 "unix_socket_directories=" + dir_,
                                 std::string("-c"),
                                 std::string("ssl=on"),
                                 std::string("-c"),
                                 "ssl_cert_file=" + cert,
                                 std::string("-c"),
                                 "ssl_key_file=" + key,
                                 std::string("-c"),
                                 std::string("log_statement=all"),
                                 std::string("-c"),
                                 std::string("shared_preload_libraries=pg_stat_statements"),
                                 std::string("-c"),
                                 std::string("pg_stat_statements.track_utility=on"),
                                 std::string("-c"),
                                 std::string("fsync=off")}) {
      postgres.push_back(a);
    }
    const pid_t pid = Spawn(postgres, log_path_);
    const std::string ping = "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres connect_timeout=1";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool up = false;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (PQping(ping.c_str()) == PQPING_OK) {
        up = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (up) {
      pid_ = pid;
    } else if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      break;
    }
  }
  if (pid_ < 0) {
    error = "postgres did not start: " + Log();
    return false;
  }
  if (!AdminExec("CREATE EXTENSION pg_stat_statements", error)) {
    error = "CREATE EXTENSION pg_stat_statements: " + error;
    return false;
  }
  return true;
}

void PostgresServer::Stop() {
  if (pid_ < 0) return;
  kill(pid_, SIGINT);  // fast shutdown
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (waitpid(pid_, nullptr, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  pid_ = -1;
}

std::string PostgresServer::Dsn(const std::string& user, const std::string& password, const std::string& sslmode,
                                const std::string& ca) const {
  return "host=localhost hostaddr=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=" + Quoted(user) +
         " password=" + Quoted(password) + " sslmode=" + sslmode +
         (ca == "-" ? std::string() : " sslrootcert=" + Quoted(ca.empty() ? ca_path_ : ca)) + " connect_timeout=5";
}

bool PostgresServer::AdminExec(const std::string& sql, std::string& error, std::vector<std::string>* rows) const {
  PGconn* conn = PQconnectdb(AdminDsn().c_str());
  bool ok = PQstatus(conn) == CONNECTION_OK;
  if (!ok) {
    error = PQerrorMessage(conn);
  } else {
    PGresult* result = PQexec(conn, sql.c_str());
    const ExecStatusType status = PQresultStatus(result);
    ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok) error = PQresultErrorMessage(result);
    if (ok && rows != nullptr) {
      for (int r = 0; r < PQntuples(result); ++r) {
        rows->push_back(PQgetisnull(result, r, 0) ? std::string("<NULL>") : std::string(PQgetvalue(result, r, 0)));
      }
    }
    PQclear(result);
  }
  PQfinish(conn);
  return ok;
}

bool PostgresServer::CanLogIn(const std::string& user, const std::string& password, std::string* error) const {
  PGconn* conn = PQconnectdb(Dsn(user, password).c_str());
  const bool ok = PQstatus(conn) == CONNECTION_OK;
  if (!ok && error != nullptr) *error = PQerrorMessage(conn);
  PQfinish(conn);
  return ok;
}

std::string PostgresServer::Log() const { return ReadFile(log_path_); }

std::string PostgresServer::StatementStatistics() const {
  std::vector<std::string> rows;
  std::string error;
  if (!AdminExec("SELECT query FROM pg_stat_statements", error, &rows)) return "<pg_stat_statements: " + error + ">";
  std::string out;
  for (const std::string& r : rows) out += r + "\n";
  return out;
}

}  // namespace trousseau::testing
