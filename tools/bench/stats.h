// Latency samples -> percentiles, and a minimal JSON writer for the --json report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trousseau::bench {

int64_t NowNs();  // steady clock

struct Summary {
  size_t count = 0;
  size_t errors = 0;
  double seconds = 0;  // measured wall time (0 when not a timed phase)
  double p50_us = 0, p90_us = 0, p99_us = 0, mean_us = 0, min_us = 0, max_us = 0;
  double rate() const { return seconds > 0 ? count / seconds : 0; }
};

// Sorts `ns`. Percentiles are nearest-rank.
Summary Summarize(std::vector<int64_t>& ns, size_t errors = 0, double seconds = 0);

// Builds one JSON value; callers add keys and values in order.
class Json {
 public:
  Json& Open(std::string_view key = {});  // {   (key ignored at top level / inside arrays)
  Json& Close();                          // }
  Json& OpenArray(std::string_view key = {});
  Json& CloseArray();
  Json& Str(std::string_view key, std::string_view value);
  Json& Num(std::string_view key, double value);
  Json& Int(std::string_view key, int64_t value);
  Json& Bool(std::string_view key, bool value);
  Json& Summ(std::string_view key, const Summary& s);
  const std::string& text() const { return out_; }

 private:
  void Key(std::string_view key);
  // An object or array: its key, its opening bracket; then its closing one.
  Json& Begin(std::string_view key, char bracket, bool array);
  Json& End(char bracket);
  std::string out_;
  std::vector<bool> first_{true};
  std::vector<bool> in_array_{true};
};

}  // namespace trousseau::bench
