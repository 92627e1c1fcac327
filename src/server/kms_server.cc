#include "server/kms_server.h"
#include "core/status.h"
#include "core/strings.h"
#include "server/response_wiper.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>


namespace trousseau::server {
namespace {

// True when something accepts connections on `path`.
bool SomeoneListens(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  const bool connected = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return connected;
}

Status PrepareSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgumentError(StrCat("socket path is longer than ", sizeof(sockaddr_un::sun_path) - 1,
                                                   " bytes: ", path));
  }
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!std::filesystem::exists(parent, ec)) {
    std::filesystem::create_directories(parent, ec);
    if (ec) return FailedPreconditionError(StrCat("cannot create ", parent.string(), ": ", ec.message()));
    chmod(parent.c_str(), 0750);
  }
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return FailedPreconditionError(StrCat(path, " exists and is not a socket; refusing to replace it"));
  }
  if (SomeoneListens(path)) {
    return FailedPreconditionError(StrCat("another process is serving on ", path));
  }
  if (unlink(path.c_str()) != 0) {
    return FailedPreconditionError(StrCat("cannot remove stale socket ", path, ": ", std::strerror(errno)));
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::string> SocketPathFromEndpoint(const std::string& endpoint) {
  std::string path = endpoint;
  if (path.starts_with("unix://")) {
    path = path.substr(7);
  } else if (path.starts_with("unix:")) {
    path = path.substr(5);
  } else if (path.find("://") != std::string::npos || path.starts_with("unix-abstract:")) {
    return InvalidArgumentError(StrCat("--listen must be unix:///absolute/path.sock, not ", endpoint));
  }
  // kube-apiserver spells an abstract socket unix:///@name.
  if (path.starts_with("@") || path.starts_with("/@")) {
    return InvalidArgumentError(
        "abstract unix sockets have no file permissions, so any local process could use the KEK; "
        "use unix:///absolute/path.sock");
  }
  if (path.empty() || path[0] != '/') {
    return InvalidArgumentError(StrCat("--listen needs an absolute socket path, got ", endpoint));
  }
  return path;
}

KmsServer::KmsServer(KmsEngine& engine, const ServerOptions& options, std::string socket_path)
    : socket_path_(std::move(socket_path)),
      v2_(engine, options.observer),
      v1beta1_(engine, options.runtime_version, options.observer) {}

StatusOr<std::unique_ptr<KmsServer>> KmsServer::Start(KmsEngine& engine, const ServerOptions& options) {
  if ((options.socket_mode & ~mode_t{0770}) != 0) {
    return InvalidArgumentError("the socket mode may grant owner and group access only (e.g. 0600, 0660)");
  }
  StatusOr<std::string> path = SocketPathFromEndpoint(options.listen);
  if (!path.ok()) return path.status();
  if (Status prepared = PrepareSocketPath(*path); !prepared.ok()) return prepared;

  std::unique_ptr<KmsServer> server(new KmsServer(engine, options, *path));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(StrCat("unix:", *path), grpc::InsecureServerCredentials());
  builder.RegisterService(&server->v2_);
  builder.RegisterService(&server->v1beta1_);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ResponseWiperFactory>(options.after_response_wipe));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  // The socket must never exist with looser permissions, not even between bind and chmod.
  const mode_t old_umask = umask(0177);
  server->server_ = builder.BuildAndStart();
  umask(old_umask);
  if (!server->server_) {
    return FailedPreconditionError(StrCat("cannot listen on ", *path));
  }
  if (chmod(path->c_str(), options.socket_mode) != 0) {
    return FailedPreconditionError(StrCat("chmod ", *path, ": ", std::strerror(errno)));
  }
  if (options.socket_owner || options.socket_group) {
    const uid_t owner = options.socket_owner.value_or(static_cast<uid_t>(-1));
    const gid_t group = options.socket_group.value_or(static_cast<gid_t>(-1));
    if (chown(path->c_str(), owner, group) != 0) {
      return FailedPreconditionError(StrCat("chown ", *path, ": ", std::strerror(errno)));
    }
  }
  return server;
}

void KmsServer::Shutdown(std::chrono::milliseconds drain) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + drain);
  server_->Wait();
  unlink(socket_path_.c_str());
}

KmsServer::~KmsServer() { Shutdown(std::chrono::milliseconds(0)); }

}  // namespace trousseau::server
