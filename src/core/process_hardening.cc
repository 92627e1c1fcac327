#include "core/process_hardening.h"

#include <sys/prctl.h>
#include <sys/resource.h>

namespace trousseau {

std::string HardeningResult::failed_step() const {
  if (!core_dumps_off) return "setrlimit RLIMIT_CORE";
  if (!undumpable) return "prctl PR_SET_DUMPABLE";
  return "";
}

HardeningResult HardenProcess() {
  HardeningResult result;
  const rlimit no_core{0, 0};
  result.core_dumps_off = setrlimit(RLIMIT_CORE, &no_core) == 0;
  result.undumpable = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
  return result;
}

}  // namespace trousseau
