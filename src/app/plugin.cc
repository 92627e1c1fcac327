#include "app/plugin.h"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>

#include "app/backend_factory.h"
#include "app/key_refresher.h"
#include "core/kms_engine.h"
#include "core/process_hardening.h"
#include "hsm/pin_source.h"
#include "core/strings.h"
#include "observability/http_endpoint.h"
#include "observability/logging.h"
#include "observability/telemetry.h"
#include "server/kms_server.h"

#ifndef TROUSSEAU_VERSION
#define TROUSSEAU_VERSION "dev"
#endif

namespace trousseau::app {
namespace {

StatusOr<std::optional<uid_t>> ResolveOwner(const std::string& owner) {
  if (owner.empty()) return std::optional<uid_t>();
  if (auto id = ParseUnsigned<uint32_t>(owner)) return std::optional<uid_t>(*id);
  if (const passwd* pw = getpwnam(owner.c_str())) return std::optional<uid_t>(pw->pw_uid);
  return InvalidArgumentError(StrCat("--socket-owner: no user '", owner, "'"));
}

StatusOr<std::optional<gid_t>> ResolveGroup(const std::string& group) {
  if (group.empty()) return std::optional<gid_t>();
  if (auto id = ParseUnsigned<uint32_t>(group)) return std::optional<gid_t>(*id);
  if (const struct group* gr = getgrnam(group.c_str())) return std::optional<gid_t>(gr->gr_gid);
  return InvalidArgumentError(StrCat("--socket-group: no group '", group, "'"));
}

// Runs `work` on its own thread and waits for it until `deadline`. False if it is still running then:
// it is left to run, and the caller must leave the process without destroying what it uses.
bool FinishesBy(std::chrono::steady_clock::time_point deadline, std::function<void()> work) {
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto done = std::make_shared<Done>();
  std::thread([done, work = std::move(work)] {
    work();
    std::lock_guard lock(done->mu);
    done->done = true;
    done->cv.notify_all();
  }).detach();
  std::unique_lock lock(done->mu);
  return done->cv.wait_until(lock, deadline, [&] { return done->done; });
}

// Logging, hardening, the environment PIN and the blocked signals: everything that must happen while
// this is the process's only thread. Returns the signals the run loop waits for.
sigset_t PrepareProcess(const PluginOptions& options) {
  observability::SetUpLogging(
      options.log_format == "json" ? observability::LogFormat::kJson : observability::LogFormat::kText,
      spdlog::level::from_str(options.log_level));

  // Seeds pass through this process's memory: no core dump may carry them to disk, and no other
  // process of the same user may read them through ptrace or /proc/PID/mem.
  if (HardeningResult hardened = HardenProcess(); !hardened.ok()) {
    spdlog::warn("could not turn core dumps off ({}): a crash may write recent seeds to a core file",
                 hardened.failed_step());
  }

  // TROUSSEAU_HSM_PIN leaves the environment now, while this is the only thread: gRPC and civetweb
  // threads, started before the first login, may read the environment.
  hsm::CaptureEnvironmentPin();

  // Signals are taken synchronously by this thread only; block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

struct SocketOwnership {
  std::optional<uid_t> owner;
  std::optional<gid_t> group;
};

StatusOr<SocketOwnership> ResolveSocketOwnership(const PluginOptions& options) {
  StatusOr<std::optional<uid_t>> owner = ResolveOwner(options.socket_owner);
  if (!owner.ok()) return owner.status();
  StatusOr<std::optional<gid_t>> group = ResolveGroup(options.socket_group);
  if (!group.ok()) return group.status();
  return SocketOwnership{*owner, *group};
}

// The HTTP listeners: --health-listen (/healthz, /readyz, /livez, and /metrics unless --metrics-listen
// serves it apart), --metrics-listen; neither when both are empty.
struct HttpEndpoints {
  std::unique_ptr<observability::HttpEndpoint> health;
  std::unique_ptr<observability::HttpEndpoint> metrics;
};

StatusOr<HttpEndpoints> StartHttpEndpoints(const PluginOptions& options, const ConfiguredBackend& configured,
                                           KmsEngine& engine, observability::Telemetry& telemetry,
                                           const std::atomic<bool>& serving) {
  HttpEndpoints endpoints;
  if (options.health_listen.empty() && options.metrics_listen.empty()) return endpoints;
  observability::HttpHooks hooks;
  hooks.not_ready_because = [&]() -> std::string {
    if (!serving.load()) return "not serving: starting or stopping";
    HealthReport health = engine.Health();
    return health.ok ? "" : health.detail;
  };
  hooks.before_scrape = [&] {
    if (configured.session_pool) {
      size_t in_use = 0, size = 0;
      configured.session_pool(in_use, size);
      telemetry.SetSessionPool(in_use, size);
    }
    if (auto ring = engine.key_ring()) telemetry.SetKeyRing(*ring, engine.NextActivationAt().has_value());
    if (configured.devices) {
      for (const DeviceHealth& device : configured.devices()) {
        telemetry.SetDeviceState(device.name, device.up, device.latency_ms);
      }
    }
  };
  if (configured.devices) {
    hooks.verbose_details = [&configured] {
      std::string lines;
      for (const DeviceHealth& device : configured.devices()) {
        lines += StrCat("device ", device.up ? "up" : "down", ": ", device.name, " (", device.detail,
                        device.up ? StrCat(", ", static_cast<int64_t>(device.latency_ms * 1000), " us") : "", ")\n");
      }
      return lines;
    };
  }
  using observability::HttpEndpoint;
  using observability::HttpRoutes;
  if (!options.health_listen.empty()) {
    const HttpRoutes routes = options.metrics_listen.empty() ? HttpRoutes::kProbesAndMetrics : HttpRoutes::kProbes;
    StatusOr<std::unique_ptr<HttpEndpoint>> health =
        HttpEndpoint::Start(options.health_listen, "--health-listen", routes, engine, telemetry, hooks);
    if (!health.ok()) return health.status();
    endpoints.health = *std::move(health);
  }
  if (!options.metrics_listen.empty()) {
    StatusOr<std::unique_ptr<HttpEndpoint>> metrics = HttpEndpoint::Start(
        options.metrics_listen, "--metrics-listen", HttpRoutes::kMetrics, engine, telemetry, std::move(hooks));
    if (!metrics.ok()) return metrics.status();
    endpoints.metrics = *std::move(metrics);
  }
  return endpoints;
}

StatusOr<std::unique_ptr<server::KmsServer>> StartKmsServer(const PluginOptions& options,
                                                            const SocketOwnership& ownership, KmsEngine& engine,
                                                            observability::Telemetry& telemetry) {
  server::ServerOptions server_options;
  server_options.listen = options.listen;
  server_options.socket_mode = static_cast<mode_t>(options.socket_mode);
  server_options.socket_owner = ownership.owner;
  server_options.socket_group = ownership.group;
  server_options.runtime_version = TROUSSEAU_VERSION;
  server_options.observer = &telemetry;
  return server::KmsServer::Start(engine, server_options);
}

// The backend is made before the metrics (their labels need its kind) and tells its logins here; the
// first login comes with the first key ring load, after Attach. Logins before Attach are not counted.
class LoginRelay final : public LoginObserver {
 public:
  void Attach(LoginObserver* target) { target_.store(target); }
  void OnLogin(std::string_view device, std::string_view failure) override {
    if (LoginObserver* target = target_.load()) target->OnLogin(device, failure);
  }

 private:
  std::atomic<LoginObserver*> target_{nullptr};
};

// What the run loop stops on SIGTERM, in order.
struct Running {
  server::KmsServer& server;
  KeyRefresher& refresher;
  KmsEngine& engine;
  const ConfiguredBackend& configured;
  std::atomic<bool>& serving;
};

// Drains in-flight calls for up to --shutdown-grace, then stops the refresher and the prober. Returns
// only when everything was joined; with calls stuck in a hung device it leaves the process at once.
int StopServing(const PluginOptions& options, int sig, Running& running) {
  spdlog::info("{} received: draining for up to {} ms", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               options.shutdown_grace.count());
  sd_notify(0, "STOPPING=1");
  running.serving = false;
  const auto deadline = std::chrono::steady_clock::now() + options.shutdown_grace;
  // Handlers return within their device deadline; calls stuck in a hung device are not waited for.
  const bool drained =
      FinishesBy(deadline, [&server = running.server, &options] { server.Shutdown(options.shutdown_grace); });
  const bool joined = drained && running.refresher.Stop(deadline) && running.engine.StopProber(deadline);
  const size_t stuck = running.configured.calls_stuck ? running.configured.calls_stuck() : 0;
  if (!joined || stuck > 0) {
    spdlog::warn("stopped, abandoning {} device call(s) that did not return", stuck + (joined ? 0 : 1));
    spdlog::shutdown();
    std::_Exit(0);  // joining or finalising them would wait on the device for as long as it hangs
  }
  spdlog::info("stopped");
  return 0;
}

// SIGHUP re-reads the key family; SIGTERM/SIGINT stop the plugin.
int ServeUntilStopped(const PluginOptions& options, const sigset_t& signals, Running& running) {
  for (;;) {
    const int sig = sigwaitinfo(&signals, nullptr);
    if (sig == SIGHUP) {
      if (running.configured.on_reload) running.configured.on_reload();
      running.refresher.Kick();
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT) return StopServing(options, sig, running);
    // EINTR: wait again.
  }
}

}  // namespace

int RunPlugin(const PluginOptions& options) {
  const sigset_t signals = PrepareProcess(options);

  // Everything that can be checked without the device is checked, and every listener bound, before
  // the first login: a configuration error must not cost a login attempt, and must say so at once.
  LoginRelay logins;  // outlives the backend: declared first
  StatusOr<ConfiguredBackend> configured = MakeBackend(options, &logins);
  if (!configured.ok()) {
    spdlog::critical("{}", configured.status().message());
    return 2;
  }
  const std::shared_ptr<KeyBackend> backend = configured->backend;
  StatusOr<SocketOwnership> ownership = ResolveSocketOwnership(options);
  if (!ownership.ok()) {
    spdlog::critical("{}", ownership.status().message());
    return 2;
  }
  observability::Telemetry telemetry(TROUSSEAU_VERSION, std::string(backend->Kind()));
  logins.Attach(&telemetry);
  const std::unique_ptr<LoginRelay, void (*)(LoginRelay*)> detach(&logins, [](LoginRelay* relay) {
    relay->Attach(nullptr);  // before the metrics go
  });
  KmsEngine engine(backend, EngineOptions{.family_label = configured->family_label,
                                          .health_ttl = options.health_cache,
                                          .device_timeout = configured->device_timeout,
                                          .observer = &telemetry,
                                          .new_version_settle = configured->new_version_settle,
                                          .activation_delay = options.key_activation_delay});
  KeyRefresher refresher(engine, telemetry, options.key_refresh_interval);
  std::atomic<bool> serving{false};

  StatusOr<HttpEndpoints> http = StartHttpEndpoints(options, *configured, engine, telemetry, serving);
  if (!http.ok()) {
    spdlog::critical("{}", http.status().message());
    return 2;
  }
  // Until the first key ring loads, every request answers UNAVAILABLE and Status says why.
  StatusOr<std::unique_ptr<server::KmsServer>> server = StartKmsServer(options, *ownership, engine, telemetry);
  if (!server.ok()) {
    spdlog::critical("{}", server.status().message());
    return 2;
  }

  // The device, last. Only a configuration or key-policy error ends the process here (exit 2); a
  // device that is down, or a PIN the token refused, is an outage to serve through (UNAVAILABLE,
  // unhealthy) and recover from: a supervisor restarting the process would try the refused PIN once
  // per restart until the token locks.
  // Start-up facts as fields, so a log pipeline can select on them.
  observability::LogWithFields(spdlog::level::info, "using the key device",
                               {{"backend", backend->Kind()},
                                {"device", backend->Describe()},
                                {"detail", configured->summary},
                                {"version", TROUSSEAU_VERSION}});
  if (Status loaded = refresher.RefreshNow("start"); !loaded.ok()) {
    if (IsFailedPrecondition(loaded) || IsInvalidArgument(loaded)) {
      spdlog::critical("cannot use {}: {}", backend->Describe(), loaded.message());
      return 2;
    }
  }
  engine.StartProber();
  refresher.Start();
  serving = true;
  if (http->health && !http->metrics) {
    observability::LogWithFields(spdlog::level::info, "health and metrics endpoint up",
                                 {{"health_listen", options.health_listen}});
  } else if (http->health) {
    observability::LogWithFields(spdlog::level::info, "health endpoint up", {{"health_listen", options.health_listen}});
  }
  if (http->metrics) {
    observability::LogWithFields(spdlog::level::info, "metrics endpoint up",
                                 {{"metrics_listen", options.metrics_listen}});
  }
  const std::string socket = "unix://" + (*server)->socket_path();
  observability::LogWithFields(spdlog::level::info, "serving KMS v2 and v1beta1", {{"listen", socket}});
  sd_notify(0, "READY=1\nSTATUS=serving KMS v2 and v1beta1");

  Running running{**server, refresher, engine, *configured, serving};
  return ServeUntilStopped(options, signals, running);
}

}  // namespace trousseau::app
