#include "hsm/pin_source.h"
#include "core/status.h"
#include "core/strings.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

extern char** environ;

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

// The PIN TROUSSEAU_HSM_PIN held, kept for the life of the process. Its page is locked so it is not
// written to swap (best effort: RLIMIT_MEMLOCK may forbid it); a replaced value is wiped.
class EnvironmentPin {
 public:
  static EnvironmentPin& Instance() {
    static EnvironmentPin* pin = new EnvironmentPin;  // never destroyed: threads may log in at exit
    return *pin;
  }

  // Takes the variable out of the environment into the kept buffer, if it is set.
  void CaptureLocked() {
    std::vector<char*> entries;
    const size_t name_size = std::strlen(kPinEnvVar);
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
      if (std::strncmp(*entry, kPinEnvVar, name_size) == 0 && (*entry)[name_size] == '=') entries.push_back(*entry);
    }
    if (entries.empty()) return;
    // getenv's answer is the first entry.
    const char* value = entries.front() + name_size + 1;
    if (value[0] != '\0') Keep(Trimmed(reinterpret_cast<const uint8_t*>(value), std::strlen(value)));
    // unsetenv only drops the pointers; the bytes stay where they were (for the initial environment,
    // the area /proc/PID/environ shows), so wipe every entry, name included, after dropping it.
    unsetenv(kPinEnvVar);
    for (char* entry : entries) WipeMemory(entry, std::strlen(entry));
  }

  std::optional<SecureBytes> CopyLocked() const {
    if (!pin_) return std::nullopt;
    return SecureBytes::CopyOf(pin_->view());
  }

  std::mutex mu;

 private:
  void Keep(SecureBytes value) {
    if (pin_ && !pin_->empty()) munlock(pin_->data(), pin_->size());
    pin_ = std::move(value);
    if (!pin_->empty()) mlock(pin_->data(), pin_->size());
  }

  std::optional<SecureBytes> pin_;
};

}  // namespace

void CaptureEnvironmentPin() {
  EnvironmentPin& kept = EnvironmentPin::Instance();
  std::lock_guard lock(kept.mu);
  kept.CaptureLocked();
}

StatusOr<SecureBytes> ReadSecretFile(const std::string& path, std::string_view what) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return FailedPreconditionError(StrCat("cannot open ", what, " ", path, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return FailedPreconditionError(StrCat(what, " ", path, " is not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPreconditionError(
        StrCat(what, " ", path, " has mode ", mode, ": group and others must have no access (chmod 600 ", path, ")"));
  }
  if (st.st_uid != geteuid() && st.st_uid != 0) {
    close(fd);
    return FailedPreconditionError(
        StrCat(what, " ", path, " is owned by uid ", st.st_uid, ", neither this user nor root"));
  }
  SecureBytes raw(kMaxPinFileSize);
  size_t used = 0;
  while (used < raw.size()) {
    const ssize_t n = read(fd, raw.data() + used, raw.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return FailedPreconditionError(StrCat("cannot read ", what, " ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  close(fd);
  if (used == raw.size()) {
    return FailedPreconditionError(StrCat(what, " ", path, " is larger than ", kMaxPinFileSize, " bytes"));
  }
  SecureBytes pin = Trimmed(raw.data(), used);
  if (pin.empty()) return FailedPreconditionError(StrCat(what, " ", path, " is empty"));
  return pin;
}

StatusOr<SecureBytes> ReadPinFile(const std::string& path) { return ReadSecretFile(path, "PIN file"); }

StatusOr<std::optional<SecureBytes>> LoadPin(const std::optional<std::string>& pin_file) {
  if (pin_file) {
    StatusOr<SecureBytes> pin = ReadPinFile(*pin_file);
    if (!pin.ok()) return pin.status();
    return std::optional<SecureBytes>(std::move(*pin));
  }
  EnvironmentPin& kept = EnvironmentPin::Instance();
  std::lock_guard lock(kept.mu);
  kept.CaptureLocked();
  return kept.CopyLocked();
}

}  // namespace trousseau::hsm
