// `trousseau-bench soak`: checks its inputs, starts the plugin on a fresh token through the fault
// shim, runs the load (soak_load.cc) beside the controller's events (soak_controller.cc) and a
// sampler of the plugin's VmRSS and fds, decrypts every version again (soak_final_check.cc) and
// reports (soak_report.cc).
#include "soak.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "children.h"
#include "core/strings.h"
#include "load.h"
#include "proc_sampling.h"
#include "report.h"
#include "soak_controller.h"
#include "soak_final_check.h"
#include "soak_load.h"
#include "soak_report.h"
#include "stats.h"
#include "token_setup.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;
using support::Subprocess;

constexpr auto kSamplePeriod = 200ms;

struct Durations {
  std::chrono::milliseconds outage, allowance, time_limit;
};

// The durations of the options, or nullopt (reason on stderr, exit code 2) if an option is wrong.
std::optional<Durations> CheckOptions(const SoakOptions& o) {
  const std::optional<std::chrono::milliseconds> outage = ParseDuration(o.outage);
  const std::optional<std::chrono::milliseconds> allowance = ParseDuration(o.recovery_allowance);
  const std::optional<std::chrono::milliseconds> time_limit = ParseDuration(o.time_limit);
  if (!outage || !allowance || !time_limit) {
    Progress("--outage, --recovery-allowance and --time-limit take a duration such as 10s, 500ms or 30m");
    return std::nullopt;
  }
  for (const std::string* binary : {&o.plugin, &o.init_tool}) {
    if (access(binary->c_str(), X_OK) != 0) {
      Progress("no executable at %s", binary->c_str());
      return std::nullopt;
    }
  }
  if (access(o.fault_shim.c_str(), R_OK) != 0) {
    Progress("no fault shim at %s (--fault-shim)", o.fault_shim.c_str());
    return std::nullopt;
  }
  if (o.streams < 1 || o.requests < static_cast<size_t>(o.streams)) {
    Progress("--requests must be at least --streams");
    return std::nullopt;
  }
  return Durations{*outage, *allowance, *time_limit};
}

// The plugin on a fresh token, reached through the fault shim, serving.
struct SoakPlugin {
  std::unique_ptr<SoftHsmToken> token;
  std::string control;  // the shim's control file
  std::unique_ptr<Subprocess> process;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v2::KeyManagementService::Stub> stub;
};

// Serving means Status "ok" (the socket is bound before the first login).
bool WaitStatusOk(v2::KeyManagementService::Stub& stub) {
  return support::Eventually(
      [&] {
        v2::StatusResponse r;
        return stub.Status(NewContext().get(), v2::StatusRequest(), &r).ok() && r.healthz() == "ok";
      },
      15s);
}

std::optional<SoakPlugin> StartSoakPlugin(const SoakOptions& o) {
  SoakPlugin p;
  Progress("creating a SoftHSM token with key version 1");
  p.token = CreateTokenWithKek("trousseau-soak");
  if (!p.token) return std::nullopt;
  // The plugin reaches the token through the shim; the operator's tool reaches it directly (the
  // outage is the plugin's link to the HSM).
  p.control = p.token->dir() + "/shim.control";
  RouteThroughShim(o.softhsm_module, p.control, "up");

  const std::string socket = p.token->dir() + "/soak.sock";
  KillChildrenOnSignal();
  p.process = std::make_unique<Subprocess>(
      PluginArgv(o.plugin, socket, p.token->Uri("kek", o.fault_shim), o.hsm_sessions), p.token->dir() + "/plugin.log");
  TrackChild(p.process->pid());
  p.channel = UnixChannel(socket);
  if (!p.process->started() || !support::Eventually([&] { return support::UnixSocketAccepts(socket); }, 15s) ||
      !WaitConnected(p.channel, 5s)) {
    Progress("the plugin did not start serving; its log:\n%s", p.process->Log().c_str());
    return std::nullopt;
  }
  p.stub = v2::KeyManagementService::NewStub(p.channel);
  if (!WaitStatusOk(*p.stub)) {
    Progress("the plugin never reported Status ok; its log:\n%s", p.process->Log().c_str());
    return std::nullopt;
  }
  return p;
}

// Samples the plugin every kSamplePeriod until the load is done; reports each tenth of the run and
// stops the load if the plugin exits or --time-limit passes.
void SampleUntilDone(const SoakOptions& o, Shared& shared, pid_t plugin, int64_t begin, int64_t time_limit_ns,
                     std::vector<Sample>& samples) {
  int decile = 0;
  while (!shared.load_done.load()) {
    Sample s{static_cast<double>(shared.answered.load()) / static_cast<double>(o.requests), NowNs(), VmRssKib(plugin),
             OpenFds(plugin)};
    samples.push_back(s);
    if (s.progress * 10 >= decile + 1) {
      decile = static_cast<int>(s.progress * 10);
      Progress("%3d %%  %zu answered, %zu errors, %.0f /s, VmRSS %ld KiB, %ld fds", decile * 10, shared.answered.load(),
               shared.errors.load(),
               static_cast<double>(shared.answered.load()) / (static_cast<double>(NowNs() - begin) / 1e9), s.rss_kib,
               s.fds);
    }
    // No VmRSS line: the plugin has exited (a zombie has none either).
    if (s.rss_kib == 0) shared.abort.store("the plugin exited during the run");
    if (NowNs() - begin > time_limit_ns) shared.abort.store("--time-limit passed");
    std::this_thread::sleep_for(kSamplePeriod);
  }
}

// The load, the controller and the sampler, until the load is done; fills the run's timing and samples.
void RunLoad(const SoakOptions& o, const Durations& d, Load& load, Controller& controller, SoakRun& run) {
  const pid_t plugin = run.plugin_pid;
  run.fds_start = OpenFds(plugin);
  run.rss_start = VmRssKib(plugin);
  run.begin_ns = NowNs();
  std::thread sampler([&] {
    SampleUntilDone(o, *run.shared, plugin, run.begin_ns, std::chrono::nanoseconds(d.time_limit).count(), run.samples);
  });
  std::thread control_thread([&] { controller.Run(run.plan); });
  load.Run();
  run.seconds = static_cast<double>(NowNs() - run.begin_ns) / 1e9;
  run.shared->load_done.store(true);
  // 100 %: right after the last answer.
  run.end_sample = Sample{1.0, NowNs(), VmRssKib(plugin), OpenFds(plugin)};
  sampler.join();
  control_thread.join();
  run.samples.push_back(run.end_sample);
}

// The plugin logs every Encrypt that succeeds (a third of a million lines in a full run): the copy
// kept for the report (if `copy_path`) leaves those out and says how many there were. Returns the
// number of "active key changed" lines.
size_t KeepPluginLog(const std::string& log, const std::string& copy_path) {
  size_t key_changes = 0, ok_lines = 0;
  std::istringstream in(log);
  std::ofstream kept;
  if (!copy_path.empty()) kept.open(copy_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("active key changed") != std::string::npos) ++key_changes;
    if (line.find(" code=OK ") != std::string::npos) {
      ++ok_lines;
      continue;
    }
    if (kept) kept << line << "\n";
  }
  if (kept) kept << "[trousseau-bench soak: " << ok_lines << " lines of calls answered OK left out]\n";
  return key_changes;
}

}  // namespace

int Soak(const SoakOptions& options) {
  const SoakOptions& o = options;
  SetProgressPrefix("soak");
  const std::optional<Durations> durations = CheckOptions(o);
  if (!durations) return 2;
  std::optional<SoakPlugin> plugin = StartSoakPlugin(o);
  if (!plugin) return 1;

  SoakRun run;
  run.options = &o;
  run.allowance = durations->allowance;
  run.plan = MakePlan(o.requests, o.rotate_every, durations->outage.count() > 0);
  run.date = UtcNow();
  run.plugin_pid = plugin->process->pid();
  Progress("%zu requests at %d streams, rotation every %zu, outage %s at request %zu; plugin pid %d", o.requests,
           o.streams, o.rotate_every, o.outage.c_str(), run.plan.outage_at.value_or(0), run.plugin_pid);

  Shared shared;
  Load load(*plugin->stub, shared, o.requests, o.streams, std::chrono::nanoseconds(durations->allowance).count());
  Controller controller(o, shared, run.plugin_pid, plugin->channel, plugin->token->Uri("kek", o.softhsm_module),
                        plugin->control, plugin->token->dir(), durations->outage);
  run.shared = &shared;
  run.load = &load;
  run.controller = &controller;
  RunLoad(o, *durations, load, controller, run);

  const size_t versions = load.key_ids().size();
  Progress("final check: decrypting up to %zu sealed items of each of %zu versions again", kFinalCheckPerVersion,
           versions);
  run.final_check = DecryptAgain(*plugin->stub, load.corpus(), versions, load.counts());
  run.rss_after_final = VmRssKib(run.plugin_pid);
  Subprocess& process = *plugin->process;
  run.plugin_alive = kill(run.plugin_pid, 0) == 0 && !process.Wait(0ms);
  process.Signal(SIGTERM);
  run.plugin_exit = process.Wait(15s);
  run.key_changes = KeepPluginLog(process.Log(), o.plugin_log);
  return ReportSoak(run) ? 0 : 1;
}

}  // namespace trousseau::bench
