#include "observability/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <chrono>
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
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
  return buf;
}

class RecordFormatter final : public spdlog::formatter {
 public:
  explicit RecordFormatter(LogFormat format) : format_(format) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto level_name = spdlog::level::to_string_view(msg.level);
    const std::string_view level(level_name.data(), level_name.size());
    const std::string_view text(msg.payload.data(), msg.payload.size());
    std::string line;
    if (format_ == LogFormat::kJson) {
      line = "{\"ts\":\"" + Timestamp(msg.time) + "\",\"level\":\"" + std::string(level) + "\",\"msg\":" + JsonQuote(text);
      if (current_fields != nullptr) {
        for (const LogField& field : *current_fields) {
          line += "," + JsonQuote(field.key) + ":" + (field.numeric ? std::string(field.value) : JsonQuote(field.value));
        }
      }
      line += "}\n";
    } else {
      line = Timestamp(msg.time) + " " + std::string(level) + " " + std::string(text);
      if (current_fields != nullptr) {
        for (const LogField& field : *current_fields) {
          line += " " + std::string(field.key) + "=" + std::string(field.value);
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

void SetUpLogging(LogFormat format, spdlog::level::level_enum level) {
  auto logger = std::make_shared<spdlog::logger>("trousseau-hsm", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(std::make_unique<RecordFormatter>(format));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

void LogWithFields(spdlog::level::level_enum level, std::string_view message,
                   std::initializer_list<LogField> fields) {
  if (!spdlog::should_log(level)) return;
  current_fields = &fields;
  spdlog::log(level, "{}", message);
  current_fields = nullptr;
}

}  // namespace trousseau::observability
