#include "token_setup.h"

#include <cstdlib>

#include "core/status.h"
#include "report.h"
#include "tools/support/fault_shim_control.h"

namespace trousseau::bench {

std::unique_ptr<support::SoftHsmToken> CreateTokenWithKek(const std::string& name) {
  std::unique_ptr<support::SoftHsmToken> token = support::SoftHsmToken::Create(name);
  if (!token) {
    Progress("cannot create a SoftHSM token (is softhsm2-util installed?)");
    return nullptr;
  }
  if (Status s = token->GenerateKek(1, "kek"); !s.ok()) {
    Progress("GenerateKek: %s", s.ToString().c_str());
    return nullptr;
  }
  return token;
}

void RouteThroughShim(const std::string& module, const std::string& control, const std::string& words) {
  support::WriteShimControl(control, words);
  setenv("TROUSSEAU_FAULT_SHIM_MODULE", module.c_str(), 1);
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
}

void StopRoutingThroughShim() {
  unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
}

}  // namespace trousseau::bench
