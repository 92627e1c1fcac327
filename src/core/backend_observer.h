// Hook for watching device calls (latency, outcome) without the core knowing about metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace trousseau {

class BackendObserver {
 public:
  virtual ~BackendObserver() = default;
  // `call` is "seal", "open", "probe" (round trips with a key) or "load_keys" (a listing).
  virtual void OnBackendCall(std::string_view call, std::chrono::nanoseconds latency, const Status& status) = 0;
  // The device started or stopped counting as healthy (see HealthTracker): the same fact as Status'
  // healthz, as it changes.
  virtual void OnHealth(bool healthy) = 0;
  // A Decrypt named a key version above every one the ring held. `outcome`: "found" (a reload found
  // it), "not_found" (it did not), "joined" (a load already running answered), "limited" (no reload:
  // the rate limit), "failed" (the reload failed).
  virtual void OnDecryptMiss(std::string_view outcome) {}
  // An Encrypt or Decrypt the device served with key `version` (the caller got its result): which
  // versions are still in use, and when each was last used.
  virtual void OnKeyVersionUse(uint64_t version) {}
};

// Hook for a device's logins (PKCS#11 C_Login), told on the backend's admin lane as each is tried.
class LoginObserver {
 public:
  virtual ~LoginObserver() = default;
  // `device` names the token (the backend's Describe()). `failure` is empty when the login succeeded,
  // else "pin_incorrect", "pin_locked" or "pin_expired" (the token refused the PIN: the backend does
  // not try it again by itself) or "other" (C_Login failed otherwise).
  virtual void OnLogin(std::string_view device, std::string_view failure) = 0;
};

}  // namespace trousseau
