#include "observability/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <vector>

#include "core/strings.h"

namespace trousseau::observability {
namespace {

// Fields of the record being logged on this thread; the logger is synchronous, so the formatter
// runs on the logging thread while they are set.
thread_local const std::initializer_list<LogField>* current_fields = nullptr;

std::string Timestamp(spdlog::log_clock::time_point when) {
  const auto since_epoch = when.time_since_epoch();
  const std::time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
  const long micros = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch).count() % 1'000'000;
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  // Room for any int in every field (GCC checks the worst case): a real date takes 28 bytes.
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
  return buf;
}

// `text` cut to at most `limit` bytes, never inside a UTF-8 sequence, with a marker saying so.
std::string Capped(std::string_view text, size_t limit) {
  if (text.size() <= limit) return std::string(text);
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return StrCat(text.substr(0, cut), "...[truncated, ", text.size(), " bytes]");
}

void AppendHexEscape(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[c >> 4];
  out += kHex[c & 0xf];
}

bool AppendNamedEscape(std::string& out, unsigned char c) {
  switch (c) {
    case '\n':
      out += "\\n";
      return true;
    case '\r':
      out += "\\r";
      return true;
    case '\t':
      out += "\\t";
      return true;
    default:
      return false;
  }
}

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// A text-format message: one line whatever it holds; UTF-8 is kept.
std::string TextMessage(std::string_view message) {
  std::string out;
  for (unsigned char c : Capped(message, kMaxLoggedMessageBytes)) {
    if (!IsControl(c)) {
      out += static_cast<char>(c);
    } else if (!AppendNamedEscape(out, c)) {
      AppendHexEscape(out, c);
    }
  }
  return out;
}

// A text-format field value: bare when it is plain printable ASCII, else quoted and escaped, so
// `uid=a key_id=forged` can only appear when the caller's uid really is "a".
std::string TextValue(std::string_view value) {
  const std::string capped = Capped(value, kMaxLoggedFieldBytes);
  const bool bare = !capped.empty() && std::all_of(capped.begin(), capped.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c > 0x20 && c < 0x7f && c != '"' && c != '=' && c != '\\';
  });
  if (bare) return capped;
  std::string out = "\"";
  for (unsigned char c : capped) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else if (!AppendNamedEscape(out, c)) {
      AppendHexEscape(out, c);
    }
  }
  return out + "\"";
}

// Length of the valid UTF-8 sequence at the start of `text`, or 0 if it does not start with one.
size_t Utf8SequenceLength(std::string_view text) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  size_t length;
  uint32_t code;
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    code = lead & 0x1f;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    code = lead & 0x0f;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    code = lead & 0x07;
  } else {
    return 0;
  }
  if (text.size() < length) return 0;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i) & 0x3f);
  }
  const bool overlong = (length == 3 && code < 0x800) || (length == 4 && code < 0x10000);
  const bool surrogate = code >= 0xD800 && code <= 0xDFFF;
  if (overlong || surrogate || code > 0x10FFFF) return 0;
  return length;
}

// A JSON string whose bytes are valid UTF-8 (each invalid byte becomes U+FFFD).
std::string JsonString(std::string_view text, size_t limit) {
  const std::string capped = Capped(text, limit);
  std::string valid;
  std::string_view rest = capped;
  while (!rest.empty()) {
    const size_t length = Utf8SequenceLength(rest);
    if (length == 0) {
      valid += "\xEF\xBF\xBD";
      rest.remove_prefix(1);
    } else {
      valid.append(rest.substr(0, length));
      rest.remove_prefix(length);
    }
  }
  return JsonQuote(valid);
}

bool IsJsonNumber(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E';
  });
}

// The level as --log-level names it (spdlog says "warning", and "critical" for what the flag calls
// error: a log pipeline filtering on the flag's words would miss those).
std::string_view LevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    default:
      return "error";
  }
}

class RecordFormatter final : public spdlog::formatter {
 public:
  explicit RecordFormatter(LogFormat format) : format_(format) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view level = LevelName(msg.level);
    const std::string_view text(msg.payload.data(), msg.payload.size());
    std::string line;
    if (format_ == LogFormat::kJson) {
      line = "{\"ts\":\"" + Timestamp(msg.time) + "\",\"level\":\"" + std::string(level) +
             "\",\"msg\":" + JsonString(text, kMaxLoggedMessageBytes);
      if (current_fields != nullptr) {
        for (const LogField& field : *current_fields) {
          line += "," + JsonString(field.key, kMaxLoggedFieldBytes) + ":" +
                  (field.numeric && IsJsonNumber(field.value) ? std::string(field.value)
                                                              : JsonString(field.value, kMaxLoggedFieldBytes));
        }
      }
      line += "}\n";
    } else {
      line = Timestamp(msg.time) + " " + std::string(level) + " " + TextMessage(text);
      if (current_fields != nullptr) {
        for (const LogField& field : *current_fields) {
          line += " " + std::string(field.key) + "=" + TextValue(field.value);
        }
      }
      line += "\n";
    }
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<RecordFormatter>(format_); }

 private:
  LogFormat format_;
};

}  // namespace

std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format) {
  return std::make_unique<RecordFormatter>(format);
}

void SetUpLogging(LogFormat format, spdlog::level::level_enum level) {
  auto logger = std::make_shared<spdlog::logger>("trousseau-hsm", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(std::make_unique<RecordFormatter>(format));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

void LogWithFields(spdlog::level::level_enum level, std::string_view message, std::initializer_list<LogField> fields) {
  if (!spdlog::should_log(level)) return;
  current_fields = &fields;
  spdlog::log(level, "{}", message);
  current_fields = nullptr;
}

}  // namespace trousseau::observability
