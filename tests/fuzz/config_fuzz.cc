// Fuzzes the plugin's settings loader (src/app/options.h ParseOptions) through its --config YAML
// file: yaml-cpp parsing, the key -> flag mapping and CLI11's conversion and validation of every value.
// The input is the file's content (an in-memory file, so no disk I/O per run).
// Invariants: never crashes and no exception escapes; the outcome is "run" or exit code 2 (a
// config error, which systemd does not restart in a loop) with a message; settings that are
// accepted satisfy the checks the plugin relies on (exactly one backend, positive TPM timeout, a
// socket mode, a session count within range, a known log level and format).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <iostream>
#include <sstream>
#include <string>

#include "app/options.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

int ConfigFd() {
  static const int fd = ::memfd_create("trousseau-config-fuzz", MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = ConfigFd();
  FUZZ_CHECK(::ftruncate(fd, 0) == 0);
  FUZZ_CHECK(::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  std::string program = "trousseau-hsm", flag = "--config";
  char* argv[] = {program.data(), flag.data(), path.data(), nullptr};

  // What the loader prints is captured, not shown: thousands of runs per second.
  std::ostringstream out, err;
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  trousseau::app::PluginOptions options;
  const std::optional<int> exit_code = trousseau::app::ParseOptions(3, argv, options);
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);

  if (exit_code) {
    FUZZ_CHECK(*exit_code == 2);  // --help/--version cannot come from a file
    FUZZ_CHECK(!err.str().empty() || !out.str().empty());
    return 0;
  }
  FUZZ_CHECK(!options.recipient_set.empty() || options.pkcs11_uris.size() + (options.tpm_key_dir.empty() ? 0 : 1) == 1);
  FUZZ_CHECK(options.tpm_timeout.count() > 0);
  FUZZ_CHECK(options.health_cache.count() >= 0 && options.key_refresh_interval.count() >= 0);
  FUZZ_CHECK(options.hsm_sessions >= 1 && options.hsm_sessions <= 1024);
  FUZZ_CHECK(options.log_level == "trace" || options.log_level == "debug" || options.log_level == "info" ||
             options.log_level == "warn" || options.log_level == "error");
  FUZZ_CHECK(options.log_format == "text" || options.log_format == "json");
  return 0;
}
