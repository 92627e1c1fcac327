#include "observability/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>

namespace trousseau::observability {
namespace {

// The fields of /proc/self/stat after the command name, which may hold spaces and parentheses:
// fields[0] is field 3 (state) of proc(5), so field n is fields[n - 3].
std::vector<std::string> StatFields() {
  std::ifstream in("/proc/self/stat");
  const std::string line{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const size_t close = line.rfind(')');
  std::vector<std::string> fields;
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  for (std::string field; rest >> field;) fields.push_back(field);
  return fields;
}

std::optional<double> Field(const std::vector<std::string>& fields, size_t n) {
  if (n < 3 || n - 3 >= fields.size()) return std::nullopt;
  try {
    return std::stod(fields[n - 3]);
  } catch (...) {
    return std::nullopt;
  }
}

// Boot time (the btime line of /proc/stat), in seconds since the epoch.
std::optional<double> BootTime() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) != 0) continue;
    try {
      return std::stod(line.substr(6));
    } catch (...) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

// Entries of /proc/self/fd, less the one this count opens.
std::optional<double> OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return std::nullopt;
  double count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;
}

void Add(std::vector<prometheus::MetricFamily>& families, const char* name, const char* help,
         prometheus::MetricType type, std::optional<double> value) {
  if (!value) return;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = *value;
  } else {
    metric.gauge.value = *value;
  }
  families.push_back({name, help, type, {metric}});
}

}  // namespace

void AppendProcessMetrics(std::vector<prometheus::MetricFamily>& families) {
  const std::vector<std::string> stat = StatFields();
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  std::optional<double> cpu;
  if (auto user = Field(stat, 14), system = Field(stat, 15); user && system && ticks > 0) {
    cpu = (*user + *system) / ticks;
  }
  std::optional<double> start;
  if (auto since_boot = Field(stat, 22), boot = BootTime(); since_boot && boot && ticks > 0) {
    start = *boot + *since_boot / ticks;
  }
  std::optional<double> rss;
  if (auto pages = Field(stat, 24)) rss = *pages * page;
  std::optional<double> max_fds;
  if (rlimit limit{}; getrlimit(RLIMIT_NOFILE, &limit) == 0) max_fds = static_cast<double>(limit.rlim_cur);

  using prometheus::MetricType;
  Add(families, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", MetricType::Counter,
      cpu);
  Add(families, "process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge, rss);
  Add(families, "process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge, Field(stat, 23));
  Add(families, "process_open_fds", "Number of open file descriptors.", MetricType::Gauge, OpenFds());
  Add(families, "process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge, max_fds);
  Add(families, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
      MetricType::Gauge, start);
}

}  // namespace trousseau::observability
