// The calls `run` and `probe` time: a v2 Decrypt as kube-apiserver sends it (a random 32-byte seed
// sealed by the plugin itself) and Echo requests of the same size on the wire, one at a time or as a
// closed loop of concurrent calls.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "echo.grpc.pb.h"
#include "load.h"
#include "run.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {

// kube-apiserver sends a UUID as uid.
inline constexpr char kRunUid[] = "0d6f3c6e-5b1a-4c2e-9f4d-7a8b9c0d1e2f";

struct Workload {
  std::string seed;
  v2::DecryptRequest decrypt;
  EchoMessage echo_empty;
  EchoMessage echo_sized;
};

// An echo request whose serialized size equals `wire_bytes` (a Decrypt request's).
EchoMessage SizedEcho(size_t wire_bytes);

// A connected v2 stub and the Decrypt kube-apiserver would send: a fresh random seed, sealed by the
// plugin itself.
struct SeededPlugin {
  std::unique_ptr<v2::KeyManagementService::Stub> stub;
  Workload workload;
};
std::optional<SeededPlugin> SealASeed(const std::string& socket);
// The same on an existing stub: fills w.seed and w.decrypt; false (reason on stderr) if Encrypt fails.
bool SealASeed(v2::KeyManagementService::Stub& stub, Workload& w);

// One call; true when it is OK and the answer is right.
bool CallDecrypt(v2::KeyManagementService::Stub& stub, const Workload& w);
bool CallEcho(Echo::Stub& stub, const EchoMessage& request);

// `concurrency` calls in flight for `seconds` (after o.warmup_seconds), on o.client_threads threads.
PhaseResult LoadEcho(const RunOptions& o, Echo::Stub& stub, const EchoMessage& request, int concurrency,
                     double seconds);
PhaseResult LoadDecrypt(const RunOptions& o, v2::KeyManagementService::Stub& stub, const Workload& w, int concurrency,
                        double seconds);

}  // namespace trousseau::bench
