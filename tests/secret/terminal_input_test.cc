// tools/secret/secret_input: a value typed on a (pseudo-)terminal is read with echo off, the terminal's
// settings come back after the read and after SIGINT, and nothing typed is echoed.
#include "tools/secret/secret_input.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

namespace trousseau::secret {
namespace {

struct Pty {
  int master = -1;
  int slave = -1;
  Pty() { EXPECT_EQ(openpty(&master, &slave, nullptr, nullptr, nullptr), 0); }
  ~Pty() {
    if (master >= 0) close(master);
    if (slave >= 0) close(slave);
  }
  bool Echo() const {
    struct termios t {};
    tcgetattr(slave, &t);
    return (t.c_lflag & ECHO) != 0;
  }
  bool WaitEcho(bool on) const {
    for (int i = 0; i < 500; ++i) {
      if (Echo() == on) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // What the terminal showed (everything written to the slave side, echo included).
  std::string Drain() const {
    std::string out;
    char buffer[256];
    for (;;) {
      struct pollfd p {
        master, POLLIN, 0
      };
      if (poll(&p, 1, 100) <= 0) break;
      const ssize_t n = read(master, buffer, sizeof buffer);
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }
};

TEST(TerminalInputTest, ReadsALineWithEchoOffAndRestoresTheTerminal) {
  Pty pty;
  ASSERT_TRUE(pty.Echo());
  StatusOr<SecureBytes> value = InvalidArgumentError("not read");
  std::thread reader([&] { value = ReadFromTerminal(pty.slave, "value: ", pty.slave); });
  ASSERT_TRUE(pty.WaitEcho(false)) << "echo never went off";
  const std::string typed = "s3cr3t-typed\n";
  ASSERT_EQ(write(pty.master, typed.data(), typed.size()), static_cast<ssize_t>(typed.size()));
  reader.join();
  ASSERT_TRUE(value.ok()) << value.status().message();
  EXPECT_EQ(value->view(), "s3cr3t-typed");
  EXPECT_TRUE(pty.Echo()) << "echo not restored";
  const std::string shown = pty.Drain();
  EXPECT_NE(shown.find("value: "), std::string::npos);
  EXPECT_EQ(shown.find("s3cr3t"), std::string::npos) << "the value was echoed: " << shown;
}

TEST(TerminalInputTest, AnEmptyLineIsRefused) {
  Pty pty;
  StatusOr<SecureBytes> value = SecureBytes();
  std::thread reader([&] { value = ReadFromTerminal(pty.slave, "", pty.slave); });
  ASSERT_TRUE(pty.WaitEcho(false));
  ASSERT_EQ(write(pty.master, "\n", 1), 1);
  reader.join();
  EXPECT_FALSE(value.ok());
  EXPECT_TRUE(pty.Echo());
}

TEST(TerminalInputTest, SigintRestoresEchoBeforeTheProcessDies) {
  Pty pty;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    (void)ReadFromTerminal(pty.slave, "", pty.slave);
    _exit(0);  // not reached: SIGINT comes first
  }
  ASSERT_TRUE(pty.WaitEcho(false)) << "echo never went off";
  kill(child, SIGINT);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "status " << status;
  EXPECT_TRUE(pty.Echo()) << "SIGINT left the terminal without echo";
}

TEST(TerminalInputTest, NotATerminalIsRefused) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  StatusOr<SecureBytes> value = ReadFromTerminal(pipe_fds[0], "", pipe_fds[1]);
  EXPECT_EQ(value.status().code(), StatusCode::kFailedPrecondition);
  ASSERT_EQ(write(pipe_fds[1], "from a pipe\n", 12), 12);
  close(pipe_fds[1]);
  StatusOr<SecureBytes> all = ReadToEnd(pipe_fds[0]);
  close(pipe_fds[0]);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->view(), "from a pipe\n");  // every byte, the newline too
}

}  // namespace
}  // namespace trousseau::secret
