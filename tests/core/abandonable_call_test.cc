// core/abandonable_call.h, the hand-off both device backends use between a caller that waits only
// until its deadline and a worker that always finishes the call: real threads, no device. Built and
// run under ASan and TSan by ci/sanitize like every test here.
#include "core/abandonable_call.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/status.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A result that records the thread it was destroyed on, to see where a dropped result goes.
class Witness {
 public:
  explicit Witness(std::atomic<std::thread::id>* destroyed_on) : destroyed_on_(destroyed_on) {}
  Witness(Witness&& other) noexcept : destroyed_on_(std::exchange(other.destroyed_on_, nullptr)) {}
  Witness& operator=(Witness&&) = delete;
  ~Witness() {
    if (destroyed_on_ != nullptr) destroyed_on_->store(std::this_thread::get_id());
  }

 private:
  std::atomic<std::thread::id>* destroyed_on_;
};

TEST(AbandonableCall, ResultDeliveredWhileTheCallerWaitsReachesIt) {
  std::atomic<size_t> stuck{0};
  auto call = AbandonableCall<StatusOr<std::string>>::Create(&stuck);
  std::promise<bool> delivered;
  std::thread worker([call, &delivered] { delivered.set_value(call->Deliver(std::string("sealed bytes"))); });
  std::optional<StatusOr<std::string>> result = call->WaitUntil(Clock::now() + 30s);
  worker.join();
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok()) << result->status().message();
  EXPECT_EQ(**result, "sealed bytes");
  EXPECT_TRUE(delivered.get_future().get());
  EXPECT_EQ(stuck.load(), 0u);
}

TEST(AbandonableCall, ErrorDeliveredBeforeTheWaitReachesTheCallerEvenPastItsDeadline) {
  std::atomic<size_t> stuck{0};
  auto call = AbandonableCall<StatusOr<std::string>>::Create(&stuck);
  EXPECT_TRUE(call->Deliver(NotFoundError("no key version 7")));
  // The result is there: a deadline already past does not turn it into an abandoned call.
  std::optional<StatusOr<std::string>> result = call->WaitUntil(Clock::now() - 1s);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->status().code(), StatusCode::kNotFound);
  EXPECT_EQ(result->status().message(), "no key version 7");
  EXPECT_EQ(stuck.load(), 0u);
}

TEST(AbandonableCall, CallerWaitsUntilItsDeadlineThenGivesUpAndTheCallCountsAsStuck) {
  std::atomic<size_t> stuck{0};
  auto call = AbandonableCall<StatusOr<std::string>>::Create(&stuck);
  std::promise<void> device_returns;
  std::thread worker([call, returns = device_returns.get_future()]() mutable {
    returns.wait();  // a device call that does not return until the test says so
    call->Deliver(std::string("too late"));
  });
  const auto deadline = Clock::now() + 100ms;
  std::optional<StatusOr<std::string>> result = call->WaitUntil(deadline);
  EXPECT_GE(Clock::now(), deadline) << "gave up before its deadline";
  EXPECT_FALSE(result.has_value());
  EXPECT_EQ(stuck.load(), 1u);
  device_returns.set_value();
  worker.join();
  EXPECT_EQ(stuck.load(), 0u) << "the worker got past the call: it is no longer stuck";
}

TEST(AbandonableCall, LateResultIsDroppedOnTheWorkerThread) {
  std::atomic<size_t> stuck{0};
  std::atomic<std::thread::id> destroyed_on{};
  auto call = AbandonableCall<Witness>::Create(&stuck);
  EXPECT_FALSE(call->WaitUntil(Clock::now()).has_value());
  EXPECT_EQ(stuck.load(), 1u);
  std::thread::id worker_id;
  bool delivered = true;
  std::thread worker([&, call] {
    worker_id = std::this_thread::get_id();
    delivered = call->Deliver(Witness(&destroyed_on));
  });
  worker.join();
  EXPECT_FALSE(delivered);
  EXPECT_EQ(destroyed_on.load(), worker_id) << "the dropped result must go with the worker, not wait for the caller";
  EXPECT_EQ(stuck.load(), 0u);
}

// The caller returns and drops its handle before the worker delivers: the worker's copy keeps the
// state alive (under ASan, a state owned by the caller would be a use after free here).
TEST(AbandonableCall, WorkerDeliversSafelyAfterTheCallerAndItsHandleAreGone) {
  std::atomic<size_t> stuck{0};
  std::promise<void> caller_left;
  std::weak_ptr<AbandonableCall<StatusOr<std::string>>> state;
  std::promise<bool> delivered;
  std::thread worker;
  {
    auto call = AbandonableCall<StatusOr<std::string>>::Create(&stuck);
    state = call;
    worker = std::thread([call, left = caller_left.get_future(), &delivered]() mutable {
      left.wait();
      delivered.set_value(call->Deliver(std::string("nobody reads this")));
    });
    EXPECT_FALSE(call->WaitUntil(Clock::now() + 10ms).has_value());
  }
  EXPECT_FALSE(state.expired()) << "the worker's job still holds the call";
  caller_left.set_value();
  worker.join();
  EXPECT_FALSE(delivered.get_future().get());
  EXPECT_TRUE(state.expired()) << "the call's state outlived both sides";
  EXPECT_EQ(stuck.load(), 0u);
}

// Deliveries landing around the deadline, many times over (for TSan): each call's result is either
// received by the caller or dropped by the worker, never both and never neither, and every stuck
// count taken is given back.
TEST(AbandonableCall, DeliveryConcurrentWithTheDeadlineIsReceivedOrDroppedExactlyOnce) {
  std::atomic<size_t> stuck{0};
  constexpr int kCalls = 500;
  for (int i = 0; i < kCalls; ++i) {
    auto call = AbandonableCall<StatusOr<int>>::Create(&stuck);
    bool delivered = false;
    std::thread worker([&delivered, call, i] { delivered = call->Deliver(i); });
    std::optional<StatusOr<int>> result = call->WaitUntil(Clock::now() + std::chrono::microseconds(i % 200));
    worker.join();
    ASSERT_EQ(result.has_value(), delivered) << "call " << i;
    if (result) {
      ASSERT_TRUE(result->ok());
      EXPECT_EQ(**result, i);
    }
    ASSERT_EQ(stuck.load(), 0u) << "call " << i;
  }
}

}  // namespace
}  // namespace trousseau
