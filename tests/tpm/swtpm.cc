#include "tests/tpm/swtpm.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace trousseau::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/trousseau-tpm-XXXXXX";
  if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
}

std::unique_ptr<Swtpm> Swtpm::Start(const std::string& dir) {
  std::unique_ptr<Swtpm> tpm(new Swtpm());
  tpm->dir_ = dir;
  tpm->state_dir_ = dir + "/state";
  tpm->socket_ = dir + "/tpm.sock";
  ::mkdir(dir.c_str(), 0700);
  ::mkdir(tpm->state_dir_.c_str(), 0700);
  if (!tpm->Launch()) return nullptr;
  return tpm;
}

std::unique_ptr<Swtpm> Swtpm::StartManufactured(const std::string& dir, const std::string& ca_dir) {
  ::mkdir(dir.c_str(), 0700);
  ::mkdir((dir + "/state").c_str(), 0700);
  ::mkdir(ca_dir.c_str(), 0700);
  const std::string localca = dir + "/localca.conf", options = dir + "/localca.options", setup = dir + "/setup.conf";
  std::ofstream(localca) << "statedir = " << ca_dir << "\nsigningkey = " << ca_dir << "/signkey.pem\n"
                         << "issuercert = " << ca_dir << "/issuercert.pem\ncertserial = " << ca_dir << "/certserial\n";
  std::ofstream(options) << "--platform-manufacturer trousseau-tests\n--platform-version 1\n--platform-model swtpm\n";
  std::ofstream(setup) << "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = " << localca
                       << "\ncreate_certs_tool_options = " << options << "\n";
  const std::string command = "/usr/bin/swtpm_setup --tpm2 --tpmstate '" + dir + "/state' --create-ek-cert --config '" +
                              setup + "' --overwrite > '" + dir + "/swtpm_setup.log' 2>&1";
  if (std::system(command.c_str()) != 0) return nullptr;
  std::ofstream bundle(ca_dir + "/ca-bundle.pem");
  for (const char* pem : {"/issuercert.pem", "/swtpm-localca-rootca-cert.pem"}) {
    std::ifstream in(ca_dir + pem);
    bundle << in.rdbuf();
  }
  bundle.close();
  std::unique_ptr<Swtpm> tpm(new Swtpm());
  tpm->dir_ = dir;
  tpm->state_dir_ = dir + "/state";
  tpm->socket_ = dir + "/tpm.sock";
  if (!tpm->Launch()) return nullptr;
  return tpm;
}

bool Swtpm::Launch() {
  ::unlink(socket_.c_str());
  ::unlink((socket_ + ".ctrl").c_str());
  process_ = std::make_unique<Subprocess>(
      std::vector<std::string>{"/usr/bin/swtpm", "socket", "--tpm2", "--server", "type=unixio,path=" + socket_,
                               "--ctrl", "type=unixio,path=" + socket_ + ".ctrl", "--flags",
                               "startup-clear,not-need-init", "--tpmstate", "dir=" + state_dir_},
      dir_ + "/swtpm.log");
  if (!process_->started()) {
    process_.reset();
    return false;
  }
  // A socket file exists from bind() on, a moment before swtpm listens on it: only a connection proves
  // that a client may come. Probing the data socket takes swtpm's one client slot for an instant; the
  // next client waits in the backlog, it is not refused.
  const bool up = Eventually([&] { return UnixSocketAccepts(socket_ + ".ctrl") && UnixSocketAccepts(socket_); },
                             std::chrono::seconds(10));
  if (!up) process_.reset();
  return up;
}

void Swtpm::Kill() {
  if (!process_) return;
  process_->Signal(SIGKILL);
  process_->Wait(std::chrono::seconds(5));
  process_.reset();
}

void Swtpm::Pause() {
  if (process_) process_->Signal(SIGSTOP);
}

void Swtpm::Resume() {
  if (process_) process_->Signal(SIGCONT);
}

bool Swtpm::Restart() {
  Kill();
  return Launch();
}

bool Swtpm::Stop() {
  return std::system(("/usr/bin/swtpm_ioctl --unix '" + socket_ + ".ctrl' --stop >/dev/null 2>&1").c_str()) == 0;
}

std::string Swtpm::Log() const { return process_ ? process_->Log() : std::string(); }

Swtpm::~Swtpm() { Kill(); }

}  // namespace trousseau::testing
