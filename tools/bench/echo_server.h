// `trousseau-bench echo-server`: the gRPC floor. A sync gRPC server built exactly like the plugin's
// (src/server/kms_server.cc: unix socket, insecure credentials, 128 KiB receive limit, socket 0600)
// whose one method answers at once with a fixed 32-byte payload. It runs as its own process so that
// it competes for the CPU the way the plugin process does.
#pragma once

#include <string>

namespace trousseau::bench {

inline constexpr size_t kEchoReplyBytes = 32;  // a v2 Decrypt answers with the 32-byte seed

struct EchoServerOptions {
  std::string listen;
  // Diagnostics only (`run` uses neither): busy-wait this long in each call, to see how the server
  // copes with a handler that takes as long as an HSM op; and gRPC sync-server poller settings
  // (0 = gRPC's defaults, which the plugin uses).
  int work_us = 0;
  // "sync" (as the plugin) or "callback" (gRPC's callback API: handlers run on gRPC's own threads).
  std::string mode = "sync";
  int min_pollers = 0;
  int max_pollers = 0;
};

// Serves until SIGTERM/SIGINT (or until the parent dies). Returns the process exit code.
int RunEchoServer(const EchoServerOptions& options);

}  // namespace trousseau::bench
