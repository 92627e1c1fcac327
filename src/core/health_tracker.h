// What the plugin knows about its device, from real round trips only, and the circuit breaker that
// follows from it. Answering a health question never touches the device: Status, /healthz and /readyz
// read this state, and a background prober (KmsEngine) keeps it fresh.
//
// Two kinds of bad news:
//  - an outage (the device failed, refused our login, or did not answer in time): the breaker opens,
//    requests fail fast with UNAVAILABLE and send the device nothing, until a probe succeeds. A hung
//    device so costs one timeout, not one per request.
//  - a fault (the device answers, but the plugin cannot serve correctly, e.g. the active key is gone):
//    unhealthy, but the breaker stays closed, since other keys may still work.
// Thread-safe; every method returns at once. The success path is lock-free: it runs per request.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "core/defaults.h"
#include "core/status.h"

namespace trousseau {

class HealthTracker {
 public:
  using Clock = std::chrono::steady_clock;
  struct Options {
    // A success is current this long; when idle, the prober re-proves health at this period.
    std::chrono::milliseconds fresh_for = defaults::kHealthCache;
    // Probes while failing: first after `first_retry`, doubling up to `max_retry`.
    std::chrono::milliseconds first_retry{200};
    std::chrono::milliseconds max_retry{2000};
  };
  explicit HealthTracker(Options options) : options_(options) {}

  // Each returns true when it changed whether the device counts as healthy.
  bool RecordSuccess();
  bool RecordOutage(const Status& why);
  bool RecordFault(const Status& why);

  // False while the breaker is open: send the device no work.
  bool Admits() const { return state_.load(std::memory_order_acquire) != State::kOutage; }
  // Why the breaker is open (for requests refused at once), or OK.
  Status OpenBecause() const;
  // OK, or why not. A success older than fresh_for + `grace` no longer counts (the prober is late:
  // the device took its whole deadline, or nothing probed yet).
  Status Current(std::chrono::milliseconds grace) const;
  // When the prober should next prove or re-try health.
  Clock::time_point NextProbeAt() const;

 private:
  enum class State { kUnknown, kHealthy, kOutage, kFault };
  bool RecordFailure(State state, const Status& why);
  static int64_t NowNs();

  const Options options_;
  std::atomic<State> state_{State::kUnknown};
  std::atomic<int64_t> last_outcome_ns_{0};
  mutable std::mutex mu_;  // guards the two below, and every state change but healthy -> healthy
  Status last_error_;
  std::chrono::milliseconds retry_{0};
};

}  // namespace trousseau
