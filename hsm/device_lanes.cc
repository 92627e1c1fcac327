#include "hsm/device_lanes.h"

namespace trousseau::hsm {

DeviceLanes::DeviceLanes(size_t count) {
  for (size_t i = 0; i < count; ++i) lanes_.push_back(std::make_unique<Lane>());
  for (size_t i = count; i > 0; --i) free_.push_back(i - 1);
  for (size_t i = 0; i < count; ++i) lanes_[i]->thread = std::thread([this, i] { LaneLoop(i); });
}

DeviceLanes::~DeviceLanes() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  for (auto& lane : lanes_) lane->wake.notify_all();
  for (auto& lane : lanes_) lane->thread.join();
}

size_t DeviceLanes::busy() const {
  std::lock_guard lock(mu_);
  return lanes_.size() - free_.size();
}

bool DeviceLanes::Dispatch(Deadline deadline, std::function<void(size_t lane)> job) {
  std::unique_lock lock(mu_);
  if (!lane_freed_.wait_until(lock, deadline, [&] { return stopping_ || !free_.empty(); }) || stopping_) {
    return false;
  }
  const size_t index = free_.back();
  free_.pop_back();
  lanes_[index]->job = [job = std::move(job), index] { job(index); };
  lanes_[index]->wake.notify_one();
  return true;
}

void DeviceLanes::LaneLoop(size_t index) {
  Lane& lane = *lanes_[index];
  std::unique_lock lock(mu_);
  for (;;) {
    lane.wake.wait(lock, [&] { return stopping_ || lane.job != nullptr; });
    if (lane.job == nullptr) return;  // stopping, and idle
    std::function<void()> job = std::move(lane.job);
    lane.job = nullptr;
    lock.unlock();
    job();
    job = nullptr;  // what the call captured goes before the lane is lent again
    lock.lock();
    free_.push_back(index);
    lane_freed_.notify_one();
  }
}

}  // namespace trousseau::hsm
