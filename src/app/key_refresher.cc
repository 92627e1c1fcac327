#include "app/key_refresher.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace trousseau::app {
namespace {

// Retries of the first load: often enough that a returning device serves within seconds, rarely
// enough to cost a down device nothing. A refused PIN costs no device call at all (the backend
// does not try it again until it changes).
constexpr std::chrono::milliseconds kFirstRetry{500};
constexpr std::chrono::milliseconds kMaxRetry{5000};

void LogKeyRing(const KmsEngine& engine) {
  auto ring = engine.key_ring();
  for (const auto& [version, key_id] : ring->key_ids()) {
    spdlog::info("key version {} key_id={}{}", version, key_id, version == ring->active_version() ? " (active)" : "");
  }
}

}  // namespace

KeyRefresher::KeyRefresher(KmsEngine& engine, observability::Telemetry& telemetry, std::chrono::milliseconds interval)
    : engine_(engine), telemetry_(telemetry), interval_(interval) {}

KeyRefresher::~KeyRefresher() {
  if (thread_.joinable()) thread_.join();
}

void KeyRefresher::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void KeyRefresher::Kick() {
  {
    std::lock_guard lock(mu_);
    kicked_ = true;
  }
  cv_.notify_all();
}

bool KeyRefresher::Stop(Clock::time_point deadline) {
  std::unique_lock lock(mu_);
  stopping_ = true;
  cv_.notify_all();
  if (!cv_.wait_until(lock, deadline, [&] { return finished_; })) return false;
  lock.unlock();
  if (thread_.joinable()) thread_.join();
  return true;
}

void KeyRefresher::Loop() {
  std::chrono::milliseconds retry = kFirstRetry;
  auto next = Clock::now() + (engine_.key_ring() ? interval_ : retry);
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const bool periodic = engine_.key_ring() == nullptr || interval_.count() > 0;
    cv_.wait_until(lock, periodic ? next : Clock::time_point::max(), [&] { return stopping_ || kicked_; });
    if (stopping_) break;
    if (!kicked_ && Clock::now() < next) continue;  // a spurious wake-up
    const char* why = kicked_ ? "SIGHUP" : engine_.key_ring() ? "interval" : "retry";
    kicked_ = false;
    lock.unlock();
    (void)RefreshNow(why);
    lock.lock();
    if (engine_.key_ring()) {
      retry = kFirstRetry;
      next = Clock::now() + interval_;
    } else {
      next = Clock::now() + retry;
      retry = std::min(retry * 2, kMaxRetry);
    }
  }
  finished_ = true;
  cv_.notify_all();
}

Status KeyRefresher::RefreshNow(const char* why) {
  const auto before_ring = engine_.key_ring();
  const std::string before = before_ring ? before_ring->active_key_id() : "";
  if (Status s = engine_.LoadKeyRing(); !s.ok()) {
    telemetry_.RecordKeyRefresh(false);
    // The same failure again (a retry every few seconds while the device is away) is not news.
    const auto level = s.message() == last_failure_ ? spdlog::level::debug : spdlog::level::err;
    last_failure_ = s.message();
    if (before_ring) {
      spdlog::log(level, "key refresh ({}) failed, keeping the current key ring: {}", why, s.message());
    } else {
      spdlog::log(level, "cannot load the key family yet ({}): {}; serving UNAVAILABLE and trying again", why,
                  s.message());
    }
    return s;
  }
  last_failure_.clear();
  telemetry_.RecordKeyRefresh(true);
  const std::string after = engine_.key_ring()->active_key_id();
  telemetry_.SetActiveKey(after);
  if (after == before) return OkStatus();
  if (before.empty()) {
    spdlog::info("key family loaded ({})", why);
  } else {
    spdlog::info("active key changed ({}): {} -> {}", why, before, after);
  }
  LogKeyRing(engine_);
  return OkStatus();
}

}  // namespace trousseau::app
