// `trousseau-bench failover` (scenario_failover.h): the two-HSM setup, the load, the cut, the figures.
//
// Why two shims and a copy of libsofthsm2.so (as tests/multinode/two_hsm_test.cc): one module path
// would be one SoftHSM instance in the plugin, so both "HSMs" would fail together. The first shim
// forwards to the SoftHSM module, the second (trousseau_fault_shim_second, reading
// TROUSSEAU_FAULT_SHIM_SECOND_*) to a copy of it at another path: two independent module instances.
// Both tokens live in one token directory, since SoftHSM reads the process-wide SOFTHSM2_CONF.
#include "scenario_failover.h"

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "children.h"
#include "core/strings.h"
#include "load.h"
#include "report.h"
#include "stats.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {
namespace {

constexpr int64_t kSecondNs = 1'000'000'000;
constexpr char kLabelA[] = "failover-a";
constexpr char kLabelB[] = "failover-b";

struct Call {
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  bool ok = false;
  std::string error;  // a failed call's gRPC code and message (the plugin's errors hold no secret)
};

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return StrCat(one, " ", five, " ", fifteen);
}

// Runs `argv` to its end (60 s at most); its stdout, or nullopt (with its stderr shown) if it failed.
std::optional<std::string> RunTool(const std::string& dir, const std::vector<std::string>& argv) {
  static int runs = 0;
  const std::string base = StrCat(dir, "/tool-", ++runs);
  support::Subprocess tool(argv, support::Subprocess::SeparateOutput{base + ".out", base + ".err"});
  std::optional<int> code = tool.Wait(std::chrono::seconds(60));
  if (code != 0) {
    std::cerr << "failover: " << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << " failed:\n"
              << tool.ErrorLog() << "\n";
    return std::nullopt;
  }
  return tool.Log();
}

class Setup {
 public:
  // Two tokens in one token directory, a recipient key on each, a signed set of the two.
  bool Make(const FailoverOptions& o) {
    token_ = support::SoftHsmToken::Create(kLabelA);  // sets SOFTHSM2_CONF for this process and children
    if (!token_) return false;
    dir_ = token_->dir();
    const std::string init_b =
        StrCat("softhsm2-util --init-token --free --label ", kLabelB, " --so-pin ", support::kTestSoPin, " --pin ",
               support::kTestUserPin, " > ", dir_, "/init-b.log 2>&1");
    if (std::system(init_b.c_str()) != 0) return false;
    const std::string second_module = dir_ + "/libsofthsm2-second.so";
    std::filesystem::copy_file(o.softhsm_module, second_module);
    support::WriteShimControl(Control(kLabelA), "up");
    support::WriteShimControl(Control(kLabelB), "up");
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", o.softhsm_module.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", Control(kLabelA).c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_SECOND_MODULE", second_module.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_SECOND_CONTROL", Control(kLabelB).c_str(), 1);

    if (!RunTool(dir_, {"/usr/bin/openssl", "genpkey", "-algorithm", "ed25519", "-out", dir_ + "/admin.pem"})) {
      return false;
    }
    std::filesystem::permissions(dir_ + "/admin.pem",
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    if (!RunTool(dir_,
                 {"/usr/bin/openssl", "pkey", "-in", dir_ + "/admin.pem", "-pubout", "-out", dir_ + "/admin.pub"})) {
      return false;
    }
    for (const char* label : {kLabelA, kLabelB}) {
      std::optional<std::string> member = RunTool(
          dir_, {o.init_tool, "recipient", "create", "--pkcs11-uri", Uri(label, o.softhsm_module), "--id", label});
      if (!member) return false;
      const std::string member_file = StrCat(dir_, "/", label, ".json");
      std::ofstream(member_file) << *member;
      std::vector<std::string> add = {o.init_tool, "recipients", "add", "--set", Set(), "--member", member_file};
      if (std::string(label) == kLabelA) add.insert(add.end(), {"--name", "bench"});
      if (!RunTool(dir_, add)) return false;
    }
    return RunTool(dir_, {o.init_tool, "recipients", "sign", "--set", Set(), "--admin-key-file", dir_ + "/admin.pem"})
        .has_value();
  }

  std::vector<std::string> PluginArgv(const FailoverOptions& o, const std::string& socket, int health_port) const {
    return {o.plugin,
            "--listen",
            "unix://" + socket,
            "--recipient-set",
            Set(),
            "--recipient-admin-key",
            dir_ + "/admin.pub",
            "--recipient-state-dir",
            dir_ + "/state",
            "--pkcs11-uri",
            Uri(kLabelA, o.fault_shim),
            "--pkcs11-uri",
            Uri(kLabelB, o.second_fault_shim),
            "--hsm-timeout",
            o.hsm_timeout,
            "--health-listen",
            StrCat("127.0.0.1:", health_port),
            "--health-cache",
            "500ms"};
  }
  const std::string& dir() const { return dir_; }
  std::string Control(const std::string& label) const { return StrCat(dir_, "/", label, ".control"); }

 private:
  std::string Set() const { return dir_ + "/set.json"; }
  std::string Uri(const std::string& label, const std::string& module) const {
    return StrCat("pkcs11:token=", label, "?module-path=", module, "&pin-source=file:", token_->pin_file(),
                  "&x-recipient=trousseau-recipient");
  }

  std::unique_ptr<support::SoftHsmToken> token_;
  std::string dir_;
};

std::string DeviceName(const std::string& label) { return StrCat("pkcs11 token '", label, "'"); }

double LatencyOf(int health_port, const std::string& label) {
  return testing::MetricValue(testing::HttpGet(health_port, "/metrics").body,
                              StrCat("trousseau_hsm_device_latency_seconds{device=\"", DeviceName(label), "\"}"));
}

bool ReadyShows(int health_port, const std::string& line) {
  return testing::HttpGet(health_port, "/readyz?verbose").body.find(line) != std::string::npos;
}

// Status answers healthz "ok": a key ring is loaded (a device may be up in /readyz before that).
bool Serving(const std::string& socket) {
  auto stub = v2::KeyManagementService::NewStub(UnixChannel(socket));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  v2::StatusResponse status;
  return stub->Status(&context, v2::StatusRequest(), &status).ok() && status.healthz() == "ok";
}

// Polls `predicate` every 5 ms for at most `seconds`.
template <typename Predicate>
bool WaitFor(Predicate predicate, double seconds) {
  const int64_t deadline = NowNs() + static_cast<int64_t>(seconds * kSecondNs);
  while (NowNs() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return predicate();
}

// The seeds kube-apiserver would have sealed: 16 random 32-byte seeds.
std::optional<std::vector<std::pair<v2::DecryptRequest, std::string>>> SealSeeds(const std::string& socket) {
  auto stub = v2::KeyManagementService::NewStub(UnixChannel(socket));
  std::vector<std::pair<v2::DecryptRequest, std::string>> seeds;
  for (int i = 0; i < 16; ++i) {
    std::string seed(32, '\0');
    std::ifstream("/dev/urandom").read(seed.data(), static_cast<std::streamsize>(seed.size()));
    v2::EncryptRequest request;
    request.set_plaintext(seed);
    request.set_uid("failover-seal");
    v2::EncryptResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    grpc::Status s = stub->Encrypt(&context, request, &response);
    if (!s.ok()) {
      std::cerr << "failover: Encrypt failed: " << s.error_message() << "\n";
      return std::nullopt;
    }
    v2::DecryptRequest decrypt;
    decrypt.set_ciphertext(response.ciphertext());
    decrypt.set_key_id(response.key_id());
    decrypt.set_uid("failover-load");
    seeds.emplace_back(std::move(decrypt), std::move(seed));
  }
  return seeds;
}

std::string Ms(double us) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", us / 1000);
  return text;
}

}  // namespace

int RunFailover(const FailoverOptions& o) {
  KillChildrenOnSignal();
  const std::string load_at_start = LoadAverage();
  Setup setup;
  if (!setup.Make(o)) return 1;
  const std::string socket = setup.dir() + "/kms.sock";
  const int health_port = testing::FreeLoopbackPort();
  support::Subprocess plugin(setup.PluginArgv(o, socket, health_port), setup.dir() + "/plugin.log");
  TrackChild(plugin.pid());
  const bool both_up = WaitFor(
      [&] {
        return Serving(socket) && ReadyShows(health_port, "device up: " + DeviceName(kLabelA)) &&
               ReadyShows(health_port, "device up: " + DeviceName(kLabelB));
      },
      20);
  std::optional<std::vector<std::pair<v2::DecryptRequest, std::string>>> seeds;
  if (both_up) seeds = SealSeeds(socket);
  if (!seeds) {
    std::cerr << "failover: the plugin did not serve with both HSMs up; its log:\n" << plugin.Log() << "\n";
    UntrackChild(plugin.pid());
    return 1;
  }

  Progress("[failover] %d Decrypt streams, %.1f s, then the first HSM '%s' (%.1f s more)", o.streams, o.before_seconds,
           o.fault.c_str(), o.after_seconds);
  std::atomic<bool> stop{false};
  std::vector<std::vector<Call>> calls(static_cast<size_t>(o.streams));
  std::vector<std::thread> threads;
  for (int stream = 0; stream < o.streams; ++stream) {
    threads.emplace_back([&, stream] {
      auto stub = v2::KeyManagementService::NewStub(UnixChannel(socket));
      std::vector<Call>& mine = calls[static_cast<size_t>(stream)];
      for (size_t i = static_cast<size_t>(stream); !stop.load(); ++i) {
        const auto& [request, seed] = (*seeds)[i % seeds->size()];
        v2::DecryptResponse response;
        grpc::ClientContext context;  // kube-apiserver's default deadline
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
        Call call;
        call.start_ns = NowNs();
        grpc::Status s = stub->Decrypt(&context, request, &response);
        call.end_ns = NowNs();
        call.ok = s.ok() && response.plaintext() == seed;
        if (!call.ok) call.error = s.ok() ? "wrong plaintext" : StrCat(s.error_code(), " ", s.error_message());
        mine.push_back(call);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.before_seconds));
  // The HSM Decrypt tries first now: the one with the lower moving-average latency.
  const bool a_first = !(LatencyOf(health_port, kLabelB) < LatencyOf(health_port, kLabelA));
  const std::string cut = a_first ? kLabelA : kLabelB;
  const int64_t cut_ns = NowNs();
  support::WriteShimControl(setup.Control(cut), o.fault);
  const bool marked_down =
      WaitFor([&] { return ReadyShows(health_port, "device down: " + DeviceName(cut)); }, o.after_seconds);
  const int64_t marked_ns = NowNs();
  std::this_thread::sleep_for(std::chrono::nanoseconds(
      std::max<int64_t>(0, cut_ns + static_cast<int64_t>(o.after_seconds * kSecondNs) - NowNs())));
  stop = true;
  // A hung HSM holds the calls already inside it: let them go so the streams can end.
  support::WriteShimControl(setup.Control(cut), "up");
  for (std::thread& t : threads) t.join();
  const std::string load_at_end = LoadAverage();
  plugin.Signal(SIGTERM);
  plugin.Wait(std::chrono::seconds(10));
  UntrackChild(plugin.pid());
  if (!o.plugin_log.empty()) std::ofstream(o.plugin_log) << plugin.Log();

  std::vector<int64_t> before, first_second, after;
  size_t failed = 0, failed_in_flight = 0, failed_after_cut = 0, in_flight = 0;
  size_t errors_before = 0, errors_first = 0, errors_after = 0;
  std::vector<std::string> errors;  // the first few
  for (const std::vector<Call>& stream : calls) {
    for (const Call& c : stream) {
      const int64_t took = c.end_ns - c.start_ns;
      if (!c.ok) ++failed;
      if (c.start_ns < cut_ns && c.end_ns >= cut_ns) {
        ++in_flight;
        if (!c.ok) ++failed_in_flight;
      }
      if (c.start_ns >= cut_ns && !c.ok) ++failed_after_cut;
      if (!c.ok && errors.size() < 5) {
        errors.push_back(
            StrCat(Ms((c.start_ns - cut_ns) / 1e3), " ms after the cut, took ", Ms(took / 1e3), " ms: ", c.error));
      }
      if (c.end_ns < cut_ns) {
        before.push_back(took);
        if (!c.ok) ++errors_before;
      } else if (c.start_ns >= cut_ns && c.start_ns < cut_ns + kSecondNs) {
        first_second.push_back(took);
        if (!c.ok) ++errors_first;
      } else if (c.start_ns >= cut_ns + kSecondNs) {
        after.push_back(took);
        if (!c.ok) ++errors_after;
      }
    }
  }
  const Summary s_before = Summarize(before, errors_before);
  const Summary s_first = Summarize(first_second, errors_first);
  const Summary s_after = Summarize(after, errors_after);
  const bool pass = marked_down && failed_after_cut == 0 && s_after.p99_us < kFailoverP99TargetMs * 1000;

  std::cerr << "failover: " << o.streams << " streams, HSM " << DeviceName(cut) << " '" << o.fault << "' after "
            << o.before_seconds << " s; marked down in /readyz after "
            << (marked_down ? Ms((marked_ns - cut_ns) / 1e3) + " ms" : std::string("(never)")) << "\n"
            << "phase                       calls  errors  p50_ms  p99_ms  max_ms\n";
  const std::pair<const char*, const Summary*> phases[] = {
      {"before the cut", &s_before}, {"first second after the cut", &s_first}, {"after that", &s_after}};
  for (const auto& [name, phase] : phases) {
    const Summary& s = *phase;
    char line[160];
    std::snprintf(line, sizeof line, "%-26s %6zu  %6zu  %6s  %6s  %6s\n", name, s.count, s.errors, Ms(s.p50_us).c_str(),
                  Ms(s.p99_us).c_str(), Ms(s.max_us).c_str());
    std::cerr << line;
  }
  std::cerr << "failed Decrypts: " << failed << " in all; " << failed_in_flight << " of the " << in_flight
            << " in flight at the cut; " << failed_after_cut << " started after it (target 0)\n"
            <<
      [&] {
        std::string listed;
        for (const std::string& e : errors) listed += "  failed: " + e + "\n";
        return listed;
      }()
            << "p99 after the first second: " << Ms(s_after.p99_us) << " ms (target < " << kFailoverP99TargetMs
            << " ms): " << (pass ? "PASS" : "FAIL") << "\n"
            << "load average (1 5 15 min): " << load_at_start << " at the start, " << load_at_end << " at the end\n";
  if (o.json) {
    Json json;
    json.Open()
        .Str("fault", o.fault)
        .Int("streams", o.streams)
        .Bool("marked_down", marked_down)
        .Num("marked_down_ms", (marked_ns - cut_ns) / 1e6)
        .Summ("before", s_before)
        .Summ("first_second", s_first)
        .Summ("after", s_after)
        .Int("failed", static_cast<int64_t>(failed))
        .Int("in_flight", static_cast<int64_t>(in_flight))
        .Int("failed_in_flight", static_cast<int64_t>(failed_in_flight))
        .Int("failed_after_cut", static_cast<int64_t>(failed_after_cut))
        .Str("load_start", load_at_start)
        .Str("load_end", load_at_end)
        .Bool("pass", pass)
        .Close();
    std::cout << json.text() << "\n";
  }
  return pass ? 0 : 1;
}

}  // namespace trousseau::bench
