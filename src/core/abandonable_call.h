// The hand-off of one device call between a caller that waits for its result only until a deadline
// and a worker thread that always runs the call to the end.
//
// Why it exists: neither a PKCS#11 call nor a TPM command can be cancelled, so both backends run
// them on their own threads (hsm/device_lanes.h, tpm/tpm_backend.cc) and let the caller give up at
// its deadline. The caller then answers UNAVAILABLE and leaves; the worker finishes the call later
// and must drop the result nobody waits for. That hand-off is easy to get subtly wrong (a result
// written into a caller's stack that is gone, a stuck-call count that goes below zero for a moment),
// so it is written once, here.
//
// Thread contract:
//   - Create() makes the call; the caller keeps one shared_ptr and gives a copy to the worker's job,
//     so the state lives until both sides are done with it, whichever leaves first.
//   - The worker calls Deliver() exactly once, from any thread. The caller calls WaitUntil() at most
//     once. Both may run at the same time.
//   - If WaitUntil() gives up, the call is abandoned: `stuck` (if given) goes up by one, and the
//     worker's later Deliver() drops the result (destroyed on the worker's thread; a SecureBytes
//     wipes itself) and brings `stuck` down again. Both changes are made under the
//     call's lock, so for one call the +1 is always counted before its -1, and `stuck` never shows
//     fewer than zero calls.
//   - `stuck` must outlive every Deliver() of calls made with it (the backends own it and join
//     their workers before it goes).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace trousseau {

template <typename T>
class AbandonableCall {
 public:
  // `stuck` (optional) counts the calls whose caller gave up and that the worker has not delivered.
  static std::shared_ptr<AbandonableCall> Create(std::atomic<size_t>* stuck = nullptr) {
    return std::shared_ptr<AbandonableCall>(new AbandonableCall(stuck));
  }

  AbandonableCall(const AbandonableCall&) = delete;
  AbandonableCall& operator=(const AbandonableCall&) = delete;

  // Worker side. Hands `result` to the caller; false if the caller already gave up, in which case
  // `result` is dropped on the worker's thread (at the end of this call's full expression).
  bool Deliver(T result) {
    std::lock_guard lock(mu_);
    if (caller_gone_) {
      if (stuck_ != nullptr) stuck_->fetch_sub(1);  // the worker is past it: no longer stuck
      return false;
    }
    result_.emplace(std::move(result));
    delivered_.notify_all();
    return true;
  }

  // Caller side. The result, if it was delivered by `deadline`; otherwise nullopt, and the call is
  // abandoned (see the thread contract above).
  std::optional<T> WaitUntil(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mu_);
    if (!delivered_.wait_until(lock, deadline, [&] { return result_.has_value(); })) {
      caller_gone_ = true;
      if (stuck_ != nullptr) stuck_->fetch_add(1);
      return std::nullopt;
    }
    std::optional<T> result = std::move(result_);
    result_.reset();
    return result;
  }

 private:
  explicit AbandonableCall(std::atomic<size_t>* stuck) : stuck_(stuck) {}

  std::atomic<size_t>* const stuck_;
  std::mutex mu_;
  std::condition_variable delivered_;
  std::optional<T> result_;   // guarded by mu_
  bool caller_gone_ = false;  // guarded by mu_
};

}  // namespace trousseau
