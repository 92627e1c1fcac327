// Hook for watching device calls (latency, outcome) without the core knowing about metrics.
#pragma once

#include <chrono>
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
};

}  // namespace trousseau
