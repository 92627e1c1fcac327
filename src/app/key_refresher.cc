#include "app/key_refresher.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>

#include "core/strings.h"
#include "observability/logging.h"

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
    const std::string version_text = StrCat(version);
    observability::LogWithFields(spdlog::level::info, "key version",
                                 {{"version", version_text, /*numeric=*/true},
                                  {"key_id", key_id},
                                  {"state", version == ring->active_version() ? "active" : "decrypt-only"}});
  }
}

// What appeared and vanished between two rings, for the operator following a rotation.
void LogVersionChanges(const KeyRing& before, const KeyRing& after) {
  for (const auto& [version, key_id] : after.key_ids()) {
    const std::string* had = before.KeyIdOf(version);
    if (had != nullptr && *had == key_id) continue;
    if (version == after.active_version()) continue;  // logged as the new active key
    spdlog::info("key version {} key_id={} found: it decrypts now and encrypts once it is due for activation", version,
                 key_id);
  }
  for (const auto& [version, key_id] : before.key_ids()) {
    const std::string* has = after.KeyIdOf(version);
    if (has != nullptr && *has == key_id) continue;
    // Versions that were active or decrypt-only and vanished are incidents: ReportVanished logs them.
    if (version > before.active_version()) {
      spdlog::warn(
          "new key {} did not stay on the device before it became active (a rotation's contest withdrew it?); "
          "nothing was encrypted under it here; {} stays active",
          key_id, after.active_key_id());
    }
  }
}

// One error line per vanished version: what is lost, and what the operator should check.
void LogVanished(const VanishedKey& gone) {
  const std::string how =
      gone.replaced_by.empty()
          ? std::string("the device no longer lists it")
          : fmt::format("another key now holds version {} on the device (key_id={})", gone.version, gone.replaced_by);
  spdlog::error(
      "key version {} key_id={}{} vanished: {}. Ciphertexts made under key_id={} cannot be decrypted any more "
      "(kube-apiserver gets NOT_FOUND for them). If it was retired on purpose (`trousseau-hsm-init key retire "
      "--version {}` after re-encrypting every object), nothing is lost; otherwise find out what removed it (the "
      "HSM's audit log; on a token that keeps CKA_ID unique, such as NSS softoken, a new key with the same CKA_ID "
      "replaces the old one) and restore it from the HSM's backup",
      gone.version, gone.key_id, gone.was_active ? " (the active key)" : " (decrypt-only)", how, gone.key_id,
      gone.version);
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
  auto next = !engine_.key_ring()     ? Clock::now() + retry
              : interval_.count() > 0 ? Clock::now() + interval_
                                      : Clock::time_point::max();
  if (auto due = engine_.NextActivationAt(); due && engine_.key_ring()) next = std::min(next, *due);
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_until(lock, next, [&] { return stopping_ || kicked_; });
    if (stopping_) break;
    if (!kicked_ && Clock::now() < next) continue;  // a spurious wake-up
    const auto due = engine_.NextActivationAt();
    const char* why = kicked_                       ? "SIGHUP"
                      : !engine_.key_ring()         ? "retry"
                      : due && *due <= Clock::now() ? "activation due"
                                                    : "interval";
    kicked_ = false;
    lock.unlock();
    (void)RefreshNow(why);
    lock.lock();
    if (engine_.key_ring()) {
      retry = kFirstRetry;
      next = interval_.count() > 0 ? Clock::now() + interval_ : Clock::time_point::max();
      // A version waiting for activation is promoted by the first load after it is due.
      if (auto due = engine_.NextActivationAt()) next = std::min(next, *due);
    } else {
      next = Clock::now() + retry;
      retry = std::min(retry * 2, kMaxRetry);
    }
  }
  finished_ = true;
  cv_.notify_all();
}

void KeyRefresher::ReportVanished() {
  const std::vector<VanishedKey> vanished = engine_.VanishedKeys();
  for (size_t i = vanished_reported_; i < vanished.size(); ++i) {
    LogVanished(vanished[i]);
    telemetry_.RecordVanishedKey(vanished[i].version, vanished[i].key_id);
  }
  vanished_reported_ = vanished.size();
}

Status KeyRefresher::RefreshNow(const char* why) {
  Status loaded = Load(why);
  // Whether or not this load succeeded, and also what a Decrypt's reload found since the last refresh
  // (it has no thread of its own to say it).
  ReportVanished();
  return loaded;
}

Status KeyRefresher::Load(const char* why) {
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
  const auto after_ring = engine_.key_ring();
  const std::string after = after_ring->active_key_id();
  telemetry_.SetKeyRing(*after_ring, engine_.NextActivationAt().has_value());
  if (before_ring) LogVersionChanges(*before_ring, *after_ring);
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
