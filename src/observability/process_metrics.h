// The process_* metrics of the Prometheus client libraries (client_golang's process collector), read from
// /proc at each scrape: CPU time, resident and virtual memory, open and maximum file descriptors, start
// time. Linux only; a value /proc does not give is left out rather than reported as 0.
#pragma once

#include <prometheus/metric_family.h>

#include <vector>

namespace trousseau::observability {

// Appends process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds and process_start_time_seconds for this process to `families`.
void AppendProcessMetrics(std::vector<prometheus::MetricFamily>& families);

}  // namespace trousseau::observability
