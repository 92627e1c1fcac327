// Small HTTP listeners for probes and scraping: --health-listen serves the probes and, unless
// --metrics-listen is given, /metrics; --metrics-listen serves /metrics alone.
//   /livez    200 while the process runs: nothing in it needs a restart (a device outage or a refused
//             PIN is recovered from in place; restarting would only cost another login attempt)
//   /readyz   200 while it serves with a working device and keys, else 503 + the reason
//   /healthz  200 "ok" only when a device round trip succeeded recently, else 503 + reason
// None of them waits on the device: they read the health the background prober keeps.
//   /metrics  Prometheus text format
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "core/kms_engine.h"
#include "core/status.h"
#include "observability/telemetry.h"

class CivetServer;

namespace trousseau::observability {

struct HttpHooks {
  // Empty when ready, else why not (shown by /readyz).
  std::function<std::string()> not_ready_because;
  // Refreshes sampled gauges (session pool, active key) right before a scrape.
  std::function<void()> before_scrape;
  // More lines for /readyz?verbose (each device of a backend with several); may be empty.
  std::function<std::string()> verbose_details;
};

// Which paths one listener serves.
enum class HttpRoutes {
  kProbesAndMetrics,  // /livez, /readyz, /healthz and /metrics (--health-listen alone)
  kProbes,            // /livez, /readyz, /healthz (--health-listen beside --metrics-listen)
  kMetrics,           // /metrics (--metrics-listen)
};

class HttpEndpoint {
 public:
  // `listen` is HOST:PORT, e.g. 127.0.0.1:8789; `flag` names the setting it came from in messages
  // ("--health-listen"). Every other path answers 404.
  static StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen, std::string_view flag,
                                                       HttpRoutes routes, KmsEngine& engine, Telemetry& telemetry,
                                                       HttpHooks hooks);
  ~HttpEndpoint();

 private:
  HttpEndpoint() = default;
  struct Handlers;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<CivetServer> server_;
};

}  // namespace trousseau::observability
