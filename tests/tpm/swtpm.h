// A real software TPM for tests: `swtpm socket --tpm2` on unix sockets in a private temp folder,
// started with posix_spawn, killed at destruction. Its state directory can be kept and reused by a
// later instance (same TPM after a restart) or be fresh (a different TPM).
#pragma once

#include <memory>
#include <string>

#include "tools/support/subprocess.h"

namespace trousseau::testing {

using support::Eventually;
using support::Subprocess;
using support::UnixSocketAccepts;

class Swtpm {
 public:
  // Starts a TPM with a fresh state directory under `dir` (created if missing); null on failure.
  static std::unique_ptr<Swtpm> Start(const std::string& dir);
  // The same, manufactured first as a TPM maker would: swtpm_setup creates its EK and an EK certificate
  // in NV, signed by swtpm_localca's CA kept in `ca_dir` (made there on first use, shared by every TPM
  // given the same `ca_dir`); the CA's certificates are then in ca_dir/ca-bundle.pem.
  static std::unique_ptr<Swtpm> StartManufactured(const std::string& dir, const std::string& ca_dir);
  ~Swtpm();

  // "swtpm:path=<dir>/tpm.sock" (the control socket is <dir>/tpm.sock.ctrl).
  std::string Tcti() const { return "swtpm:path=" + socket_; }
  const std::string& state_dir() const { return state_dir_; }
  // SIGKILL, like a crash; the state directory stays.
  void Kill();
  // Starts again on the same state directory (the same TPM). False if it did not come up.
  bool Restart();
  // SIGSTOP / SIGCONT: a TPM that hangs mid-command.
  void Pause();
  void Resume();
  // Through the control channel (swtpm_ioctl --stop): the link stays up but the TPM answers every
  // command with TPM_RC_FAILURE, like a chip in failure mode, until Restart. False if it failed.
  bool Stop();
  bool running() const { return process_ != nullptr; }
  std::string Log() const;

 private:
  Swtpm() = default;
  bool Launch();

  std::string dir_;
  std::string state_dir_;
  std::string socket_;
  std::unique_ptr<Subprocess> process_;
};

// A fresh temporary directory (mkdtemp), removed recursively at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace trousseau::testing
