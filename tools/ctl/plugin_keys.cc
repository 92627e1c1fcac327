#include "tools/ctl/plugin_keys.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <sstream>

namespace trousseauctl {
namespace {

using Clock = std::chrono::steady_clock;

// Waits until `fd` is ready for `events` or `deadline` passes.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// A closed file descriptor, whatever path leaves the function.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// name{a="x",b="y"} value -> labels; false if `line` is not a sample of `name`.
bool ParseSample(const std::string& line, const std::string& name, std::map<std::string, std::string>& labels,
                 double& value) {
  if (line.rfind(name, 0) != 0) return false;
  size_t i = name.size();
  labels.clear();
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      const size_t eq = line.find('=', i);
      if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return false;
      std::string key = line.substr(i, eq - i);
      std::string text;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\' && j + 1 < line.size()) {
          ++j;
          text += line[j] == 'n' ? '\n' : line[j];
        } else {
          text += line[j];
        }
      }
      if (j >= line.size()) return false;
      labels[key] = text;
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return false;
    ++i;
  }
  if (i >= line.size() || line[i] != ' ') return false;
  try {
    value = std::stod(line.substr(i + 1));
  } catch (...) {
    return false;
  }
  return true;
}

uint64_t ToVersion(const std::string& text) {
  try {
    return std::stoull(text);
  } catch (...) {
    return 0;
  }
}

}  // namespace

bool FetchMetrics(const std::string& listen, double timeout_seconds, std::string& page, std::string& error) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    error = "--health-listen must be HOST:PORT, as the plugin's --health-listen (e.g. 127.0.0.1:8789)";
    return false;
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    error = std::string("cannot resolve ") + listen + ": " + gai_strerror(rc);
    return false;
  }
  Fd sock;
  sock.fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, found->ai_protocol);
  int rc = sock.fd < 0 ? -1 : connect(sock.fd, found->ai_addr, found->ai_addrlen);
  freeaddrinfo(found);
  if (rc != 0 && !(sock.fd >= 0 && errno == EINPROGRESS)) {
    error = std::string("cannot connect to ") + listen + ": " + std::strerror(errno);
    return false;
  }
  int so_error = 0;
  socklen_t len = sizeof so_error;
  if (!WaitFor(sock.fd, POLLOUT, deadline) || getsockopt(sock.fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0 ||
      so_error != 0) {
    error = std::string("cannot connect to ") + listen + ": " + (so_error ? std::strerror(so_error) : "timed out");
    return false;
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + listen + "\r\nConnection: close\r\n\r\n";
  for (size_t sent = 0; sent < request.size();) {
    if (!WaitFor(sock.fd, POLLOUT, deadline)) {
      error = "timed out sending to " + listen;
      return false;
    }
    const ssize_t n = send(sock.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      error = std::string("cannot send to ") + listen + ": " + std::strerror(errno);
      return false;
    }
    if (n > 0) sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[16384];
  for (;;) {
    if (!WaitFor(sock.fd, POLLIN, deadline)) {
      error = "timed out reading /metrics from " + listen;
      return false;
    }
    const ssize_t n = recv(sock.fd, buffer, sizeof buffer, 0);
    if (n == 0) break;
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      error = std::string("cannot read from ") + listen + ": " + std::strerror(errno);
      return false;
    }
    if (n > 0) response.append(buffer, static_cast<size_t>(n));
  }
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos || response.find(" 200 ") > response.find('\n')) {
    error = "http://" + listen + "/metrics did not answer 200: " + response.substr(0, response.find('\r'));
    if (response.find(" 404 ") < response.find('\n')) {
      error += " (a plugin started with --metrics-listen serves /metrics there only: give that address)";
    }
    return false;
  }
  page = response.substr(body + 4);
  return true;
}

PluginKeys ParsePluginKeys(const std::string& page) {
  PluginKeys keys;
  std::istringstream lines(page);
  std::map<std::string, std::string> labels;
  double value = 0;
  std::map<std::string, bool> up;  // trousseau_hsm_backend_up by backend: the backend's and each device's
  for (std::string line; std::getline(lines, line);) {
    if (ParseSample(line, "trousseau_hsm_backend_up", labels, value)) {
      up[labels["backend"]] = value == 1;
      continue;
    }
    if (ParseSample(line, "trousseau_hsm_device_latency_seconds", labels, value)) {
      keys.devices.push_back({labels["device"], false, value * 1000});
      continue;
    }
    if (ParseSample(line, "trousseau_hsm_key_version_info", labels, value) && value == 1) {
      keys.versions.push_back({ToVersion(labels["version"]), labels["key_id"], labels["state"]});
    } else if (ParseSample(line, "trousseau_hsm_key_version_vanished_info", labels, value) && value == 1) {
      keys.vanished.push_back({ToVersion(labels["version"]), labels["key_id"], "vanished"});
    } else if (ParseSample(line, "trousseau_hsm_key_activation_pending", labels, value)) {
      keys.activation_pending = value == 1;
    }
  }
  const auto by_version = [](const KeyVersionSeen& a, const KeyVersionSeen& b) { return a.version < b.version; };
  std::sort(keys.versions.begin(), keys.versions.end(), by_version);
  std::sort(keys.vanished.begin(), keys.vanished.end(), by_version);
  for (DeviceSeen& device : keys.devices) device.up = up[device.name];
  return keys;
}

}  // namespace trousseauctl
