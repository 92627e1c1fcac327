// For ci/e2e: `trousseauctl secret generate --postgres-role` end to end, on a real kube-apiserver (the e2e's)
// and a real PostgreSQL 15 started here (tests/postgres/postgres_server.h: TLS, log_statement=all,
// pg_stat_statements). Checks, in order:
//   1. a Secret write that fails after the role changed (a kubeconfig allowed only `get secrets`: 403 on create)
//      rolls the role back: the old password still logs in, the error is one line saying so, no Secret;
//   2. the hand-off with the admin kubeconfig: the password read back from the Secret logs in as the role, the old
//      one no longer does; the password is in neither the server's log, nor pg_stat_statements, nor the tool's
//      stdout/stderr.
// Prints one line per check; exit 0 when all held. A missing PostgreSQL is a failure (this runs under CI).
// Usage: secret_postgres_probe TROUSSEAUCTL ADMIN_KUBECONFIG READER_KUBECONFIG NAMESPACE PKCS11_URI
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>

#include "tests/postgres/postgres_server.h"
#include "tests/tpm/swtpm.h"
#include "tools/kube/base64.h"
#include "tools/kube/kubeconfig.h"
#include "tools/kube/secrets_client.h"
#include "tools/support/subprocess.h"

using namespace trousseau;  // NOLINT

namespace {

int failures = 0;
void Check(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

struct Run {
  int code = -1;
  std::string out, err;
};

Run Generate(const std::string& dir, const std::vector<std::string>& argv) {
  static int n = 0;
  const std::string prefix = dir + "/run" + std::to_string(++n);
  support::Subprocess process(argv, support::Subprocess::SeparateOutput{prefix + ".out", prefix + ".err"});
  Run run;
  run.code = process.Wait(std::chrono::seconds(60)).value_or(-1);
  run.out = process.Log();
  run.err = process.ErrorLog();
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: secret_postgres_probe TROUSSEAUCTL ADMIN_KUBECONFIG READER_KUBECONFIG NAMESPACE PKCS11_URI\n";
    return 2;
  }
  const std::string ctl = argv[1], admin_kc = argv[2], reader_kc = argv[3], ns = argv[4], uri = argv[5];
  testing::TempDir dir;
  testing::PostgresServer server;
  const std::string bin_dir = testing::PostgresServer::FindBinDir();
  std::string error;
  if (bin_dir.empty() || !server.Start(bin_dir, error)) {
    std::cout << "FAIL PostgreSQL 15 did not start (postgresql-15 installed?): " << error << "\n";
    return 1;
  }
  const std::string old_password = testing::RandomPassword();
  if (!server.AdminExec("CREATE ROLE app LOGIN PASSWORD '" + old_password + "'", error)) {
    std::cout << "FAIL CREATE ROLE: " << error << "\n";
    return 1;
  }
  kube::AccessSources sources;
  sources.kubeconfig_flag = admin_kc;
  StatusOr<kube::ClusterAccess> access = kube::LoadClusterAccess(sources);
  if (!access.ok()) return 1;
  StatusOr<std::unique_ptr<kube::SecretsClient>> client = kube::SecretsClient::Create(*std::move(access));
  if (!client.ok()) return 1;
  kube::DataUpdate dsn;
  dsn.emplace("dsn", kube::Base64Encode(server.AdminDsn()));
  Status created = (*client)->Create(ns, "pg-admin", dsn, {});
  Check(created.ok(), "the admin DSN in Secret " + ns + "/pg-admin: " + created.message());

  const std::vector<std::string> base = {ctl,
                                         "secret",
                                         "generate",
                                         "app-pg",
                                         "--key",
                                         "password",
                                         "-n",
                                         ns,
                                         "--pkcs11-uri",
                                         uri,
                                         "--postgres-role",
                                         "app",
                                         "--postgres-dsn-secret",
                                         "pg-admin"};
  // 1. The Secret write fails (403) after the role took the new password: rolled back.
  std::vector<std::string> denied = base;
  denied.insert(denied.end(), {"--kubeconfig", reader_kc});
  Run run = Generate(dir.path(), denied);
  Check(run.code == 1,
        "with a kubeconfig that may not create Secrets, generate fails (exit " + std::to_string(run.code) + ")");
  Check(run.err.find("403 Forbidden") != std::string::npos && run.err.find("rolled back") != std::string::npos &&
            run.err.find('\n') == run.err.size() - 1,
        "one line says the Secret write was refused and the role rolled back: " + run.err.substr(0, 400));
  Check(server.CanLogIn("app", old_password, &error), "after the rollback the old password still logs in");
  StatusOr<std::optional<kube::SecretSnapshot>> none = (*client)->Get(ns, "app-pg", "password");
  Check(none.ok() && !none->has_value(), "no Secret app-pg was written");

  // 2. The hand-off.
  std::vector<std::string> good = base;
  good.insert(good.end(), {"--kubeconfig", admin_kc});
  run = Generate(dir.path(), good);
  Check(run.code == 0, "generate --postgres-role app: " + run.out.substr(0, 300) + run.err.substr(0, 300));
  StatusOr<std::optional<kube::SecretSnapshot>> secret = (*client)->Get(ns, "app-pg", "password");
  if (!secret.ok() || !secret->has_value() || !(*secret)->value_base64) {
    Check(false, "Secret app-pg has key 'password'");
    return 1;
  }
  StatusOr<SecureBytes> password = kube::Base64Decode((*secret)->value_base64->value);
  if (!password.ok()) return 1;
  const std::string value(password->view());
  Check(server.CanLogIn("app", value, &error), "the password read from the Secret logs in as role app: " + error);
  Check(!server.CanLogIn("app", old_password), "the old password no longer does");
  Check(server.Log().find(value) == std::string::npos, "the password is not in the server's log (log_statement=all)");
  Check(server.StatementStatistics().find(value) == std::string::npos, "nor in pg_stat_statements");
  Check(run.out.find(value) == std::string::npos && run.err.find(value) == std::string::npos,
        "nor in the tool's stdout/stderr");
  return failures == 0 ? 0 : 1;
}
