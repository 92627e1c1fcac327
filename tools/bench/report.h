// Output shared by `run` and `soak`: progress lines on stderr ("bench: ..." / "soak: ..."), the report
// on stdout (or stderr when `run --json` keeps stdout for the JSON object), and the facts about the
// machine that head a report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace trousseau::bench {

// The word before ": " on every progress line ("bench" by default; `soak` sets "soak").
void SetProgressPrefix(const char* prefix);
// One progress line on stderr.
void Progress(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Where Out writes the report (stdout by default), and Out itself (flushed at once).
void SetReportStream(FILE* stream);
void Out(const char* format, ...) __attribute__((format(printf, 1, 2)));

// printf into a std::string (up to 255 characters: for table cells and short messages).
std::string Fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));

const char* Verdict(bool pass);  // "PASS" / "MISS"
std::string UtcNow();            // 2026-01-31T12:00:00Z
std::string CpuModel();          // /proc/cpuinfo "model name"
std::string Kernel();            // uname: "Linux 6.1.0"
// The last `lines` lines of `text` (a child's log, for an error message).
std::string Tail(const std::string& text, size_t lines);
inline double Ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }
inline double MiB(long kib) { return static_cast<double>(kib) / 1024.0; }

}  // namespace trousseau::bench
