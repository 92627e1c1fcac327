// Runs the plugin: backend, engine, gRPC server, health/metrics endpoint, signal loop.
#pragma once

#include "app/options.h"

namespace trousseau::app {

// Returns the process exit code: 0 after SIGTERM/SIGINT, 2 for configuration or key-policy errors.
// A device that is down or refuses the PIN does not end the process: it serves UNAVAILABLE, reports
// why (Status, /healthz, /readyz) and recovers by itself.
int RunPlugin(const PluginOptions& options);

}  // namespace trousseau::app
