// The setup every trousseau process that holds secrets (seeds, plaintext, PINs) makes first thing:
// no core dump may carry them to disk, and no other process of the same user may read them through
// ptrace or /proc/PID/mem.
#pragma once

#include <string>

namespace trousseau {

struct HardeningResult {
  bool core_dumps_off = false;  // RLIMIT_CORE is 0 (soft and hard)
  bool undumpable = false;      // PR_SET_DUMPABLE is 0: no ptrace attach, /proc/PID/mem and environ root-only
  bool ok() const { return core_dumps_off && undumpable; }
  // Which step failed ("setrlimit RLIMIT_CORE", "prctl PR_SET_DUMPABLE"); empty when ok().
  std::string failed_step() const;
};

// Sets RLIMIT_CORE to 0 and PR_SET_DUMPABLE to 0 for this process. Call it before the first secret
// is read and before any thread is started. The caller decides how to report a failure.
HardeningResult HardenProcess();

}  // namespace trousseau
