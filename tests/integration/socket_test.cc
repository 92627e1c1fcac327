// The plugin's KMS socket, as an operator meets it: --listen into a directory that does not exist is
// refused (never created); the socket's chmod/chown cannot be redirected by a symlink swapped into
// its directory; a wedged process holding the path does not hang the start.
#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <cstring>
#include <thread>
#include <vector>

#include "tests/testing/softhsm_plugin_test.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;

constexpr gid_t kOtherGroup = 65534;  // nogroup

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
    }
    closedir(d);
  }
  return names;
}

class SocketTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
  }

  // The plugin listening on `socket` (each test puts it somewhere else).
  std::unique_ptr<Subprocess> StartPlugin(const std::string& socket, std::vector<std::string> extra = {}) {
    socket_ = socket;
    return SoftHsmPluginTest::StartPlugin(std::move(extra));
  }

  static bool Serving(const Subprocess& plugin) { return plugin.Log().find("serving KMS v2") != std::string::npos; }
};

TEST_F(SocketTest, AMissingSocketDirectoryIsRefusedNotCreated) {
  const std::string dir = token_->dir() + "/no-such-dir";
  auto plugin = StartPlugin(dir + "/kms.sock");
  const std::optional<int> code = plugin->Wait(30s);
  ASSERT_TRUE(code.has_value()) << plugin->Log();
  EXPECT_EQ(*code, 2) << plugin->Log();
  EXPECT_NE(plugin->Log().find("the directory " + dir + " does not exist"), std::string::npos) << plugin->Log();
  struct stat st {};
  EXPECT_NE(stat(dir.c_str(), &st), 0) << dir << " was created";
}

TEST_F(SocketTest, TheSocketGetsItsModeAndGroupAndNothingIsLeftBehind) {
  const std::string dir = token_->dir() + "/run";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  auto plugin =
      StartPlugin(dir + "/kms.sock", {"--socket-mode", "0660", "--socket-group", std::to_string(kOtherGroup)});
  ASSERT_TRUE(Eventually([&] { return Serving(*plugin) || plugin->Wait(0ms).has_value(); }, 10s)) << plugin->Log();
  ASSERT_TRUE(support::UnixSocketAccepts(dir + "/kms.sock")) << plugin->Log();
  struct stat st {};
  ASSERT_EQ(lstat((dir + "/kms.sock").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, kOtherGroup);
  // The private directory the socket was bound in is gone.
  EXPECT_EQ(Entries(dir), std::vector<std::string>{"kms.sock"});
}

// An attacker who can write the socket's directory replaces the new socket by a symlink to a file
// of theirs choosing the moment it appears. Before the fix the plugin's chmod/chown followed it.
TEST_F(SocketTest, ASymlinkSwappedInCannotRedirectChmodOrChown) {
  const std::string dir = token_->dir() + "/shared";
  ASSERT_EQ(mkdir(dir.c_str(), 0777), 0);
  ASSERT_EQ(chmod(dir.c_str(), 0777), 0);  // writable by everyone, as a careless /run/... could be
  const std::string victim = token_->dir() + "/victim";
  { std::ofstream(victim) << "not a socket\n"; }
  ASSERT_EQ(chmod(victim.c_str(), 0644), 0);
  struct stat before {};
  ASSERT_EQ(stat(victim.c_str(), &before), 0);

  const int watch = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  ASSERT_GE(watch, 0);
  ASSERT_GE(inotify_add_watch(watch, dir.c_str(), IN_CREATE | IN_MOVED_TO), 0);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread attacker([&] {
    alignas(inotify_event) char buf[4096];
    while (!stop.load()) {
      pollfd p{watch, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = read(watch, buf, sizeof buf);
      for (ssize_t off = 0; off < n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buf + off);
        off += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
        if (event->len == 0 || std::strcmp(event->name, "kms.sock") != 0) continue;
        // Once is enough: move the real socket aside and point its name at the victim.
        if (swaps.load() == 0 && rename((dir + "/kms.sock").c_str(), (dir + "/kms.sock.real").c_str()) == 0 &&
            symlink(victim.c_str(), (dir + "/kms.sock").c_str()) == 0) {
          swaps.fetch_add(1);
        }
      }
    }
  });
  auto plugin =
      StartPlugin(dir + "/kms.sock", {"--socket-mode", "0660", "--socket-group", std::to_string(kOtherGroup)});
  const bool up = Eventually([&] { return Serving(*plugin) || plugin->Wait(0ms).has_value(); }, 10s);
  stop.store(true);
  attacker.join();
  close(watch);
  ASSERT_TRUE(up) << plugin->Log();
  ASSERT_EQ(swaps.load(), 1) << "the socket never appeared under its name\n" << plugin->Log();

  struct stat after {};
  ASSERT_EQ(stat(victim.c_str(), &after), 0);
  EXPECT_EQ(after.st_mode & 07777, before.st_mode & 07777) << "the plugin's chmod followed the symlink";
  EXPECT_EQ(after.st_gid, before.st_gid) << "the plugin's chown followed the symlink";
  // The socket the attacker moved aside had its permissions set before it ever had its name.
  struct stat real {};
  ASSERT_EQ(lstat((dir + "/kms.sock.real").c_str(), &real), 0);
  EXPECT_TRUE(S_ISSOCK(real.st_mode));
  EXPECT_EQ(real.st_mode & 07777, 0660u);
  EXPECT_EQ(real.st_gid, kOtherGroup);
}

// A process that holds the socket path but never accepts (stopped, wedged) fills its backlog; a
// blocking connect to it never returns. The plugin must still decide, and refuse to take the path.
TEST_F(SocketTest, AWedgedListenerOnThePathIsRefusedPromptly) {
  const std::string dir = token_->dir() + "/run";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const std::string path = dir + "/kms.sock";
  const int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 0), 0);
  std::vector<int> queued;  // fill the backlog until the kernel refuses more
  for (int i = 0; i < 64; ++i) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
      close(fd);
      break;
    }
    queued.push_back(fd);
  }
  ASSERT_FALSE(queued.empty());

  auto plugin = StartPlugin(path);
  const std::optional<int> code = plugin->Wait(30s);
  for (int fd : queued) close(fd);
  close(listener);  // releases a start still stuck in connect (the old code)
  ASSERT_TRUE(code.has_value()) << "the plugin hung on the wedged socket\n" << plugin->Log();
  EXPECT_EQ(*code, 2) << plugin->Log();
  EXPECT_NE(plugin->Log().find("another process is serving on " + path), std::string::npos) << plugin->Log();
}

}  // namespace
}  // namespace trousseau
