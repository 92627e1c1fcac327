// Re-reads the key family off the signal thread: at start until a first key ring loads (with
// backoff; a device that is down or a PIN the token refused must not end the process, or its
// supervisor would restart it into the same failure, one login attempt per restart), then every
// refresh interval and on Kick() (SIGHUP). A load has a deadline, and waiting for a new version to
// settle takes seconds: neither may delay the handling of SIGTERM.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "core/kms_engine.h"
#include "observability/telemetry.h"

namespace trousseau::app {

class KeyRefresher {
 public:
  using Clock = std::chrono::steady_clock;
  // `interval` 0: only on Kick() (and until the first ring loads).
  KeyRefresher(KmsEngine& engine, observability::Telemetry& telemetry, std::chrono::milliseconds interval);
  // Stop() must have returned true.
  ~KeyRefresher();

  // Loads (or re-reads) the key family now, on the caller's thread; a failure keeps the last good
  // ring in force. The plugin calls it once before Start() to tell a configuration error (exit 2)
  // from a device that is not there yet.
  Status RefreshNow(const char* why);
  void Start();
  // Refresh now (SIGHUP).
  void Kick();
  // Asks the thread to stop and joins it if it ends by `deadline`; false if a load is still running
  // then (a hung device): the caller must leave without destroying what that load uses.
  bool Stop(Clock::time_point deadline);

 private:
  void Loop();
  // RefreshNow's load, its metrics and its log lines.
  Status Load(const char* why);
  // Logs and counts the versions KmsEngine::VanishedKeys added since the last call.
  void ReportVanished();

  KmsEngine& engine_;
  observability::Telemetry& telemetry_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool kicked_ = false;
  bool stopping_ = false;
  bool finished_ = false;
  std::string last_failure_;      // refresh thread (or the caller of RefreshNow before Start) only
  size_t vanished_reported_ = 0;  // the same
  std::thread thread_;
};

}  // namespace trousseau::app
