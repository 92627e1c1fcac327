// trousseau-bench: performance benchmark of trousseau-hsm (see docs/benchmarks.md).
//   trousseau-bench run [options]                 everything, table (and --json) on stdout
//   trousseau-bench echo-server --listen unix:///path   the gRPC floor, started by `run`
//   trousseau-bench soak [options]                the long run with rotations and an outage (ci/soak)
//   trousseau-bench failover [options]            two HSMs, the first cut mid-load (issue 14 (a))
#include <unistd.h>

#include <climits>
#include <string>

#include <CLI/CLI.hpp>

#include "echo_server.h"
#include "recipients_bench.h"
#include "scenario_failover.h"
#include "run.h"
#include "soak.h"

#ifndef TROUSSEAU_BENCH_PLUGIN
#define TROUSSEAU_BENCH_PLUGIN "trousseau-hsm"
#endif
#ifndef TROUSSEAU_BENCH_INIT_TOOL
#define TROUSSEAU_BENCH_INIT_TOOL "trousseau-hsm-init"
#endif
#ifndef TROUSSEAU_BENCH_FAULT_SHIM
#define TROUSSEAU_BENCH_FAULT_SHIM "libtrousseau_fault_shim.so"
#endif
#ifndef TROUSSEAU_BENCH_SECOND_FAULT_SHIM
#define TROUSSEAU_BENCH_SECOND_FAULT_SHIM "libtrousseau_fault_shim_second.so"
#endif

namespace {

std::string SelfPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "/proc/self/exe";
  return std::string(buf, static_cast<size_t>(n));
}

// An option that takes a positive number and shows its default in --help.
template <typename T>
CLI::Option* AddPositive(CLI::App* app, const std::string& name, T& value, const std::string& description) {
  return app->add_option(name, value, description)->check(CLI::PositiveNumber)->capture_default_str();
}

}  // namespace

namespace {

using trousseau::bench::EchoServerOptions;
using trousseau::bench::FailoverOptions;
using trousseau::bench::ProbeOptions;
using trousseau::bench::RecipientsOptions;
using trousseau::bench::RunOptions;
using trousseau::bench::SoakOptions;

CLI::App* AddEchoServer(CLI::App& app, EchoServerOptions& echo_options) {
  CLI::App* echo = app.add_subcommand("echo-server", "Serve the Echo floor (a sync gRPC server like the plugin's)");
  echo->add_option("--listen", echo_options.listen, "unix:///path.sock")->required();
  echo->add_option("--work-us", echo_options.work_us, "Diagnostics: busy-wait this long in every call");
  echo->add_option("--mode", echo_options.mode, "Diagnostics: sync (as the plugin) or callback")
      ->check(CLI::IsMember({"sync", "callback"}))
      ->capture_default_str();
  echo->add_option("--min-pollers", echo_options.min_pollers, "Diagnostics: gRPC sync server MIN_POLLERS");
  echo->add_option("--max-pollers", echo_options.max_pollers, "Diagnostics: gRPC sync server MAX_POLLERS");
  return echo;
}

CLI::App* AddProbe(CLI::App& app, ProbeOptions& probe_options) {
  CLI::App* probe = app.add_subcommand(
      "probe", "Diagnostics: load one running server (echo-server, or any KMS v2 plugin: Encrypt once, then Decrypt)");
  probe->add_option("--socket", probe_options.socket, "Socket path")->required();
  probe->add_option("--kind", probe_options.kind, "echo or decrypt")
      ->check(CLI::IsMember({"echo", "decrypt"}))
      ->capture_default_str();
  AddPositive(probe, "--streams", probe_options.streams, "Concurrent calls (1: sequential blocking calls)");
  probe->add_option("--seconds", probe_options.seconds, "Measured seconds")->capture_default_str();
  probe->add_option("--client-threads", probe_options.client_threads, "Completion-queue threads")
      ->capture_default_str();
  return probe;
}

// The options of [1] and [2] (docs/benchmarks.md).
void AddRunLatencyOptions(CLI::App* run, RunOptions& o) {
  AddPositive(run, "--rounds", o.rounds, "[1] interleaved rounds");
  AddPositive(run, "--latency-calls", o.latency_calls, "[1] calls of each kind per round");
  run->add_option("--warmup-calls", o.warmup_calls, "[1] warm-up calls of each kind")->capture_default_str();
  AddPositive(run, "--streams", o.streams, "[2] concurrent calls");
  AddPositive(run, "--throughput-rounds", o.throughput_rounds, "[2] alternating rounds");
  AddPositive(run, "--throughput-seconds", o.throughput_seconds, "[2] measured seconds per server per round");
  run->add_option("--warmup-seconds", o.warmup_seconds, "[2],[3] warm-up before each measured load")
      ->capture_default_str();
  AddPositive(run, "--client-threads", o.client_threads, "[2],[3] client completion-queue threads");
}

// The options of [3], the slow HSM.
void AddRunSlowHsmOptions(CLI::App* run, RunOptions& o) {
  run->add_option("--shim-delay-us", o.shim_delay_us, "[3] fault shim delay per crypto call")->capture_default_str();
  AddPositive(run, "--shim-concurrency", o.shim_concurrency, "[3] concurrent Decrypts");
  run->add_option("--shim-sessions", o.shim_sessions, "[3] --hsm-sessions values to try (0 skips [3])")
      ->delimiter(',')
      ->capture_default_str();
  AddPositive(run, "--shim-seconds", o.shim_seconds, "[3] measured seconds per sessions value");
}

CLI::App* AddRun(CLI::App& app, RunOptions& o) {
  o.plugin = TROUSSEAU_BENCH_PLUGIN;
  o.fault_shim = TROUSSEAU_BENCH_FAULT_SHIM;
  CLI::App* run = app.add_subcommand("run", "Run every scenario and print the results");
  run->add_option("--plugin", o.plugin, "trousseau-hsm binary")->capture_default_str();
  run->add_option("--fault-shim", o.fault_shim, "fault-injecting PKCS#11 shim (for [3])")->capture_default_str();
  run->add_option("--softhsm-module", o.softhsm_module, "SoftHSM2 PKCS#11 module")->capture_default_str();
  run->add_option("--variants", o.variants,
                  "KEK kinds for [1],[2],[4],[5]: production (non-modifiable: SoftHSM uses the token object), "
                  "copyable (modifiable: the plugin uses a session copy); none skips them")
      ->delimiter(',')
      ->capture_default_str();
  run->add_option("--hsm-sessions", o.hsm_sessions,
                  "--hsm-sessions of the plugin in [1],[2],[4] (0: the plugin's default)")
      ->capture_default_str();
  AddRunLatencyOptions(run, o);
  AddRunSlowHsmOptions(run, o);
  run->add_option("--starts", o.starts, "[4] plugin starts per variant (0 skips [4])")->capture_default_str();
  run->add_flag("--json", o.json, "Print a JSON object on stdout (the table goes to stderr)");
  run->add_option("--json-file", o.json_file, "Also write the JSON object to this file");
  return run;
}

CLI::App* AddRecipients(CLI::App& app, RecipientsOptions& o) {
  CLI::App* recipients = app.add_subcommand(
      "recipients", "Multi-node mode's cost: Encrypt to 1, 3, 7, 9 and 18 members, and the TPM's ECDH of a Decrypt");
  AddPositive(recipients, "--iterations", o.iterations, "Calls measured per case");
  recipients->add_option("--tcti", o.tcti, "TPM to measure TPM2_ECDH_ZGen on (with --recipient-dir)");
  recipients->add_option("--recipient-dir", o.recipient_dir,
                         "Its recipient key (trousseau-hsm-init tpm recipient create)");
  recipients->add_flag("--json", o.json, "Print a JSON object on stdout (the table goes to stderr)");
  return recipients;
}

CLI::App* AddSoak(CLI::App& app, SoakOptions& soak_options) {
  soak_options.plugin = TROUSSEAU_BENCH_PLUGIN;
  soak_options.fault_shim = TROUSSEAU_BENCH_FAULT_SHIM;
  soak_options.init_tool = TROUSSEAU_BENCH_INIT_TOOL;
  CLI::App* soak = app.add_subcommand(
      "soak", "Mixed v2 Encrypt/Decrypt with key rotations and one HSM outage, every answer checked (ci/soak)");
  soak->add_option("--plugin", soak_options.plugin, "trousseau-hsm binary")->capture_default_str();
  soak->add_option("--fault-shim", soak_options.fault_shim, "fault-injecting PKCS#11 shim")->capture_default_str();
  soak->add_option("--init-tool", soak_options.init_tool, "trousseau-hsm-init binary (makes the new versions)")
      ->capture_default_str();
  soak->add_option("--softhsm-module", soak_options.softhsm_module, "SoftHSM2 PKCS#11 module")->capture_default_str();
  AddPositive(soak, "--requests", soak_options.requests, "Calls answered in all (errors included)");
  AddPositive(soak, "--streams", soak_options.streams, "Concurrent calls");
  soak->add_option("--rotate-every", soak_options.rotate_every, "New key version + SIGHUP every N requests (0: none)")
      ->capture_default_str();
  soak->add_option("--outage", soak_options.outage, "HSM outage (shim \"down\") in the middle, e.g. 10s (0s: none)")
      ->capture_default_str();
  soak->add_option("--recovery-allowance", soak_options.recovery_allowance,
                   "Errors are allowed this long after the HSM is back")
      ->capture_default_str();
  soak->add_option("--hsm-sessions", soak_options.hsm_sessions, "The plugin's --hsm-sessions (0: its default)")
      ->capture_default_str();
  soak->add_option("--time-limit", soak_options.time_limit, "Stop (and fail) a run that takes longer")
      ->capture_default_str();
  soak->add_option("--json-file", soak_options.json_file, "Also write the figures as JSON to this file");
  soak->add_option("--plugin-log", soak_options.plugin_log, "Keep a copy of the plugin's log here");
  return soak;
}

CLI::App* AddFailover(CLI::App& app, FailoverOptions& o) {
  o.plugin = TROUSSEAU_BENCH_PLUGIN;
  o.init_tool = TROUSSEAU_BENCH_INIT_TOOL;
  o.fault_shim = TROUSSEAU_BENCH_FAULT_SHIM;
  o.second_fault_shim = TROUSSEAU_BENCH_SECOND_FAULT_SHIM;
  CLI::App* failover = app.add_subcommand(
      "failover", "Multi-node mode with two HSMs: Decrypt load, the first HSM cut mid-load (failed calls, latency)");
  failover->add_option("--plugin", o.plugin, "trousseau-hsm binary")->capture_default_str();
  failover->add_option("--init-tool", o.init_tool, "trousseau-hsm-init binary (recipient keys, the set)")
      ->capture_default_str();
  failover->add_option("--fault-shim", o.fault_shim, "fault shim in front of the first HSM")->capture_default_str();
  failover->add_option("--second-fault-shim", o.second_fault_shim, "fault shim in front of the second HSM")
      ->capture_default_str();
  failover->add_option("--softhsm-module", o.softhsm_module, "SoftHSM2 PKCS#11 module")->capture_default_str();
  AddPositive(failover, "--streams", o.streams, "Concurrent Decrypt streams");
  AddPositive(failover, "--before-seconds", o.before_seconds, "Load before the cut");
  AddPositive(failover, "--after-seconds", o.after_seconds, "Load after the cut (at least 2)");
  failover->add_option("--fault", o.fault, "How the HSM is cut: down (link lost) or hang (black-holed)")
      ->check(CLI::IsMember({"down", "hang"}))
      ->capture_default_str();
  failover->add_option("--hsm-timeout", o.hsm_timeout, "The plugin's --hsm-timeout")->capture_default_str();
  failover->add_flag("--json", o.json, "Also print the figures as a JSON object on stdout");
  failover->add_option("--plugin-log", o.plugin_log, "Keep a copy of the plugin's log here");
  return failover;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trousseau-bench: latency, throughput, start-up and memory of trousseau-hsm against its floors",
               "trousseau-bench"};
  app.require_subcommand(1);
  EchoServerOptions echo_options;
  ProbeOptions probe_options;
  RunOptions run_options;
  SoakOptions soak_options;
  RecipientsOptions recipients_options;
  FailoverOptions failover_options;
  CLI::App* echo = AddEchoServer(app, echo_options);
  CLI::App* probe = AddProbe(app, probe_options);
  AddRun(app, run_options);
  CLI::App* soak = AddSoak(app, soak_options);
  CLI::App* recipients = AddRecipients(app, recipients_options);
  CLI::App* failover = AddFailover(app, failover_options);

  CLI11_PARSE(app, argc, argv);
  if (*echo) return trousseau::bench::RunEchoServer(echo_options);
  if (*soak) return trousseau::bench::Soak(soak_options);
  if (*probe) return trousseau::bench::Probe(probe_options);
  if (*recipients) return trousseau::bench::RunRecipients(recipients_options);
  if (*failover) return trousseau::bench::RunFailover(failover_options);
  std::erase(run_options.shim_sessions, size_t{0});
  run_options.self = SelfPath();
  return trousseau::bench::Run(run_options);
}
