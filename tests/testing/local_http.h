// A plain HTTP/1.1 GET on 127.0.0.1, for tests of the plugin's health/metrics endpoint.
#pragma once

#include <string>

namespace trousseau::testing {

// A loopback TCP port that was free a moment ago.
int FreeLoopbackPort();

struct HttpResponse {
  int code = 0;  // 0: no connection or no HTTP answer
  std::string body;
};

HttpResponse HttpGet(int port, const std::string& path);

}  // namespace trousseau::testing
