#include "proc_sampling.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>

#include "core/strings.h"

namespace trousseau::bench {

ProcMem ReadProcMem(pid_t pid) {
  ProcMem mem;
  std::ifstream in(StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    auto value = [&](std::string_view key) { return std::strtol(line.c_str() + key.size(), nullptr, 10); };
    if (line.starts_with("VmHWM:")) mem.hwm_kib = value("VmHWM:");
    if (line.starts_with("VmRSS:")) mem.rss_kib = value("VmRSS:");
    if (line.starts_with("RssAnon:")) mem.anon_kib = value("RssAnon:");
    if (line.starts_with("RssFile:")) mem.file_kib = value("RssFile:");
    if (line.starts_with("Threads:")) mem.threads = value("Threads:");
  }
  return mem;
}

long OpenFds(pid_t pid) {
  const std::string dir = StrCat("/proc/", pid, "/fd");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  long n = 0;
  while (const dirent* entry = readdir(d)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

double ProcCpuSeconds(pid_t pid) {
  std::ifstream in(StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  // After ")": state(3) ... utime is field 14, stime 15 (1-based over the whole line).
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return sec(usage.ru_utime) + sec(usage.ru_stime);
}

CpuSample ReadCpuSample() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  CpuSample sample;
  unsigned long long v[8] = {};
  for (auto& x : v) in >> x;
  for (int i = 0; i < 8; ++i) sample.total += v[i];
  sample.busy = sample.total - v[3] - v[4];  // minus idle and iowait
  return sample;
}

double BusyFraction(const CpuSample& a, const CpuSample& b) {
  return b.total > a.total ? static_cast<double>(b.busy - a.busy) / static_cast<double>(b.total - a.total) : 0;
}

}  // namespace trousseau::bench
