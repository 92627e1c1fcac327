#include "children.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/strings.h"
#include "load.h"
#include "report.h"
#include "stats.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::Subprocess;

// Children to kill if the benchmark itself is interrupted (their destructors would not run).
std::atomic<pid_t> g_children[64];

extern "C" void KillChildrenAndExit(int sig) {
  for (auto& slot : g_children) {
    if (const pid_t pid = slot.load(); pid > 0) kill(pid, SIGKILL);
  }
  signal(sig, SIG_DFL);
  raise(sig);
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

// "... with N session(s)" in the plugin's start-up log, for the report (0: not found).
size_t LoggedSessions(const std::string& log) {
  const size_t at = log.find(" session(s)");
  if (at == std::string::npos) return 0;
  size_t begin = at;
  while (begin > 0 && std::isdigit(static_cast<unsigned char>(log[begin - 1]))) --begin;
  return std::strtoul(log.c_str() + begin, nullptr, 10);
}

}  // namespace

void KillChildrenOnSignal() {
  signal(SIGINT, KillChildrenAndExit);
  signal(SIGTERM, KillChildrenAndExit);
}

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

std::vector<std::string> PluginArgv(const std::string& binary, const std::string& socket, const std::string& uri,
                                    size_t sessions) {
  std::vector<std::string> argv = {binary, "--listen", "unix://" + socket, "--pkcs11-uri", uri};
  if (sessions > 0) {
    argv.push_back("--hsm-sessions");
    argv.push_back(std::to_string(sessions));
  }
  return argv;
}

std::optional<Plugin> StartPlugin(const std::string& binary, const std::string& dir, const std::string& name,
                                  const std::string& uri, size_t sessions) {
  Plugin plugin;
  plugin.socket = StrCat(dir, "/", name, ".sock");
  plugin.log = StrCat(dir, "/", name, ".log");
  const int64_t spawned = NowNs();
  plugin.process = std::make_unique<Subprocess>(PluginArgv(binary, plugin.socket, uri, sessions), plugin.log);
  TrackChild(plugin.process->pid());
  if (!plugin.process->started()) {
    Progress("cannot start %s", binary.c_str());
    return std::nullopt;
  }
  std::optional<double> ms = WaitServing(*plugin.process, plugin.socket, spawned, 15s);
  if (!ms) {
    Progress("plugin '%s' did not start serving; its log:\n%s", name.c_str(), Tail(plugin.process->Log(), 30).c_str());
    return std::nullopt;
  }
  plugin.start_ms = *ms;
  plugin.sessions = LoggedSessions(plugin.process->Log());
  return plugin;
}

void StopPlugin(Plugin& plugin) {
  plugin.process->Signal(SIGTERM);
  if (!plugin.process->Wait(10s)) Progress("plugin did not stop on SIGTERM; killing it");
}

std::optional<std::unique_ptr<Subprocess>> StartEcho(const std::string& self, const std::string& dir,
                                                     const std::string& name, int work_us, const std::string& socket) {
  std::vector<std::string> argv = {self, "echo-server", "--listen", "unix://" + socket};
  if (work_us > 0) {
    argv.push_back("--work-us");
    argv.push_back(std::to_string(work_us));
  }
  auto process = std::make_unique<Subprocess>(argv, StrCat(dir, "/", name, ".log"));
  auto channel = UnixChannel(socket);
  if (!support::Eventually([&] { return access(socket.c_str(), F_OK) == 0; }, 5s) || !WaitConnected(channel, 5s)) {
    Progress("the echo server did not start: %s", process->Log().c_str());
    return std::nullopt;
  }
  return process;
}

}  // namespace trousseau::bench
