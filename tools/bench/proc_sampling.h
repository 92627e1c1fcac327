// What the bench reads about processes from /proc: memory and threads (/proc/PID/status), CPU time
// (/proc/PID/stat, getrusage), the whole machine's busy fraction (/proc/stat) and open fds.
#pragma once

#include <sys/types.h>

namespace trousseau::bench {

struct ProcMem {
  long hwm_kib = 0;
  long rss_kib = 0;
  long anon_kib = 0;  // RssAnon: heap, stacks (private to the process)
  long file_kib = 0;  // RssFile: mapped binaries and libraries (shared with other processes)
  long threads = 0;
};
// All zero when the process is gone (a zombie has no Vm lines either).
ProcMem ReadProcMem(pid_t pid);
inline long VmRssKib(pid_t pid) { return ReadProcMem(pid).rss_kib; }

// Entries of /proc/PID/fd; -1 if it cannot be read.
long OpenFds(pid_t pid);

// User + system CPU seconds of a whole process (all threads), and of this process.
double ProcCpuSeconds(pid_t pid);
double SelfCpuSeconds();

// Busy fraction of all CPUs between two samples of /proc/stat.
struct CpuSample {
  unsigned long long busy = 0, total = 0;
};
CpuSample ReadCpuSample();
double BusyFraction(const CpuSample& a, const CpuSample& b);

}  // namespace trousseau::bench
