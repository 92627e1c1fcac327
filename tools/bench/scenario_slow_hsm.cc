// [3] Slow HSM: the plugin reaches SoftHSM through the fault shim, which delays every crypto call by
// o.shim_delay_us; o.shim_concurrency concurrent Decrypts per --hsm-sessions value, then once more with the
// plugin's default (--hsm-sessions auto: the pool grows with the load), reported as sessions 0.
#include "children.h"
#include "core/strings.h"
#include "report.h"
#include "scenarios.h"
#include "token_setup.h"
#include "workload.h"

namespace trousseau::bench {
namespace {

std::optional<SlowResult> MeasureOneSessionCount(const RunOptions& o, const support::SoftHsmToken& token,
                                                 size_t sessions) {
  SlowResult result;
  result.sessions = sessions;
  // sessions 0: no --hsm-sessions flag, the plugin's default.
  Progress("[slow HSM] --hsm-sessions %zu (0: the default, auto): starting the plugin on the fault shim", sessions);
  std::optional<Plugin> plugin =
      StartPlugin(o.plugin, token.dir(), StrCat("plugin-shim-", sessions), token.Uri("kek", o.fault_shim), sessions);
  if (!plugin) return std::nullopt;
  std::optional<SeededPlugin> seeded = SealASeed(plugin->socket);
  if (!seeded) return std::nullopt;
  auto& stub = seeded->stub;
  Workload& w = seeded->workload;

  PhaseResult single;
  TimeSequential(
      3, [&] { return CallDecrypt(*stub, w); }, single);
  single = {};
  TimeSequential(
      20, [&] { return CallDecrypt(*stub, w); }, single);
  result.single = Summarize(single.latencies_ns, single.errors);
  // An auto pool has no fixed ceiling: left 0.
  result.ceiling = result.single.p50_us > 0 ? static_cast<double>(sessions) / (result.single.p50_us / 1e6) : 0;

  Progress("[slow HSM] --hsm-sessions %zu: %d concurrent Decrypts for %.1f s", sessions, o.shim_concurrency,
           o.shim_seconds);
  PhaseResult load = LoadDecrypt(o, *stub, w, o.shim_concurrency, o.shim_seconds);
  result.load = Summarize(load.latencies_ns, load.errors, load.seconds);
  result.pass = result.load.rate() >= kSlowHsmRateTarget && result.load.errors == 0;
  result.mem = ReadProcMem(plugin->process->pid());
  StopPlugin(*plugin);
  return result;
}

}  // namespace

std::optional<std::vector<SlowResult>> MeasureSlowHsm(const RunOptions& o, const support::SoftHsmToken& token) {
  std::vector<SlowResult> slow;
  RouteThroughShim(o.softhsm_module, token.dir() + "/shim.control", StrCat("up delay_us=", o.shim_delay_us));
  std::vector<size_t> session_counts = o.shim_sessions;
  session_counts.push_back(0);  // the default, which sizes itself: what an operator who sets nothing gets
  for (size_t sessions : session_counts) {
    std::optional<SlowResult> r = MeasureOneSessionCount(o, token, sessions);
    if (!r) return std::nullopt;
    slow.push_back(*std::move(r));
  }
  StopRoutingThroughShim();
  return slow;
}

}  // namespace trousseau::bench
