// Builds the KeyBackend the settings ask for (PKCS#11 token or TPM 2.0), plus the few
// device-specific hooks the run loop needs. The rest of the plugin sees only KeyBackend.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend_observer.h"
#include "core/defaults.h"
#include "app/options.h"
#include "core/key_backend.h"
#include "core/status.h"

namespace trousseau::app {

// One device of a backend with several (multi-node mode: the recipient devices), for /readyz?verbose
// and the backend_up metric.
struct DeviceHealth {
  std::string name;
  bool up = false;
  std::string detail;  // its role when up, its last error when down
  double latency_ms = 0;
};

struct ConfiguredBackend {
  std::shared_ptr<KeyBackend> backend;
  // Part of every key_id: the PKCS#11 URI's object label, or tpm::kTpmFamilyLabel.
  std::string family_label;
  // Extra words for the start-up log line, e.g. "with 16 session(s)"; may be empty.
  std::string summary;
  // Run on SIGHUP before the key family is re-read (PKCS#11: allow a new login after a rejected PIN).
  std::function<void()> on_reload;
  // EngineOptions::new_version_settle for this backend.
  std::chrono::milliseconds new_version_settle{0};
  // Sessions in use and in the pool, for the metrics; empty for a backend without a pool.
  std::function<void(size_t& in_use, size_t& size)> session_pool;
  // Deadline of one device call (--hsm-timeout / --tpm-timeout).
  std::chrono::milliseconds device_timeout = defaults::kDeviceTimeout;
  // Device calls whose caller gave up and that the device has not returned: at exit, the process
  // leaves without joining them.
  std::function<size_t()> calls_stuck;
  // Each device's state, for a backend with several; empty otherwise.
  std::function<std::vector<DeviceHealth>()> devices;
};

// FAILED_PRECONDITION / INVALID_ARGUMENT for configuration errors (exit 2). Touches no device:
// the first device contact is the engine's first key ring load. `login_observer` (may be null, must
// outlive the backend) is told about every PKCS#11 login.
StatusOr<ConfiguredBackend> MakeBackend(const PluginOptions& options, LoginObserver* login_observer = nullptr);

}  // namespace trousseau::app
