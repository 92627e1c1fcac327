// The soak's events in request order: a key rotation (`trousseau-hsm-init key rotate`, then SIGHUP,
// then wait until Status reports the new key_id) every --rotate-every requests and one HSM outage (the
// shim "down" for --outage, then "up") in the middle. Runs on its own thread beside the load.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "soak.h"
#include "soak_load.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {

struct Rotation {
  size_t at_request = 0;
  std::string key_id;
  int tool_exit = -1;
  double tool_ms = 0;
  std::optional<double> active_ms;  // SIGHUP -> the plugin's Status reports its key_id
  int64_t hup_ns = 0;
};

struct Outage {
  size_t at_request = 0;
  int64_t down_ns = 0, up_ns = 0;
  std::optional<double> first_ok_ms;    // "up" -> first OK answer to a call started after "up"
  std::optional<double> last_error_ms;  // "up" -> last error answered
};

struct Plan {
  std::vector<size_t> rotations;  // request numbers
  std::optional<size_t> outage_at;
};

// Rotations every `rotate_every` requests; the outage (if any) in the middle, off a rotation.
Plan MakePlan(size_t requests, size_t rotate_every, bool outage);

class Controller {
 public:
  // Status goes over the load's channel (kube-apiserver too has one connection): a second one would
  // be one more fd in the plugin.
  Controller(const SoakOptions& o, Shared& shared, pid_t plugin, const std::shared_ptr<grpc::Channel>& channel,
             std::string tool_uri, std::string control, std::string work_dir, std::chrono::milliseconds outage)
      : o_(o),
        shared_(shared),
        plugin_(plugin),
        status_stub_(v2::KeyManagementService::NewStub(channel)),
        tool_uri_(std::move(tool_uri)),
        control_(std::move(control)),
        work_dir_(std::move(work_dir)),
        outage_length_(outage) {}

  void Run(const Plan& plan);

  const std::vector<Rotation>& rotations() const { return rotations_; }
  const std::optional<Outage>& outage() const { return outage_; }
  bool skipped() const { return skipped_; }

 private:
  void DoRotation();
  // Whether this trousseau-hsm-init knows --no-wait (asked once).
  bool ToolHasNoWait();
  void DoOutage();

  const SoakOptions& o_;
  Shared& shared_;
  const pid_t plugin_;
  std::unique_ptr<v2::KeyManagementService::Stub> status_stub_;
  const std::string tool_uri_;
  const std::string control_;
  const std::string work_dir_;
  const std::chrono::milliseconds outage_length_;
  std::vector<Rotation> rotations_;
  std::optional<Outage> outage_;
  bool skipped_ = false;
  std::optional<bool> tool_has_no_wait_;
};

}  // namespace trousseau::bench
