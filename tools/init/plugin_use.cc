// `key list --health-listen`: what the running plugin reports of each key version's use, read from its
// /metrics page (trousseau_hsm_key_version_uses_total and ..._last_use_timestamp_seconds).
#include <time.h>

#include <chrono>
#include <sstream>

#include "core/strings.h"
#include "tools/ctl/plugin_keys.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

// `name{version="N"} VALUE` -> N, VALUE; false for any other line.
bool ParseVersionSample(const std::string& line, std::string_view name, uint64_t& version, double& value) {
  const std::string prefix = StrCat(name, "{version=\"");
  if (line.rfind(prefix, 0) != 0) return false;
  const size_t end = line.find("\"} ", prefix.size());
  if (end == std::string::npos) return false;
  std::optional<uint64_t> parsed = ParseUnsigned<uint64_t>(line.substr(prefix.size(), end - prefix.size()));
  if (!parsed) return false;
  try {
    value = std::stod(line.substr(end + 3));
  } catch (...) {
    return false;
  }
  version = *parsed;
  return true;
}

// `name VALUE` -> VALUE; false for any other line.
bool ParsePlainSample(const std::string& line, std::string_view name, double& value) {
  if (line.rfind(StrCat(name, " "), 0) != 0) return false;
  try {
    value = std::stod(line.substr(name.size() + 1));
  } catch (...) {
    return false;
  }
  return true;
}

}  // namespace

PluginUse ReadPluginUse(const std::string& listen, std::chrono::milliseconds timeout) {
  PluginUse use;
  use.listen = listen;
  std::string page;
  if (!trousseauctl::FetchMetrics(listen, std::chrono::duration<double>(timeout).count(), page, use.error)) {
    return use;
  }
  if (page.find("trousseau_hsm_build_info") == std::string::npos) {
    use.error = StrCat("http://", listen, "/metrics is not a trousseau-hsm plugin's metrics page");
    return use;
  }
  use.reached = true;
  for (const trousseauctl::KeyVersionSeen& held : trousseauctl::ParsePluginKeys(page).versions) {
    use.key_ids[held.version] = held.key_id;
  }
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    uint64_t version = 0;
    double value = 0;
    if (ParseVersionSample(line, "trousseau_hsm_key_version_uses_total", version, value)) {
      use.versions[version].uses = value;
    } else if (ParseVersionSample(line, "trousseau_hsm_key_version_last_use_timestamp_seconds", version, value)) {
      use.versions[version].last_use = value;
    } else if (ParsePlainSample(line, "process_start_time_seconds", value)) {
      use.started = value;
    }
  }
  return use;
}

std::string UtcTime(double unix_seconds) {
  const time_t seconds = static_cast<time_t>(unix_seconds);
  tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::string AgoText(double unix_seconds) {
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const int64_t ago = std::max<int64_t>(0, static_cast<int64_t>(now - unix_seconds));
  if (ago < 120) return StrCat(ago, "s ago");
  if (ago < 2 * 3600) return StrCat(ago / 60, "m ago");
  if (ago < 2 * 86400) return StrCat(ago / 3600, "h ", (ago % 3600) / 60, "m ago");
  return StrCat(ago / 86400, "d ", (ago % 86400) / 3600, "h ago");
}

VersionUseSeen PluginUse::Of(uint64_t version, const std::string& key_id) const {
  VersionUseSeen seen;
  if (!reached) {
    seen.why_unknown = StrCat("the plugin at ", listen, " could not be reached");
    return seen;
  }
  // The plugin's version N is this key only if it derives the same key_id (another token, family or
  // node's device may hold another key under N).
  if (auto held = key_ids.find(version); held != key_ids.end() && !key_id.empty() && held->second != key_id) {
    seen.why_unknown = StrCat("the plugin at ", listen, " holds another key under version ", version, " (",
                              held->second, "): is it the plugin of this token?");
    return seen;
  }
  seen.known = true;
  if (auto it = versions.find(version); it != versions.end()) {
    seen.uses = static_cast<uint64_t>(it->second.uses);
    seen.last_use = it->second.last_use;
  }
  return seen;
}

}  // namespace trousseau::init
