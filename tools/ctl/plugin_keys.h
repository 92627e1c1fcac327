// What `trousseauctl status --health-listen` adds to the KMS Status: the key versions the plugin holds,
// read from its /metrics page (the KMS API itself only carries the active key_id).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace trousseauctl {

struct KeyVersionSeen {
  uint64_t version = 0;
  std::string key_id;
  std::string state;  // "active", "decrypt_only", or "vanished"
};

// One device of a plugin with several (multi-node mode: its recipient devices).
struct DeviceSeen {
  std::string name;
  bool up = false;
  double latency_ms = 0;
};

struct PluginKeys {
  std::vector<KeyVersionSeen> versions;  // active and decrypt-only, ascending version
  std::vector<KeyVersionSeen> vanished;  // versions the device no longer lists (until the plugin restarts)
  bool activation_pending = false;
  std::vector<DeviceSeen> devices;  // in the order of the page
};

// GET http://<listen>/metrics (listen: HOST:PORT as the plugin's --health-listen), within `timeout_seconds`.
// Returns false with `error` set when the page cannot be had.
bool FetchMetrics(const std::string& listen, double timeout_seconds, std::string& page, std::string& error);

// The key series of a Prometheus text page.
PluginKeys ParsePluginKeys(const std::string& page);

}  // namespace trousseauctl
