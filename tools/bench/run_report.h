// The report of `trousseau-bench run`: the table (docs/benchmarks.md shows one) and the JSON object
// of --json / --json-file, from the results of every scenario.
#pragma once

#include <string>
#include <vector>

#include "proc_sampling.h"
#include "run.h"
#include "scenarios.h"

namespace trousseau::bench {

struct RunResults {
  std::string date, cpu_model, kernel;
  unsigned cpus = 0;
  size_t sessions_used = 0;  // the plugin's session pool in [1],[2],[4]
  std::vector<StartResult> starts;
  std::vector<VariantResult> variants;
  std::vector<SlowResult> slow;
  ProcMem echo_mem;
};

// The table, through Out (stdout, or stderr under --json).
void PrintTable(const RunOptions& o, const RunResults& r);
// The JSON object on stdout (--json) and/or into o.json_file.
void WriteJson(const RunOptions& o, const RunResults& r);

}  // namespace trousseau::bench
