// A TPM character device for the device TCTI ("device:/dev/pts/N") that can stop answering.
//
// swtpm's own TCTI (and mssim's) ignore the TCTI timeout and block in recv(), so a hung swtpm can
// only show the backend's worker deadline. The device TCTI — the one used with /dev/tpmrm0 in
// production — polls with the timeout. This gives it a device to talk to: a pseudo-terminal in raw
// mode whose other end relays each TPM command to a real swtpm and writes the answer back, and
// which can be told to swallow commands, as a chip or a driver that stopped answering would.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

namespace trousseau::testing {

class PtyTpm {
 public:
  // Relays to the swtpm listening (raw TPM commands, "--server type=unixio") on `swtpm_socket`.
  static std::unique_ptr<PtyTpm> Start(const std::string& swtpm_socket);
  ~PtyTpm();
  PtyTpm(const PtyTpm&) = delete;
  PtyTpm& operator=(const PtyTpm&) = delete;

  std::string Tcti() const { return "device:" + device_path_; }
  // From now on every command is read and never answered.
  void Hang() { hang_ = true; }
  void Release() { hang_ = false; }
  int commands_relayed() const { return relayed_.load(); }
  int commands_swallowed() const { return swallowed_.load(); }

 private:
  PtyTpm() = default;
  void RelayLoop();
  // Sends one command to swtpm and returns its response ("" if swtpm could not be reached).
  std::string AskSwtpm(const std::string& command) const;

  std::string swtpm_socket_;
  std::string device_path_;
  int master_ = -1;
  int device_keepalive_ = -1;  // keeps the terminal open (and raw) between the TCTI's opens
  std::atomic<bool> hang_{false};
  std::atomic<bool> stop_{false};
  std::atomic<int> relayed_{0};
  std::atomic<int> swallowed_{0};
  std::thread relay_;
};

}  // namespace trousseau::testing
