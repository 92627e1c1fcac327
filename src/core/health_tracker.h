// Device health as seen by Status: the outcome of the last real device operation, re-proved with a
// device round trip only when that outcome is older than the TTL. Under load Status costs nothing;
// when idle it costs one round trip per TTL.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include "core/status.h"


namespace trousseau {

class HealthTracker {
 public:
  using Probe = std::function<Status()>;
  explicit HealthTracker(std::chrono::nanoseconds ttl) : ttl_(ttl) {}

  // Called after each device operation; lock-free on success.
  void RecordSuccess();
  void RecordFailure(const Status& status);

  // OK, or the last device error. Runs `probe` when the last outcome is older than the TTL.
  Status Check(const Probe& probe);

 private:
  static int64_t NowNs();
  const std::chrono::nanoseconds ttl_;
  std::atomic<int64_t> last_success_ns_{0};
  std::atomic<int64_t> last_failure_ns_{0};
  std::mutex mu_;              // guards last_failure_ and serialises probes
  Status last_failure_;
};

}  // namespace trousseau
