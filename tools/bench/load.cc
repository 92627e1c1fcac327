#include "load.h"

namespace trousseau::bench {

std::shared_ptr<grpc::Channel> UnixChannel(const std::string& socket_path) {
  grpc::ChannelArguments args;
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("unix://" + socket_path, grpc::InsecureChannelCredentials(), args);
}

bool WaitConnected(const std::shared_ptr<grpc::Channel>& channel, std::chrono::milliseconds timeout) {
  return channel->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

std::unique_ptr<grpc::ClientContext> NewContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  return context;
}

void TimeSequential(size_t calls, const std::function<bool()>& call, PhaseResult& into) {
  into.latencies_ns.reserve(into.latencies_ns.size() + calls);
  for (size_t i = 0; i < calls; ++i) {
    const int64_t start = NowNs();
    const bool ok = call();
    const int64_t end = NowNs();
    if (ok) {
      into.latencies_ns.push_back(end - start);
    } else {
      ++into.errors;
    }
  }
}

}  // namespace trousseau::bench
