#include "tools/secret/secret_input.h"

#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/strings.h"

namespace trousseau::secret {
namespace {

// The terminal to restore from a signal handler: plain globals, written before the handlers are set.
int g_tty_fd = -1;
struct termios g_saved {};
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

void RestoreAndReraise(int sig) {
  if (g_tty_fd >= 0) tcsetattr(g_tty_fd, TCSAFLUSH, &g_saved);
  static const char kNewline = '\n';
  (void)!write(STDERR_FILENO, &kNewline, 1);
  signal(sig, SIG_DFL);
  raise(sig);
}

// Echo off for the life of this object; the old settings and signal handlers back on destruction.
class EchoOff {
 public:
  explicit EchoOff(int fd) : fd_(fd) {}
  Status Begin() {
    if (tcgetattr(fd_, &g_saved) != 0) return FailedPreconditionError(StrCat("not a terminal: ", std::strerror(errno)));
    g_tty_fd = fd_;
    struct sigaction action {};
    action.sa_handler = RestoreAndReraise;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &action, &old_[i]);
    struct termios quiet = g_saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOE | ECHOK);
    quiet.c_lflag |= ECHONL | ICANON | ISIG;
    if (tcsetattr(fd_, TCSAFLUSH, &quiet) != 0) {
      End();
      return FailedPreconditionError(StrCat("cannot turn the terminal's echo off: ", std::strerror(errno)));
    }
    active_ = true;
    return OkStatus();
  }
  ~EchoOff() { End(); }
  EchoOff(const EchoOff&) = delete;
  EchoOff& operator=(const EchoOff&) = delete;

 private:
  void End() {
    if (g_tty_fd < 0) return;
    if (active_) tcsetattr(fd_, TCSAFLUSH, &g_saved);
    for (size_t i = 0; i < std::size(kSignals); ++i) sigaction(kSignals[i], &old_[i], nullptr);
    g_tty_fd = -1;
    active_ = false;
  }
  int fd_;
  bool active_ = false;
  struct sigaction old_[std::size(kSignals)]{};
};

}  // namespace

StatusOr<SecureBytes> ReadFromTerminal(int fd, std::string_view prompt, int prompt_fd) {
  if (!isatty(fd)) return FailedPreconditionError("not a terminal");
  EchoOff echo_off(fd);
  if (Status s = echo_off.Begin(); !s.ok()) return s;
  if (!prompt.empty()) (void)!write(prompt_fd, prompt.data(), prompt.size());
  SecureBytes line(kMaxValueBytes);
  size_t size = 0;
  for (;;) {
    char c = 0;
    const ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError(StrCat("cannot read the terminal: ", std::strerror(errno)));
    if (n == 0 || c == '\n') break;
    if (size == line.size()) return InvalidArgumentError("the value is longer than 1 MiB");
    line.data()[size++] = static_cast<uint8_t>(c);
  }
  if (size > 0 && line.data()[size - 1] == '\r') --size;
  if (size == 0) return InvalidArgumentError("empty value: nothing was typed");
  line.Truncate(size);
  return line;
}

StatusOr<SecureBytes> ReadToEnd(int fd) {
  SecureBytes buffer(kMaxValueBytes + 1);
  size_t size = 0;
  for (;;) {
    const ssize_t n = read(fd, buffer.data() + size, buffer.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError(StrCat("cannot read file descriptor ", fd, ": ", std::strerror(errno)));
    if (n == 0) break;
    size += static_cast<size_t>(n);
    if (size > kMaxValueBytes) return InvalidArgumentError("the value is longer than 1 MiB (a Secret's limit)");
  }
  if (size == 0) return InvalidArgumentError("empty value: nothing came on the input");
  buffer.Truncate(size);
  return buffer;
}

}  // namespace trousseau::secret
