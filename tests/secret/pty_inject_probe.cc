// For ci/e2e: `trousseauctl secret inject` on a real pseudo-terminal, as an operator types. Runs the command
// given in argv with the pty as its controlling terminal (stdin, stdout, stderr), waits until the terminal's
// echo is off, types the value (read from this probe's stdin, so it is in no argv), and checks that the
// command succeeded, that the value never appeared on the terminal, and that echo is back on afterwards.
// Prints what the terminal showed; exit 0 when all of it held.
// Usage: printf '%s' VALUE | secret_pty_inject_probe trousseauctl secret inject NAME --key K ...
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <pty.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>

namespace {

bool EchoOn(int fd) {
  struct termios t {};
  tcgetattr(fd, &t);
  return (t.c_lflag & ECHO) != 0;
}

void Drain(int master, std::string& shown, int timeout_ms) {
  char buffer[512];
  for (;;) {
    struct pollfd p {
      master, POLLIN, 0
    };
    if (poll(&p, 1, timeout_ms) <= 0) return;
    const ssize_t n = read(master, buffer, sizeof buffer);
    if (n <= 0) return;
    shown.append(buffer, static_cast<size_t>(n));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: secret_pty_inject_probe COMMAND ARGS... (the value on stdin)\n";
    return 2;
  }
  const std::string value(std::istreambuf_iterator<char>(std::cin), {});
  if (value.empty()) return 2;
  int master = -1, slave = -1;
  if (openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) return 2;
  const pid_t child = fork();
  if (child < 0) return 2;
  if (child == 0) {
    setsid();
    ioctl(slave, TIOCSCTTY, 0);
    dup2(slave, 0);
    dup2(slave, 1);
    dup2(slave, 2);
    close(master);
    if (slave > 2) close(slave);
    execv(argv[1], argv + 1);
    _exit(127);
  }
  std::string shown;
  bool echo_went_off = false;
  for (int i = 0; i < 3000 && !echo_went_off; ++i) {  // up to 30 s (the tool reads the Secret first)
    Drain(master, shown, 0);
    echo_went_off = !EchoOn(slave);
    if (!echo_went_off) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (echo_went_off) {
    const std::string typed = value + "\n";
    if (write(master, typed.data(), typed.size()) != static_cast<ssize_t>(typed.size())) return 2;
  }
  int status = 0;
  while (waitpid(child, &status, WNOHANG) == 0) Drain(master, shown, 50);
  Drain(master, shown, 100);
  std::cout << shown;
  bool ok = true;
  if (!echo_went_off) {
    std::cerr << "probe: the terminal's echo never went off\n";
    ok = false;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::cerr << "probe: the command failed (status " << status << ")\n";
    ok = false;
  }
  if (shown.find(value) != std::string::npos) {
    std::cerr << "probe: the value appeared on the terminal\n";
    ok = false;
  }
  if (!EchoOn(slave)) {
    std::cerr << "probe: echo is still off after the command\n";
    ok = false;
  }
  return ok ? 0 : 1;
}
