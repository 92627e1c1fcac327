// Programs a test runs to their end (the tools, the device scripts), with everything they printed kept so the
// test can check that no PIN or password appears in any of it.
#pragma once

#include <string>
#include <vector>

namespace trousseau::testing {

// How a program ended and what it printed.
struct ProgramRun {
  int code = -1;  // exit code, 128 + signal, or -1 if it could not start
  std::string out;
  std::string err;
  std::string all() const { return out + err; }
};

// Runs programs one after another, each to its end (killed, and the test failed, after 60 s), with stdout and
// stderr apart in files `dir`/`prefix`N.out and .err. The environment is this process's.
class ProgramRunner {
 public:
  ProgramRunner(std::string dir, std::string prefix);

  ProgramRun Run(std::vector<std::string> argv);
  // Output of something else the test ran (a plugin's log), kept with the rest.
  void Keep(std::string output) { outputs_.push_back(std::move(output)); }
  // What every run printed (stdout and stderr together), in order.
  const std::vector<std::string>& outputs() const { return outputs_; }

 private:
  std::string dir_;
  std::string prefix_;
  int runs_ = 0;
  std::vector<std::string> outputs_;
};

}  // namespace trousseau::testing
