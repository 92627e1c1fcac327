// A fixed set of open sessions lent out one request at a time, so device calls from concurrent
// requests overlap instead of queueing on one session. The lock guards only the free list; no
// lock is held during a device call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

class SessionPool {
 public:
  explicit SessionPool(std::vector<Session> sessions);
  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;

  class Lease {
   public:
    Lease(SessionPool* pool, size_t index) : pool_(pool), index_(index) {}
    ~Lease() { pool_->Return(index_); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    const Session& session() const { return pool_->sessions_[index_]; }

   private:
    SessionPool* pool_;
    size_t index_;
  };

  // Waits until a session is free.
  Lease Acquire();
  size_t size() const { return sessions_.size(); }
  size_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  void Return(size_t index);
  std::vector<Session> sessions_;
  std::mutex mu_;
  std::condition_variable available_;
  std::vector<size_t> free_;
  std::atomic<size_t> in_use_{0};
};

}  // namespace trousseau::hsm
