// A child process for tests and the benchmark: started with posix_spawn, output to a log file (or
// stdout and stderr to two files), signalled and reaped.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace trousseau::support {

class Subprocess {
 public:
  // Where a caller that tells stdout from stderr wants them (each appended to its file).
  struct SeparateOutput {
    std::string stdout_path;
    std::string stderr_path;
  };

  // Starts `argv` (argv[0] is the path) with stdout+stderr appended to `log_path`.
  Subprocess(std::vector<std::string> argv, std::string log_path);
  // Starts `argv` with stdout and stderr apart (Log() reads stdout, ErrorLog() stderr).
  Subprocess(std::vector<std::string> argv, SeparateOutput output);
  ~Subprocess();  // SIGKILLs a child still running
  // One owner per child: a copy would kill or reap it twice.
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  void Signal(int sig) const;
  // Exit code, or 128+signal; nullopt if still running after `timeout`.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // What the child wrote to `log_path` (with SeparateOutput: to stdout).
  std::string Log() const;
  // With SeparateOutput: what the child wrote to stderr; otherwise empty (it is in Log()).
  std::string ErrorLog() const;

 private:
  // Starts the child: stdout to log_path_, stderr to stderr_path_ (or with stdout when empty).
  void Spawn(std::vector<std::string> argv);

  pid_t pid_ = -1;
  std::string log_path_;
  std::string stderr_path_;
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
