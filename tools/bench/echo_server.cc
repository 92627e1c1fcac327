#include "echo_server.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "echo.grpc.pb.h"
#include "server/kms_server.h"
#include "stats.h"

namespace trousseau::bench {
namespace {

class EchoService final : public Echo::Service {
 public:
  explicit EchoService(int work_us) : work_ns_(int64_t{work_us} * 1000) {}
  grpc::Status Echo(grpc::ServerContext*, const EchoMessage*, EchoMessage* reply) override {
    if (work_ns_ > 0) {
      const int64_t until = NowNs() + work_ns_;
      while (NowNs() < until) {
      }
    }
    reply->set_payload(reply_);
    return grpc::Status::OK;
  }

 private:
  const int64_t work_ns_;
  const std::string reply_ = std::string(kEchoReplyBytes, '\x5a');
};

class CallbackEchoService final : public Echo::CallbackService {
 public:
  explicit CallbackEchoService(int work_us) : work_ns_(int64_t{work_us} * 1000) {}
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context, const EchoMessage*,
                                 EchoMessage* reply) override {
    if (work_ns_ > 0) {
      const int64_t until = NowNs() + work_ns_;
      while (NowNs() < until) {
      }
    }
    reply->set_payload(reply_);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const int64_t work_ns_;
  const std::string reply_ = std::string(kEchoReplyBytes, '\x5a');
};

}  // namespace

int RunEchoServer(const EchoServerOptions& options) {
  const std::string& listen = options.listen;
  // A benchmark helper must not outlive the benchmark.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() == 1) return 1;

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  StatusOr<std::string> path = server::SocketPathFromEndpoint(listen);
  if (!path.ok()) {
    std::fprintf(stderr, "echo-server: %s\n", path.status().ToString().c_str());
    return 2;
  }
  unlink(path->c_str());

  EchoService sync_service(options.work_us);
  CallbackEchoService callback_service(options.work_us);
  grpc::ServerBuilder builder;  // the same settings as KmsServer::Start
  builder.AddListeningPort("unix:" + *path, grpc::InsecureServerCredentials());
  if (options.mode == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    builder.RegisterService(&sync_service);
  }
  builder.SetMaxReceiveMessageSize(server::kMaxRequestBytes);
  if (options.min_pollers > 0) builder.SetSyncServerOption(grpc::ServerBuilder::MIN_POLLERS, options.min_pollers);
  if (options.max_pollers > 0) builder.SetSyncServerOption(grpc::ServerBuilder::MAX_POLLERS, options.max_pollers);
  const mode_t old_umask = umask(0177);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  umask(old_umask);
  if (!server) {
    std::fprintf(stderr, "echo-server: cannot listen on %s\n", path->c_str());
    return 2;
  }
  chmod(path->c_str(), 0600);
  std::fprintf(stderr, "echo-server: serving on unix://%s\n", path->c_str());

  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
  unlink(path->c_str());
  return 0;
}

}  // namespace trousseau::bench
