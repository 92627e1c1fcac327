// Switches the fault-injecting PKCS#11 shim (tests/fault_shim): writes `words` ("up", "down",
// "crypto_fail", "delay_us=N", "hang", "device_iv") to the control file as the shim wants it, by
// rename, so it never reads a half-written file and notices the new inode on its next call.
// "device_iv" makes it a FIPS-mode HSM that generates GCM IVs itself: C_EncryptInit with CKM_AES_GCM
// then fails CKR_MECHANISM_PARAM_INVALID unless CK_GCM_PARAMS.pIv points to 12 zero bytes
// (ulIvLen 12), which the shim fills with the random, never all-zero IV the device used; decryption
// takes the caller's IV as usual. Like "crypto_fail", a later "up"/"down" does not clear it; the
// full protocol is in the header comment of tests/fault_shim/fault_shim.c.
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
