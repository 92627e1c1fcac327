// `trousseau-bench probe`: one load against one running server, for diagnostics.
#include <cstdio>
#include <functional>

#include "report.h"
#include "run.h"
#include "workload.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;

// `p.seconds` of sequential calls, 100 at a time.
PhaseResult Sequential(const ProbeOptions& p, const std::function<bool()>& call) {
  PhaseResult result;
  const int64_t start = NowNs();
  while (NowNs() - start < static_cast<int64_t>(p.seconds * 1e9)) TimeSequential(100, call, result);
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  return result;
}

PhaseResult ProbeEcho(const ProbeOptions& p, const RunOptions& o, const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = Echo::NewStub(channel);
  EchoMessage request = SizedEcho(152);
  if (p.streams == 1) return Sequential(p, [&] { return CallEcho(*stub, request); });
  return LoadEcho(o, *stub, request, p.streams, p.seconds);
}

std::optional<PhaseResult> ProbeDecrypt(const ProbeOptions& p, const RunOptions& o,
                                        const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v2::KeyManagementService::NewStub(channel);
  Workload w;
  if (!SealASeed(*stub, w)) return std::nullopt;
  if (p.streams == 1) return Sequential(p, [&] { return CallDecrypt(*stub, w); });
  return LoadDecrypt(o, *stub, w, p.streams, p.seconds);
}

}  // namespace

int Probe(const ProbeOptions& p) {
  RunOptions o;
  o.client_threads = p.client_threads;
  auto channel = UnixChannel(p.socket);
  if (!WaitConnected(channel, 5s)) {
    Progress("cannot connect to %s", p.socket.c_str());
    return 1;
  }
  std::optional<PhaseResult> result = p.kind == "echo" ? ProbeEcho(p, o, channel) : ProbeDecrypt(p, o, channel);
  if (!result) return 1;
  Summary s = Summarize(result->latencies_ns, result->errors, result->seconds);
  std::printf("%s streams=%d calls/s=%.0f p50=%.1f p90=%.1f p99=%.1f us errors=%zu\n", p.kind.c_str(), p.streams,
              s.rate(), s.p50_us, s.p90_us, s.p99_us, s.errors);
  return 0;
}

}  // namespace trousseau::bench
