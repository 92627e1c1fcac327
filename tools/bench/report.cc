#include "report.h"

#include <sys/utsname.h>

#include <cstdarg>
#include <ctime>
#include <fstream>

#include "core/strings.h"

namespace trousseau::bench {
namespace {

const char* g_progress_prefix = "bench";
FILE* g_report = stdout;

}  // namespace

void SetProgressPrefix(const char* prefix) { g_progress_prefix = prefix; }

void Progress(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs(g_progress_prefix, stderr);
  std::fputs(": ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
}

void SetReportStream(FILE* stream) { g_report = stream; }

void Out(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vfprintf(g_report, format, args);
  va_end(args);
  std::fflush(g_report);
}

std::string Fmt(const char* format, ...) {
  char buf[256];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  return buf;
}

const char* Verdict(bool pass) { return pass ? "PASS" : "MISS"; }

std::string UtcNow() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string Kernel() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return StrCat(u.sysname, " ", u.release);
}

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    const size_t nl = text.rfind('\n', pos - 1);
    if (nl == std::string::npos) return text;
    pos = nl;
  }
  return text.substr(pos);
}

}  // namespace trousseau::bench
