// [3] Slow HSM: the plugin reaches SoftHSM through the fault shim, which delays every crypto call by
// o.shim_delay_us; o.shim_concurrency concurrent Decrypts per --hsm-sessions value.
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
  Progress("[slow HSM] --hsm-sessions %zu: starting the plugin on the fault shim", sessions);
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
  for (size_t sessions : o.shim_sessions) {
    std::optional<SlowResult> r = MeasureOneSessionCount(o, token, sessions);
    if (!r) return std::nullopt;
    slow.push_back(*std::move(r));
  }
  StopRoutingThroughShim();
  return slow;
}

}  // namespace trousseau::bench
