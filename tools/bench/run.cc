// `trousseau-bench run`: checks its inputs, makes the token, starts the echo server, runs the
// scenarios (scenario_*.cc) in their order and prints the report (run_report.cc).
#include "run.h"

#include <signal.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "children.h"
#include "report.h"
#include "run_report.h"
#include "scenarios.h"
#include "token_setup.h"
#include "workload.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;
using support::Subprocess;

// 0 when the options name a plugin, a shim (if [3] runs) and known variants; else 2 (said on stderr).
int CheckInputs(const RunOptions& o) {
  for (const std::string& v : o.variants) {
    if (v != "production" && v != "copyable") {
      Progress("unknown variant '%s' (production, copyable)", v.c_str());
      return 2;
    }
  }
  if (access(o.plugin.c_str(), X_OK) != 0) {
    Progress("no plugin binary at %s (--plugin)", o.plugin.c_str());
    return 2;
  }
  if (!o.shim_sessions.empty() && access(o.fault_shim.c_str(), R_OK) != 0) {
    Progress("no fault shim at %s (--fault-shim)", o.fault_shim.c_str());
    return 2;
  }
  return 0;
}

// The token first: SoftHSM reads SOFTHSM2_CONF once, at its first C_Initialize in this process.
std::unique_ptr<SoftHsmToken> MakeToken() {
  Progress("creating a SoftHSM token");
  std::unique_ptr<SoftHsmToken> token = CreateTokenWithKek("trousseau-bench");
  if (!token) return nullptr;
  if (Status s = token->GenerateCopyableKek(1, FamilyOf("copyable")); !s.ok()) {
    Progress("GenerateCopyableKek: %s", s.ToString().c_str());
    return nullptr;
  }
  return token;
}

// [4], then [1]+[2] per variant, then [3]; false if one of them could not run.
bool RunScenarios(const RunOptions& o, const SoftHsmToken& token, RawHsm& raw, RunResults& results) {
  const std::string echo_socket = token.dir() + "/echo.sock";
  std::optional<std::unique_ptr<Subprocess>> echo_started = StartEcho(o.self, token.dir(), "echo", 0, echo_socket);
  if (!echo_started) return false;
  Subprocess& echo_process = **echo_started;
  auto echo_stub = Echo::NewStub(UnixChannel(echo_socket));

  // [4] first, on a quiet machine.
  for (const std::string& v : o.variants) {
    if (o.starts <= 0) break;
    Progress("[start] %d starts, %s key", o.starts, v.c_str());
    std::optional<StartResult> s = MeasureStarts(o, token, v, FamilyOf(v));
    if (!s) return false;
    results.starts.push_back(*std::move(s));
  }
  for (const std::string& v : o.variants) {
    std::optional<VariantResult> r = MeasureVariant(o, token, raw, *echo_stub, echo_process.pid(), v, FamilyOf(v));
    if (!r) return false;
    results.variants.push_back(*std::move(r));
  }
  results.echo_mem = ReadProcMem(echo_process.pid());
  if (!o.shim_sessions.empty()) {
    std::optional<std::vector<SlowResult>> slow = MeasureSlowHsm(o, token);
    if (!slow) return false;
    results.slow = *std::move(slow);
  }
  echo_process.Signal(SIGTERM);
  echo_process.Wait(5s);
  return true;
}

}  // namespace

int Run(const RunOptions& options) {
  RunOptions o = options;
  if (o.variants.size() == 1 && o.variants[0] == "none") o.variants.clear();
  KillChildrenOnSignal();
  SetReportStream(o.json ? stderr : stdout);
  if (const int bad = CheckInputs(o); bad != 0) return bad;

  std::unique_ptr<SoftHsmToken> token = MakeToken();
  if (!token) return 1;
  std::unique_ptr<RawHsm> raw = RawHsm::Open(token->Uri("kek", o.softhsm_module));
  if (!raw) return 1;

  RunResults results;
  results.date = UtcNow();
  results.cpus = std::thread::hardware_concurrency();
  results.cpu_model = CpuModel();
  results.kernel = Kernel();
  if (!RunScenarios(o, *token, *raw, results)) return 1;
  results.sessions_used = results.variants.empty() ? o.hsm_sessions : results.variants.front().sessions;

  PrintTable(o, results);
  WriteJson(o, results);
  return 0;
}

}  // namespace trousseau::bench
