#include "server/kms_server.h"
#include "core/status.h"
#include "core/strings.h"
#include "server/response_wiper.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

namespace trousseau::server {
namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(1);

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd_;
};

// True when something accepts connections on `path`. Never blocks for long: a listener whose backlog
// is full (a stopped or wedged process) would hold a blocking connect forever, so the connect is
// non-blocking and waits kConnectTimeout at most; a full backlog (EAGAIN) is a listener too.
bool SomeoneListens(const std::string& path) {
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
  if (errno == EAGAIN) return true;
  if (errno != EINPROGRESS) return false;
  pollfd waiting{fd.get(), POLLOUT, 0};
  const int timeout_ms = static_cast<int>(std::chrono::milliseconds(kConnectTimeout).count());
  int ready;
  do {
    ready = poll(&waiting, 1, timeout_ms);
  } while (ready < 0 && errno == EINTR);
  if (ready <= 0) return true;  // no verdict within the timeout: something holds the socket
  int error = 0;
  socklen_t size = sizeof error;
  return getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &size) == 0 && error == 0;
}

std::string ParentOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "/" : parent;
}

// Checks `path` and its directory without changing anything: the directory must exist (the plugin
// never creates it: a typo would otherwise serve where kube-apiserver is not looking), and an
// existing file there may only be a stale socket (one nobody listens on).
Status CheckSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgumentError(
        StrCat("socket path is longer than ", sizeof(sockaddr_un::sun_path) - 1, " bytes: ", path));
  }
  const std::string parent = ParentOf(path);
  struct stat st {};
  if (stat(parent.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return FailedPreconditionError(
          StrCat("--listen unix://", path, ": the directory ", parent,
                 " does not exist. The plugin does not create it: make it (e.g. install -d -m 0750 ", parent,
                 ", or the systemd unit's RuntimeDirectory=, or the static pod's hostPath volume) and check that "
                 "kube-apiserver's EncryptionConfiguration names the same socket"));
    }
    return FailedPreconditionError(
        StrCat("--listen unix://", path, ": cannot use the directory ", parent, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return FailedPreconditionError(StrCat("--listen unix://", path, ": ", parent, " is not a directory"));
  }
  if (lstat(path.c_str(), &st) != 0) return OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return FailedPreconditionError(StrCat(path, " exists and is not a socket; refusing to replace it"));
  }
  if (SomeoneListens(path)) {
    return FailedPreconditionError(StrCat("another process is serving on ", path));
  }
  return OkStatus();  // a stale socket: the new one replaces it (rename) once it is ready
}

std::string RandomSuffix() {
  static constexpr char kHex[] = "0123456789abcdef";
  unsigned char bytes[4];
  std::string out;
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    const unsigned value = static_cast<unsigned>(getpid()) ^ static_cast<unsigned>(time(nullptr));
    std::memcpy(bytes, &value, sizeof bytes);
  }
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

// A directory only this process's user can enter, made next to the socket's final place (same file
// system, so rename(2) can move the socket from it). The socket is bound, chmod'ed and chown'ed in
// here, where nobody else can swap a symlink in, then renamed into place in one step; in the
// socket's own directory (which others may be able to write) nothing but that rename ever happens.
class PrivateBindDirectory {
 public:
  static StatusOr<PrivateBindDirectory> Make(const std::string& final_path) {
    PrivateBindDirectory dir;
    dir.parent_path_ = ParentOf(final_path);
    dir.final_name_ = std::filesystem::path(final_path).filename().string();
    dir.parent_ = Fd(open(dir.parent_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir.parent_.valid()) {
      return FailedPreconditionError(StrCat("cannot open ", dir.parent_path_, ": ", std::strerror(errno)));
    }
    for (int attempt = 0; attempt < 8 && !dir.private_.valid(); ++attempt) {
      dir.name_ = "." + RandomSuffix();
      if (mkdirat(dir.parent_.get(), dir.name_.c_str(), 0700) != 0) {
        if (errno == EEXIST) continue;
        return FailedPreconditionError(StrCat("cannot make a private directory in ", dir.parent_path_,
                                              " to bind the socket: ", std::strerror(errno)));
      }
      dir.made_ = true;
      dir.private_ = Fd(openat(dir.parent_.get(), dir.name_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (!dir.private_.valid()) {
      return FailedPreconditionError(StrCat("cannot make a private directory in ", dir.parent_path_));
    }
    // What was opened must be the directory this process just made: its own, with no access for others.
    struct stat st {};
    if (fstat(dir.private_.get(), &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
      return FailedPreconditionError(StrCat("the private directory made in ", dir.parent_path_,
                                            " was replaced while binding the socket; refusing to go on"));
    }
    // Bind through the directory itself when its name fits a sockaddr_un; else through the open
    // descriptor (a long socket path then costs nothing more than it did).
    dir.bind_path_ = StrCat(dir.parent_path_ == "/" ? "" : dir.parent_path_, "/", dir.name_, "/", kBoundName);
    if (dir.bind_path_.size() >= sizeof(sockaddr_un::sun_path)) {
      dir.bind_path_ = StrCat("/proc/self/fd/", dir.private_.get(), "/", kBoundName);
    }
    return dir;
  }

  PrivateBindDirectory() = default;
  PrivateBindDirectory(PrivateBindDirectory&&) = default;
  PrivateBindDirectory& operator=(PrivateBindDirectory&&) = default;
  ~PrivateBindDirectory() {
    if (private_.valid()) unlinkat(private_.get(), kBoundName, 0);
    if (made_ && parent_.valid()) unlinkat(parent_.get(), name_.c_str(), AT_REMOVEDIR);
  }

  const std::string& bind_path() const { return bind_path_; }

  // chmod and chown of the bound socket, inside the private directory.
  Status SetPermissions(mode_t mode, std::optional<uid_t> owner, std::optional<gid_t> group) const {
    if (fchmodat(private_.get(), kBoundName, mode, 0) != 0) {
      return FailedPreconditionError(StrCat("chmod of the new socket: ", std::strerror(errno)));
    }
    if (owner || group) {
      if (fchownat(private_.get(), kBoundName, owner.value_or(static_cast<uid_t>(-1)),
                   group.value_or(static_cast<gid_t>(-1)), AT_SYMLINK_NOFOLLOW) != 0) {
        return FailedPreconditionError(StrCat("chown of the new socket: ", std::strerror(errno)));
      }
    }
    return OkStatus();
  }

  // Moves the socket to its final name, replacing a stale socket (or anything swapped in meanwhile:
  // rename never follows a symlink at the target).
  Status MoveIntoPlace() const {
    if (renameat(private_.get(), kBoundName, parent_.get(), final_name_.c_str()) != 0) {
      return FailedPreconditionError(
          StrCat("cannot move the new socket to ", parent_path_, "/", final_name_, ": ", std::strerror(errno)));
    }
    return OkStatus();
  }

 private:
  static constexpr char kBoundName[] = "s";
  std::string parent_path_;
  std::string final_name_;
  std::string name_;
  std::string bind_path_;
  Fd parent_;
  Fd private_;
  bool made_ = false;
};

}  // namespace

Status CheckListenEndpoint(const std::string& endpoint) {
  StatusOr<std::string> path = SocketPathFromEndpoint(endpoint);
  if (!path.ok()) return path.status();
  return CheckSocketPath(*path);
}

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
  if (Status checked = CheckSocketPath(*path); !checked.ok()) return checked;
  StatusOr<PrivateBindDirectory> bind_dir = PrivateBindDirectory::Make(*path);
  if (!bind_dir.ok()) return bind_dir.status();

  std::unique_ptr<KmsServer> server(new KmsServer(engine, options, *path));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(StrCat("unix:", bind_dir->bind_path()), grpc::InsecureServerCredentials());
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
  // Until the rename the socket is reachable only through the private directory.
  Status placed = bind_dir->SetPermissions(options.socket_mode, options.socket_owner, options.socket_group);
  if (placed.ok()) placed = bind_dir->MoveIntoPlace();
  if (!placed.ok()) {
    server->shut_down_ = true;  // the final path is not ours: Shutdown must not unlink it
    server->server_->Shutdown(std::chrono::system_clock::now());
    server->server_->Wait();
    return FailedPreconditionError(StrCat(*path, ": ", placed.message()));
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
