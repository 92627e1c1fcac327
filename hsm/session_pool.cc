#include "hsm/session_pool.h"

namespace trousseau::hsm {

SessionPool::SessionPool(std::vector<Session> sessions) : sessions_(std::move(sessions)) {
  for (size_t i = sessions_.size(); i > 0; --i) free_.push_back(i - 1);
}

SessionPool::Lease SessionPool::Acquire() {
  std::unique_lock lock(mu_);
  available_.wait(lock, [this] { return !free_.empty(); });
  const size_t index = free_.back();
  free_.pop_back();
  in_use_.fetch_add(1, std::memory_order_relaxed);
  return Lease(this, index);
}

void SessionPool::Return(size_t index) {
  {
    std::lock_guard lock(mu_);
    free_.push_back(index);
    in_use_.fetch_sub(1, std::memory_order_relaxed);
  }
  available_.notify_one();
}

}  // namespace trousseau::hsm
