// The gRPC server kube-apiserver talks to: both KMS APIs on one unix socket that only its owner
// (or a configured group) may connect to.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <grpcpp/server.h>

#include "core/defaults.h"
#include "core/kms_engine.h"
#include "server/kms_v1beta1_service.h"
#include "server/kms_v2_service.h"
#include "core/status.h"

namespace trousseau::server {

// Largest request accepted: a v1beta1 ciphertext (64 KiB) or a v2 Decrypt with 32 KiB of
// annotations fit; anything larger is refused by gRPC with RESOURCE_EXHAUSTED before it is parsed.
inline constexpr int kMaxRequestBytes = 128 * 1024;

struct ServerOptions {
  std::string listen = defaults::kListenEndpoint;
  mode_t socket_mode = defaults::kSocketMode;
  std::optional<uid_t> socket_owner;
  std::optional<gid_t> socket_group;
  std::string runtime_version;
  // Told about every request (metrics, request log); may be null. Must outlive the server.
  RequestObserver* observer = nullptr;
  // Tests only: told after each Decrypt response's plaintext was wiped (see response_wiper.h).
  std::function<void(std::string_view method, std::string_view wiped_field)> after_response_wipe;
};

// "unix:///abs/path", "unix:/abs/path" or "/abs/path" -> "/abs/path". Abstract sockets are refused:
// they have no file permissions, so any local process could call the plugin.
StatusOr<std::string> SocketPathFromEndpoint(const std::string& endpoint);

// Checks --listen without touching anything: a unix:// endpoint as above, whose directory exists
// (it is never created), with no file there but a stale socket (another process serving there, or
// any other kind of file, is refused). Start() checks the same; callers may check before a login.
Status CheckListenEndpoint(const std::string& endpoint);

class KmsServer {
 public:
  // Binds in a private directory next to the socket path, sets mode/owner/group there and renames the
  // socket into place, so nothing ever acts on the final path but that rename: a symlink swapped into
  // a directory others can write cannot redirect the chmod/chown (see kms_server.cc).
  static StatusOr<std::unique_ptr<KmsServer>> Start(KmsEngine& engine, const ServerOptions& options);
  ~KmsServer();

  // Stops accepting calls, lets in-flight calls finish until `drain` runs out, removes the socket.
  void Shutdown(std::chrono::milliseconds drain);
  const std::string& socket_path() const { return socket_path_; }

 private:
  KmsServer(KmsEngine& engine, const ServerOptions& options, std::string socket_path);

  std::string socket_path_;
  KmsV2Service v2_;
  KmsV1beta1Service v1beta1_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace trousseau::server
