#include "app/plugin.h"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>

#include "app/backend_factory.h"
#include "core/kms_engine.h"
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

void LogKeyRing(const KmsEngine& engine) {
  auto ring = engine.key_ring();
  for (const auto& [version, key_id] : ring->key_ids()) {
    spdlog::info("key version {} key_id={}{}", version, key_id, version == ring->active_version() ? " (active)" : "");
  }
}

// Re-reads the key family; a failure keeps the last good ring in force.
void RefreshKeys(KmsEngine& engine, observability::Telemetry& telemetry, const char* why) {
  const std::string before = engine.key_ring()->active_key_id();
  if (Status s = engine.LoadKeyRing(); !s.ok()) {
    telemetry.RecordKeyRefresh(false);
    spdlog::error("key refresh ({}) failed, keeping the current key ring: {}", why, s.message());
    return;
  }
  telemetry.RecordKeyRefresh(true);
  const std::string after = engine.key_ring()->active_key_id();
  telemetry.SetActiveKey(after);
  if (after != before) {
    spdlog::info("active key changed ({}): {} -> {}", why, before, after);
    LogKeyRing(engine);
  }
}

}  // namespace

int RunPlugin(const PluginOptions& options) {
  observability::SetUpLogging(
      options.log_format == "json" ? observability::LogFormat::kJson : observability::LogFormat::kText,
      spdlog::level::from_str(options.log_level));

  // Seeds pass through this process's memory: no core dump may carry them to disk, and no other
  // process of the same user may read them through ptrace or /proc/PID/mem.
  const rlimit no_core{0, 0};
  const bool core_off = setrlimit(RLIMIT_CORE, &no_core) == 0;
  const bool undumpable = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
  if (!core_off || !undumpable) {
    spdlog::warn("could not turn core dumps off ({}): a crash may write recent seeds to a core file",
                 !core_off ? "setrlimit RLIMIT_CORE" : "prctl PR_SET_DUMPABLE");
  }

  // Signals are taken synchronously by this thread only; block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  StatusOr<ConfiguredBackend> configured = MakeBackend(options);
  if (!configured.ok()) {
    spdlog::critical("{}", configured.status().message());
    return 2;
  }
  const std::shared_ptr<KeyBackend> backend = configured->backend;
  observability::Telemetry telemetry(TROUSSEAU_VERSION, std::string(backend->Kind()));

  KmsEngine engine(backend, EngineOptions{configured->family_label, options.health_cache, &telemetry,
                                          configured->new_version_settle});
  if (Status loaded = engine.LoadKeyRing(); !loaded.ok()) {
    spdlog::critical("cannot use {}: {}", backend->Describe(), loaded.message());
    return IsUnavailable(loaded) ? 1 : 2;
  }
  spdlog::info("using {}{}{}", backend->Describe(), configured->summary.empty() ? "" : " ", configured->summary);
  LogKeyRing(engine);
  telemetry.RecordKeyRefresh(true);
  telemetry.SetActiveKey(engine.key_ring()->active_key_id());
  // One round trip with the active key before serving: it proves the key works, not only that it is
  // listed, and sets health and the backend_up gauge from a fact. A failure here is an outage like any
  // other: serve, report it, and recover.
  if (HealthReport first = engine.Health(); !first.ok) {
    spdlog::warn("the first round trip with the active key failed, serving and retrying: {}", first.detail);
  }

  server::ServerOptions server_options;
  server_options.listen = options.listen;
  server_options.socket_mode = static_cast<mode_t>(options.socket_mode);
  StatusOr<std::optional<uid_t>> owner = ResolveOwner(options.socket_owner);
  StatusOr<std::optional<gid_t>> group = ResolveGroup(options.socket_group);
  if (!owner.ok() || !group.ok()) {
    spdlog::critical("{}", !owner.ok() ? owner.status().message() : group.status().message());
    return 2;
  }
  server_options.socket_owner = *owner;
  server_options.socket_group = *group;
  server_options.runtime_version = TROUSSEAU_VERSION;
  server_options.observer = &telemetry;
  StatusOr<std::unique_ptr<server::KmsServer>> server = server::KmsServer::Start(engine, server_options);
  if (!server.ok()) {
    spdlog::critical("{}", server.status().message());
    return 2;
  }
  std::atomic<bool> serving{true};

  std::unique_ptr<observability::HttpEndpoint> http;
  if (!options.health_listen.empty()) {
    observability::HttpHooks hooks;
    hooks.ready = [&] { return serving.load() && engine.key_ring() != nullptr; };
    hooks.before_scrape = [&] {
      if (configured->session_pool) {
        size_t in_use = 0, size = 0;
        configured->session_pool(in_use, size);
        telemetry.SetSessionPool(in_use, size);
      }
      telemetry.SetActiveKey(engine.key_ring()->active_key_id());
    };
    StatusOr<std::unique_ptr<observability::HttpEndpoint>> started =
        observability::HttpEndpoint::Start(options.health_listen, engine, telemetry, std::move(hooks));
    if (!started.ok()) {
      spdlog::critical("{}", started.status().message());
      return 2;
    }
    http = *std::move(started);
    spdlog::info("health and metrics on http://{}", options.health_listen);
  }
  spdlog::info("serving KMS v2 and v1beta1 on unix://{}", (*server)->socket_path());
  sd_notify(0, "READY=1\nSTATUS=serving KMS v2 and v1beta1");

  const auto refresh = options.key_refresh_interval;
  auto next_refresh = std::chrono::steady_clock::now() + refresh;
  for (;;) {
    const auto wait = refresh.count() > 0
                          ? std::max(next_refresh - std::chrono::steady_clock::now(),
                                     std::chrono::steady_clock::duration::zero())
                          : std::chrono::steady_clock::duration(std::chrono::hours(24));
    const auto wait_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    timespec timeout{static_cast<time_t>(wait_ns / 1'000'000'000), static_cast<long>(wait_ns % 1'000'000'000)};
    const int sig = sigtimedwait(&signals, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("{} received: draining for up to {} ms", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                   options.shutdown_grace.count());
      sd_notify(0, "STOPPING=1");
      serving = false;
      (*server)->Shutdown(options.shutdown_grace);
      spdlog::info("stopped");
      return 0;
    }
    if (sig == SIGHUP) {
      if (configured->on_reload) configured->on_reload();
      RefreshKeys(engine, telemetry, "SIGHUP");
    } else if (sig < 0 && refresh.count() > 0 && std::chrono::steady_clock::now() >= next_refresh) {
      RefreshKeys(engine, telemetry, "interval");
      next_refresh = std::chrono::steady_clock::now() + refresh;
    }
  }
}

}  // namespace trousseau::app
