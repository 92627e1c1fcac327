#include "observability/http_endpoint.h"

#include <CivetServer.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include <exception>
#include <vector>

#include "core/strings.h"

namespace trousseau::observability {
namespace {

void Reply(mg_connection* conn, int code, std::string_view content_type, std::string_view body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %.*s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n",
            code, code == 200 ? "OK" : "Service Unavailable", static_cast<int>(content_type.size()),
            content_type.data(), body.size());
  mg_write(conn, body.data(), body.size());
}

class FunctionHandler : public CivetHandler {
 public:
  explicit FunctionHandler(std::function<void(mg_connection*)> fn) : fn_(std::move(fn)) {}
  bool handleGet(CivetServer*, mg_connection* conn) override {
    fn_(conn);
    return true;
  }

 private:
  std::function<void(mg_connection*)> fn_;
};

// Binds HOST:PORT once (and closes it again) to learn whether civetweb will be able to.
Status CheckBindable(std::string host, const std::string& port) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return InvalidArgumentError(StrCat("not a numeric address and port (", gai_strerror(rc), ")"));
  }
  Status result;
  const int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  const int one = 1;
  if (fd < 0) {
    result = FailedPreconditionError(std::strerror(errno));
  } else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
             bind(fd, found->ai_addr, found->ai_addrlen) != 0) {
    result = FailedPreconditionError(std::strerror(errno));
  }
  if (!result.ok()) {  // "Address already in use" -> "address already in use", as in the rest of the line
    std::string message = result.message();
    message[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(message[0])));
    result = FailedPreconditionError(message);
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(found);
  return result;
}

// The keys this plugin holds, for an operator comparing nodes during a rotation (/readyz?verbose).
std::string KeySummary(const KmsEngine& engine) {
  std::shared_ptr<const KeyRing> ring = engine.key_ring();
  if (!ring) return "keys: none loaded yet\n";
  std::string summary;
  for (const auto& [version, key_id] : ring->key_ids()) {
    summary += StrCat(version == ring->active_version() ? "key active: " : "key decrypt-only: ", key_id, "\n");
  }
  // A lost version stays listed for as long as the plugin runs: its ciphertexts are lost until it comes back.
  for (const VanishedKey& gone : engine.VanishedKeys()) {
    summary += StrCat("key vanished: ", gone.key_id, " (version ", gone.version,
                      "): gone from the device, ciphertexts under it cannot be decrypted\n");
  }
  if (auto due = engine.NextActivationAt()) {
    const auto left = std::chrono::ceil<std::chrono::seconds>(*due - std::chrono::steady_clock::now());
    summary +=
        StrCat("key activation pending: a newer version becomes active in ", std::max<int64_t>(left.count(), 0), "s\n");
  }
  return summary;
}

}  // namespace

struct HttpEndpoint::Handlers {
  std::vector<std::pair<std::string, std::unique_ptr<FunctionHandler>>> routes;
};

StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen, std::string_view flag,
                                                            HttpRoutes which, KmsEngine& engine, Telemetry& telemetry,
                                                            HttpHooks hooks) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || !ParseUnsigned<uint16_t>(listen.substr(colon + 1))) {
    return InvalidArgumentError(StrCat(flag, " must be HOST:PORT (e.g. 127.0.0.1:8789), got ", listen));
  }
  auto endpoint = std::unique_ptr<HttpEndpoint>(new HttpEndpoint());
  endpoint->handlers_ = std::make_unique<Handlers>();
  auto& routes = endpoint->handlers_->routes;
  if (which != HttpRoutes::kMetrics) {
    routes.emplace_back(
        "/livez", std::make_unique<FunctionHandler>([](mg_connection* c) { Reply(c, 200, "text/plain", "ok\n"); }));
    routes.emplace_back(
        "/readyz", std::make_unique<FunctionHandler>(
                       [why = hooks.not_ready_because, details = hooks.verbose_details, &engine](mg_connection* c) {
                         const std::string reason = why ? why() : "";
                         std::string body = reason.empty() ? "ok\n" : StrCat("not ready: ", reason, "\n");
                         const char* query = mg_get_request_info(c)->query_string;
                         if (query != nullptr && std::string_view(query).find("verbose") != std::string_view::npos) {
                           body += KeySummary(engine);
                           if (details) body += details();
                         }
                         Reply(c, reason.empty() ? 200 : 503, "text/plain", body);
                       }));
    routes.emplace_back("/healthz", std::make_unique<FunctionHandler>([&engine](mg_connection* c) {
                          HealthReport health = engine.Health();
                          Reply(c, health.ok ? 200 : 503, "text/plain", health.detail + "\n");
                        }));
  }
  if (which != HttpRoutes::kProbes) {
    routes.emplace_back("/metrics", std::make_unique<FunctionHandler>([&telemetry, hooks](mg_connection* c) {
                          if (hooks.before_scrape) hooks.before_scrape();
                          Reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", telemetry.Render());
                        }));
  }

  // civetweb reports a port it cannot bind only as "null context": bind it once ourselves to say why.
  if (Status bindable = CheckBindable(listen.substr(0, colon), listen.substr(colon + 1)); !bindable.ok()) {
    return FailedPreconditionError(StrCat(flag, " ", listen, ": ", bindable.message()));
  }
  // civetweb wants "HOST:PORT" without brackets for IPv4 and "[::1]:PORT" for IPv6, as given.
  std::vector<std::string> options = {"listening_ports", listen, "num_threads", "2", "request_timeout_ms", "5000"};
  try {
    endpoint->server_ = std::make_unique<CivetServer>(options);
  } catch (const std::exception& e) {
    return FailedPreconditionError(StrCat("cannot listen for HTTP on ", listen, ": ", e.what()));
  }
  for (auto& [uri, handler] : routes) endpoint->server_->addHandler(uri, handler.get());
  return endpoint;
}

HttpEndpoint::~HttpEndpoint() {
  server_.reset();  // stops the threads before the handlers go
}

}  // namespace trousseau::observability
