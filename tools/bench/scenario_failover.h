// `trousseau-bench failover` (docs/benchmarks.md, issue 14 bench (a)): one plugin in multi-node mode
// with two HSMs (two SoftHSM tokens, each behind its own fault shim, as tests/multinode/two_hsm_test),
// loaded with N Decrypt streams; mid-load the HSM Decrypt tries first is made unreachable ("down",
// or "hang"). Reports the Decrypts that failed (all, and those started after the cut, i.e. beyond
// the ones in flight) and the latency before, in the first second after, and after the switch.
#pragma once

#include <string>

namespace trousseau::bench {

// Targets from issue 14.
inline constexpr double kFailoverP99TargetMs = 50;  // p99 after the switch

struct FailoverOptions {
  std::string plugin, init_tool, fault_shim, second_fault_shim;
  std::string softhsm_module = "/usr/lib/softhsm/libsofthsm2.so";
  int streams = 8;
  double before_seconds = 5;   // load before the cut
  double after_seconds = 5;    // load after it (the first of these seconds is reported apart)
  std::string fault = "down";  // the control word written to the cut HSM's shim: down or hang
  std::string hsm_timeout = "2s";
  bool json = false;
  std::string plugin_log;  // keep a copy of the plugin's log here ("" : none)
};

int RunFailover(const FailoverOptions& options);

}  // namespace trousseau::bench
