#include "stats.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/strings.h"

namespace trousseau::bench {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {
double Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]) / 1000.0;
}
}  // namespace

Summary Summarize(std::vector<int64_t>& ns, size_t errors, double seconds) {
  Summary s;
  s.count = ns.size();
  s.errors = errors;
  s.seconds = seconds;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  s.p50_us = Percentile(ns, 0.50);
  s.p90_us = Percentile(ns, 0.90);
  s.p99_us = Percentile(ns, 0.99);
  s.min_us = static_cast<double>(ns.front()) / 1000.0;
  s.max_us = static_cast<double>(ns.back()) / 1000.0;
  s.mean_us = std::accumulate(ns.begin(), ns.end(), 0.0) / static_cast<double>(ns.size()) / 1000.0;
  return s;
}

void Json::Key(std::string_view key) {
  if (!first_.back()) out_ += ",";
  first_.back() = false;
  if (!in_array_.back()) {
    out_ += JsonQuote(key);
    out_ += ":";
  }
}

Json& Json::Begin(std::string_view key, char bracket, bool array) {
  Key(key);
  out_ += bracket;
  first_.push_back(true);
  in_array_.push_back(array);
  return *this;
}

Json& Json::End(char bracket) {
  out_ += bracket;
  first_.pop_back();
  in_array_.pop_back();
  return *this;
}

Json& Json::Open(std::string_view key) { return Begin(key, '{', false); }
Json& Json::Close() { return End('}'); }
Json& Json::OpenArray(std::string_view key) { return Begin(key, '[', true); }
Json& Json::CloseArray() { return End(']'); }

Json& Json::Str(std::string_view key, std::string_view value) {
  Key(key);
  out_ += JsonQuote(value);
  return *this;
}

Json& Json::Num(std::string_view key, double value) {
  Key(key);
  if (!std::isfinite(value)) {
    out_ += "null";
    return *this;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", value);
  out_ += buf;
  return *this;
}

Json& Json::Int(std::string_view key, int64_t value) {
  Key(key);
  out_ += std::to_string(value);
  return *this;
}

Json& Json::Bool(std::string_view key, bool value) {
  Key(key);
  out_ += value ? "true" : "false";
  return *this;
}

Json& Json::Summ(std::string_view key, const Summary& s) {
  Open(key);
  Int("count", static_cast<int64_t>(s.count));
  Int("errors", static_cast<int64_t>(s.errors));
  Num("p50_us", s.p50_us);
  Num("p90_us", s.p90_us);
  Num("p99_us", s.p99_us);
  Num("mean_us", s.mean_us);
  Num("min_us", s.min_us);
  Num("max_us", s.max_us);
  if (s.seconds > 0) {
    Num("seconds", s.seconds);
    Num("per_second", s.rate());
  }
  return Close();
}

}  // namespace trousseau::bench
