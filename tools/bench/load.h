// Load generators: a single blocking stream (for latency) and a closed loop of N concurrent calls on
// one channel (for throughput), driven through a completion queue so the client stays cheap.
// Both speak to any generated stub, so the plugin and the echo server get the very same client.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "stats.h"

namespace trousseau::bench {

// kube-apiserver's deadline for a KMS call (its default `timeout: 3s`).
inline constexpr std::chrono::seconds kCallDeadline{3};

// A channel with its own connection (local subchannel pool), as kube-apiserver connects: unix://,
// insecure, :authority "localhost".
std::shared_ptr<grpc::Channel> UnixChannel(const std::string& socket_path);
// Blocks until the channel is connected (or `timeout` passes).
bool WaitConnected(const std::shared_ptr<grpc::Channel>& channel, std::chrono::milliseconds timeout);

std::unique_ptr<grpc::ClientContext> NewContext();

struct PhaseResult {
  std::vector<int64_t> latencies_ns;
  size_t errors = 0;
  double seconds = 0;
};

// `calls` sequential calls of `call` (true = OK and checked), latencies appended to `into`.
void TimeSequential(size_t calls, const std::function<bool()>& call, PhaseResult& into);

struct LoadOptions {
  int concurrency = 16;    // calls in flight at all times
  int client_threads = 1;  // completion-queue threads; calls are split among them
  double warmup_seconds = 0.5;
  double seconds = 3;
};

template <typename Response>
using Starter = std::function<std::unique_ptr<grpc::ClientAsyncResponseReader<Response>>(grpc::ClientContext*,
                                                                                         grpc::CompletionQueue*)>;
template <typename Response>
using Checker = std::function<bool(const Response&)>;

// Keeps `concurrency` calls in flight for warm-up + measured time; counts the calls that complete in
// the measured window (their latencies, and errors = failed or wrong answers).
template <typename Response>
PhaseResult ClosedLoop(const LoadOptions& options, const Starter<Response>& start, const Checker<Response>& check) {
  struct Slot {
    std::unique_ptr<grpc::ClientContext> context;
    Response response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> reader;
    int64_t start_ns = 0;
  };
  const int threads = std::max(1, std::min(options.client_threads, options.concurrency));
  const int64_t begin = NowNs();
  const int64_t window_start = begin + static_cast<int64_t>(options.warmup_seconds * 1e9);
  const int64_t window_end = window_start + static_cast<int64_t>(options.seconds * 1e9);
  std::vector<PhaseResult> partial(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    const int slots = options.concurrency / threads + (t < options.concurrency % threads ? 1 : 0);
    workers.emplace_back([&, t, slots] {
      grpc::CompletionQueue cq;
      std::vector<Slot> calls(slots);
      PhaseResult& out = partial[t];
      out.latencies_ns.reserve(1 << 16);
      auto issue = [&](Slot& slot) {
        slot.context = NewContext();
        slot.response.Clear();
        slot.start_ns = NowNs();
        slot.reader = start(slot.context.get(), &cq);
        slot.reader->StartCall();
        slot.reader->Finish(&slot.response, &slot.status, &slot);
      };
      for (Slot& slot : calls) issue(slot);
      int outstanding = slots;
      void* tag = nullptr;
      bool ok = false;
      while (outstanding > 0 && cq.Next(&tag, &ok)) {
        Slot& slot = *static_cast<Slot*>(tag);
        const int64_t end = NowNs();
        if (end >= window_start && end < window_end) {
          if (ok && slot.status.ok() && check(slot.response)) {
            out.latencies_ns.push_back(end - slot.start_ns);
          } else {
            ++out.errors;
          }
        }
        if (end < window_end) {
          issue(slot);
        } else {
          --outstanding;
        }
      }
      cq.Shutdown();
      while (cq.Next(&tag, &ok)) {
      }
    });
  }
  for (std::thread& w : workers) w.join();
  PhaseResult result;
  result.seconds = options.seconds;
  for (PhaseResult& p : partial) {
    result.latencies_ns.insert(result.latencies_ns.end(), p.latencies_ns.begin(), p.latencies_ns.end());
    result.errors += p.errors;
  }
  return result;
}

}  // namespace trousseau::bench
