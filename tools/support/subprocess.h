// A child process for tests and the benchmark: started with posix_spawn, output to a log file,
// signalled and reaped.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace trousseau::support {

class Subprocess {
 public:
  // Starts `argv` (argv[0] is the path) with stdout+stderr appended to `log_path`.
  Subprocess(std::vector<std::string> argv, std::string log_path);
  ~Subprocess();  // SIGKILLs a child still running

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  void Signal(int sig) const;
  // Exit code, or 128+signal; nullopt if still running after `timeout`.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  std::optional<int> exit_code_;
};

// Polls `predicate` every 10 ms until it holds or `timeout` passes.
template <typename Predicate>
bool Eventually(Predicate predicate, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    struct timespec ts {
      0, 10'000'000
    };
    nanosleep(&ts, nullptr);
  }
  return predicate();
}

// Whether a process listens on the unix socket at `path`. The file alone is no proof: it exists from
// bind() on, a moment before listen().
bool UnixSocketAccepts(const std::string& path);

}  // namespace trousseau::support
