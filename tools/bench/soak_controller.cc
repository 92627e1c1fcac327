#include "soak_controller.h"

#include <signal.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "core/strings.h"
#include "load.h"
#include "report.h"
#include "stats.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/subprocess.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::Subprocess;

constexpr auto kActivationDeadline = 20s;  // SIGHUP -> an Encrypt under the new version

std::string JsonField(const std::string& text, const std::string& key) {
  const std::string needle = StrCat("\"", key, "\":\"");
  const size_t at = text.find(needle);
  if (at == std::string::npos) return {};
  const size_t begin = at + needle.size();
  const size_t end = text.find('"', begin);
  return end == std::string::npos ? std::string() : text.substr(begin, end - begin);
}

}  // namespace

Plan MakePlan(size_t requests, size_t rotate_every, bool outage) {
  Plan plan;
  for (size_t at = rotate_every; rotate_every > 0 && at < requests; at += rotate_every) plan.rotations.push_back(at);
  if (outage) {
    // The middle, moved off a rotation so that the two do not overlap.
    size_t at = requests / 2;
    if (rotate_every > 0 && at % rotate_every == 0) at += rotate_every / 2;
    plan.outage_at = at;
  }
  return plan;
}

void Controller::Run(const Plan& plan) {
  std::vector<std::pair<size_t, bool>> events;  // request number, is the outage
  for (size_t at : plan.rotations) events.emplace_back(at, false);
  if (plan.outage_at) events.emplace_back(*plan.outage_at, true);
  std::sort(events.begin(), events.end());
  // While a rotation settles the load may go up to the next event's mark. The last event, and the
  // outage (whose recovery is measured on the load's own answers, so the load must not stop), may
  // use half of the requests left after their mark; later marks then run late, right after.
  auto gate_during = [&](size_t i) {
    const auto [at, is_outage] = events[i];
    const size_t half_of_rest = at + (o_.requests - at) / 2;
    if (is_outage || i + 1 == events.size()) return std::max(half_of_rest, at + 1);
    return events[i + 1].first;
  };
  for (size_t i = 0; i < events.size(); ++i) {
    const auto [at, is_outage] = events[i];
    shared_.gate.store(gate_during(i));
    // Events run one after the other: a rotation's new version is active before the outage starts.
    while (shared_.issued.load() < at && !shared_.load_done.load()) std::this_thread::sleep_for(2ms);
    if (shared_.load_done.load()) {
      Progress("the load finished before the event at request %zu", at);
      skipped_ = true;
      return;
    }
    if (is_outage) {
      DoOutage();
    } else {
      DoRotation();
    }
  }
  shared_.gate.store(SIZE_MAX);
}

void Controller::DoRotation() {
  Rotation r;
  r.at_request = shared_.issued.load();
  const std::string log = StrCat(work_dir_, "/rotate-", rotations_.size() + 2, ".log");
  const int64_t t0 = NowNs();
  std::vector<std::string> argv = {o_.init_tool, "key", "rotate", "--pkcs11-uri", tool_uri_, "--json"};
  // The soak sends the SIGHUP and watches Status itself; a tool that would otherwise ask a plugin at
  // the standard socket (someone else's) is told not to.
  if (ToolHasNoWait()) argv.push_back("--no-wait");
  Subprocess tool(argv, log);
  const std::optional<int> exit = tool.Wait(60s);
  r.tool_ms = Ms(NowNs() - t0);
  r.tool_exit = exit.value_or(-1);
  r.key_id = JsonField(tool.Log(), "key_id");
  if (r.tool_exit != 0 || r.key_id.empty()) {
    Progress("rotation at request %zu: trousseau-hsm-init key rotate failed (exit %d):\n%s", r.at_request, r.tool_exit,
             tool.Log().c_str());
    rotations_.push_back(r);
    return;
  }
  const int64_t hup = NowNs();
  kill(plugin_, SIGHUP);
  // Active = the plugin's Status reports it (what kube-apiserver watches).
  const int64_t deadline = hup + std::chrono::nanoseconds(kActivationDeadline).count();
  while (NowNs() < deadline) {
    v2::StatusResponse status;
    if (status_stub_->Status(NewContext().get(), v2::StatusRequest(), &status).ok() && status.key_id() == r.key_id) {
      r.active_ms = Ms(NowNs() - hup);
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  Progress("rotation at request %zu: %s, tool %.0f ms, Status reports it %s after SIGHUP", r.at_request,
           r.key_id.c_str(), r.tool_ms, r.active_ms ? StrCat(static_cast<long>(*r.active_ms), " ms").c_str() : "NEVER");
  r.hup_ns = hup;
  rotations_.push_back(r);
}

bool Controller::ToolHasNoWait() {
  if (!tool_has_no_wait_) {
    Subprocess help({o_.init_tool, "key", "rotate", "--help"}, StrCat(work_dir_, "/rotate-help.log"));
    help.Wait(30s);
    tool_has_no_wait_ = help.Log().find("--no-wait") != std::string::npos;
  }
  return *tool_has_no_wait_;
}

void Controller::DoOutage() {
  Outage out;
  out.at_request = shared_.issued.load();
  Progress("outage at request %zu: shim \"down\" for %lld ms", out.at_request,
           static_cast<long long>(outage_length_.count()));
  out.down_ns = NowNs();
  shared_.down_ns.store(out.down_ns);
  support::WriteShimControl(control_, "down");
  std::this_thread::sleep_for(outage_length_);  // the fault itself lasts this long
  out.up_ns = NowNs();
  shared_.up_ns.store(out.up_ns);
  support::WriteShimControl(control_, "up");
  const int64_t deadline = out.up_ns + 60'000'000'000;
  while (shared_.first_ok_after_up_ns.load() == 0 && NowNs() < deadline && !shared_.load_done.load()) {
    std::this_thread::sleep_for(1ms);
  }
  if (const int64_t ok = shared_.first_ok_after_up_ns.load(); ok != 0) out.first_ok_ms = Ms(ok - out.up_ns);
  Progress("shim \"up\": first OK answer %s after it",
           out.first_ok_ms ? StrCat(static_cast<long>(*out.first_ok_ms), " ms").c_str() : "NEVER");
  outage_ = out;
}

}  // namespace trousseau::bench
