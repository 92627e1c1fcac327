#include "hsm/device_lanes.h"

#include <algorithm>

namespace trousseau::hsm {

DeviceLanes::DeviceLanes(size_t count, size_t capacity) : capacity_(std::max(count, capacity)) {
  std::lock_guard lock(mu_);
  lanes_.reserve(capacity_);
  free_.reserve(capacity_);
  for (size_t i = 0; i < count; ++i) AddLaneLocked();
  std::reverse(free_.begin(), free_.end());  // lane 0 first, as callers expect of a fresh pool
}

DeviceLanes::~DeviceLanes() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;  // Grow adds no lane from now on
  }
  for (auto& lane : lanes_) lane->wake.notify_all();
  for (auto& lane : lanes_) lane->thread.join();
}

void DeviceLanes::AddLaneLocked() {
  const size_t index = lanes_.size();
  lanes_.push_back(std::make_unique<Lane>());
  Lane& lane = *lanes_.back();
  lane.thread = std::thread([this, &lane, index] { LaneLoop(lane, index); });
  free_.push_back(index);
  count_.store(lanes_.size());
}

void DeviceLanes::Grow(size_t count) {
  std::lock_guard lock(mu_);
  if (stopping_) return;
  const size_t before = lanes_.size();
  while (lanes_.size() < std::min(count, capacity_)) AddLaneLocked();
  for (size_t i = before; i < lanes_.size(); ++i) lane_freed_.notify_one();
}

size_t DeviceLanes::busy() const {
  std::lock_guard lock(mu_);
  return lanes_.size() - free_.size();
}

size_t DeviceLanes::waiting() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

bool DeviceLanes::TryPost(std::function<void(size_t lane)> job) {
  return Dispatch(std::chrono::steady_clock::now(), [job = std::move(job)](size_t lane) -> std::function<void()> {
    job(lane);
    return nullptr;
  });
}

bool DeviceLanes::Dispatch(Deadline deadline, Job job) {
  std::unique_lock lock(mu_);
  if (free_.empty() && !stopping_) {
    ++waiting_;
    lane_freed_.wait_until(lock, deadline, [&] { return stopping_ || !free_.empty(); });
    --waiting_;
  }
  if (stopping_ || free_.empty()) return false;
  const size_t index = free_.back();
  free_.pop_back();
  lanes_[index]->job = [job = std::move(job), index] { return job(index); };
  lanes_[index]->wake.notify_one();
  return true;
}

void DeviceLanes::LaneLoop(Lane& lane, size_t index) {
  std::unique_lock lock(mu_);
  for (;;) {
    lane.wake.wait(lock, [&] { return stopping_ || lane.job != nullptr; });
    if (lane.job == nullptr) return;  // stopping, and idle
    std::function<std::function<void()>()> job = std::move(lane.job);
    lane.job = nullptr;
    lock.unlock();
    const auto started = std::chrono::steady_clock::now();
    std::function<void()> hand_over = job();
    job = nullptr;  // what the call captured goes before the lane is lent again
    const int64_t took_us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count();
    lock.lock();
    // An average over the last few dozen calls: one slow call (a reconnect's) barely moves it.
    const int64_t previous = call_time_us_.load();
    call_time_us_.store(previous == 0 ? took_us : previous + (took_us - previous) / 16);
    free_.push_back(index);
    lane_freed_.notify_one();
    if (hand_over) {
      // A job given to this lane meanwhile waits for the hand-over (a few microseconds).
      lock.unlock();
      hand_over();
      hand_over = nullptr;
      lock.lock();
    }
  }
}

}  // namespace trousseau::hsm
