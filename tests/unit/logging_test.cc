// The log formats with caller-controlled field values: every record stays one line, cannot forge
// another field or record, and a huge value is capped. Runs the real formatter on a spdlog sink.
#include "observability/logging.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>
#include <string>

namespace trousseau::observability {
namespace {

class LoggingTest : public ::testing::Test {
 protected:
  // Logs one record with `uid` and `key_id` in `format`; returns what the sink received.
  std::string LogRequest(LogFormat format, std::string_view message, std::string_view uid, std::string_view key_id,
                         spdlog::level::level_enum level = spdlog::level::info) {
    std::ostringstream out;
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    auto logger = std::make_shared<spdlog::logger>("test", sink);
    logger->set_formatter(MakeLogFormatter(format));
    logger->set_level(spdlog::level::trace);
    auto previous = spdlog::default_logger();
    spdlog::set_default_logger(logger);
    LogWithFields(level, message,
                  {{"operation", "decrypt"}, {"uid", uid}, {"key_id", key_id}, {"latency_ms", "0.123", true}});
    spdlog::set_default_logger(previous);
    return out.str();
  }

  static size_t Lines(const std::string& text) {
    return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
  }
};

TEST_F(LoggingTest, TextKeepsPlainValuesBare) {
  const std::string line = LogRequest(LogFormat::kText, "request", "3f2a-11", "kek-v1-abc");
  EXPECT_NE(line.find(" info request operation=decrypt uid=3f2a-11 key_id=kek-v1-abc latency_ms=0.123\n"),
            std::string::npos)
      << line;
}

TEST_F(LoggingTest, TextEscapesNewlinesAndCannotForgeFieldsOrRecords) {
  const std::string uid = "a key_id=forged\n2026-01-01T00:00:00.000000Z error fake record uid=\"x\\";
  const std::string line = LogRequest(LogFormat::kText, "request\nforged line", uid, "kek-v1-abc");
  EXPECT_EQ(Lines(line), 1u) << line;
  EXPECT_NE(line.find("request\\nforged line"), std::string::npos) << line;
  EXPECT_NE(
      line.find(R"( uid="a key_id=forged\n2026-01-01T00:00:00.000000Z error fake record uid=\"x\\" key_id=kek-v1-abc)"),
      std::string::npos)
      << line;
}

TEST_F(LoggingTest, TextEscapesControlAndNonAsciiBytes) {
  const std::string line = LogRequest(LogFormat::kText, "m", std::string("\x1b[31mred\x00\x7f\xc3\xa9", 12), "");
  EXPECT_NE(line.find(R"(uid="\x1b[31mred\x00\x7f\xc3\xa9" key_id="")"), std::string::npos) << line;
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
}

TEST_F(LoggingTest, TextAndJsonCapA128KiBField) {
  const std::string uid(128 * 1024, 'u');
  for (LogFormat format : {LogFormat::kText, LogFormat::kJson}) {
    const std::string line = LogRequest(format, "request", uid, "kek-v1-abc");
    EXPECT_LT(line.size(), 1024u) << "format " << static_cast<int>(format);
    EXPECT_NE(line.find(std::string(kMaxLoggedFieldBytes, 'u') + "...[truncated, 131072 bytes]"), std::string::npos)
        << line;
    EXPECT_EQ(line.find(std::string(kMaxLoggedFieldBytes + 1, 'u')), std::string::npos);
  }
}

TEST_F(LoggingTest, JsonIsOneValidObjectWithTheCallersBytesEscaped) {
  const std::string uid = std::string("x\"}\n{\"level\":\"error\"\x01\xff\xc3\xa9", 25);
  const std::string line = LogRequest(LogFormat::kJson, "request\n", uid, "kek-v1-abc");
  ASSERT_EQ(Lines(line), 1u) << line;
  const nlohmann::json record = nlohmann::json::parse(line);  // throws on invalid JSON or UTF-8
  EXPECT_EQ(record["level"], "info");
  EXPECT_EQ(record["msg"], "request\n");
  // The invalid byte 0xff becomes U+FFFD; valid UTF-8 (é) stays.
  EXPECT_EQ(record["uid"], std::string("x\"}\n{\"level\":\"error\"\x01\xef\xbf\xbd\xc3\xa9", 27));
  EXPECT_EQ(record["key_id"], "kek-v1-abc");
  EXPECT_EQ(record["latency_ms"], 0.123);
}

// The level names are --log-level's words, so a pipeline filtering on them sees every record.
TEST_F(LoggingTest, LevelNamesAreTheFlagsWords) {
  const std::vector<std::pair<spdlog::level::level_enum, std::string>> levels = {
      {spdlog::level::trace, "trace"}, {spdlog::level::debug, "debug"}, {spdlog::level::info, "info"},
      {spdlog::level::warn, "warn"},   {spdlog::level::err, "error"},   {spdlog::level::critical, "error"}};
  for (const auto& [level, word] : levels) {
    const nlohmann::json record = nlohmann::json::parse(LogRequest(LogFormat::kJson, "m", "u", "k", level));
    EXPECT_EQ(record["level"], word);
    EXPECT_NE(LogRequest(LogFormat::kText, "m", "u", "k", level).find(" " + word + " m "), std::string::npos) << word;
  }
}

TEST_F(LoggingTest, CappingNeverSplitsAUtf8Sequence) {
  // 255 ASCII bytes, then a 2-byte character across the cap.
  const std::string uid = std::string(kMaxLoggedFieldBytes - 1, 'a') + "\xc3\xa9" + std::string(100, 'b');
  const nlohmann::json record = nlohmann::json::parse(LogRequest(LogFormat::kJson, "m", uid, "k"));
  EXPECT_EQ(record["uid"], std::string(kMaxLoggedFieldBytes - 1, 'a') + "...[truncated, 357 bytes]");
}

}  // namespace
}  // namespace trousseau::observability
