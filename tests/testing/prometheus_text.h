// Reading one sample out of a Prometheus text page (the plugin's /metrics), for tests that wait on a
// metric instead of sleeping.
#pragma once

#include <sstream>
#include <string>

namespace trousseau::testing {

// The value of the sample `series` (name and labels exactly as exposed, e.g.
// `trousseau_hsm_key_refresh_total{result="ok"}`) in `page`; -1 if the page has no such sample.
inline double MetricValue(const std::string& page, const std::string& series) {
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

}  // namespace trousseau::testing
