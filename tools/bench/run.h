// `trousseau-bench run`: the whole benchmark (docs/benchmarks.md). Builds a SoftHSM token in a temp
// dir, spawns the plugin and the echo server as separate processes, and measures
//   [1] single-stream v2 Decrypt latency against the floor (empty gRPC call + one raw HSM AES-GCM op)
//   [2] throughput at N concurrent streams, plugin vs. echo server on Decrypt-sized messages
//   [3] throughput at 64 concurrent Decrypts with a slow HSM (fault shim delay) per --hsm-sessions
//   [4] start to serving (spawn -> first v2 Status "ok")
//   [5] resident memory of each plugin process after its load phases
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace trousseau::bench {

struct RunOptions {
  std::string plugin;
  std::string fault_shim;
  std::string softhsm_module = "/usr/lib/softhsm/libsofthsm2.so";
  std::string self;  // this binary, to start `echo-server`
  // "production": non-modifiable KEK as provisioned for real (SoftHSM will not copy it into a
  // session, so the plugin uses the token object); "copyable": modifiable KEK (session copy).
  // "none" alone skips [1], [2] and [4].
  std::vector<std::string> variants = {"production", "copyable"};
  size_t hsm_sessions = 0;  // for [1],[2],[4]; 0: the plugin's own default

  int rounds = 10;
  size_t latency_calls = 1000;
  size_t warmup_calls = 500;

  int streams = 16;
  int throughput_rounds = 5;
  double throughput_seconds = 1.0;
  double warmup_seconds = 0.3;
  int client_threads = 1;

  unsigned shim_delay_us = 2000;
  int shim_concurrency = 64;
  std::vector<size_t> shim_sessions = {8, 16, 32};
  double shim_seconds = 3.0;

  int starts = 5;

  bool json = false;      // JSON object on stdout (the table then goes to stderr)
  std::string json_file;  // also/instead write the JSON object here
};

int Run(const RunOptions& options);

// `trousseau-bench probe`: one load against one running server, for diagnostics.
struct ProbeOptions {
  std::string socket;
  std::string kind = "echo";
  int streams = 16;
  double seconds = 3;
  int client_threads = 1;
};
int Probe(const ProbeOptions& options);

}  // namespace trousseau::bench
