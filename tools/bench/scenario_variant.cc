// [1] single-stream latency of the plugin's v2 Decrypt against its floor (an empty echo call + one raw
// HSM op in this process), [2] throughput at o.streams concurrent calls against the echo server, and
// [5] the plugin's memory after both; for one KEK variant (production or copyable).
#include <signal.h>

#include <cmath>
#include <functional>
#include <memory>

#include "children.h"
#include "core/envelope.h"
#include "core/strings.h"
#include "report.h"
#include "scenarios.h"
#include "workload.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::Subprocess;

// The timed calls of [1], each true when OK and checked.
struct Calls {
  std::function<bool()> echo_empty, echo_sized, echo_work, raw_op, decrypt;
  // The raw op, each one right after an (untimed) echo call, so that it finds the caches as cold as
  // it does inside a request.
  std::function<void(size_t, PhaseResult&)> raw_cold;
};

// The three servers of [2], each with the process whose CPU time is measured.
struct Servers {
  Echo::Stub& echo;
  pid_t echo_pid;
  Echo::Stub& work;
  pid_t work_pid;
  v2::KeyManagementService::Stub& plugin;
  pid_t plugin_pid;
};

// The reference echo server busy-waits as long as one such raw HSM op takes: a plugin whose only
// cost beyond the echo server's is the HSM op.
int CalibrateWork(const RunOptions& o, const Calls& calls) {
  PhaseResult probe;
  TimeSequential(o.warmup_calls, calls.raw_op, probe);
  probe = {};
  calls.raw_cold(1000, probe);
  const Summary cold = Summarize(probe.latencies_ns);
  return std::max(1, static_cast<int>(std::lround(cold.p50_us)));
}

// [1] single stream, the kinds interleaved round by round.
void MeasureLatency(const RunOptions& o, const Calls& calls, VariantResult& result) {
  Progress("[%s] single-stream latency: %d rounds x %zu calls of each kind", result.name.c_str(), o.rounds,
           o.latency_calls);
  {
    PhaseResult discard;
    TimeSequential(o.warmup_calls, calls.echo_empty, discard);
    TimeSequential(o.warmup_calls, calls.echo_sized, discard);
    TimeSequential(o.warmup_calls, calls.echo_work, discard);
    TimeSequential(o.warmup_calls, calls.decrypt, discard);
  }
  PhaseResult p_empty, p_sized, p_work, p_raw, p_raw_cold, p_plugin;
  for (int r = 0; r < o.rounds; ++r) {
    TimeSequential(o.latency_calls, calls.echo_empty, p_empty);
    TimeSequential(o.latency_calls, calls.raw_op, p_raw);
    TimeSequential(o.latency_calls, calls.decrypt, p_plugin);
    TimeSequential(o.latency_calls, calls.echo_sized, p_sized);
    TimeSequential(o.latency_calls, calls.echo_work, p_work);
    calls.raw_cold(o.latency_calls, p_raw_cold);
  }
  result.echo_empty = Summarize(p_empty.latencies_ns, p_empty.errors);
  result.echo_sized = Summarize(p_sized.latencies_ns, p_sized.errors);
  result.echo_work = Summarize(p_work.latencies_ns, p_work.errors);
  result.raw_hsm = Summarize(p_raw.latencies_ns, p_raw.errors);
  result.raw_cold = Summarize(p_raw_cold.latencies_ns, p_raw_cold.errors);
  result.plugin = Summarize(p_plugin.latencies_ns, p_plugin.errors);
  result.floor_us = result.echo_empty.p50_us + result.raw_hsm.p50_us;
  result.overhead = result.plugin.p50_us / result.floor_us - 1;
  result.latency_pass = result.overhead <= kLatencyOverheadTarget && result.plugin.errors == 0;
}

// The calls of every round of one server in [2], and the machine's CPU counters around them.
struct LoadTally {
  PhaseResult phase;
  CpuSample busy_from, busy_to;
};

void Append(PhaseResult& into, PhaseResult&& from) {
  into.latencies_ns.insert(into.latencies_ns.end(), from.latencies_ns.begin(), from.latencies_ns.end());
  into.errors += from.errors;
  into.seconds += from.seconds;
}

// Runs one round of `load` and measures the server process's CPU, this process's CPU and the whole
// machine's.
void MeasureRound(pid_t server, double warmup_and_run_factor, const std::function<PhaseResult()>& load,
                  LoadTally& tally, VariantResult::Load& into) {
  const double server0 = ProcCpuSeconds(server), self0 = SelfCpuSeconds();
  const CpuSample a = ReadCpuSample();
  PhaseResult round = load();
  into.round_rates.push_back(round.seconds > 0 ? static_cast<double>(round.latencies_ns.size()) / round.seconds : 0);
  Append(tally.phase, std::move(round));
  const CpuSample b = ReadCpuSample();
  into.server_cpu_us += (ProcCpuSeconds(server) - server0) / warmup_and_run_factor;
  into.client_cpu_us += (SelfCpuSeconds() - self0) / warmup_and_run_factor;
  tally.busy_from.busy += a.busy;
  tally.busy_from.total += a.total;
  tally.busy_to.busy += b.busy;
  tally.busy_to.total += b.total;
}

void FinishLoad(VariantResult::Load& load, LoadTally& tally) {
  load.summary = Summarize(tally.phase.latencies_ns, tally.phase.errors, tally.phase.seconds);
  // CPU seconds per measured second -> microseconds per call.
  const double calls = static_cast<double>(load.summary.count);
  load.server_cpu_us = calls > 0 ? load.server_cpu_us / calls * 1e6 : 0;
  load.client_cpu_us = calls > 0 ? load.client_cpu_us / calls * 1e6 : 0;
  load.busy = BusyFraction(tally.busy_from, tally.busy_to);
}

// [2] concurrency: echo, echo with busy work and plugin, alternating round by round.
void MeasureThroughput(const RunOptions& o, const Servers& s, const Workload& w, VariantResult& result) {
  Progress("[%s] throughput at %d streams: %d rounds x %.1f s per server (+%.1f s warm-up)", result.name.c_str(),
           o.streams, o.throughput_rounds, o.throughput_seconds, o.warmup_seconds);
  const double factor = (o.throughput_seconds + o.warmup_seconds) / o.throughput_seconds;
  LoadTally echo, work, plugin;
  for (int r = 0; r < o.throughput_rounds; ++r) {
    MeasureRound(
        s.echo_pid, factor, [&] { return LoadEcho(o, s.echo, w.echo_sized, o.streams, o.throughput_seconds); }, echo,
        result.tp_echo);
    MeasureRound(
        s.work_pid, factor, [&] { return LoadEcho(o, s.work, w.echo_sized, o.streams, o.throughput_seconds); }, work,
        result.tp_echo_work);
    MeasureRound(
        s.plugin_pid, factor, [&] { return LoadDecrypt(o, s.plugin, w, o.streams, o.throughput_seconds); }, plugin,
        result.tp_plugin);
  }
  FinishLoad(result.tp_echo, echo);
  FinishLoad(result.tp_echo_work, work);
  FinishLoad(result.tp_plugin, plugin);
  const double echo_rate = result.tp_echo.summary.rate();
  result.ratio = echo_rate > 0 ? result.tp_plugin.summary.rate() / echo_rate : 0;
  result.ratio_work = echo_rate > 0 ? result.tp_echo_work.summary.rate() / echo_rate : 0;
  result.throughput_pass = result.ratio >= kThroughputRatioTarget && result.tp_plugin.summary.errors == 0;
  for (size_t r = 0; r < result.tp_echo.round_rates.size(); ++r) {
    const double e = result.tp_echo.round_rates[r];
    result.round_ratios.push_back(e > 0 ? result.tp_plugin.round_rates[r] / e : 0);
  }
}

// The plugin decrypts its own ciphertext, and the raw HSM op opens it too (with the same key).
bool CheckBothOpen(v2::KeyManagementService::Stub& stub, Workload& w, RawHsm& raw, const std::string& name,
                   const std::string& family, StatusOr<ParsedEnvelope>& envelope) {
  if (!CallDecrypt(stub, w)) {
    Progress("[%s] the plugin does not decrypt its own ciphertext", name.c_str());
    return false;
  }
  envelope = ParseEnvelope(w.decrypt.ciphertext());
  if (!envelope.ok() || !raw.UseKey(family) || !raw.OpenOnce(*envelope, w.seed)) {
    Progress("[%s] the raw HSM op does not open the plugin's ciphertext", name.c_str());
    return false;
  }
  return true;
}

}  // namespace

std::optional<VariantResult> MeasureVariant(const RunOptions& o, const support::SoftHsmToken& token, RawHsm& raw,
                                            Echo::Stub& echo, pid_t echo_pid, const std::string& name,
                                            const std::string& family) {
  VariantResult result;
  result.name = name;
  Progress("[%s] starting the plugin (key family '%s')", name.c_str(), family.c_str());
  std::optional<Plugin> plugin =
      StartPlugin(o.plugin, token.dir(), "plugin-" + name, token.Uri(family, o.softhsm_module), o.hsm_sessions);
  if (!plugin) return std::nullopt;
  std::optional<SeededPlugin> seeded = SealASeed(plugin->socket);
  if (!seeded) return std::nullopt;
  auto& stub = seeded->stub;
  Workload& w = seeded->workload;
  w.echo_sized = SizedEcho(w.decrypt.ByteSizeLong());
  StatusOr<ParsedEnvelope> envelope = ParsedEnvelope{};
  if (!CheckBothOpen(*stub, w, raw, name, family, envelope)) return std::nullopt;
  result.key_kind = raw.key_kind();
  Progress("[%s] ciphertext %zu bytes, key_id %zu bytes, Decrypt request %zu bytes on the wire; echo request %zu",
           name.c_str(), w.decrypt.ciphertext().size(), w.decrypt.key_id().size(), w.decrypt.ByteSizeLong(),
           w.echo_sized.ByteSizeLong());

  Calls calls;
  calls.echo_empty = [&] { return CallEcho(echo, w.echo_empty); };
  calls.echo_sized = [&] { return CallEcho(echo, w.echo_sized); };
  calls.raw_op = [&] { return raw.OpenOnce(*envelope, w.seed); };
  calls.decrypt = [&] { return CallDecrypt(*stub, w); };
  calls.raw_cold = [&](size_t n, PhaseResult& into) {
    for (size_t i = 0; i < n; ++i) {
      CallEcho(echo, w.echo_empty);
      TimeSequential(1, calls.raw_op, into);
    }
  };
  result.work_us = CalibrateWork(o, calls);
  const std::string work_socket = StrCat(token.dir(), "/echo-work-", name, ".sock");
  std::optional<std::unique_ptr<Subprocess>> work_process =
      StartEcho(o.self, token.dir(), "echo-work-" + name, result.work_us, work_socket);
  if (!work_process) return std::nullopt;
  auto work_stub = Echo::NewStub(UnixChannel(work_socket));
  calls.echo_work = [&] { return CallEcho(*work_stub, w.echo_sized); };

  MeasureLatency(o, calls, result);
  MeasureThroughput(o, {echo, echo_pid, *work_stub, (*work_process)->pid(), *stub, plugin->process->pid()}, w, result);

  result.mem = ReadProcMem(plugin->process->pid());
  result.sessions = plugin->sessions;
  StopPlugin(*plugin);
  (*work_process)->Signal(SIGTERM);
  (*work_process)->Wait(5s);
  return result;
}

}  // namespace trousseau::bench
