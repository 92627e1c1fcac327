// Logging: spdlog, as text or as one JSON object per line (klog-like fields ts, level, msg, plus the
// request fields uid, key_id, operation, code, latency). Nothing here ever receives plaintext.
#pragma once

#include <spdlog/spdlog.h>

#include <initializer_list>
#include <string>
#include <string_view>

namespace trousseau::observability {

enum class LogFormat { kText, kJson };

// Installs the formatter on the default logger (stderr).
void SetUpLogging(LogFormat format, spdlog::level::level_enum level);

struct LogField {
  std::string_view key;
  std::string_view value;
  // A JSON number (written unquoted in json format), e.g. a latency in seconds.
  bool numeric = false;
};

// Logs `message` with structured fields: JSON members in json format, key=value pairs in text.
void LogWithFields(spdlog::level::level_enum level, std::string_view message,
                   std::initializer_list<LogField> fields);

}  // namespace trousseau::observability
