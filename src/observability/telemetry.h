// Prometheus metrics (prometheus-cpp) and request logs for the plugin, fed by the request and
// device-call hooks. Metric handles are created up front, so the request path only does atomic
// updates (no family lookups, no global lock).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/backend_observer.h"
#include "core/key_ring.h"
#include "core/request_observer.h"

namespace trousseau::observability {

class Telemetry final : public RequestObserver, public BackendObserver, public LoginObserver {
 public:
  Telemetry(const std::string& version, const std::string& backend_kind);

  void OnRequest(const RequestRecord& record) override;
  void OnBackendCall(std::string_view call, std::chrono::nanoseconds latency, const Status& status) override;
  void OnHealth(bool healthy) override;
  void OnDecryptMiss(std::string_view outcome) override;
  // trousseau_hsm_key_version_uses_total{version} and ..._last_use_timestamp_seconds{version}, each
  // version's series made at its first use (only versions the device served: never a forged one).
  void OnKeyVersionUse(uint64_t version) override;
  // trousseau_hsm_login_failures_total{reason}, and trousseau_hsm_login_pin_rejected: how many devices'
  // last login the token refused for its PIN (the plugin does not try it again until fixed).
  void OnLogin(std::string_view device, std::string_view failure) override;

  // State sampled when /metrics is scraped.
  // The key ring now in force: its active key_id and every version it can decrypt.
  void SetKeyRing(const KeyRing& ring, bool activation_pending);
  void SetSessionPool(size_t in_use, size_t size);
  // One device of a backend with several (multi-node mode): trousseau_hsm_backend_up{backend=<name>}
  // beside the backend's own series, and its recent latency.
  void SetDeviceState(const std::string& name, bool up, double latency_ms);
  // Outcome of a key family load (start-up, SIGHUP, interval).
  void RecordKeyRefresh(bool ok);
  // A key version the device no longer lists although a loaded key ring held it (KmsEngine::VanishedKeys):
  // counted, and shown as an info series with its key_id until the process ends.
  void RecordVanishedKey(uint64_t version, const std::string& key_id);

  // Prometheus text exposition format, with the process_* metrics (observability/process_metrics.h).
  std::string Render() const;

 private:
  static constexpr int kCodes = static_cast<int>(StatusCode::kUnauthenticated) + 1;  // the canonical codes
  struct Operation {
    std::array<prometheus::Counter*, kCodes> by_code{};
    prometheus::Histogram* latency = nullptr;
  };
  Operation* Find(std::string_view api, std::string_view operation);

  std::shared_ptr<prometheus::Registry> registry_;
  std::map<std::pair<std::string, std::string>, Operation, std::less<>> operations_;
  std::map<std::string, prometheus::Histogram*, std::less<>> backend_latency_;
  std::map<std::string, prometheus::Counter*, std::less<>> backend_errors_;
  prometheus::Gauge* backend_up_ = nullptr;
  prometheus::Family<prometheus::Gauge>* backend_up_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* device_latency_family_ = nullptr;
  std::mutex devices_mu_;
  std::map<std::string, std::pair<prometheus::Gauge*, prometheus::Gauge*>> devices_;  // guarded by devices_mu_
  prometheus::Gauge* pool_in_use_ = nullptr;
  prometheus::Gauge* pool_size_ = nullptr;
  prometheus::Counter* key_refresh_ok_ = nullptr;
  prometheus::Counter* key_refresh_failed_ = nullptr;
  prometheus::Gauge* key_refresh_last_success_ = nullptr;
  prometheus::Family<prometheus::Gauge>* active_key_ = nullptr;
  std::mutex active_key_mu_;
  std::string active_key_id_;
  prometheus::Gauge* active_key_gauge_ = nullptr;
  prometheus::Family<prometheus::Gauge>* key_versions_ = nullptr;
  std::vector<prometheus::Gauge*> key_version_gauges_;  // guarded by active_key_mu_
  prometheus::Gauge* activation_pending_ = nullptr;
  prometheus::Counter* vanished_total_ = nullptr;
  prometheus::Family<prometheus::Gauge>* vanished_keys_ = nullptr;
  std::map<std::string, prometheus::Counter*, std::less<>> decrypt_misses_;
  prometheus::Family<prometheus::Counter>* version_uses_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* version_last_use_family_ = nullptr;
  struct VersionUse {
    prometheus::Counter* uses = nullptr;
    prometheus::Gauge* last_use = nullptr;
  };
  std::shared_mutex version_uses_mu_;
  std::map<uint64_t, VersionUse> version_uses_;  // guarded by version_uses_mu_ (the handles are thread-safe)
  std::map<std::string, prometheus::Counter*, std::less<>> login_failures_;
  prometheus::Gauge* login_pin_rejected_ = nullptr;
  std::mutex login_mu_;
  std::map<std::string, bool, std::less<>> pin_rejected_by_device_;  // guarded by login_mu_
};

}  // namespace trousseau::observability
