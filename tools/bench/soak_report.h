// The soak's report: its figures (from the load's counts, the controller's events and the samples of
// the plugin's VmRSS and fds), the pass/fail criteria, the summary on stdout and the JSON file.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "soak.h"
#include "soak_controller.h"
#include "soak_final_check.h"
#include "soak_load.h"
#include "stats.h"

namespace trousseau::bench {

// One sample of the plugin process, taken every 200 ms while the load runs.
struct Sample {
  double progress = 0;  // answered / requests
  int64_t at_ns = 0;
  long rss_kib = 0;
  long fds = 0;
};

// Everything the soak observed, for the report.
struct SoakRun {
  const SoakOptions* options = nullptr;
  std::chrono::milliseconds allowance{0};
  std::string date;
  pid_t plugin_pid = 0;
  int64_t begin_ns = 0;
  double seconds = 0;
  Plan plan;
  Shared* shared = nullptr;
  Load* load = nullptr;
  const Controller* controller = nullptr;
  FinalCheck final_check;
  std::vector<Sample> samples;  // the last one is end_sample
  Sample end_sample;
  long fds_start = 0, rss_start = 0, rss_after_final = 0;
  bool plugin_alive = false;
  std::optional<int> plugin_exit;
  size_t key_changes = 0;  // "active key changed" lines in the plugin's log
};

// Prints the summary and the criteria, writes the JSON file if asked; true when every criterion passes.
bool ReportSoak(SoakRun& run);

}  // namespace trousseau::bench
