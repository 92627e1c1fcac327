#include "run.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/envelope.h"
#include "core/secure_bytes.h"
#include "core/status.h"
#include "core/strings.h"
#include "echo.grpc.pb.h"
#include "echo_server.h"
#include "hsm_client.h"
#include "load.h"
#include "stats.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;
using support::Subprocess;

// Targets from the performance issue.
constexpr double kLatencyOverheadTarget = 0.15;   // plugin p50 <= 1.15 x floor
constexpr double kThroughputRatioTarget = 0.90;   // plugin >= 90 % of echo
constexpr double kSlowHsmRateTarget = 4000;       // Decrypts/s
constexpr double kStartTargetMs = 100;
constexpr double kMemoryTargetKiB = 20 * 1024;

// kube-apiserver sends a UUID as uid.
constexpr char kUid[] = "0d6f3c6e-5b1a-4c2e-9f4d-7a8b9c0d1e2f";

// ---- output -------------------------------------------------------------------------------------

FILE* g_table = stdout;

void Out(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Out(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vfprintf(g_table, format, args);
  va_end(args);
  std::fflush(g_table);
}

void Progress(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Progress(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs("bench: ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
}

const char* Verdict(bool pass) { return pass ? "PASS" : "MISS"; }

std::string UtcNow() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string Kernel() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return StrCat(u.sysname, " ", u.release);
}

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    const size_t nl = text.rfind('\n', pos - 1);
    if (nl == std::string::npos) return text;
    pos = nl;
  }
  return text.substr(pos);
}

// ---- processes ------------------------------------------------------------------------------------

// Children to kill if the benchmark itself is interrupted (their destructors would not run).
std::atomic<pid_t> g_children[64];

void TrackChild(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t empty = 0;
    if (slot.compare_exchange_strong(empty, pid)) return;
  }
}

void UntrackChild(pid_t pid) {
  for (auto& slot : g_children) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

extern "C" void KillChildrenAndExit(int sig) {
  for (auto& slot : g_children) {
    if (const pid_t pid = slot.load(); pid > 0) kill(pid, SIGKILL);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

struct ProcMem {
  long hwm_kib = 0;
  long rss_kib = 0;
  long anon_kib = 0;  // RssAnon: heap, stacks (private to the process)
  long file_kib = 0;  // RssFile: mapped binaries and libraries (shared with other processes)
  long threads = 0;
};

ProcMem ReadProcMem(pid_t pid) {
  ProcMem mem;
  std::ifstream in(StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    auto value = [&](std::string_view key) { return std::strtol(line.c_str() + key.size(), nullptr, 10); };
    if (line.starts_with("VmHWM:")) mem.hwm_kib = value("VmHWM:");
    if (line.starts_with("VmRSS:")) mem.rss_kib = value("VmRSS:");
    if (line.starts_with("RssAnon:")) mem.anon_kib = value("RssAnon:");
    if (line.starts_with("RssFile:")) mem.file_kib = value("RssFile:");
    if (line.starts_with("Threads:")) mem.threads = value("Threads:");
  }
  return mem;
}

// User + system CPU seconds of a whole process (all threads).
double ProcCpuSeconds(pid_t pid) {
  std::ifstream in(StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  // After ")": state(3) ... utime is field 14, stime 15 (1-based over the whole line).
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Busy fraction of all CPUs between two samples of /proc/stat.
struct CpuSample {
  unsigned long long busy = 0, total = 0;
};
CpuSample ReadCpuSample() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  CpuSample sample;
  unsigned long long v[8] = {};
  for (auto& x : v) in >> x;
  for (int i = 0; i < 8; ++i) sample.total += v[i];
  sample.busy = sample.total - v[3] - v[4];  // minus idle and iowait
  return sample;
}
double BusyFraction(const CpuSample& a, const CpuSample& b) {
  return b.total > a.total ? static_cast<double>(b.busy - a.busy) / static_cast<double>(b.total - a.total) : 0;
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(usage.ru_utime) + sec(usage.ru_stime);
}

// One v2 Status on a fresh connection (fail fast); true when it answers healthz "ok".
bool StatusOk(const std::string& socket, std::chrono::milliseconds deadline) {
  auto channel = UnixChannel(socket);
  auto stub = v2::KeyManagementService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  v2::StatusResponse response;
  return stub->Status(&context, v2::StatusRequest(), &response).ok() && response.healthz() == "ok";
}

// Milliseconds from `spawned_ns` until the plugin answers Status "ok" (polled every ~1 ms), or
// nullopt if it exited or did not get there within `timeout`.
std::optional<double> WaitServing(Subprocess& process, const std::string& socket, int64_t spawned_ns,
                                  std::chrono::milliseconds timeout) {
  const int64_t deadline = spawned_ns + std::chrono::nanoseconds(timeout).count();
  while (NowNs() < deadline) {
    if (access(socket.c_str(), F_OK) == 0 && StatusOk(socket, 1s)) {
      return static_cast<double>(NowNs() - spawned_ns) / 1e6;
    }
    if (process.Wait(0ms)) return std::nullopt;
    std::this_thread::sleep_for(1ms);
  }
  return std::nullopt;
}

struct Plugin {
  Plugin() = default;
  Plugin(Plugin&&) = default;
  Plugin& operator=(Plugin&&) = default;
  ~Plugin() {
    if (process) UntrackChild(process->pid());
  }
  std::unique_ptr<Subprocess> process;
  std::string socket;
  std::string log;
  double start_ms = 0;
  size_t sessions = 0;  // as the plugin logged it (0: not found)
};

std::optional<Plugin> StartPlugin(const RunOptions& options, const SoftHsmToken& token, const std::string& name,
                                  const std::string& uri, size_t sessions) {
  Plugin plugin;
  plugin.socket = StrCat(token.dir(), "/", name, ".sock");
  plugin.log = StrCat(token.dir(), "/", name, ".log");
  std::vector<std::string> argv = {options.plugin, "--listen", "unix://" + plugin.socket, "--pkcs11-uri", uri};
  if (sessions > 0) {
    argv.push_back("--hsm-sessions");
    argv.push_back(std::to_string(sessions));
  }
  const int64_t spawned = NowNs();
  plugin.process = std::make_unique<Subprocess>(argv, plugin.log);
  TrackChild(plugin.process->pid());
  if (!plugin.process->started()) {
    Progress("cannot start %s", options.plugin.c_str());
    return std::nullopt;
  }
  std::optional<double> ms = WaitServing(*plugin.process, plugin.socket, spawned, 15s);
  if (!ms) {
    Progress("plugin '%s' did not start serving; its log:\n%s", name.c_str(),
             Tail(plugin.process->Log(), 30).c_str());
    return std::nullopt;
  }
  plugin.start_ms = *ms;
  // "... with N session(s)" in the plugin's start-up log, for the report.
  const std::string log = plugin.process->Log();
  if (const size_t at = log.find(" session(s)"); at != std::string::npos) {
    size_t begin = at;
    while (begin > 0 && std::isdigit(static_cast<unsigned char>(log[begin - 1]))) --begin;
    plugin.sessions = std::strtoul(log.c_str() + begin, nullptr, 10);
  }
  return plugin;
}

void StopPlugin(Plugin& plugin) {
  plugin.process->Signal(SIGTERM);
  if (!plugin.process->Wait(10s)) Progress("plugin did not stop on SIGTERM; killing it");
}

// ---- results ------------------------------------------------------------------------------------

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
  int work_us = 0;  // busy work of the reference echo server (= hot raw HSM op p50)
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

// ---- scenarios ----------------------------------------------------------------------------------

struct Workload {
  std::string seed;
  v2::DecryptRequest decrypt;
  trousseau::bench::EchoMessage echo_empty;
  trousseau::bench::EchoMessage echo_sized;
};

// An echo request whose serialized size equals the Decrypt request's.
trousseau::bench::EchoMessage SizedEcho(size_t wire_bytes) {
  trousseau::bench::EchoMessage message;
  for (size_t payload = wire_bytes; payload > 0; --payload) {
    message.set_payload(std::string(payload, '\xa5'));
    if (message.ByteSizeLong() <= wire_bytes) break;
  }
  return message;
}

// A connected v2 stub and the Decrypt kube-apiserver would send: a fresh random seed, sealed by the
// plugin itself.
struct SeededPlugin {
  std::unique_ptr<v2::KeyManagementService::Stub> stub;
  Workload workload;
};

std::string RandomSeed() {
  std::random_device rd;
  std::string seed(32, '\0');
  for (char& c : seed) c = static_cast<char>(rd());
  return seed;
}

std::optional<v2::EncryptResponse> EncryptSeed(v2::KeyManagementService::Stub& stub, const std::string& seed) {
  v2::EncryptRequest request;
  request.set_plaintext(seed);
  request.set_uid(kUid);
  v2::EncryptResponse response;
  grpc::Status status = stub.Encrypt(NewContext().get(), request, &response);
  if (!status.ok()) {
    Progress("Encrypt failed: %s", status.error_message().c_str());
    return std::nullopt;
  }
  return response;
}

std::optional<SeededPlugin> SealASeed(const std::string& socket) {
  auto channel = UnixChannel(socket);
  WaitConnected(channel, 5s);
  SeededPlugin seeded{v2::KeyManagementService::NewStub(channel), {}};
  Workload& w = seeded.workload;
  w.seed = RandomSeed();
  std::optional<v2::EncryptResponse> sealed = EncryptSeed(*seeded.stub, w.seed);
  if (!sealed) return std::nullopt;
  w.decrypt.set_ciphertext(sealed->ciphertext());
  w.decrypt.set_uid(kUid);
  w.decrypt.set_key_id(sealed->key_id());
  return seeded;
}

bool CallDecrypt(v2::KeyManagementService::Stub& stub, const Workload& w) {
  v2::DecryptResponse response;
  return stub.Decrypt(NewContext().get(), w.decrypt, &response).ok() && response.plaintext() == w.seed;
}

bool CallEcho(Echo::Stub& stub, const EchoMessage& request) {
  EchoMessage response;
  return stub.Echo(NewContext().get(), request, &response).ok() && response.payload().size() == kEchoReplyBytes;
}

LoadOptions ThroughputLoad(const RunOptions& o, int concurrency, double seconds) {
  LoadOptions load;
  load.concurrency = concurrency;
  load.client_threads = o.client_threads;
  load.warmup_seconds = o.warmup_seconds;
  load.seconds = seconds;
  return load;
}

PhaseResult LoadEcho(const RunOptions& o, Echo::Stub& stub, const EchoMessage& request, int concurrency,
                     double seconds) {
  return ClosedLoop<EchoMessage>(
      ThroughputLoad(o, concurrency, seconds),
      [&](grpc::ClientContext* context, grpc::CompletionQueue* cq) { return stub.PrepareAsyncEcho(context, request, cq); },
      [](const EchoMessage& reply) { return reply.payload().size() == kEchoReplyBytes; });
}

PhaseResult LoadDecrypt(const RunOptions& o, v2::KeyManagementService::Stub& stub, const Workload& w,
                        int concurrency, double seconds) {
  return ClosedLoop<v2::DecryptResponse>(
      ThroughputLoad(o, concurrency, seconds),
      [&](grpc::ClientContext* context, grpc::CompletionQueue* cq) {
        return stub.PrepareAsyncDecrypt(context, w.decrypt, cq);
      },
      [&](const v2::DecryptResponse& reply) { return reply.plaintext() == w.seed; });
}

void Append(PhaseResult& into, PhaseResult&& from) {
  into.latencies_ns.insert(into.latencies_ns.end(), from.latencies_ns.begin(), from.latencies_ns.end());
  into.errors += from.errors;
  into.seconds += from.seconds;
}

// An echo server (this binary) in its own process; nullopt if it does not come up.
std::optional<std::unique_ptr<Subprocess>> StartEcho(const RunOptions& o, const SoftHsmToken& token,
                                                     const std::string& name, int work_us,
                                                     const std::string& socket) {
  std::vector<std::string> argv = {o.self, "echo-server", "--listen", "unix://" + socket};
  if (work_us > 0) {
    argv.push_back("--work-us");
    argv.push_back(std::to_string(work_us));
  }
  auto process = std::make_unique<Subprocess>(argv, StrCat(token.dir(), "/", name, ".log"));
  auto channel = UnixChannel(socket);
  if (!support::Eventually([&] { return access(socket.c_str(), F_OK) == 0; }, 5s) || !WaitConnected(channel, 5s)) {
    Progress("the echo server did not start: %s", process->Log().c_str());
    return std::nullopt;
  }
  return process;
}

// Runs `load` and measures the server process's CPU, this process's CPU and the whole machine's.
template <typename Fn>
void MeasureLoad(pid_t server, double warmup_and_run_factor, Fn load, PhaseResult& into, double& server_cpu,
                 double& client_cpu, CpuSample& busy_from, CpuSample& busy_to, std::vector<double>& round_rates) {
  const double server0 = ProcCpuSeconds(server), self0 = SelfCpuSeconds();
  const CpuSample a = ReadCpuSample();
  PhaseResult round = load();
  round_rates.push_back(round.seconds > 0 ? static_cast<double>(round.latencies_ns.size()) / round.seconds : 0);
  Append(into, std::move(round));
  const CpuSample b = ReadCpuSample();
  server_cpu += (ProcCpuSeconds(server) - server0) / warmup_and_run_factor;
  client_cpu += (SelfCpuSeconds() - self0) / warmup_and_run_factor;
  busy_from.busy += a.busy;
  busy_from.total += a.total;
  busy_to.busy += b.busy;
  busy_to.total += b.total;
}

std::optional<VariantResult> MeasureVariant(const RunOptions& o, const SoftHsmToken& token, RawHsm& raw,
                                            Echo::Stub& echo, pid_t echo_pid, const std::string& name,
                                            const std::string& family) {
  VariantResult result;
  result.name = name;
  Progress("[%s] starting the plugin (key family '%s')", name.c_str(), family.c_str());
  std::optional<Plugin> plugin =
      StartPlugin(o, token, "plugin-" + name, token.Uri(family, o.softhsm_module), o.hsm_sessions);
  if (!plugin) return std::nullopt;
  std::optional<SeededPlugin> seeded = SealASeed(plugin->socket);
  if (!seeded) return std::nullopt;
  auto& stub = seeded->stub;
  Workload& w = seeded->workload;
  w.echo_sized = SizedEcho(w.decrypt.ByteSizeLong());
  if (!CallDecrypt(*stub, w)) {
    Progress("[%s] the plugin does not decrypt its own ciphertext", name.c_str());
    return std::nullopt;
  }
  StatusOr<ParsedEnvelope> envelope = ParseEnvelope(w.decrypt.ciphertext());
  if (!envelope.ok() || !raw.UseKey(family) || !raw.OpenOnce(*envelope, w.seed)) {
    Progress("[%s] the raw HSM op does not open the plugin's ciphertext", name.c_str());
    return std::nullopt;
  }
  result.key_kind = raw.key_kind();
  Progress("[%s] ciphertext %zu bytes, key_id %zu bytes, Decrypt request %zu bytes on the wire; echo request %zu",
           name.c_str(), w.decrypt.ciphertext().size(), w.decrypt.key_id().size(), w.decrypt.ByteSizeLong(),
           w.echo_sized.ByteSizeLong());

  auto echo_empty = [&] { return CallEcho(echo, w.echo_empty); };
  auto echo_sized = [&] { return CallEcho(echo, w.echo_sized); };
  auto raw_op = [&] { return raw.OpenOnce(*envelope, w.seed); };
  auto decrypt = [&] { return CallDecrypt(*stub, w); };

  // The same raw op, each one right after an (untimed) echo call, so that it finds the caches as
  // cold as it does inside a request.
  auto raw_cold = [&](size_t calls, PhaseResult& into) {
    for (size_t i = 0; i < calls; ++i) {
      CallEcho(echo, w.echo_empty);
      TimeSequential(1, raw_op, into);
    }
  };
  // The reference echo server busy-waits as long as one such raw HSM op takes: a plugin whose only
  // cost beyond the echo server's is the HSM op.
  {
    PhaseResult probe;
    TimeSequential(o.warmup_calls, raw_op, probe);
    probe = {};
    raw_cold(1000, probe);
    const Summary cold = Summarize(probe.latencies_ns);
    result.work_us = std::max(1, static_cast<int>(std::lround(cold.p50_us)));
  }
  const std::string work_socket = StrCat(token.dir(), "/echo-work-", name, ".sock");
  std::optional<std::unique_ptr<Subprocess>> work_process =
      StartEcho(o, token, "echo-work-" + name, result.work_us, work_socket);
  if (!work_process) return std::nullopt;
  auto work_channel = UnixChannel(work_socket);
  auto work_stub = Echo::NewStub(work_channel);
  auto echo_work = [&] { return CallEcho(*work_stub, w.echo_sized); };

  // [1] single stream, the kinds interleaved round by round.
  Progress("[%s] single-stream latency: %d rounds x %zu calls of each kind", name.c_str(), o.rounds,
           o.latency_calls);
  {
    PhaseResult discard;
    TimeSequential(o.warmup_calls, echo_empty, discard);
    TimeSequential(o.warmup_calls, echo_sized, discard);
    TimeSequential(o.warmup_calls, echo_work, discard);
    TimeSequential(o.warmup_calls, decrypt, discard);
  }
  PhaseResult p_empty, p_sized, p_work, p_raw, p_raw_cold, p_plugin;
  for (int r = 0; r < o.rounds; ++r) {
    TimeSequential(o.latency_calls, echo_empty, p_empty);
    TimeSequential(o.latency_calls, raw_op, p_raw);
    TimeSequential(o.latency_calls, decrypt, p_plugin);
    TimeSequential(o.latency_calls, echo_sized, p_sized);
    TimeSequential(o.latency_calls, echo_work, p_work);
    raw_cold(o.latency_calls, p_raw_cold);
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

  // [2] concurrency: echo, echo with busy work and plugin, alternating round by round.
  Progress("[%s] throughput at %d streams: %d rounds x %.1f s per server (+%.1f s warm-up)", name.c_str(),
           o.streams, o.throughput_rounds, o.throughput_seconds, o.warmup_seconds);
  const double factor = (o.throughput_seconds + o.warmup_seconds) / o.throughput_seconds;
  PhaseResult t_echo, t_work, t_plugin;
  CpuSample busy[3][2];
  for (int r = 0; r < o.throughput_rounds; ++r) {
    MeasureLoad(
        echo_pid, factor, [&] { return LoadEcho(o, echo, w.echo_sized, o.streams, o.throughput_seconds); }, t_echo,
        result.tp_echo.server_cpu_us, result.tp_echo.client_cpu_us, busy[0][0], busy[0][1],
        result.tp_echo.round_rates);
    MeasureLoad(
        (*work_process)->pid(), factor,
        [&] { return LoadEcho(o, *work_stub, w.echo_sized, o.streams, o.throughput_seconds); }, t_work,
        result.tp_echo_work.server_cpu_us, result.tp_echo_work.client_cpu_us, busy[1][0], busy[1][1],
        result.tp_echo_work.round_rates);
    MeasureLoad(
        plugin->process->pid(), factor, [&] { return LoadDecrypt(o, *stub, w, o.streams, o.throughput_seconds); },
        t_plugin, result.tp_plugin.server_cpu_us, result.tp_plugin.client_cpu_us, busy[2][0], busy[2][1],
        result.tp_plugin.round_rates);
  }
  auto finish = [&](VariantResult::Load& load, PhaseResult& phase, CpuSample* b) {
    load.summary = Summarize(phase.latencies_ns, phase.errors, phase.seconds);
    // CPU seconds per measured second -> microseconds per call.
    const double calls = static_cast<double>(load.summary.count);
    load.server_cpu_us = calls > 0 ? load.server_cpu_us / calls * 1e6 : 0;
    load.client_cpu_us = calls > 0 ? load.client_cpu_us / calls * 1e6 : 0;
    load.busy = BusyFraction(b[0], b[1]);
  };
  finish(result.tp_echo, t_echo, busy[0]);
  finish(result.tp_echo_work, t_work, busy[1]);
  finish(result.tp_plugin, t_plugin, busy[2]);
  const double echo_rate = result.tp_echo.summary.rate();
  result.ratio = echo_rate > 0 ? result.tp_plugin.summary.rate() / echo_rate : 0;
  result.ratio_work = echo_rate > 0 ? result.tp_echo_work.summary.rate() / echo_rate : 0;
  result.throughput_pass = result.ratio >= kThroughputRatioTarget && result.tp_plugin.summary.errors == 0;
  for (size_t r = 0; r < result.tp_echo.round_rates.size(); ++r) {
    const double e = result.tp_echo.round_rates[r];
    result.round_ratios.push_back(e > 0 ? result.tp_plugin.round_rates[r] / e : 0);
  }

  result.mem = ReadProcMem(plugin->process->pid());
  result.sessions = plugin->sessions;
  StopPlugin(*plugin);
  (*work_process)->Signal(SIGTERM);
  (*work_process)->Wait(5s);
  return result;
}

void WriteControl(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << content << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

std::optional<SlowResult> MeasureSlowHsm(const RunOptions& o, const SoftHsmToken& token, size_t sessions) {
  SlowResult result;
  result.sessions = sessions;
  Progress("[slow HSM] --hsm-sessions %zu: starting the plugin on the fault shim", sessions);
  std::optional<Plugin> plugin = StartPlugin(o, token, StrCat("plugin-shim-", sessions),
                                             token.Uri("kek", o.fault_shim), sessions);
  if (!plugin) return std::nullopt;
  std::optional<SeededPlugin> seeded = SealASeed(plugin->socket);
  if (!seeded) return std::nullopt;
  auto& stub = seeded->stub;
  Workload& w = seeded->workload;

  PhaseResult single;
  TimeSequential(3, [&] { return CallDecrypt(*stub, w); }, single);
  single = {};
  TimeSequential(20, [&] { return CallDecrypt(*stub, w); }, single);
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

std::optional<StartResult> MeasureStarts(const RunOptions& o, const SoftHsmToken& token, const std::string& name,
                                         const std::string& family) {
  StartResult result;
  result.label = name;
  for (int i = 0; i < o.starts; ++i) {
    std::optional<Plugin> plugin =
        StartPlugin(o, token, StrCat("start-", name, "-", i), token.Uri(family, o.softhsm_module), o.hsm_sessions);
    if (!plugin) return std::nullopt;
    result.ms.push_back(plugin->start_ms);
    StopPlugin(*plugin);
  }
  return result;
}

std::string FamilyOf(const std::string& variant) { return variant == "production" ? "kek" : "kek-" + variant; }

double MiB(long kib) { return static_cast<double>(kib) / 1024.0; }

}  // namespace

int Probe(const ProbeOptions& p) {
  RunOptions o;
  o.client_threads = p.client_threads;
  auto channel = UnixChannel(p.socket);
  if (!WaitConnected(channel, 5s)) {
    Progress("cannot connect to %s", p.socket.c_str());
    return 1;
  }
  PhaseResult result;
  if (p.kind == "echo") {
    auto stub = Echo::NewStub(channel);
    EchoMessage request = SizedEcho(152);
    if (p.streams == 1) {
      const int64_t start = NowNs();
      while (NowNs() - start < static_cast<int64_t>(p.seconds * 1e9)) {
        TimeSequential(100, [&] { return CallEcho(*stub, request); }, result);
      }
      result.seconds = static_cast<double>(NowNs() - start) / 1e9;
    } else {
      result = LoadEcho(o, *stub, request, p.streams, p.seconds);
    }
  } else {
    auto stub = v2::KeyManagementService::NewStub(channel);
    Workload w;
    w.seed = RandomSeed();
    std::optional<v2::EncryptResponse> sealed = EncryptSeed(*stub, w.seed);
    if (!sealed) return 1;
    w.decrypt.set_ciphertext(sealed->ciphertext());
    w.decrypt.set_uid(kUid);
    w.decrypt.set_key_id(sealed->key_id());
    if (p.streams == 1) {
      const int64_t start = NowNs();
      while (NowNs() - start < static_cast<int64_t>(p.seconds * 1e9)) {
        TimeSequential(100, [&] { return CallDecrypt(*stub, w); }, result);
      }
      result.seconds = static_cast<double>(NowNs() - start) / 1e9;
    } else {
      result = LoadDecrypt(o, *stub, w, p.streams, p.seconds);
    }
  }
  Summary s = Summarize(result.latencies_ns, result.errors, result.seconds);
  std::printf("%s streams=%d calls/s=%.0f p50=%.1f p90=%.1f p99=%.1f us errors=%zu\n", p.kind.c_str(), p.streams,
              s.rate(), s.p50_us, s.p90_us, s.p99_us, s.errors);
  return 0;
}

int Run(const RunOptions& options) {
  RunOptions o = options;
  if (o.variants.size() == 1 && o.variants[0] == "none") o.variants.clear();
  signal(SIGINT, KillChildrenAndExit);
  signal(SIGTERM, KillChildrenAndExit);
  g_table = o.json ? stderr : stdout;
  for (const std::string& v : o.variants) {
    if (v != "production" && v != "copyable") {
      Progress("unknown variant '%s' (production, copyable)", v.c_str());
      return 2;
    }
  }
  if (access(o.plugin.c_str(), X_OK) != 0) {
    Progress("no plugin binary at %s (--plugin)", o.plugin.c_str());
    return 2;
  }
  const bool slow_hsm = !o.shim_sessions.empty();
  if (slow_hsm && access(o.fault_shim.c_str(), R_OK) != 0) {
    Progress("no fault shim at %s (--fault-shim)", o.fault_shim.c_str());
    return 2;
  }

  // The token first: SoftHSM reads SOFTHSM2_CONF once, at its first C_Initialize in this process.
  Progress("creating a SoftHSM token");
  std::unique_ptr<SoftHsmToken> token = SoftHsmToken::Create("trousseau-bench");
  if (!token) {
    Progress("cannot create a SoftHSM token (is softhsm2-util installed?)");
    return 1;
  }
  if (Status s = token->GenerateKek(1, "kek"); !s.ok()) {
    Progress("GenerateKek: %s", s.ToString().c_str());
    return 1;
  }
  if (Status s = token->GenerateCopyableKek(1, FamilyOf("copyable")); !s.ok()) {
    Progress("GenerateCopyableKek: %s", s.ToString().c_str());
    return 1;
  }
  std::unique_ptr<RawHsm> raw = RawHsm::Open(token->Uri("kek", o.softhsm_module));
  if (!raw) return 1;

  const std::string date = UtcNow();
  const unsigned cpus = std::thread::hardware_concurrency();
  const std::string cpu_model = CpuModel();
  const std::string kernel = Kernel();

  // The echo server: this binary, in its own process.
  const std::string echo_socket = token->dir() + "/echo.sock";
  std::optional<std::unique_ptr<Subprocess>> echo_started = StartEcho(o, *token, "echo", 0, echo_socket);
  if (!echo_started) return 1;
  Subprocess& echo_process = **echo_started;
  auto echo_stub = Echo::NewStub(UnixChannel(echo_socket));

  // [4] first, on a quiet machine.
  std::vector<StartResult> starts;
  for (const std::string& v : o.variants) {
    if (o.starts <= 0) break;
    Progress("[start] %d starts, %s key", o.starts, v.c_str());
    std::optional<StartResult> s = MeasureStarts(o, *token, v, FamilyOf(v));
    if (!s) return 1;
    starts.push_back(*std::move(s));
  }

  std::vector<VariantResult> variants;
  for (const std::string& v : o.variants) {
    std::optional<VariantResult> r = MeasureVariant(o, *token, *raw, *echo_stub, echo_process.pid(), v, FamilyOf(v));
    if (!r) return 1;
    variants.push_back(*std::move(r));
  }
  const ProcMem echo_mem = ReadProcMem(echo_process.pid());

  std::vector<SlowResult> slow;
  if (slow_hsm) {
    const std::string control = token->dir() + "/shim.control";
    WriteControl(control, StrCat("up delay_us=", o.shim_delay_us));
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", o.softhsm_module.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
    for (size_t sessions : o.shim_sessions) {
      std::optional<SlowResult> r = MeasureSlowHsm(o, *token, sessions);
      if (!r) return 1;
      slow.push_back(*std::move(r));
    }
    unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
    unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
  }
  echo_process.Signal(SIGTERM);
  echo_process.Wait(5s);

  // ---- the table --------------------------------------------------------------------------------
  Out("\ntrousseau-hsm benchmark   %s   %u CPU(s), %s, %s\n", date.c_str(), cpus, cpu_model.c_str(), kernel.c_str());
  const size_t sessions_used = variants.empty() ? o.hsm_sessions : variants.front().sessions;
  if (variants.empty()) {
    Out("plugin %s, module %s\n", o.plugin.c_str(), o.softhsm_module.c_str());
  } else {
    Out("plugin %s (%s%zu HSM sessions in [1],[2],[4]), module %s\n", o.plugin.c_str(),
        o.hsm_sessions > 0 ? "--hsm-sessions " : "its default: ", sessions_used, o.softhsm_module.c_str());
  }
  Out("client: one channel per server (own unix-socket connection), 3 s deadline per call; %d completion-queue "
      "thread(s) for concurrent loads\n",
      o.client_threads);

  if (!starts.empty()) {
    Out("\n[4] Start to serving: spawn -> first v2 Status \"ok\" (polled every ~1 ms), %d starts, ms\n", o.starts);
    Out("    %-40s %8s %8s %8s   %s\n", "", "min", "p50", "max", "target p50 <= 100 ms");
    for (const StartResult& s : starts) {
      Out("    %-40s %8.1f %8.1f %8.1f   %s\n", (s.label + " key").c_str(), s.min(), s.p50(), s.max(),
          Verdict(s.pass()));
    }
  }

  if (!variants.empty()) {
    Out("\n[1] Single stream, one call at a time: %d rounds x %zu calls of each kind, interleaved; latency in us\n",
        o.rounds, o.latency_calls);
    Out("    %-50s %7s %8s %8s %8s %8s\n", "", "n", "p50", "p90", "p99", "mean");
    auto row = [](const char* label, const Summary& s) {
      Out("    %-50s %7zu %8.1f %8.1f %8.1f %8.1f%s\n", label, s.count, s.p50_us, s.p90_us, s.p99_us, s.mean_us,
          s.errors ? StrCat("  (", s.errors, " errors)").c_str() : "");
    };
    for (const VariantResult& v : variants) {
      Out("  %s key (%s)\n", v.name.c_str(), v.key_kind.c_str());
      row("echo, empty request (gRPC floor)", v.echo_empty);
      row(StrCat("raw HSM GcmOpen, ", v.key_kind, ", in-process").c_str(), v.raw_hsm);
      row("plugin v2 Decrypt", v.plugin);
      Out("    floor = %.1f + %.1f = %.1f us; plugin p50 %.1f us = %+.1f %%   target <= +15 %%  %s\n",
          v.echo_empty.p50_us, v.raw_hsm.p50_us, v.floor_us, v.plugin.p50_us, 100 * v.overhead,
          Verdict(v.latency_pass));
      Out("    reference rows (no target):\n");
      row("echo, Decrypt-sized request", v.echo_sized);
      row("raw HSM GcmOpen, each right after an echo call", v.raw_cold);
      row(StrCat("echo, Decrypt-sized, ", v.work_us, " us busy work per call").c_str(), v.echo_work);
    }

    Out("\n[2] %d concurrent streams on one channel, Decrypt-sized messages: %d rounds x %.1f s per server, "
        "alternating\n",
        o.streams, o.throughput_rounds, o.throughput_seconds);
    Out("    %-34s %8s %8s %8s %8s %11s %11s %9s\n", "", "calls/s", "p50 us", "p90 us", "p99 us", "server CPU",
        "client CPU", "all CPUs");
    Out("    %-34s %8s %8s %8s %8s %11s %11s %9s\n", "", "", "", "", "", "us/call", "us/call", "busy");
    for (const VariantResult& v : variants) {
      Out("  %s key (%s)\n", v.name.c_str(), v.key_kind.c_str());
      auto trow = [](const std::string& label, const VariantResult::Load& l) {
        const Summary& s = l.summary;
        Out("    %-34s %8.0f %8.1f %8.1f %8.1f %11.1f %11.1f %8.0f%%%s\n", label.c_str(), s.rate(), s.p50_us, s.p90_us,
            s.p99_us, l.server_cpu_us, l.client_cpu_us, 100 * l.busy,
            s.errors ? StrCat("  (", s.errors, " errors)").c_str() : "");
      };
      trow("echo server", v.tp_echo);
      trow("plugin v2 Decrypt", v.tp_plugin);
      trow(StrCat("echo, ", v.work_us, " us busy work (reference)"), v.tp_echo_work);
      const auto [lo, hi] = std::minmax_element(v.round_ratios.begin(), v.round_ratios.end());
      Out("    plugin / echo = %.1f %% (rounds: %.1f-%.1f %%)   target >= 90 %%  %s\n", 100 * v.ratio,
          lo == v.round_ratios.end() ? 0 : 100 * *lo, hi == v.round_ratios.end() ? 0 : 100 * *hi,
          Verdict(v.throughput_pass));
      Out("    reference: echo with %d us busy work / echo = %.1f %%; plugin / (echo with busy work) = %.1f %%\n",
          v.work_us, 100 * v.ratio_work,
          v.tp_echo_work.summary.rate() > 0 ? 100 * v.tp_plugin.summary.rate() / v.tp_echo_work.summary.rate() : 0);
    }
  }

  if (slow_hsm) {
    Out("\n[3] Slow HSM: fault shim, delay_us=%u on each crypto call (a GcmOpen is C_DecryptInit + C_Decrypt), "
        "%d concurrent Decrypts, %.1f s (+%.1f s warm-up)\n",
        o.shim_delay_us, o.shim_concurrency, o.shim_seconds, o.warmup_seconds);
    Out("    %-10s %16s %16s %9s %8s %8s %8s   %s\n", "sessions", "1-stream p50 ms", "ceiling/s", "calls/s",
        "p50 ms", "p90 ms", "p99 ms", "target >= 4000/s");
    for (const SlowResult& s : slow) {
      Out("    %-10zu %16.2f %16.0f %9.0f %8.2f %8.2f %8.2f   %s%s\n", s.sessions, s.single.p50_us / 1000, s.ceiling,
          s.load.rate(), s.load.p50_us / 1000, s.load.p90_us / 1000, s.load.p99_us / 1000, Verdict(s.pass),
          s.load.errors ? StrCat("  (", s.load.errors, " errors)").c_str() : "");
    }
    Out("    ceiling = sessions / single-stream latency: about the most the session pool can overlap\n");
  }

  std::vector<MemRow> mem_rows;
  for (const VariantResult& v : variants) mem_rows.push_back({StrCat("plugin, ", v.name, " key, after [1]+[2]"), v.mem});
  for (const SlowResult& s : slow) {
    mem_rows.push_back({StrCat("plugin, fault shim, ", s.sessions, " sessions, after [3]"), s.mem});
  }
  if (!variants.empty()) mem_rows.push_back({"echo server (reference), after [1]+[2]", echo_mem, false});
  bool memory_pass = true;
  long worst_hwm = 0;
  Out("\n[5] Resident memory, /proc/PID/status after the process's load phases\n");
  Out("    %-46s %9s %9s %9s %9s %7s   %s\n", "", "VmHWM", "VmRSS", "RssAnon", "RssFile", "threads",
      "target VmHWM <= 20 MiB");
  for (const MemRow& m : mem_rows) {
    const bool pass = m.mem.hwm_kib > 0 && m.mem.hwm_kib <= kMemoryTargetKiB;
    if (m.is_plugin) {
      memory_pass = memory_pass && pass;
      worst_hwm = std::max(worst_hwm, m.mem.hwm_kib);
    }
    Out("    %-46s %9.1f %9.1f %9.1f %9.1f %7ld   %s\n", m.label.c_str(), MiB(m.mem.hwm_kib), MiB(m.mem.rss_kib),
        MiB(m.mem.anon_kib), MiB(m.mem.file_kib), m.mem.threads, m.is_plugin ? Verdict(pass) : "-");
  }
  Out("    (MiB; RssFile is mapped binaries and shared libraries, RssAnon heap and stacks)\n");

  // Summary of targets.
  Out("\nTargets\n");
  for (const VariantResult& v : variants) {
    Out("  [1] %-58s %+7.1f %%      %s\n", StrCat("single-stream p50 vs floor, <= +15 %, ", v.name, " key").c_str(),
        100 * v.overhead, Verdict(v.latency_pass));
  }
  for (const VariantResult& v : variants) {
    Out("  [2] %-58s %7.1f %%      %s\n",
        StrCat(o.streams, " streams, plugin/echo >= 90 %, ", v.name, " key").c_str(), 100 * v.ratio,
        Verdict(v.throughput_pass));
  }
  for (const SlowResult& s : slow) {
    Out("  [3] %-58s %7.0f /s     %s\n",
        StrCat("slow HSM, ", o.shim_concurrency, " concurrent, --hsm-sessions ", s.sessions, ", >= 4000/s").c_str(),
        s.load.rate(), Verdict(s.pass));
  }
  for (const StartResult& s : starts) {
    Out("  [4] %-58s %7.1f ms     %s\n", StrCat("start to serving p50 <= 100 ms, ", s.label, " key").c_str(), s.p50(),
        Verdict(s.pass()));
  }
  Out("  [5] %-58s %7.1f MiB    %s\n", "VmHWM of every plugin process <= 20 MiB (worst shown)", MiB(worst_hwm),
      Verdict(memory_pass));

  // ---- JSON -------------------------------------------------------------------------------------
  if (o.json || !o.json_file.empty()) {
    Json j;
    j.Open();
    j.Str("date", date).Int("cpus", cpus).Str("cpu_model", cpu_model).Str("kernel", kernel);
    j.Str("plugin", o.plugin).Int("hsm_sessions", static_cast<int64_t>(sessions_used));
    j.Open("config")
        .Int("rounds", o.rounds)
        .Int("latency_calls", static_cast<int64_t>(o.latency_calls))
        .Int("streams", o.streams)
        .Int("throughput_rounds", o.throughput_rounds)
        .Num("throughput_seconds", o.throughput_seconds)
        .Int("client_threads", o.client_threads)
        .Int("shim_delay_us", o.shim_delay_us)
        .Int("shim_concurrency", o.shim_concurrency)
        .Num("shim_seconds", o.shim_seconds)
        .Int("starts", o.starts)
        .Close();
    j.OpenArray("single_stream");
    for (const VariantResult& v : variants) {
      j.Open().Str("variant", v.name).Str("key", v.key_kind);
      j.Summ("echo_empty", v.echo_empty).Summ("raw_hsm", v.raw_hsm).Summ("plugin_decrypt", v.plugin);
      j.Summ("echo_sized", v.echo_sized).Int("work_us", v.work_us).Summ("echo_sized_with_work", v.echo_work);
      j.Summ("raw_hsm_after_echo_call", v.raw_cold);
      j.Num("floor_us", v.floor_us).Num("overhead_pct", 100 * v.overhead).Num("target_pct", 100 * kLatencyOverheadTarget);
      j.Bool("pass", v.latency_pass).Close();
    }
    j.CloseArray();
    j.OpenArray("throughput");
    for (const VariantResult& v : variants) {
      j.Open().Str("variant", v.name).Str("key", v.key_kind).Int("streams", o.streams);
      auto load = [&](std::string_view key, const VariantResult::Load& l) {
        j.Open(key).Summ("calls", l.summary).Num("server_cpu_us_per_call", l.server_cpu_us);
        j.Num("client_cpu_us_per_call", l.client_cpu_us).Num("all_cpus_busy_pct", 100 * l.busy);
        j.OpenArray("round_per_second");
        for (double r : l.round_rates) j.Num("", r);
        j.CloseArray().Close();
      };
      load("echo", v.tp_echo);
      load("plugin_decrypt", v.tp_plugin);
      j.Int("work_us", v.work_us);
      load("echo_with_work", v.tp_echo_work);
      j.Num("ratio_pct", 100 * v.ratio).Num("echo_with_work_ratio_pct", 100 * v.ratio_work);
      j.Num("target_pct", 100 * kThroughputRatioTarget);
      j.Bool("pass", v.throughput_pass).Close();
    }
    j.CloseArray();
    j.OpenArray("slow_hsm");
    for (const SlowResult& s : slow) {
      j.Open().Int("hsm_sessions", static_cast<int64_t>(s.sessions)).Int("delay_us", o.shim_delay_us);
      j.Int("concurrency", o.shim_concurrency).Summ("single_stream", s.single).Summ("load", s.load);
      j.Num("ceiling_per_second", s.ceiling).Num("target_per_second", kSlowHsmRateTarget).Bool("pass", s.pass);
      j.Close();
    }
    j.CloseArray();
    j.OpenArray("start_to_serving");
    for (const StartResult& s : starts) {
      j.Open().Str("variant", s.label).OpenArray("ms");
      for (double ms : s.ms) j.Num("", ms);
      j.CloseArray().Num("p50_ms", s.p50()).Num("max_ms", s.max()).Num("target_ms", kStartTargetMs);
      j.Bool("pass", s.pass()).Close();
    }
    j.CloseArray();
    j.OpenArray("memory");
    for (const MemRow& m : mem_rows) {
      j.Open().Str("process", m.label).Int("vm_hwm_kib", m.mem.hwm_kib).Int("vm_rss_kib", m.mem.rss_kib);
      j.Int("rss_anon_kib", m.mem.anon_kib).Int("rss_file_kib", m.mem.file_kib);
      j.Int("threads", m.mem.threads).Bool("plugin", m.is_plugin).Close();
    }
    j.CloseArray();
    j.Num("memory_target_kib", kMemoryTargetKiB).Bool("memory_pass", memory_pass);
    j.Close();
    if (o.json) std::printf("%s\n", j.text().c_str());
    if (!o.json_file.empty()) {
      std::ofstream(o.json_file) << j.text() << "\n";
      Progress("JSON written to %s", o.json_file.c_str());
    }
  }
  return 0;
}

}  // namespace trousseau::bench
