// Logging: spdlog, as text or as one JSON object per line (klog-like fields ts, level, msg, plus the
// request fields uid, key_id, operation, code, latency). Nothing here ever receives plaintext.
//
// Field values come from callers (a uid or key_id is whatever kube-apiserver, or anyone who can reach
// the socket, sent): every record stays one line and cannot forge another field or record. Field
// values are capped at kMaxLoggedFieldBytes (then "...[truncated, N bytes]"), messages at
// kMaxLoggedMessageBytes. Text format: control characters in messages are escaped (\n, \t, \xNN);
// a field value with anything but printable ASCII other than space, '"', '=' and '\' is written
// quoted with those escaped. JSON format: strings are JSON-escaped, and bytes that are not valid
// UTF-8 become U+FFFD, so each line is one valid JSON object.
#pragma once

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

namespace trousseau::observability {

enum class LogFormat { kText, kJson };

inline constexpr size_t kMaxLoggedFieldBytes = 256;
inline constexpr size_t kMaxLoggedMessageBytes = 4096;

// The formatter SetUpLogging installs (exposed so tests can put it on their own sink).
std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format);

// Installs the formatter on the default logger (stderr).
void SetUpLogging(LogFormat format, spdlog::level::level_enum level);

struct LogField {
  std::string_view key;
  std::string_view value;
  // A JSON number (written unquoted in json format), e.g. a latency in seconds.
  bool numeric = false;
};

// Logs `message` with structured fields: JSON members in json format, key=value pairs in text.
void LogWithFields(spdlog::level::level_enum level, std::string_view message, std::initializer_list<LogField> fields);

}  // namespace trousseau::observability
