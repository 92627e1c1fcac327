// One small HTTP listener for probes and scraping (--health-listen):
//   /livez    200 while the process serves
//   /readyz   200 once keys are loaded and the socket listens, else 503
//   /healthz  200 "ok" only when a device round trip succeeded recently (cached), else 503 + reason
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
  std::function<bool()> ready;
  // Refreshes sampled gauges (session pool, active key) right before a scrape.
  std::function<void()> before_scrape;
};

class HttpEndpoint {
 public:
  // `listen` is HOST:PORT, e.g. 127.0.0.1:8787.
  static StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen, KmsEngine& engine,
                                                       Telemetry& telemetry, HttpHooks hooks);
  ~HttpEndpoint();

 private:
  HttpEndpoint() = default;
  struct Handlers;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<CivetServer> server_;
};

}  // namespace trousseau::observability
