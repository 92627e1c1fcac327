// trousseau-hsm: Kubernetes KMS plugin whose key-encryption key never leaves a PKCS#11 HSM.
#include <grp.h>
#include <pwd.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "core/kms_engine.h"
#include "core/strings.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/pkcs11_uri.h"
#include "server/kms_server.h"
#include "core/status.h"

#ifndef TROUSSEAU_VERSION
#define TROUSSEAU_VERSION "dev"
#endif

namespace {

using namespace trousseau;

struct Flags {
  std::string listen = "unix:///run/trousseau-hsm/kms.sock";
  std::string pkcs11_uri;
  size_t hsm_sessions = 16;
  bool no_session_key_copies = false;
  std::string health_cache = "5s";
  std::string key_refresh_interval = "60s";
  std::string socket_mode = "0600";
  std::string socket_owner;
  std::string socket_group;
  std::string log_level = "info";
  std::string shutdown_grace = "5s";
};

std::chrono::milliseconds ParseDurationOrDie(const std::string& flag, const std::string& text) {
  std::optional<std::chrono::milliseconds> d = ParseDuration(text);
  if (!d) {
    spdlog::critical("{} must be a duration such as 500ms, 5s or 1m, got '{}'", flag, text);
    std::exit(2);
  }
  return *d;
}

std::optional<uid_t> ResolveOwner(const std::string& owner) {
  if (owner.empty()) return std::nullopt;
  if (auto id = ParseUnsigned<uint32_t>(owner)) return static_cast<uid_t>(*id);
  if (const passwd* pw = getpwnam(owner.c_str())) return pw->pw_uid;
  spdlog::critical("--socket-owner: no user '{}'", owner);
  std::exit(2);
}

std::optional<gid_t> ResolveGroup(const std::string& group) {
  if (group.empty()) return std::nullopt;
  if (auto id = ParseUnsigned<uint32_t>(group)) return static_cast<gid_t>(*id);
  if (const struct group* gr = getgrnam(group.c_str())) return gr->gr_gid;
  spdlog::critical("--socket-group: no group '{}'", group);
  std::exit(2);
}

void LogKeyRing(const KmsEngine& engine) {
  auto ring = engine.key_ring();
  for (const auto& [version, key_id] : ring->key_ids()) {
    spdlog::info("key version {} key_id={}{}", version, key_id, version == ring->active_version() ? " (active)" : "");
  }
}

// Re-reads the key family; a failure keeps the last good ring in force.
void RefreshKeys(KmsEngine& engine, const char* why) {
  const std::string before = engine.key_ring()->active_key_id();
  if (Status s = engine.LoadKeyRing(); !s.ok()) {
    spdlog::error("key refresh ({}) failed, keeping the current key ring: {}", why, s.message());
    return;
  }
  if (engine.key_ring()->active_key_id() != before) {
    spdlog::info("active key changed ({}): {} -> {}", why, before, engine.key_ring()->active_key_id());
    LogKeyRing(engine);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{
      "trousseau-hsm: Kubernetes KMS v2/v1beta1 plugin. Data keys are wrapped with AES-256-GCM inside a PKCS#11 "
      "HSM; the key-encryption key never leaves it.\nThe token PIN comes from the URI's pin-source=file:/path "
      "(mode 0600) or the TROUSSEAU_HSM_PIN environment variable, never from a flag.",
      "trousseau-hsm"};
  app.set_version_flag("--version", std::string("trousseau-hsm ") + TROUSSEAU_VERSION);
  app.add_option("--listen", flags.listen, "Unix socket to serve on (unix:///path)")->capture_default_str();
  app.add_option("--pkcs11-uri", flags.pkcs11_uri,
                 "RFC 7512 URI of the key family: pkcs11:token=LABEL;object=KEY?module-path=/path/module.so"
                 "&pin-source=file:/path")
      ->required();
  app.add_option("--hsm-sessions", flags.hsm_sessions, "HSM sessions in the pool (concurrent device calls)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_flag("--no-session-key-copies", flags.no_session_key_copies,
               "Use the token key objects directly instead of in-session copies");
  app.add_option("--health-cache", flags.health_cache, "How long a device health result is reused")
      ->capture_default_str();
  app.add_option("--key-refresh-interval", flags.key_refresh_interval,
                 "Re-read the key family this often (also on SIGHUP); 0 disables")
      ->capture_default_str();
  app.add_option("--socket-mode", flags.socket_mode, "Permissions of the socket (owner/group bits only)")
      ->capture_default_str();
  app.add_option("--socket-owner", flags.socket_owner, "User (name or uid) to own the socket");
  app.add_option("--socket-group", flags.socket_group, "Group (name or gid) to own the socket");
  app.add_option("--shutdown-grace", flags.shutdown_grace, "How long in-flight calls may finish on SIGTERM")
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::from_str(flags.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %l %v", spdlog::pattern_time_type::utc);

  // Signals are taken synchronously by this thread only; block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const auto health_cache = ParseDurationOrDie("--health-cache", flags.health_cache);
  const auto refresh_interval = ParseDurationOrDie("--key-refresh-interval", flags.key_refresh_interval);
  const auto shutdown_grace = ParseDurationOrDie("--shutdown-grace", flags.shutdown_grace);
  const std::optional<uint32_t> socket_mode = ParseUnsigned<uint32_t>(flags.socket_mode, 8);
  if (!socket_mode) {
    spdlog::critical("--socket-mode must be octal, e.g. 0600");
    return 2;
  }

  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(flags.pkcs11_uri);
  if (!uri.ok()) {
    spdlog::critical("{}", uri.status().message());
    return 2;
  }
  const std::string family_label = uri->object_label();
  hsm::Pkcs11BackendOptions backend_options;
  backend_options.sessions = flags.hsm_sessions;
  backend_options.session_key_copies = !flags.no_session_key_copies;
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> created =
      hsm::Pkcs11Backend::Create(*std::move(uri), backend_options);
  if (!created.ok()) {
    spdlog::critical("{}", created.status().message());
    return 2;
  }
  std::shared_ptr<hsm::Pkcs11Backend> backend = *std::move(created);

  KmsEngine engine(backend, EngineOptions{family_label, health_cache});
  if (Status loaded = engine.LoadKeyRing(); !loaded.ok()) {
    spdlog::critical("cannot use {}: {}", backend->Describe(), loaded.message());
    return IsUnavailable(loaded) ? 1 : 2;
  }
  spdlog::info("using {} with {} session(s)", backend->Describe(), flags.hsm_sessions);
  LogKeyRing(engine);

  server::ServerOptions server_options;
  server_options.listen = flags.listen;
  server_options.socket_mode = static_cast<mode_t>(*socket_mode);
  server_options.socket_owner = ResolveOwner(flags.socket_owner);
  server_options.socket_group = ResolveGroup(flags.socket_group);
  server_options.runtime_version = TROUSSEAU_VERSION;
  StatusOr<std::unique_ptr<server::KmsServer>> server = server::KmsServer::Start(engine, server_options);
  if (!server.ok()) {
    spdlog::critical("{}", server.status().message());
    return 2;
  }
  spdlog::info("serving KMS v2 and v1beta1 on unix://{}", (*server)->socket_path());

  auto next_refresh = std::chrono::steady_clock::now() + refresh_interval;
  for (;;) {
    const auto wait = refresh_interval.count() > 0 ? std::max(next_refresh - std::chrono::steady_clock::now(),
                                                              std::chrono::steady_clock::duration::zero())
                                                   : std::chrono::steady_clock::duration(std::chrono::hours(24));
    const auto wait_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    timespec timeout{static_cast<time_t>(wait_ns / 1'000'000'000), static_cast<long>(wait_ns % 1'000'000'000)};
    const int sig = sigtimedwait(&signals, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("{} received: draining for up to {} ms", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                   shutdown_grace.count());
      (*server)->Shutdown(shutdown_grace);
      spdlog::info("stopped");
      return 0;
    }
    if (sig == SIGHUP) {
      backend->AllowLoginRetry();
      RefreshKeys(engine, "SIGHUP");
    } else if (sig < 0 && refresh_interval.count() > 0 && std::chrono::steady_clock::now() >= next_refresh) {
      RefreshKeys(engine, "interval");
      next_refresh = std::chrono::steady_clock::now() + refresh_interval;
    }
  }
}
