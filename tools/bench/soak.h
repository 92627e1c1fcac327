// `trousseau-bench soak` (run by ci/soak, documented in docs/benchmarks.md "Soak"): a long run of mixed
// v2 Encrypt/Decrypt against the real plugin on a real SoftHSM token reached through the fault shim,
// with a key rotation (`trousseau-hsm-init key rotate` + SIGHUP) every --rotate-every requests and one
// HSM outage (shim "down" for --outage, then "up") in the middle. Every answer is checked; the plugin's
// VmRSS and open fds are sampled. Prints a summary and returns non-zero if any criterion fails.
#pragma once

#include <cstddef>
#include <string>

namespace trousseau::bench {

struct SoakOptions {
  std::string plugin;
  std::string fault_shim;
  std::string init_tool;  // trousseau-hsm-init, makes each new key version
  std::string softhsm_module = "/usr/lib/softhsm/libsofthsm2.so";

  size_t requests = 1'000'000;            // answered calls (errors included) in the main run
  int streams = 64;                       // calls in flight at all times
  size_t rotate_every = 100'000;          // a new key version + SIGHUP every this many requests (0: none)
  std::string outage = "10s";             // shim "down" this long, once, in the middle ("0s": none)
  std::string recovery_allowance = "5s";  // errors after "up" are allowed this long (issue 12: serve within 5 s)
  size_t hsm_sessions = 0;                // the plugin's --hsm-sessions (0: its default)
  std::string time_limit = "30m";         // the run stops (and fails) after this long

  std::string json_file;   // also write the figures as JSON here
  std::string plugin_log;  // keep a copy of the plugin's log here (it holds no secrets)
};

int Soak(const SoakOptions& options);

}  // namespace trousseau::bench
