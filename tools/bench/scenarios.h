// The measurements of `trousseau-bench run` (docs/benchmarks.md), one file each:
//   scenario_start.cc      [4] start to serving
//   scenario_variant.cc    [1] single-stream latency against the floor, [2] throughput against the echo server,
//                          and [5] the plugin's memory after them
//   scenario_slow_hsm.cc   [3] throughput with a slow HSM (the fault shim's delay), per --hsm-sessions
// run_report.cc prints their results as the table and the JSON object.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "echo.grpc.pb.h"
#include "hsm_client.h"
#include "proc_sampling.h"
#include "run.h"
#include "stats.h"
#include "tools/support/softhsm_token.h"

namespace trousseau::bench {

// Targets from the performance issue.
inline constexpr double kLatencyOverheadTarget = 0.15;  // plugin p50 <= 1.15 x floor
inline constexpr double kThroughputRatioTarget = 0.90;  // plugin >= 90 % of echo
inline constexpr double kSlowHsmRateTarget = 4000;      // Decrypts/s
inline constexpr double kStartTargetMs = 100;
inline constexpr double kMemoryTargetKiB = 20 * 1024;

struct StartResult {
  std::string label;
  std::vector<double> ms;
  double p50() const {
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    return sorted.empty() ? 0 : sorted[(sorted.size() - 1) / 2];
  }
  double min() const { return ms.empty() ? 0 : *std::min_element(ms.begin(), ms.end()); }
  double max() const { return ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end()); }
  bool pass() const { return !ms.empty() && p50() <= kStartTargetMs; }
};

struct VariantResult {
  std::string name;
  std::string key_kind;
  size_t sessions = 0;  // the plugin's HSM session pool, as it logged it
  int work_us = 0;      // busy work of the reference echo server (= hot raw HSM op p50)
  // [1]
  Summary echo_empty, echo_sized, echo_work, raw_hsm, raw_cold, plugin;
  double floor_us = 0, overhead = 0;
  bool latency_pass = false;
  // [2]
  struct Load {
    Summary summary;
    double server_cpu_us = 0, client_cpu_us = 0, busy = 0;
    std::vector<double> round_rates;  // calls/s of each round
  };
  Load tp_echo, tp_echo_work, tp_plugin;
  double ratio = 0, ratio_work = 0;
  std::vector<double> round_ratios;  // plugin / echo, round by round
  bool throughput_pass = false;
  // [5]
  ProcMem mem;
};

struct SlowResult {
  size_t sessions = 0;
  Summary single;
  Summary load;
  double ceiling = 0;
  bool pass = false;
  ProcMem mem;
};

struct MemRow {
  std::string label;
  ProcMem mem;
  bool is_plugin = true;
};

// The key family of a variant: "kek" (production) or "kek-copyable".
std::string FamilyOf(const std::string& variant);

// [4] o.starts starts of the plugin on `family`.
std::optional<StartResult> MeasureStarts(const RunOptions& o, const support::SoftHsmToken& token,
                                         const std::string& name, const std::string& family);
// [1], [2] and [5] for one variant, against the echo server `echo` (process `echo_pid`).
std::optional<VariantResult> MeasureVariant(const RunOptions& o, const support::SoftHsmToken& token, RawHsm& raw,
                                            Echo::Stub& echo, pid_t echo_pid, const std::string& name,
                                            const std::string& family);
// [3] for every o.shim_sessions value (the plugins go through the fault shim).
std::optional<std::vector<SlowResult>> MeasureSlowHsm(const RunOptions& o, const support::SoftHsmToken& token);

}  // namespace trousseau::bench
