#include "tests/tpm/pty_tpm.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace trousseau::testing {
namespace {

constexpr size_t kHeaderSize = 10;  // tag (2), size (4), code (4)

uint32_t SizeFromHeader(const std::string& bytes) {
  uint32_t size = 0;
  for (int i = 2; i < 6; ++i) size = (size << 8) | static_cast<uint8_t>(bytes[i]);
  return size;
}

bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadExactly(int fd, char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::read(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

std::unique_ptr<PtyTpm> PtyTpm::Start(const std::string& swtpm_socket) {
  std::unique_ptr<PtyTpm> pty(new PtyTpm());
  pty->swtpm_socket_ = swtpm_socket;
  pty->master_ = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (pty->master_ < 0 || ::grantpt(pty->master_) != 0 || ::unlockpt(pty->master_) != 0) return nullptr;
  const char* name = ::ptsname(pty->master_);
  if (name == nullptr) return nullptr;
  pty->device_path_ = name;
  pty->device_keepalive_ = ::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (pty->device_keepalive_ < 0) return nullptr;
  // Binary TPM frames must pass untouched: no echo, no line editing, no CR/LF translation, no
  // flow-control bytes.
  struct termios raw {};
  if (::tcgetattr(pty->device_keepalive_, &raw) != 0) return nullptr;
  ::cfmakeraw(&raw);
  if (::tcsetattr(pty->device_keepalive_, TCSANOW, &raw) != 0) return nullptr;
  pty->relay_ = std::thread([p = pty.get()] { p->RelayLoop(); });
  return pty;
}

PtyTpm::~PtyTpm() {
  stop_ = true;
  if (relay_.joinable()) relay_.join();
  if (device_keepalive_ >= 0) ::close(device_keepalive_);
  if (master_ >= 0) ::close(master_);
}

void PtyTpm::RelayLoop() {
  std::string pending;
  char buffer[4096];
  while (!stop_) {
    struct pollfd fd {
      master_, POLLIN, 0
    };
    if (::poll(&fd, 1, 50) <= 0 || !(fd.revents & POLLIN)) continue;
    const ssize_t n = ::read(master_, buffer, sizeof buffer);
    if (n <= 0) continue;
    pending.append(buffer, static_cast<size_t>(n));
    while (pending.size() >= kHeaderSize && pending.size() >= SizeFromHeader(pending)) {
      const size_t size = std::max<size_t>(SizeFromHeader(pending), kHeaderSize);
      const std::string command = pending.substr(0, size);
      pending.erase(0, size);
      if (hang_) {
        ++swallowed_;
        continue;
      }
      // The TCTI sends a command only after reading the previous response, unless it gave up on it
      // (its deadline passed, the context was dropped). Such a late response would still sit in the
      // terminal, unlike on /dev/tpmrm0, where it dies with its file: the next context would read it
      // as its own. Drop it.
      ::tcflush(device_keepalive_, TCIFLUSH);
      const std::string response = AskSwtpm(command);
      // One write: the device TCTI reads the 10-byte header and the rest in two reads and treats a
      // short first read as an I/O error.
      if (!response.empty() && WriteAll(master_, response.data(), response.size())) ++relayed_;
    }
  }
}

std::string PtyTpm::AskSwtpm(const std::string& command) const {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, swtpm_socket_.c_str(), sizeof addr.sun_path - 1);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      WriteAll(fd, command.data(), command.size())) {
    std::string header(kHeaderSize, '\0');
    if (ReadExactly(fd, header.data(), kHeaderSize) && SizeFromHeader(header) >= kHeaderSize) {
      std::string body(SizeFromHeader(header) - kHeaderSize, '\0');
      if (ReadExactly(fd, body.data(), body.size())) response = header + body;
    }
  }
  ::close(fd);
  return response;
}

}  // namespace trousseau::testing
