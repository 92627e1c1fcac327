#include "hsm/pin_source.h"
#include "core/status.h"
#include "core/strings.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>


namespace trousseau::hsm {
namespace {

constexpr size_t kMaxPinFileSize = 1024;

bool IsSpace(uint8_t c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

SecureBytes Trimmed(const uint8_t* data, size_t size) {
  size_t begin = 0;
  while (begin < size && IsSpace(data[begin])) ++begin;
  while (size > begin && IsSpace(data[size - 1])) --size;
  return SecureBytes::CopyOf({reinterpret_cast<const char*>(data) + begin, size - begin});
}

}  // namespace

StatusOr<SecureBytes> ReadPinFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return FailedPreconditionError(StrCat("cannot open PIN file ", path, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return FailedPreconditionError(StrCat("PIN file ", path, " is not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPreconditionError(
        StrCat("PIN file ", path, " has mode ", mode, ": group and others must have no access (chmod 600 ", path, ")"));
  }
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    close(fd);
    return FailedPreconditionError(
        StrCat("PIN file ", path, " is owned by uid ", st.st_uid, ", neither this user nor root"));
  }
  SecureBytes raw(kMaxPinFileSize);
  size_t used = 0;
  while (used < raw.size()) {
    const ssize_t n = read(fd, raw.data() + used, raw.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return FailedPreconditionError(StrCat("cannot read PIN file ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  close(fd);
  if (used == raw.size()) {
    return FailedPreconditionError(StrCat("PIN file ", path, " is larger than ", kMaxPinFileSize, " bytes"));
  }
  SecureBytes pin = Trimmed(raw.data(), used);
  if (pin.empty()) return FailedPreconditionError(StrCat("PIN file ", path, " is empty"));
  return pin;
}

StatusOr<std::optional<SecureBytes>> LoadPin(const std::optional<std::string>& pin_file) {
  if (pin_file) {
    StatusOr<SecureBytes> pin = ReadPinFile(*pin_file);
    if (!pin.ok()) return pin.status();
    return std::optional<SecureBytes>(std::move(*pin));
  }
  if (const char* env = std::getenv(kPinEnvVar); env != nullptr && env[0] != '\0') {
    return std::optional<SecureBytes>(Trimmed(reinterpret_cast<const uint8_t*>(env), std::strlen(env)));
  }
  return std::optional<SecureBytes>();
}

}  // namespace trousseau::hsm
