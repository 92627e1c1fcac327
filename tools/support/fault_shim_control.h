// Switches the fault-injecting PKCS#11 shim (tests/fault_shim): writes `words` ("up", "down",
// "crypto_fail", "delay_us=N") to the control file as the shim wants it, by rename, so it never reads
// a half-written file and notices the new inode on its next call.
#pragma once

#include <cstdio>
#include <fstream>
#include <string>

namespace trousseau::support {

inline void WriteShimControl(const std::string& control_file, const std::string& words) {
  const std::string tmp = control_file + ".tmp";
  std::ofstream(tmp) << words << "\n";
  std::rename(tmp.c_str(), control_file.c_str());
}

}  // namespace trousseau::support
