#include "tests/testing/program_runner.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <optional>

#include "core/strings.h"
#include "tools/support/subprocess.h"

namespace trousseau::testing {

using namespace std::chrono_literals;

ProgramRunner::ProgramRunner(std::string dir, std::string prefix) : dir_(std::move(dir)), prefix_(std::move(prefix)) {}

ProgramRun ProgramRunner::Run(std::vector<std::string> argv) {
  const std::string base = StrCat(dir_, "/", prefix_, runs_++);
  support::Subprocess process(std::move(argv), support::Subprocess::SeparateOutput{base + ".out", base + ".err"});
  ProgramRun result;
  if (!process.started()) {
    ADD_FAILURE() << "cannot start the process";
    return result;
  }
  std::optional<int> code = process.Wait(60s);
  if (!code) {
    process.Signal(SIGKILL);
    code = process.Wait(10s);
    ADD_FAILURE() << "the process hung";
  }
  result.code = code.value_or(-1);
  result.out = process.Log();
  result.err = process.ErrorLog();
  outputs_.push_back(result.all());
  return result;
}

}  // namespace trousseau::testing
