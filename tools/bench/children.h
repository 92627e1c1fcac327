// The processes the bench starts: the plugin (trousseau-hsm) and the echo server (this binary's
// `echo-server`), each logging to a file in the token's directory. Every child is tracked so that an
// interrupted bench (SIGINT, SIGTERM) kills them instead of leaving them serving.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tools/support/subprocess.h"

namespace trousseau::bench {

// SIGINT and SIGTERM kill every tracked child, then the bench dies of the same signal.
void KillChildrenOnSignal();
void TrackChild(pid_t pid);
void UntrackChild(pid_t pid);

// The plugin's command line: listen on `socket`, use the key of `uri`, `sessions` HSM sessions (0:
// the plugin's default).
std::vector<std::string> PluginArgv(const std::string& binary, const std::string& socket, const std::string& uri,
                                    size_t sessions);

// A plugin that answered Status "ok"; untracked (and, as a Subprocess, killed if still running) when
// it goes.
struct Plugin {
  Plugin() = default;
  Plugin(Plugin&&) = default;
  Plugin& operator=(Plugin&&) = default;
  ~Plugin() {
    if (process) UntrackChild(process->pid());
  }
  std::unique_ptr<support::Subprocess> process;
  std::string socket;
  std::string log;
  double start_ms = 0;
  size_t sessions = 0;  // as the plugin logged it (0: not found)
};

// Starts `binary` as `name` (socket and log in `dir`) and waits until it serves (Status "ok" on a
// fresh connection, polled every ~1 ms, 15 s at most); nullopt, with its log on stderr, if not.
std::optional<Plugin> StartPlugin(const std::string& binary, const std::string& dir, const std::string& name,
                                  const std::string& uri, size_t sessions);
// SIGTERM, and 10 s to exit.
void StopPlugin(Plugin& plugin);

// An echo server (`self echo-server`, busy-waiting `work_us` per call) on `socket`, log in `dir`;
// nullopt if it does not come up.
std::optional<std::unique_ptr<support::Subprocess>> StartEcho(const std::string& self, const std::string& dir,
                                                              const std::string& name, int work_us,
                                                              const std::string& socket);

}  // namespace trousseau::bench
