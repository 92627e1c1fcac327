#include "run_report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "core/strings.h"
#include "report.h"
#include "stats.h"

namespace trousseau::bench {
namespace {

void PrintHeader(const RunOptions& o, const RunResults& r) {
  Out("\ntrousseau-hsm benchmark   %s   %u CPU(s), %s, %s\n", r.date.c_str(), r.cpus, r.cpu_model.c_str(),
      r.kernel.c_str());
  if (r.variants.empty()) {
    Out("plugin %s, module %s\n", o.plugin.c_str(), o.softhsm_module.c_str());
  } else {
    Out("plugin %s (%s%zu HSM sessions in [1],[2],[4]), module %s\n", o.plugin.c_str(),
        o.hsm_sessions > 0 ? "--hsm-sessions " : "its default: ", r.sessions_used, o.softhsm_module.c_str());
  }
  Out("client: one channel per server (own unix-socket connection), 3 s deadline per call; %d completion-queue "
      "thread(s) for concurrent loads\n",
      o.client_threads);
}

void PrintStarts(const RunOptions& o, const RunResults& r) {
  if (r.starts.empty()) return;
  Out("\n[4] Start to serving: spawn -> first v2 Status \"ok\" (polled every ~1 ms), %d starts, ms\n", o.starts);
  Out("    %-40s %8s %8s %8s   %s\n", "", "min", "p50", "max", "target p50 <= 100 ms");
  for (const StartResult& s : r.starts) {
    Out("    %-40s %8.1f %8.1f %8.1f   %s\n", (s.label + " key").c_str(), s.min(), s.p50(), s.max(), Verdict(s.pass()));
  }
}

void LatencyRow(const char* label, const Summary& s) {
  Out("    %-50s %7zu %8.1f %8.1f %8.1f %8.1f%s\n", label, s.count, s.p50_us, s.p90_us, s.p99_us, s.mean_us,
      s.errors ? StrCat("  (", s.errors, " errors)").c_str() : "");
}

void PrintLatency(const RunOptions& o, const RunResults& r) {
  Out("\n[1] Single stream, one call at a time: %d rounds x %zu calls of each kind, interleaved; latency in us\n",
      o.rounds, o.latency_calls);
  Out("    %-50s %7s %8s %8s %8s %8s\n", "", "n", "p50", "p90", "p99", "mean");
  for (const VariantResult& v : r.variants) {
    Out("  %s key (%s)\n", v.name.c_str(), v.key_kind.c_str());
    LatencyRow("echo, empty request (gRPC floor)", v.echo_empty);
    LatencyRow(StrCat("raw HSM GcmOpen, ", v.key_kind, ", in-process").c_str(), v.raw_hsm);
    LatencyRow("plugin v2 Decrypt", v.plugin);
    Out("    floor = %.1f + %.1f = %.1f us; plugin p50 %.1f us = %+.1f %%   target <= +15 %%  %s\n",
        v.echo_empty.p50_us, v.raw_hsm.p50_us, v.floor_us, v.plugin.p50_us, 100 * v.overhead, Verdict(v.latency_pass));
    Out("    reference rows (no target):\n");
    LatencyRow("echo, Decrypt-sized request", v.echo_sized);
    LatencyRow("raw HSM GcmOpen, each right after an echo call", v.raw_cold);
    LatencyRow(StrCat("echo, Decrypt-sized, ", v.work_us, " us busy work per call").c_str(), v.echo_work);
  }
}

void ThroughputRow(const std::string& label, const VariantResult::Load& l) {
  const Summary& s = l.summary;
  Out("    %-34s %8.0f %8.1f %8.1f %8.1f %11.1f %11.1f %8.0f%%%s\n", label.c_str(), s.rate(), s.p50_us, s.p90_us,
      s.p99_us, l.server_cpu_us, l.client_cpu_us, 100 * l.busy,
      s.errors ? StrCat("  (", s.errors, " errors)").c_str() : "");
}

void PrintThroughput(const RunOptions& o, const RunResults& r) {
  Out("\n[2] %d concurrent streams on one channel, Decrypt-sized messages: %d rounds x %.1f s per server, "
      "alternating\n",
      o.streams, o.throughput_rounds, o.throughput_seconds);
  Out("    %-34s %8s %8s %8s %8s %11s %11s %9s\n", "", "calls/s", "p50 us", "p90 us", "p99 us", "server CPU",
      "client CPU", "all CPUs");
  Out("    %-34s %8s %8s %8s %8s %11s %11s %9s\n", "", "", "", "", "", "us/call", "us/call", "busy");
  for (const VariantResult& v : r.variants) {
    Out("  %s key (%s)\n", v.name.c_str(), v.key_kind.c_str());
    ThroughputRow("echo server", v.tp_echo);
    ThroughputRow("plugin v2 Decrypt", v.tp_plugin);
    ThroughputRow(StrCat("echo, ", v.work_us, " us busy work (reference)"), v.tp_echo_work);
    const auto [lo, hi] = std::minmax_element(v.round_ratios.begin(), v.round_ratios.end());
    Out("    plugin / echo = %.1f %% (rounds: %.1f-%.1f %%)   target >= 90 %%  %s\n", 100 * v.ratio,
        lo == v.round_ratios.end() ? 0 : 100 * *lo, hi == v.round_ratios.end() ? 0 : 100 * *hi,
        Verdict(v.throughput_pass));
    Out("    reference: echo with %d us busy work / echo = %.1f %%; plugin / (echo with busy work) = %.1f %%\n",
        v.work_us, 100 * v.ratio_work,
        v.tp_echo_work.summary.rate() > 0 ? 100 * v.tp_plugin.summary.rate() / v.tp_echo_work.summary.rate() : 0);
  }
}

void PrintSlowHsm(const RunOptions& o, const RunResults& r) {
  Out("\n[3] Slow HSM: fault shim, delay_us=%u on each crypto call (a GcmOpen is C_DecryptInit + C_Decrypt), "
      "%d concurrent Decrypts, %.1f s (+%.1f s warm-up)\n",
      o.shim_delay_us, o.shim_concurrency, o.shim_seconds, o.warmup_seconds);
  Out("    %-10s %16s %16s %9s %8s %8s %8s   %s\n", "sessions", "1-stream p50 ms", "ceiling/s", "calls/s", "p50 ms",
      "p90 ms", "p99 ms", "target >= 4000/s");
  for (const SlowResult& s : r.slow) {
    // 0 is the plugin's default, --hsm-sessions auto.
    const std::string sessions = s.sessions == 0 ? std::string("auto") : StrCat(s.sessions);
    Out("    %-10s %16.2f %16.0f %9.0f %8.2f %8.2f %8.2f   %s%s\n", sessions.c_str(), s.single.p50_us / 1000, s.ceiling,
        s.load.rate(), s.load.p50_us / 1000, s.load.p90_us / 1000, s.load.p99_us / 1000, Verdict(s.pass),
        s.load.errors ? StrCat("  (", s.load.errors, " errors)").c_str() : "");
  }
  Out("    ceiling = sessions / single-stream latency: about the most the session pool can overlap\n");
}

std::vector<MemRow> MemRows(const RunResults& r) {
  std::vector<MemRow> rows;
  for (const VariantResult& v : r.variants) rows.push_back({StrCat("plugin, ", v.name, " key, after [1]+[2]"), v.mem});
  for (const SlowResult& s : r.slow) {
    rows.push_back({s.sessions == 0 ? std::string("plugin, fault shim, --hsm-sessions auto, after [3]")
                                    : StrCat("plugin, fault shim, ", s.sessions, " sessions, after [3]"),
                    s.mem});
  }
  if (!r.variants.empty()) rows.push_back({"echo server (reference), after [1]+[2]", r.echo_mem, false});
  return rows;
}

bool MemoryRowPass(const MemRow& m) { return m.mem.hwm_kib > 0 && m.mem.hwm_kib <= kMemoryTargetKiB; }

// [5]'s verdict: every plugin process within the target; the worst VmHWM among them.
struct MemoryVerdict {
  bool pass = true;
  long worst_hwm_kib = 0;
};
MemoryVerdict JudgeMemory(const std::vector<MemRow>& rows) {
  MemoryVerdict verdict;
  for (const MemRow& m : rows) {
    if (!m.is_plugin) continue;
    verdict.pass = verdict.pass && MemoryRowPass(m);
    verdict.worst_hwm_kib = std::max(verdict.worst_hwm_kib, m.mem.hwm_kib);
  }
  return verdict;
}

void PrintMemory(const std::vector<MemRow>& rows) {
  Out("\n[5] Resident memory, /proc/PID/status after the process's load phases\n");
  Out("    %-46s %9s %9s %9s %9s %7s   %s\n", "", "VmHWM", "VmRSS", "RssAnon", "RssFile", "threads",
      "target VmHWM <= 20 MiB");
  for (const MemRow& m : rows) {
    Out("    %-46s %9.1f %9.1f %9.1f %9.1f %7ld   %s\n", m.label.c_str(), MiB(m.mem.hwm_kib), MiB(m.mem.rss_kib),
        MiB(m.mem.anon_kib), MiB(m.mem.file_kib), m.mem.threads, m.is_plugin ? Verdict(MemoryRowPass(m)) : "-");
  }
  Out("    (MiB; RssFile is mapped binaries and shared libraries, RssAnon heap and stacks)\n");
}

void PrintTargets(const RunOptions& o, const RunResults& r, const MemoryVerdict& memory) {
  Out("\nTargets\n");
  for (const VariantResult& v : r.variants) {
    Out("  [1] %-58s %+7.1f %%      %s\n", StrCat("single-stream p50 vs floor, <= +15 %, ", v.name, " key").c_str(),
        100 * v.overhead, Verdict(v.latency_pass));
  }
  for (const VariantResult& v : r.variants) {
    Out("  [2] %-58s %7.1f %%      %s\n", StrCat(o.streams, " streams, plugin/echo >= 90 %, ", v.name, " key").c_str(),
        100 * v.ratio, Verdict(v.throughput_pass));
  }
  for (const SlowResult& s : r.slow) {
    Out("  [3] %-58s %7.0f /s     %s\n",
        StrCat("slow HSM, ", o.shim_concurrency, " concurrent, --hsm-sessions ",
               s.sessions == 0 ? std::string("auto") : StrCat(s.sessions), ", >= 4000/s")
            .c_str(),
        s.load.rate(), Verdict(s.pass));
  }
  for (const StartResult& s : r.starts) {
    Out("  [4] %-58s %7.1f ms     %s\n", StrCat("start to serving p50 <= 100 ms, ", s.label, " key").c_str(), s.p50(),
        Verdict(s.pass()));
  }
  Out("  [5] %-58s %7.1f MiB    %s\n", "VmHWM of every plugin process <= 20 MiB (worst shown)",
      MiB(memory.worst_hwm_kib), Verdict(memory.pass));
}

// ---- JSON ---------------------------------------------------------------------------------------

void JsonConfig(Json& j, const RunOptions& o) {
  j.Open("config")
      .Int("rounds", o.rounds)
      .Int("latency_calls", static_cast<int64_t>(o.latency_calls))
      .Int("streams", o.streams)
      .Int("throughput_rounds", o.throughput_rounds)
      .Num("throughput_seconds", o.throughput_seconds)
      .Int("client_threads", o.client_threads)
      .Int("shim_delay_us", o.shim_delay_us)
      .Int("shim_concurrency", o.shim_concurrency)
      .Num("shim_seconds", o.shim_seconds)
      .Int("starts", o.starts)
      .Close();
}

void JsonSingleStream(Json& j, const RunResults& r) {
  j.OpenArray("single_stream");
  for (const VariantResult& v : r.variants) {
    j.Open().Str("variant", v.name).Str("key", v.key_kind);
    j.Summ("echo_empty", v.echo_empty).Summ("raw_hsm", v.raw_hsm).Summ("plugin_decrypt", v.plugin);
    j.Summ("echo_sized", v.echo_sized).Int("work_us", v.work_us).Summ("echo_sized_with_work", v.echo_work);
    j.Summ("raw_hsm_after_echo_call", v.raw_cold);
    j.Num("floor_us", v.floor_us).Num("overhead_pct", 100 * v.overhead).Num("target_pct", 100 * kLatencyOverheadTarget);
    j.Bool("pass", v.latency_pass).Close();
  }
  j.CloseArray();
}

void JsonLoad(Json& j, std::string_view key, const VariantResult::Load& l) {
  j.Open(key).Summ("calls", l.summary).Num("server_cpu_us_per_call", l.server_cpu_us);
  j.Num("client_cpu_us_per_call", l.client_cpu_us).Num("all_cpus_busy_pct", 100 * l.busy);
  j.OpenArray("round_per_second");
  for (double rate : l.round_rates) j.Num("", rate);
  j.CloseArray().Close();
}

void JsonThroughput(Json& j, const RunOptions& o, const RunResults& r) {
  j.OpenArray("throughput");
  for (const VariantResult& v : r.variants) {
    j.Open().Str("variant", v.name).Str("key", v.key_kind).Int("streams", o.streams);
    JsonLoad(j, "echo", v.tp_echo);
    JsonLoad(j, "plugin_decrypt", v.tp_plugin);
    j.Int("work_us", v.work_us);
    JsonLoad(j, "echo_with_work", v.tp_echo_work);
    j.Num("ratio_pct", 100 * v.ratio).Num("echo_with_work_ratio_pct", 100 * v.ratio_work);
    j.Num("target_pct", 100 * kThroughputRatioTarget);
    j.Bool("pass", v.throughput_pass).Close();
  }
  j.CloseArray();
}

void JsonSlowAndStarts(Json& j, const RunOptions& o, const RunResults& r) {
  j.OpenArray("slow_hsm");
  for (const SlowResult& s : r.slow) {
    j.Open().Int("hsm_sessions", static_cast<int64_t>(s.sessions)).Int("delay_us", o.shim_delay_us);
    j.Int("concurrency", o.shim_concurrency).Summ("single_stream", s.single).Summ("load", s.load);
    j.Num("ceiling_per_second", s.ceiling).Num("target_per_second", kSlowHsmRateTarget).Bool("pass", s.pass);
    j.Close();
  }
  j.CloseArray();
  j.OpenArray("start_to_serving");
  for (const StartResult& s : r.starts) {
    j.Open().Str("variant", s.label).OpenArray("ms");
    for (double ms : s.ms) j.Num("", ms);
    j.CloseArray().Num("p50_ms", s.p50()).Num("max_ms", s.max()).Num("target_ms", kStartTargetMs);
    j.Bool("pass", s.pass()).Close();
  }
  j.CloseArray();
}

void JsonMemory(Json& j, const std::vector<MemRow>& rows) {
  j.OpenArray("memory");
  for (const MemRow& m : rows) {
    j.Open().Str("process", m.label).Int("vm_hwm_kib", m.mem.hwm_kib).Int("vm_rss_kib", m.mem.rss_kib);
    j.Int("rss_anon_kib", m.mem.anon_kib).Int("rss_file_kib", m.mem.file_kib);
    j.Int("threads", m.mem.threads).Bool("plugin", m.is_plugin).Close();
  }
  j.CloseArray();
  j.Num("memory_target_kib", kMemoryTargetKiB).Bool("memory_pass", JudgeMemory(rows).pass);
}

}  // namespace

void PrintTable(const RunOptions& o, const RunResults& r) {
  PrintHeader(o, r);
  PrintStarts(o, r);
  if (!r.variants.empty()) {
    PrintLatency(o, r);
    PrintThroughput(o, r);
  }
  if (!r.slow.empty()) PrintSlowHsm(o, r);
  const std::vector<MemRow> rows = MemRows(r);
  PrintMemory(rows);
  PrintTargets(o, r, JudgeMemory(rows));
}

void WriteJson(const RunOptions& o, const RunResults& r) {
  if (!o.json && o.json_file.empty()) return;
  Json j;
  j.Open();
  j.Str("date", r.date).Int("cpus", r.cpus).Str("cpu_model", r.cpu_model).Str("kernel", r.kernel);
  j.Str("plugin", o.plugin).Int("hsm_sessions", static_cast<int64_t>(r.sessions_used));
  JsonConfig(j, o);
  JsonSingleStream(j, r);
  JsonThroughput(j, o, r);
  JsonSlowAndStarts(j, o, r);
  JsonMemory(j, MemRows(r));
  j.Close();
  if (o.json) std::printf("%s\n", j.text().c_str());
  if (!o.json_file.empty()) {
    std::ofstream(o.json_file) << j.text() << "\n";
    Progress("JSON written to %s", o.json_file.c_str());
  }
}

}  // namespace trousseau::bench
