// Worker threads ("lanes") that make device calls for callers who wait only until a deadline.
//
// A PKCS#11 call cannot be cancelled: a network HSM whose link is black-holed holds it for as long
// as its library likes. So the call runs on a lane, and the caller waits for it only until its
// deadline, then answers UNAVAILABLE. The lane stays busy (quarantined) until the device returns
// the call; no other work is given to it meanwhile. The lane count bounds both the threads and the
// calls in flight: a hung device ties up at most that many, and once they are all stuck, further
// calls fail at their deadline without ever reaching the device.
//
// The call runs to completion even after its caller left, so it must own what it uses (capture by
// value or shared_ptr); its result is then dropped (a SecureBytes result wipes itself).
#pragma once

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

#include "core/key_backend.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {

class DeviceLanes {
 public:
  explicit DeviceLanes(size_t count);
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

  size_t size() const { return lanes_.size(); }
  size_t busy() const;
  // Calls whose caller stopped waiting and which the device has not returned yet.
  size_t abandoned() const;

 private:
  struct Lane {
    std::condition_variable wake;
    std::function<void()> job;  // set by Dispatch, cleared by the lane's thread
    std::thread thread;
  };
  // Hands `job` to a free lane; false if none was free by `deadline`.
  bool Dispatch(Deadline deadline, std::function<void(size_t lane)> job);
  void LaneLoop(size_t index);
  void Abandoned(int delta);

  mutable std::mutex mu_;
  std::condition_variable lane_freed_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::vector<size_t> free_;
  size_t abandoned_ = 0;
  bool stopping_ = false;
};

template <typename T>
StatusOr<T> DeviceLanes::Run(Deadline deadline, std::string_view what, std::function<StatusOr<T>(size_t lane)> call) {
  struct Pending {
    std::mutex mu;
    std::condition_variable done;
    std::optional<StatusOr<T>> result;
    bool caller_gone = false;
  };
  auto pending = std::make_shared<Pending>();
  const auto started = std::chrono::steady_clock::now();
  const bool dispatched = Dispatch(deadline, [this, pending, call = std::move(call)](size_t lane) {
    StatusOr<T> result = call(lane);
    std::lock_guard lock(pending->mu);
    if (pending->caller_gone) {
      Abandoned(-1);  // the device returned a call nobody waits for: the lane is usable again
      return;         // `result` is dropped here
    }
    pending->result.emplace(std::move(result));
    pending->done.notify_all();
  });
  const auto waited_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  };
  if (!dispatched) {
    return UnavailableError(StrCat(what, ": no device session became free within ", waited_ms(),
                                   " ms (every session is busy or stuck in the device)"));
  }
  std::unique_lock lock(pending->mu);
  if (!pending->done.wait_until(lock, deadline, [&] { return pending->result.has_value(); })) {
    pending->caller_gone = true;
    Abandoned(+1);
    return UnavailableError(StrCat(what, ": the device did not answer within ", waited_ms(), " ms"));
  }
  return std::move(*pending->result);
}

}  // namespace trousseau::hsm
