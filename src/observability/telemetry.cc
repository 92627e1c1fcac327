#include "observability/telemetry.h"

#include <cstdio>
#include <prometheus/text_serializer.h>

#include <sstream>

#include "core/strings.h"
#include "observability/logging.h"
#include "observability/process_metrics.h"

namespace trousseau::observability {
namespace {

// From 50 us (a local HSM op) to 2.5 s (beyond kube-apiserver's 3 s default timeout is moot).
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

double Seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Telemetry::Telemetry(const std::string& version, const std::string& backend_kind)
    : registry_(std::make_shared<prometheus::Registry>()) {
  auto& requests = prometheus::BuildCounter()
                       .Name("trousseau_hsm_operations_total")
                       .Help("KMS requests by API, operation and gRPC status code")
                       .Register(*registry_);
  auto& latency = prometheus::BuildHistogram()
                      .Name("trousseau_hsm_operation_duration_seconds")
                      .Help("KMS request latency inside the plugin")
                      .Register(*registry_);
  const std::pair<const char*, const char*> kOperations[] = {{"v2", "Status"},       {"v2", "Encrypt"},
                                                             {"v2", "Decrypt"},      {"v1beta1", "Version"},
                                                             {"v1beta1", "Encrypt"}, {"v1beta1", "Decrypt"}};
  for (const auto& [api, operation] : kOperations) {
    Operation& op = operations_[{api, operation}];
    for (int code = 0; code < kCodes; ++code) {
      op.by_code[code] = &requests.Add(
          {{"api", api}, {"operation", operation}, {"code", StatusCodeName(static_cast<StatusCode>(code))}});
    }
    op.latency = &latency.Add({{"api", api}, {"operation", operation}}, kLatencyBuckets);
  }
  auto& backend_latency = prometheus::BuildHistogram()
                              .Name("trousseau_hsm_backend_call_duration_seconds")
                              .Help("Key backend (HSM/TPM) call latency")
                              .Register(*registry_);
  auto& backend_errors = prometheus::BuildCounter()
                             .Name("trousseau_hsm_backend_call_errors_total")
                             .Help("Key backend calls that failed")
                             .Register(*registry_);
  for (const char* call : {"seal", "open", "probe", "load_keys"}) {
    backend_latency_[call] = &backend_latency.Add({{"backend", backend_kind}, {"call", call}}, kLatencyBuckets);
    backend_errors_[call] = &backend_errors.Add({{"backend", backend_kind}, {"call", call}});
  }
  backend_up_family_ = &prometheus::BuildGauge()
                            .Name("trousseau_hsm_backend_up")
                            .Help(
                                "1 when the last device round trip succeeded (the backend, and each of its "
                                "devices when it has several)")
                            .Register(*registry_);
  backend_up_ = &backend_up_family_->Add({{"backend", backend_kind}});
  device_latency_family_ = &prometheus::BuildGauge()
                                .Name("trousseau_hsm_device_latency_seconds")
                                .Help(
                                    "Moving average of a device's recent successful calls (backends with "
                                    "several devices), which orders them for Decrypt")
                                .Register(*registry_);
  auto& pool = prometheus::BuildGauge()
                   .Name("trousseau_hsm_session_pool_sessions")
                   .Help("Device sessions in the pool, by state")
                   .Register(*registry_);
  pool_in_use_ = &pool.Add({{"state", "in_use"}});
  pool_size_ = &pool.Add({{"state", "total"}});
  active_key_ = &prometheus::BuildGauge()
                     .Name("trousseau_hsm_active_key_info")
                     .Help("The key_id Encrypt uses now (value 1)")
                     .Register(*registry_);
  key_versions_ = &prometheus::BuildGauge()
                       .Name("trousseau_hsm_key_version_info")
                       .Help(
                           "Every key version this plugin can decrypt (value 1), with its key_id; state "
                           "\"active\" for the one Encrypt uses, \"decrypt_only\" for the others")
                       .Register(*registry_);
  activation_pending_ = &prometheus::BuildGauge()
                             .Name("trousseau_hsm_key_activation_pending")
                             .Help("1 while a newer version on the device waits for its activation delay")
                             .Register(*registry_)
                             .Add({});
  vanished_total_ = &prometheus::BuildCounter()
                         .Name("trousseau_hsm_key_versions_vanished_total")
                         .Help(
                             "Key versions the plugin had loaded (active or decrypt-only) that a later read of the "
                             "device no longer found: ciphertexts under them cannot be decrypted any more, unless "
                             "they were retired on purpose")
                         .Register(*registry_)
                         .Add({});
  vanished_keys_ = &prometheus::BuildGauge()
                        .Name("trousseau_hsm_key_version_vanished_info")
                        .Help(
                            "Each key version counted by trousseau_hsm_key_versions_vanished_total (value 1), with "
                            "its key_id, until the plugin restarts")
                        .Register(*registry_);
  auto& misses = prometheus::BuildCounter()
                     .Name("trousseau_hsm_decrypt_key_miss_total")
                     .Help(
                         "Decrypts naming a key version newer than any this plugin held, by outcome of the "
                         "key family reload they caused (found, not_found, joined, limited, failed)")
                     .Register(*registry_);
  for (const char* outcome : {"found", "not_found", "joined", "limited", "failed"}) {
    decrypt_misses_[outcome] = &misses.Add({{"outcome", outcome}});
  }
  auto& refreshes = prometheus::BuildCounter()
                        .Name("trousseau_hsm_key_refresh_total")
                        .Help(
                            "Re-reads of the key family (SIGHUP, interval) by result; a failed one keeps the last "
                            "good key ring in force")
                        .Register(*registry_);
  key_refresh_ok_ = &refreshes.Add({{"result", "ok"}});
  key_refresh_failed_ = &refreshes.Add({{"result", "failed"}});
  key_refresh_last_success_ = &prometheus::BuildGauge()
                                   .Name("trousseau_hsm_key_refresh_last_success_timestamp_seconds")
                                   .Help("Unix time of the last successful key family load")
                                   .Register(*registry_)
                                   .Add({});
  version_uses_family_ = &prometheus::BuildCounter()
                              .Name("trousseau_hsm_key_version_uses_total")
                              .Help(
                                  "Encrypts and Decrypts the device served with each key version (a version's "
                                  "series appears at its first use since the plugin started)")
                              .Register(*registry_);
  version_last_use_family_ = &prometheus::BuildGauge()
                                  .Name("trousseau_hsm_key_version_last_use_timestamp_seconds")
                                  .Help(
                                      "Unix time of the last Encrypt or Decrypt served with each key version since "
                                      "the plugin started")
                                  .Register(*registry_);
  auto& logins = prometheus::BuildCounter()
                     .Name("trousseau_hsm_login_failures_total")
                     .Help(
                         "Device logins (PKCS#11 C_Login) that failed, by reason: pin_incorrect, pin_locked, "
                         "pin_expired (the token refused the PIN), other")
                     .Register(*registry_);
  for (const char* reason : {"pin_incorrect", "pin_locked", "pin_expired", "other"}) {
    login_failures_[reason] = &logins.Add({{"reason", reason}});
  }
  login_pin_rejected_ = &prometheus::BuildGauge()
                             .Name("trousseau_hsm_login_pin_rejected")
                             .Help(
                                 "Devices whose last login the token refused for its PIN; the plugin does not try "
                                 "that PIN again until the PIN file changes or SIGHUP")
                             .Register(*registry_)
                             .Add({});
  prometheus::BuildGauge()
      .Name("trousseau_hsm_build_info")
      .Help("Build information (value 1)")
      .Register(*registry_)
      .Add({{"version", version}, {"backend", backend_kind}})
      .Set(1);
}

Telemetry::Operation* Telemetry::Find(std::string_view api, std::string_view operation) {
  auto it = operations_.find(std::make_pair(std::string(api), std::string(operation)));
  return it == operations_.end() ? nullptr : &it->second;
}

void Telemetry::OnRequest(const RequestRecord& record) {
  const int code = static_cast<int>(record.code);
  if (Operation* op = Find(record.api, record.operation)) {
    if (code >= 0 && code < kCodes) op->by_code[code]->Increment();
    op->latency->Observe(Seconds(record.latency));
  }
  // Status is polled constantly: trace. Encrypt is rare (a new seed): info. Failures: warn.
  spdlog::level::level_enum level = spdlog::level::debug;
  if (record.operation == "Status" || record.operation == "Version") level = spdlog::level::trace;
  if (record.operation == "Encrypt") level = spdlog::level::info;
  if (!record.ok()) level = spdlog::level::warn;
  if (!spdlog::should_log(level)) return;
  char latency[32];  // milliseconds with microsecond resolution, the unit in the field's name
  std::snprintf(latency, sizeof latency, "%.3f", std::chrono::duration<double, std::milli>(record.latency).count());
  const std::string code_name = StatusCodeName(record.code);
  const std::string message = record.ok()
                                  ? StrCat(record.api, " ", record.operation)
                                  : StrCat(record.api, " ", record.operation, " failed: ", record.error_message);
  LogWithFields(level, message,
                {{"operation", record.operation},
                 {"api", record.api},
                 {"uid", record.uid},
                 {"key_id", record.key_id},
                 {"code", code_name},
                 {"latency_ms", latency, /*numeric=*/true}});
}

void Telemetry::OnBackendCall(std::string_view call, std::chrono::nanoseconds latency, const Status& status) {
  if (auto it = backend_latency_.find(call); it != backend_latency_.end()) it->second->Observe(Seconds(latency));
  // A forged ciphertext is not a device error.
  if (!status.ok() && !IsInvalidArgument(status) && !IsNotFound(status)) {
    if (auto it = backend_errors_.find(call); it != backend_errors_.end()) it->second->Increment();
  }
}

void Telemetry::OnHealth(bool healthy) { backend_up_->Set(healthy ? 1 : 0); }

void Telemetry::OnDecryptMiss(std::string_view outcome) {
  if (auto it = decrypt_misses_.find(outcome); it != decrypt_misses_.end()) it->second->Increment();
}

void Telemetry::OnKeyVersionUse(uint64_t version) {
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  {
    std::shared_lock lock(version_uses_mu_);
    if (auto it = version_uses_.find(version); it != version_uses_.end()) {
      it->second.uses->Increment();
      it->second.last_use->Set(now);
      return;
    }
  }
  std::unique_lock lock(version_uses_mu_);
  VersionUse& use = version_uses_[version];
  if (use.uses == nullptr) {
    const std::string label = StrCat(version);
    use.uses = &version_uses_family_->Add({{"version", label}});
    use.last_use = &version_last_use_family_->Add({{"version", label}});
  }
  use.uses->Increment();
  use.last_use->Set(now);
}

void Telemetry::OnLogin(std::string_view device, std::string_view failure) {
  if (!failure.empty()) {
    auto it = login_failures_.find(failure);
    (it != login_failures_.end() ? it->second : login_failures_.at("other"))->Increment();
  }
  std::lock_guard lock(login_mu_);
  pin_rejected_by_device_[std::string(device)] = failure.starts_with("pin_");
  size_t rejected = 0;
  for (const auto& [name, refused] : pin_rejected_by_device_) rejected += refused ? 1 : 0;
  login_pin_rejected_->Set(static_cast<double>(rejected));
}

void Telemetry::SetKeyRing(const KeyRing& ring, bool activation_pending) {
  std::lock_guard lock(active_key_mu_);
  activation_pending_->Set(activation_pending ? 1 : 0);
  for (prometheus::Gauge* gauge : key_version_gauges_) key_versions_->Remove(gauge);
  key_version_gauges_.clear();
  for (const auto& [version, key_id] : ring.key_ids()) {
    prometheus::Gauge& gauge =
        key_versions_->Add({{"version", StrCat(version)},
                            {"key_id", key_id},
                            {"state", version == ring.active_version() ? "active" : "decrypt_only"}});
    gauge.Set(1);
    key_version_gauges_.push_back(&gauge);
  }
  const std::string& key_id = ring.active_key_id();
  if (key_id == active_key_id_) return;
  if (active_key_gauge_ != nullptr) active_key_->Remove(active_key_gauge_);
  active_key_gauge_ = &active_key_->Add({{"key_id", key_id}});
  active_key_gauge_->Set(1);
  active_key_id_ = key_id;
}

void Telemetry::RecordKeyRefresh(bool ok) {
  (ok ? key_refresh_ok_ : key_refresh_failed_)->Increment();
  if (ok) {
    key_refresh_last_success_->Set(
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  }
}

void Telemetry::RecordVanishedKey(uint64_t version, const std::string& key_id) {
  vanished_total_->Increment();
  vanished_keys_->Add({{"version", StrCat(version)}, {"key_id", key_id}}).Set(1);
}

void Telemetry::SetSessionPool(size_t in_use, size_t size) {
  pool_in_use_->Set(static_cast<double>(in_use));
  pool_size_->Set(static_cast<double>(size));
}

void Telemetry::SetDeviceState(const std::string& name, bool up, double latency_ms) {
  std::lock_guard lock(devices_mu_);
  auto it = devices_.find(name);
  if (it == devices_.end()) {
    it = devices_
             .emplace(name, std::make_pair(&backend_up_family_->Add({{"backend", name}}),
                                           &device_latency_family_->Add({{"device", name}})))
             .first;
  }
  it->second.first->Set(up ? 1 : 0);
  it->second.second->Set(latency_ms / 1000.0);
}

std::string Telemetry::Render() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  AppendProcessMetrics(families);
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace trousseau::observability
