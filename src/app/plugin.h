// Runs the plugin: backend, engine, gRPC server, health/metrics endpoint, signal loop.
#pragma once

#include "app/options.h"

namespace trousseau::app {

// Returns the process exit code: 0 after a clean SIGTERM/SIGINT, 1 if the device is unavailable at
// start, 2 for configuration or key-policy errors.
int RunPlugin(const PluginOptions& options);

}  // namespace trousseau::app
