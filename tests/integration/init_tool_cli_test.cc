// trousseau-hsm-init as a process: PIN rules, usage errors and --help, and its own hardening (no core, not
// ptrace-able, no PIN left in its environment).
#include <gtest/gtest.h>

#include "tests/integration/init_tool_test.h"

namespace trousseau::init_tool {
namespace {

// ---- PINs, usage errors ----

TEST_F(InitToolTest, PinRulesAreThePluginsAndNoPinIsEverPrinted) {
  // TROUSSEAU_HSM_PIN instead of a pin-source.
  setenv("TROUSSEAU_HSM_PIN", support::kTestUserPin, 1);
  ToolResult from_env = Run({"key", "generate", "--pkcs11-uri",
                             "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule});
  unsetenv("TROUSSEAU_HSM_PIN");
  EXPECT_EQ(from_env.code, 0) << from_env.all();

  // No PIN at all.
  ToolResult none = Run({"key", "list", "--pkcs11-uri",
                         "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule});
  EXPECT_EQ(none.code, 2) << none.all();
  EXPECT_NE(none.err.find("TROUSSEAU_HSM_PIN"), std::string::npos) << none.err;

  // A pin-value in the URI, on a command that would open the token.
  ToolResult pin_value = Run({"key", "list", "--pkcs11-uri", uri_ + "&pin-value=" + support::kTestUserPin});
  EXPECT_EQ(pin_value.code, 2) << pin_value.all();

  // A PIN file others can read.
  chmod(token_->pin_file().c_str(), 0644);
  ToolResult open_file = Run({"key", "list", "--pkcs11-uri", uri_});
  chmod(token_->pin_file().c_str(), 0600);
  EXPECT_EQ(open_file.code, 2) << open_file.all();
  EXPECT_NE(open_file.err.find("chmod 600"), std::string::npos) << open_file.err;

  // A PIN the token rejects (a file holding the SO PIN).
  const std::string wrong = token_->dir() + "/wrong.pin";
  WriteFile(wrong, support::kTestSoPin, 0600);
  ToolResult rejected = Run({"key", "list", "--pkcs11-uri",
                             "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule +
                                 "&pin-source=file:" + wrong});
  EXPECT_EQ(rejected.code, 1) << rejected.all();

  // A PIN typed as an argument is not echoed.
  ToolResult stray = Run({"key", "list", "--pkcs11-uri", uri_, support::kTestUserPin});
  EXPECT_EQ(stray.code, 2) << stray.all();

  // Every other command, for the TearDown scan.
  EXPECT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_, "--json"}).code, 0);
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_, "--json"}).code, 0);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1"}).code, 1);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"}).code, 0);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_}).code, 0);
}

TEST_F(InitToolTest, UsageErrorsExitTwoAndEveryCommandHasHelp) {
  EXPECT_EQ(Run({}).code, 2);
  EXPECT_EQ(Run({"key"}).code, 2);
  EXPECT_EQ(Run({"key", "list"}).code, 2);  // no --pkcs11-uri
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_, "--pin", "x"}).code, 2);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", "not a uri"}).code, 2);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_}).code, 2);  // no --version
  // A mistyped command is named, with the nearest one; a word unlike any command is not echoed.
  ToolResult typo = Run({"key", "lst", "--pkcs11-uri", uri_});
  EXPECT_EQ(typo.code, 2);
  EXPECT_NE(typo.err.find("unknown command 'lst' for 'trousseau-hsm-init key'; did you mean 'list'?"),
            std::string::npos)
      << typo.err;
  ToolResult unlike = Run({"hunter2-my-password"});
  EXPECT_EQ(unlike.code, 2);
  EXPECT_EQ(unlike.all().find("hunter2"), std::string::npos) << unlike.all();
  EXPECT_NE(unlike.err.find("the commands are: token, key"), std::string::npos) << unlike.err;
  ToolResult version = Run({"--version"});
  EXPECT_EQ(version.code, 0) << version.all();
  EXPECT_EQ(version.out.rfind("trousseau-hsm-init ", 0), 0u) << version.out;
  for (std::vector<std::string> command : std::vector<std::vector<std::string>>{{},
                                                                                {"token", "init"},
                                                                                {"key", "generate"},
                                                                                {"key", "rotate"},
                                                                                {"key", "list"},
                                                                                {"key", "retire"},
                                                                                {"selftest"},
                                                                                {"config"}}) {
    command.push_back("--help");
    ToolResult help = Run(command);
    EXPECT_EQ(help.code, 0) << help.all();
    EXPECT_NE(help.out.find("Usage:"), std::string::npos) << help.out;
  }
}

// ---- the tool's own process: no core, not ptrace-able, no PIN left in its environment ----

// Starts `argv` as user nobody (65534) with `env`, stdin from `stdin_fd`, output discarded. The files
// under /proc/PID of an unprivileged user's process (not the directory itself) belong to that user
// unless the process made itself non-dumpable: then they belong to root (proc(5), PR_SET_DUMPABLE).
pid_t SpawnAsNobody(const std::vector<std::string>& argv, const std::vector<std::string>& env, int stdin_fd) {
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(stdin_fd, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(126);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// True once `pid` runs `binary` and its main thread waits in kernel function `wchan` (e.g. an open of
// a FIFO nobody writes: "wait_for_partner"), which the dynamic loader's own opens never do.
bool BlockedIn(pid_t pid, const std::string& binary, const std::string& wchan) {
  char exe[PATH_MAX] = {};
  const std::string proc = "/proc/" + std::to_string(pid);
  char resolved[PATH_MAX] = {};
  if (readlink((proc + "/exe").c_str(), exe, sizeof exe - 1) <= 0 || realpath(binary.c_str(), resolved) == nullptr ||
      std::string(exe) != resolved) {
    return false;
  }
  return ReadFile(proc + "/wchan").find(wchan) != std::string::npos;
}

std::string CoreLimit(pid_t pid) {
  std::istringstream limits(ReadFile("/proc/" + std::to_string(pid) + "/limits"));
  for (std::string line; std::getline(limits, line);) {
    if (line.rfind("Max core file size", 0) == 0) {
      std::istringstream fields(line.substr(sizeof("Max core file size") - 1));
      std::string soft, hard;
      fields >> soft >> hard;
      return soft + " " + hard;
    }
  }
  return "";
}

TEST_F(InitToolTest, TheToolCannotBeTracedDumpsNoCoreAndDropsThePinVariable) {
  ASSERT_EQ(geteuid(), 0u) << "this test starts the tool as another user";
  char dir_template[] = "/tmp/thsm-fifo-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(chmod(dir.c_str(), 0755), 0);
  const std::string fifo = dir + "/so.pin";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0666), 0);
  ASSERT_EQ(chmod(fifo.c_str(), 0666), 0);
  // `token init` opens its SO PIN file first: a FIFO nobody writes holds it there, after main's setup.
  const pid_t pid = SpawnAsNobody({TOOL_PATH, "token", "init", "--module", support::kSoftHsmModule, "--label", "x",
                                   "--so-pin-file", fifo, "--pin-file", fifo},
                                  {std::string("TROUSSEAU_HSM_PIN=") + support::kTestUserPin, "PATH=/usr/bin:/bin"}, 0);
  ASSERT_GT(pid, 0);
  const bool blocked = Eventually([&] { return BlockedIn(pid, TOOL_PATH, "wait_for_partner"); }, 10s);
  struct stat proc {};
  const int stat_rc = stat(("/proc/" + std::to_string(pid) + "/environ").c_str(), &proc);
  const std::string environ_text = ReadFile("/proc/" + std::to_string(pid) + "/environ");
  const std::string core = CoreLimit(pid);
  // Let it go: a writer unblocks the open, and the FIFO is refused as a PIN file.
  const int writer = open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
  if (writer >= 0) close(writer);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  unlink(fifo.c_str());
  rmdir(dir.c_str());

  ASSERT_TRUE(blocked) << "the tool never blocked on its PIN file";
  ASSERT_EQ(stat_rc, 0);
  EXPECT_EQ(proc.st_uid, 0u) << "/proc/PID/environ of the tool belongs to its user: it is dumpable (ptrace-able)";
  EXPECT_EQ(core, "0 0");
  EXPECT_NE(environ_text.find("PATH=/usr/bin:/bin"), std::string::npos) << "not the tool's environment";
  EXPECT_EQ(environ_text.find("TROUSSEAU_HSM_PIN"), std::string::npos);
  EXPECT_EQ(environ_text.find(support::kTestUserPin), std::string::npos);
}

}  // namespace
}  // namespace trousseau::init_tool
