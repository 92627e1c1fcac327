// Worker threads ("lanes") that make device calls for callers who wait only until a deadline.
//
// A PKCS#11 call cannot be cancelled: a network HSM whose link is black-holed holds it for as long
// as its library likes. So the call runs on a lane, and the caller waits for it only until its
// deadline, then answers UNAVAILABLE. The lane stays busy (quarantined) until the device returns
// the call; no other work is given to it meanwhile. The lane count bounds both the threads and the
// calls in flight: a hung device ties up at most that many, and once they are all stuck, further
// calls fail at their deadline without ever reaching the device.
//
// The lane count can grow (Grow) up to a capacity fixed at construction, never shrink: Pkcs11Backend
// adds lanes (each with its own session) while calls queue for one on a slow device.
//
// The call runs to completion even after its caller left, so it must own what it uses (capture by
// value or shared_ptr); its result is then dropped (a SecureBytes result wipes itself). The hand-off
// between caller and lane is core/abandonable_call.h.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/abandonable_call.h"
#include "core/key_backend.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {

class DeviceLanes {
 public:
  // `count` lanes now; Grow may add lanes up to `capacity` (at least `count`).
  explicit DeviceLanes(size_t count, size_t capacity = 0);
  // Waits for calls in flight: a process whose device hangs exits without destroying its backend
  // (the plugin does), and tests release a hung device before they finish.
  ~DeviceLanes();
  DeviceLanes(const DeviceLanes&) = delete;
  DeviceLanes& operator=(const DeviceLanes&) = delete;

  // Runs `call(lane)` (lane = 0..count-1, e.g. the index of the session to use) on a free lane and
  // waits for its result until `deadline`. UNAVAILABLE, naming `what`, when no lane is free by then or
  // the call has not returned by then.
  template <typename T>
  StatusOr<T> Run(Deadline deadline, std::string_view what, std::function<StatusOr<T>(size_t lane)> call);

  // Runs `job(lane)` on a lane that is free right now, without waiting for its result; false (and
  // `job` dropped) when none is free.
  bool TryPost(std::function<void(size_t lane)> job);
  // What a lane runs: the device call, which returns what hands its result over. The lane is free
  // again before the hand-over, so a caller that got its result never sees its own lane still busy
  // (the pool's demand, busy + waiting, would count it twice).
  using Job = std::function<std::function<void()>(size_t lane)>;
  // Adds lanes until there are `count` (at most capacity()); lanes 0..size()-1 stay as they are. A new
  // lane gets work only after this returns, so whatever lane i uses must be ready before Grow.
  void Grow(size_t count);

  size_t size() const { return count_.load(); }
  size_t capacity() const { return capacity_; }
  size_t busy() const;
  // Callers waiting for a free lane right now.
  size_t waiting() const;
  // Smoothed time a call spends on its lane (0 before the first call): the device's latency.
  std::chrono::microseconds call_time() const { return std::chrono::microseconds(call_time_us_.load()); }
  // Calls whose caller stopped waiting and which the device has not returned yet.
  size_t abandoned() const { return abandoned_.load(); }

 private:
  struct Lane {
    std::condition_variable wake;
    std::function<std::function<void()>()> job;  // set by Dispatch, cleared by the lane's thread
    std::thread thread;
  };
  // Hands `job` to a free lane; false if none was free by `deadline`.
  bool Dispatch(Deadline deadline, Job job);
  void LaneLoop(Lane& lane, size_t index);
  void AddLaneLocked();

  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable lane_freed_;
  std::vector<std::unique_ptr<Lane>> lanes_;  // reserved to capacity_ (never reallocates); guarded by mu_
  std::atomic<size_t> count_{0};              // lanes_.size(), readable without mu_
  std::vector<size_t> free_;
  size_t waiting_ = 0;  // callers inside Dispatch with no free lane
  std::atomic<int64_t> call_time_us_{0};
  std::atomic<size_t> abandoned_{0};  // see AbandonableCall
  bool stopping_ = false;
};

template <typename T>
StatusOr<T> DeviceLanes::Run(Deadline deadline, std::string_view what, std::function<StatusOr<T>(size_t lane)> call) {
  auto pending = AbandonableCall<StatusOr<T>>::Create(&abandoned_);
  const auto started = std::chrono::steady_clock::now();
  // A result nobody waits for any more is dropped in Deliver, and the lane is usable again.
  const bool dispatched = Dispatch(deadline, [pending, call = std::move(call)](size_t lane) -> std::function<void()> {
    auto result = std::make_shared<StatusOr<T>>(call(lane));
    return [pending, result] { pending->Deliver(std::move(*result)); };
  });
  const auto waited_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  };
  if (!dispatched) {
    return UnavailableError(StrCat(what, ": no device session became free within ", waited_ms(),
                                   " ms (every session is busy or stuck in the device)"));
  }
  std::optional<StatusOr<T>> result = pending->WaitUntil(deadline);
  if (!result) return UnavailableError(StrCat(what, ": the device did not answer within ", waited_ms(), " ms"));
  return std::move(*result);
}

}  // namespace trousseau::hsm
