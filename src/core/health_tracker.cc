#include "core/health_tracker.h"

#include <algorithm>

#include "core/strings.h"

namespace trousseau {

int64_t HealthTracker::NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

bool HealthTracker::RecordSuccess() {
  if (state_.load(std::memory_order_acquire) == State::kHealthy) {
    last_outcome_ns_.store(NowNs(), std::memory_order_relaxed);
    return false;
  }
  std::lock_guard lock(mu_);
  last_error_ = OkStatus();
  retry_ = std::chrono::milliseconds(0);
  last_outcome_ns_.store(NowNs(), std::memory_order_relaxed);
  return state_.exchange(State::kHealthy, std::memory_order_acq_rel) != State::kHealthy;
}

bool HealthTracker::RecordOutage(const Status& why) { return RecordFailure(State::kOutage, why); }
bool HealthTracker::RecordFault(const Status& why) { return RecordFailure(State::kFault, why); }

bool HealthTracker::RecordFailure(State state, const Status& why) {
  std::lock_guard lock(mu_);
  const State before = state_.load(std::memory_order_acquire);
  const bool was_failing = before == State::kOutage || before == State::kFault;
  // Each failed attempt while already failing doubles the wait before the next probe.
  retry_ =
      was_failing ? std::min(std::max(retry_ * 2, options_.first_retry), options_.max_retry) : options_.first_retry;
  last_error_ = why;
  last_outcome_ns_.store(NowNs(), std::memory_order_relaxed);
  state_.store(state, std::memory_order_release);
  return before == State::kHealthy;
}

Status HealthTracker::OpenBecause() const {
  if (Admits()) return OkStatus();
  std::lock_guard lock(mu_);
  return UnavailableError(StrCat("the device is unavailable (", last_error_.message(),
                                 "); requests are refused at once until a health probe succeeds"));
}

Status HealthTracker::Current(std::chrono::milliseconds grace) const {
  switch (state_.load(std::memory_order_acquire)) {
    case State::kUnknown:
      return UnavailableError("no device round trip yet");
    case State::kOutage: {
      std::lock_guard lock(mu_);
      return UnavailableError(StrCat("the device is unavailable (", last_error_.message(), ")"));
    }
    case State::kFault: {
      std::lock_guard lock(mu_);
      return last_error_;
    }
    case State::kHealthy:
      break;
  }
  const auto age = std::chrono::nanoseconds(NowNs() - last_outcome_ns_.load(std::memory_order_relaxed));
  if (age > options_.fresh_for + grace) {
    return UnavailableError(
        StrCat("no device round trip for ", std::chrono::duration_cast<std::chrono::milliseconds>(age).count(), " ms"));
  }
  return OkStatus();
}

HealthTracker::Clock::time_point HealthTracker::NextProbeAt() const {
  const Clock::time_point last{std::chrono::nanoseconds(last_outcome_ns_.load(std::memory_order_relaxed))};
  switch (state_.load(std::memory_order_acquire)) {
    case State::kUnknown:
      return Clock::now();
    case State::kHealthy:
      return last + options_.fresh_for;
    case State::kOutage:
    case State::kFault:
      break;
  }
  std::lock_guard lock(mu_);
  return last + retry_;
}

}  // namespace trousseau
