#include "tools/postgres/dsn_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace trousseau::postgres {
namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string Mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

}  // namespace

StatusOr<SecureBytes> ReadAdminDsnFile(const std::string& path) {
  const std::string what = "the PostgreSQL admin DSN file " + path;
  Fd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY));
  if (fd.get() < 0) {
    const int error = errno;
    if (error == ELOOP) return InvalidArgumentError(what + " is a symbolic link; give the file itself");
    if (error == ENOENT) return NotFoundError(what + " does not exist");
    if (error == EACCES) return PermissionDeniedError(what + " cannot be read: " + std::strerror(error));
    return InvalidArgumentError(what + " cannot be opened: " + std::strerror(error));
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return InternalError(what + ": fstat failed: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError(what + " is not a regular file");
  if (st.st_uid != geteuid()) {
    return PermissionDeniedError(what + " is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " +
                                 std::to_string(geteuid()) +
                                 "): it holds the admin password, so only its owner "
                                 "should be able to read it");
  }
  if ((st.st_mode & 077) != 0) {
    return PermissionDeniedError(what + " has mode " + Mode(st.st_mode) +
                                 ": group or others can reach it, and it holds the admin password; chmod 600 it");
  }
  if (st.st_size <= 0) return InvalidArgumentError(what + " is empty");
  if (static_cast<size_t>(st.st_size) > kMaxDsnFileSize) {
    return InvalidArgumentError(what + " is larger than " + std::to_string(kMaxDsnFileSize) + " bytes");
  }
  SecureBytes content(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = read(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return InternalError(what + " could not be read: " + std::strerror(errno));
    if (n == 0) break;  // shrank meanwhile
    done += static_cast<size_t>(n);
  }
  while (done > 0 && (content.data()[done - 1] == '\n' || content.data()[done - 1] == '\r')) --done;
  content.Truncate(done);
  if (content.empty()) return InvalidArgumentError(what + " is empty");
  return content;
}

}  // namespace trousseau::postgres
