#include "soak_report.h"

#include <algorithm>
#include <fstream>
#include <thread>

#include "report.h"

namespace trousseau::bench {
namespace {

constexpr double kRssGrowthLimit = 0.05;

struct Criterion {
  std::string what;
  std::string measured;
  bool pass;
};

// What the criteria and the summary are computed from.
struct Figures {
  const Sample* at10 = nullptr;  // the first sample at 10 % of the requests or later
  long rss_min = 0, rss_max = 0, fds_min = 0, fds_max = 0;
  double rss_growth = 0;
  size_t outage_errors = 0, outage_unavailable = 0, stray_errors = 0;
  std::optional<double> last_error_ms;
  size_t wrong = 0;
  Summary latency;
  size_t rotations_active = 0;
  double worst_activation_ms = 0;
  size_t versions_final_ok = 0;
};

void SampleFigures(const SoakRun& run, Figures& f) {
  for (const Sample& s : run.samples) {
    if (f.at10 == nullptr && s.progress >= 0.10) f.at10 = &s;
    f.rss_min = f.rss_min == 0 ? s.rss_kib : std::min(f.rss_min, s.rss_kib);
    f.rss_max = std::max(f.rss_max, s.rss_kib);
    f.fds_min = f.fds_min == 0 ? s.fds : std::min(f.fds_min, s.fds);
    f.fds_max = std::max(f.fds_max, s.fds);
  }
  if (f.at10 == nullptr) f.at10 = &run.samples.back();
  f.rss_growth = f.at10->rss_kib > 0 ? static_cast<double>(run.end_sample.rss_kib - f.at10->rss_kib) /
                                           static_cast<double>(f.at10->rss_kib)
                                     : 1.0;
}

Figures ComputeFigures(SoakRun& run) {
  Figures f;
  SampleFigures(run, f);
  Counts& counts = run.load->counts();
  for (int p : {kOutage, kRecovery}) {
    f.outage_errors += counts.errors_in(static_cast<Phase>(p));
    f.outage_unavailable += counts.errors[p][grpc::UNAVAILABLE];
  }
  for (int p : {kBefore, kAfter, kFinal}) f.stray_errors += counts.errors_in(static_cast<Phase>(p));
  const std::optional<Outage>& out = run.controller->outage();
  if (out && run.shared->last_error_after_up_ns.load() != 0) {
    f.last_error_ms = Ms(run.shared->last_error_after_up_ns - out->up_ns);
  }
  f.wrong = counts.wrong_plaintexts + run.final_check.wrong;
  std::vector<int64_t> latencies = std::move(counts.latencies_ns);
  f.latency = Summarize(latencies, 0, run.seconds);
  for (const Rotation& r : run.controller->rotations()) {
    if (r.active_ms) {
      ++f.rotations_active;
      f.worst_activation_ms = std::max(f.worst_activation_ms, *r.active_ms);
    }
  }
  for (size_t n : run.final_check.ok_by_version) f.versions_final_ok += n > 0 ? 1 : 0;
  return f;
}

void OutageCriteria(const SoakRun& run, const Figures& f, std::vector<Criterion>& criteria) {
  const std::optional<Outage>& out = run.controller->outage();
  if (out) {
    criteria.push_back({"outage errors all UNAVAILABLE", Fmt("%zu of %zu", f.outage_unavailable, f.outage_errors),
                        f.outage_unavailable == f.outage_errors});
    criteria.push_back({"the outage was felt (some UNAVAILABLE)", Fmt("%zu", f.outage_errors), f.outage_errors > 0});
    criteria.push_back({Fmt("serving again within %s of \"up\"", run.options->recovery_allowance.c_str()),
                        out->first_ok_ms ? Fmt("%.0f ms", *out->first_ok_ms) : "never",
                        out->first_ok_ms && *out->first_ok_ms <= static_cast<double>(run.allowance.count())});
  } else if (run.plan.outage_at) {
    criteria.push_back({"the outage took place", "no", false});
  }
}

std::vector<Criterion> Criteria(const SoakRun& run, const Figures& f) {
  const Counts& counts = run.load->counts();
  const size_t versions = run.load->key_ids().size();
  std::vector<Criterion> criteria;
  const char* aborted = run.shared->abort.load();
  criteria.push_back({"the run went to its end", aborted ? aborted : "yes", aborted == nullptr});
  criteria.push_back({"every request answered", Fmt("%zu / %zu", counts.answered, run.options->requests),
                      counts.answered == run.options->requests});
  criteria.push_back({"0 wrong plaintexts (run + final check)", Fmt("%zu", f.wrong), f.wrong == 0});
  criteria.push_back({"every Encrypt answer well-formed, never under an older version",
                      Fmt("%zu bad, %zu flip-backs", counts.bad_encrypts, counts.flipbacks),
                      counts.bad_encrypts == 0 && counts.flipbacks == 0});
  criteria.push_back(
      {"no error outside the outage + recovery allowance", Fmt("%zu", f.stray_errors), f.stray_errors == 0});
  OutageCriteria(run, f, criteria);
  criteria.push_back(
      {"every rotation active after SIGHUP",
       Fmt("%zu / %zu (worst %.0f ms)", f.rotations_active, run.plan.rotations.size(), f.worst_activation_ms),
       f.rotations_active == run.plan.rotations.size() && !run.controller->skipped()});
  criteria.push_back({"every version decrypts at the end",
                      Fmt("%zu / %zu versions, %zu calls", f.versions_final_ok, versions, run.final_check.calls),
                      f.versions_final_ok == versions && versions == run.plan.rotations.size() + 1});
  const Sample& end = run.end_sample;
  criteria.push_back({"VmRSS growth 10 % -> 100 % < 5 %",
                      Fmt("%ld -> %ld KiB = %+.2f %%", f.at10->rss_kib, end.rss_kib, 100 * f.rss_growth),
                      end.rss_kib > 0 && f.rss_growth < kRssGrowthLimit});
  criteria.push_back({"open fds do not grow (10 % -> 100 %)", Fmt("%ld -> %ld", f.at10->fds, end.fds),
                      end.rss_kib > 0 && end.fds <= f.at10->fds});
  criteria.push_back({"plugin alive (same PID) and exits 0 on SIGTERM",
                      Fmt("%s, exit %d", run.plugin_alive ? "alive" : "GONE", run.plugin_exit.value_or(-1)),
                      run.plugin_alive && run.plugin_exit == 0});
  return criteria;
}

void PrintTotals(const SoakRun& run, const Figures& f) {
  const SoakOptions& o = *run.options;
  const Counts& counts = run.load->counts();
  Out("\ntrousseau-hsm soak   %s   %u CPU(s)\n", run.date.c_str(), std::thread::hardware_concurrency());
  Out("plugin %s (pid %d), through the fault shim to SoftHSM; %d streams, 3 s deadline per call\n", o.plugin.c_str(),
      run.plugin_pid, o.streams);
  Out("requests %zu answered in %.1f s = %.0f /s  (OK: Encrypt %zu, Decrypt %zu; Decrypts issued: %zu first "
      "decrypts of a new ciphertext, %zu of a random earlier one; Decrypts OK under an older version than "
      "the newest: %zu)\n",
      counts.answered, run.seconds, static_cast<double>(counts.answered) / run.seconds, counts.encrypt_ok,
      counts.decrypt_ok, counts.decrypt_unverified, counts.decrypt_old, counts.decrypt_older_version);
  Out("load held at an event's mark (waiting for the previous rotation or recovery): %.2f s\n",
      run.load->held_seconds());
  Out("latency of OK calls: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.1f ms\n", f.latency.p50_us, f.latency.p90_us,
      f.latency.p99_us, f.latency.max_us / 1000);
}

// Where the slowest OK call ended, against the events (seconds since the start of the load).
void PrintSlowest(const SoakRun& run) {
  const Counts& counts = run.load->counts();
  auto at = [&](int64_t ns) { return static_cast<double>(ns - run.begin_ns) / 1e9; };
  std::string timeline;
  for (const Rotation& r : run.controller->rotations()) {
    if (r.hup_ns != 0) {
      timeline += Fmt(" SIGHUP %.2f s (%s),", at(r.hup_ns), r.key_id.substr(0, r.key_id.find('-', 5)).c_str());
    }
  }
  const std::optional<Outage>& out = run.controller->outage();
  if (out) timeline += Fmt(" down %.2f s, up %.2f s,", at(out->down_ns), at(out->up_ns));
  if (!timeline.empty()) timeline.pop_back();
  Out("slowest OK call: %s, %.1f ms, ended at %.2f s; events:%s\n", counts.slowest_encrypt ? "Encrypt" : "Decrypt",
      Ms(counts.slowest_ns), at(counts.slowest_end_ns), timeline.c_str());
}

void PrintErrors(const SoakRun& run) {
  const Counts& counts = run.load->counts();
  Out("errors by phase and code:\n");
  for (int p = 0; p < kPhaseCount; ++p) {
    std::string line;
    for (int c = 0; c < kCodeCount; ++c) {
      if (counts.errors[p][c] > 0) line += Fmt(" %s %zu", CodeName(c), counts.errors[p][c]);
    }
    Out("  %-28s%s\n", kPhaseNames[p], line.empty() ? " none" : line.c_str());
  }
  Out("wrong plaintexts: %zu in the run, %zu in the final check (%zu Decrypts: up to %zu per version + %zu "
      "never decrypted before, %zu errors)\n",
      counts.wrong_plaintexts, run.final_check.wrong, run.final_check.calls, kFinalCheckPerVersion,
      run.load->corpus().unverified(), run.final_check.errors);
}

void PrintVersions(const SoakRun& run) {
  Out("rotations (trousseau-hsm-init key rotate, then SIGHUP; times after the SIGHUP):\n");
  for (const Rotation& r : run.controller->rotations()) {
    const std::optional<int64_t> first_encrypt = run.shared->KeySeen(r.key_id);
    Out("  at request %7zu  %-44s tool %4.0f ms, exit %d; Status reports it after %s, first Encrypt "
        "under it after %s\n",
        r.at_request, r.key_id.c_str(), r.tool_ms, r.tool_exit,
        r.active_ms ? Fmt("%.0f ms", *r.active_ms).c_str() : "NEVER",
        first_encrypt && r.hup_ns ? Fmt("%.0f ms", Ms(*first_encrypt - r.hup_ns)).c_str() : "never");
  }
  Out("  plugin log: %zu \"active key changed\" lines\n", run.key_changes);
  Out("per version (Encrypt OK / Decrypt OK in the run / final-check OK):\n");
  const Counts& counts = run.load->counts();
  const std::vector<std::string>& key_ids = run.load->key_ids();
  for (size_t k = 0; k < key_ids.size(); ++k) {
    Out("  %-44s %8zu %8zu %6zu\n", key_ids[k].c_str(), counts.encrypts_by_version[k], counts.decrypts_by_version[k],
        run.final_check.ok_by_version[k]);
  }
}

void PrintResources(const SoakRun& run, const Figures& f) {
  const std::optional<Outage>& out = run.controller->outage();
  if (out) {
    Out("outage: shim \"down\" at request %zu for %.1f s; after \"up\": first OK %s, last error %s\n", out->at_request,
        Ms(out->up_ns - out->down_ns) / 1000, out->first_ok_ms ? Fmt("%.0f ms", *out->first_ok_ms).c_str() : "never",
        f.last_error_ms ? Fmt("%.0f ms", *f.last_error_ms).c_str() : "none after up");
  }
  Out("VmRSS KiB: start %ld, at 10 %% %ld, at 100 %% %ld (min %ld, max %ld over %zu samples), after the final "
      "check %ld\n",
      run.rss_start, f.at10->rss_kib, run.end_sample.rss_kib, f.rss_min, f.rss_max, run.samples.size(),
      run.rss_after_final);
  Out("open fds: start %ld, at 10 %% %ld, at 100 %% %ld (min %ld, max %ld)\n", run.fds_start, f.at10->fds,
      run.end_sample.fds, f.fds_min, f.fds_max);
}

bool PrintCriteria(const std::vector<Criterion>& criteria) {
  Out("\nCriteria\n");
  bool all = true;
  for (const Criterion& c : criteria) {
    Out("  %-62s %-34s %s\n", c.what.c_str(), c.measured.c_str(), c.pass ? "PASS" : "FAIL");
    all = all && c.pass;
  }
  Out("soak: %s\n", all ? "PASS" : "FAIL");
  return all;
}

void JsonEvents(Json& j, const SoakRun& run, const Figures& f) {
  j.OpenArray("rotations");
  for (const Rotation& r : run.controller->rotations()) {
    j.Open().Int("at_request", static_cast<int64_t>(r.at_request)).Str("key_id", r.key_id);
    j.Num("tool_ms", r.tool_ms).Num("active_ms", r.active_ms.value_or(-1)).Close();
  }
  j.CloseArray();
  if (const std::optional<Outage>& out = run.controller->outage(); out) {
    j.Open("outage").Int("at_request", static_cast<int64_t>(out->at_request));
    j.Num("seconds", Ms(out->up_ns - out->down_ns) / 1000).Num("first_ok_ms", out->first_ok_ms.value_or(-1));
    j.Num("last_error_ms", f.last_error_ms.value_or(-1)).Close();
  }
}

void WriteJson(const SoakRun& run, const Figures& f, bool all) {
  const SoakOptions& o = *run.options;
  const Counts& counts = run.load->counts();
  Json j;
  j.Open();
  j.Str("date", run.date).Int("requests", static_cast<int64_t>(o.requests)).Int("streams", o.streams);
  j.Int("rotate_every", static_cast<int64_t>(o.rotate_every)).Str("outage", o.outage);
  j.Int("answered", static_cast<int64_t>(counts.answered)).Num("seconds", run.seconds);
  j.Num("held_seconds", run.load->held_seconds());
  j.Num("per_second", static_cast<double>(counts.answered) / run.seconds);
  j.Int("encrypt_ok", static_cast<int64_t>(counts.encrypt_ok))
      .Int("decrypt_ok", static_cast<int64_t>(counts.decrypt_ok));
  j.Int("wrong_plaintexts", static_cast<int64_t>(f.wrong));
  j.Summ("latency_ok", f.latency);
  j.Open("errors");
  for (int p = 0; p < kPhaseCount; ++p) {
    j.Open(kPhaseNames[p]);
    for (int c = 0; c < kCodeCount; ++c) {
      if (counts.errors[p][c] > 0) j.Int(CodeName(c), static_cast<int64_t>(counts.errors[p][c]));
    }
    j.Close();
  }
  j.Close();
  JsonEvents(j, run, f);
  j.Int("rss_kib_10pct", f.at10->rss_kib).Int("rss_kib_100pct", run.end_sample.rss_kib);
  j.Num("rss_growth_pct", 100 * f.rss_growth);
  j.Int("fds_10pct", f.at10->fds).Int("fds_100pct", run.end_sample.fds).Int("fds_max", f.fds_max);
  j.Bool("pass", all);
  j.Close();
  std::ofstream(o.json_file) << j.text() << "\n";
}

}  // namespace

bool ReportSoak(SoakRun& run) {
  const Figures f = ComputeFigures(run);
  const std::vector<Criterion> criteria = Criteria(run, f);
  PrintTotals(run, f);
  PrintSlowest(run);
  PrintErrors(run);
  PrintVersions(run);
  PrintResources(run, f);
  const bool all = PrintCriteria(criteria);
  if (!run.options->json_file.empty()) WriteJson(run, f, all);
  return all;
}

}  // namespace trousseau::bench
