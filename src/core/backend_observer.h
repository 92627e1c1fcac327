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
};

}  // namespace trousseau
