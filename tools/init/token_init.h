// token init with the module's C_Initialize string (--module-init-reserved), for modules that need one.
#pragma once

#include <optional>
#include <string>

#include "tools/init/init_tool.h"

namespace trousseau::init {

// TokenInit (init_tool.h) for a module that needs CK_C_INITIALIZE_ARGS.pReserved (NSS softoken's
// "configdir='sql:DIR' ..."): the string the other commands take as the URI's x-init-reserved.
// Kept apart from TokenInitOptions only because init_tool.h has another owner; it belongs there.
int TokenInit(const TokenInitOptions& options, const std::optional<std::string>& module_init_reserved);

}  // namespace trousseau::init
