// [4] Start to serving: spawn -> first v2 Status "ok", o.starts times per variant.
#include "children.h"
#include "core/strings.h"
#include "scenarios.h"

namespace trousseau::bench {

std::string FamilyOf(const std::string& variant) { return variant == "production" ? "kek" : "kek-" + variant; }

std::optional<StartResult> MeasureStarts(const RunOptions& o, const support::SoftHsmToken& token,
                                         const std::string& name, const std::string& family) {
  StartResult result;
  result.label = name;
  for (int i = 0; i < o.starts; ++i) {
    std::optional<Plugin> plugin = StartPlugin(o.plugin, token.dir(), StrCat("start-", name, "-", i),
                                               token.Uri(family, o.softhsm_module), o.hsm_sessions);
    if (!plugin) return std::nullopt;
    result.ms.push_back(plugin->start_ms);
    StopPlugin(*plugin);
  }
  return result;
}

}  // namespace trousseau::bench
