#include "core/health_tracker.h"
#include "core/status.h"

namespace trousseau {

int64_t HealthTracker::NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void HealthTracker::RecordSuccess() { last_success_ns_.store(NowNs(), std::memory_order_relaxed); }

void HealthTracker::RecordFailure(const Status& status) {
  std::lock_guard lock(mu_);
  last_failure_ = status;
  last_failure_ns_.store(NowNs(), std::memory_order_relaxed);
}

Status HealthTracker::Check(const Probe& probe) {
  std::lock_guard lock(mu_);
  const int64_t ok_at = last_success_ns_.load(std::memory_order_relaxed);
  const int64_t failed_at = last_failure_ns_.load(std::memory_order_relaxed);
  const bool failing = failed_at > ok_at;
  const int64_t newest = failing ? failed_at : ok_at;
  if (newest != 0 && NowNs() - newest < ttl_.count()) {
    return failing ? last_failure_ : OkStatus();
  }
  Status probed = probe();
  if (probed.ok()) {
    last_success_ns_.store(NowNs(), std::memory_order_relaxed);
  } else {
    last_failure_ = probed;
    last_failure_ns_.store(NowNs(), std::memory_order_relaxed);
  }
  return probed;
}

}  // namespace trousseau
