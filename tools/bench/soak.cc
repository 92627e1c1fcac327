#include "soak.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "core/strings.h"
#include "load.h"
#include "stats.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;
using support::Subprocess;

// kube-apiserver sends a UUID as uid.
constexpr char kUid[] = "5c1f8a3e-2d4b-4f6a-8e9c-0b1a2c3d4e5f";
constexpr size_t kSeedBytes = 32;  // kube-apiserver's DEK seed
// A stream whose call failed waits this long before its next call (kube-apiserver does not hammer a
// failing plugin either); without it the streams would spend the request budget on the outage.
constexpr auto kPauseAfterError = 100ms;
// Sealed items kept per key version to decrypt again later (reservoir sample over the whole run).
constexpr size_t kReservoirPerVersion = 4096;
// After the run, this many items of every version are decrypted once more.
constexpr size_t kFinalCheckPerVersion = 512;
constexpr double kRssGrowthLimit = 0.05;
constexpr auto kActivationDeadline = 20s;  // SIGHUP -> an Encrypt under the new version
constexpr auto kSamplePeriod = 200ms;
constexpr auto kGatePoll = 5ms;

void Progress(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Progress(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs("soak: ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
}

std::string UtcNow() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

std::string Fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string Fmt(const char* format, ...) {
  char buf[256];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  return buf;
}

double Ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }

// The plugin, killed if the soak itself is interrupted (its Subprocess destructor would not run).
std::atomic<pid_t> g_plugin_pid{0};

extern "C" void KillPluginAndExit(int sig) {
  if (const pid_t pid = g_plugin_pid.load(); pid > 0) kill(pid, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

// ---- the plugin process, from outside -------------------------------------------------------------

long VmRssKib(pid_t pid) {
  std::ifstream in(StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

long OpenFds(pid_t pid) {
  const std::string dir = StrCat("/proc/", pid, "/fd");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  long n = 0;
  while (const dirent* entry = readdir(d)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

struct Sample {
  double progress = 0;  // answered / requests
  int64_t at_ns = 0;
  long rss_kib = 0;
  long fds = 0;
};

// ---- what was sealed, to decrypt again ------------------------------------------------------------

struct Item {
  std::string seed;
  std::string ciphertext;
  std::string key_id;
  std::vector<std::pair<std::string, std::string>> annotations;
  uint32_t key_index = 0;  // order in which this key_id first came back from Encrypt
};

// Touched only by the load thread.
class Corpus {
 public:
  explicit Corpus(uint64_t seed) : rng_(seed) {}

  // A new ciphertext that nobody has decrypted yet: the next FIFO Decrypt takes it.
  void AddUnverified(Item item) { unverified_.push_back(std::move(item)); }
  std::optional<Item> TakeUnverified() {
    if (unverified_.empty()) return std::nullopt;
    Item item = std::move(unverified_.front());
    unverified_.pop_front();
    return item;
  }
  // Its Decrypt failed (an outage): it must still be decrypted later.
  void ReturnUnverified(Item item) { unverified_.push_front(std::move(item)); }
  size_t unverified() const { return unverified_.size(); }
  std::deque<Item>& unverified_items() { return unverified_; }

  // Decrypted once correctly: from now on a candidate for the random re-decrypts (reservoir sample,
  // so items from the whole life of each version are kept).
  void AddVerified(Item item) {
    const uint32_t k = item.key_index;
    if (reservoirs_.size() <= k) {
      reservoirs_.resize(k + 1);
      seen_.resize(k + 1, 0);
    }
    const uint64_t n = ++seen_[k];
    if (reservoirs_[k].size() < kReservoirPerVersion) {
      reservoirs_[k].push_back(std::move(item));
    } else if (const uint64_t slot = rng_() % n; slot < kReservoirPerVersion) {
      reservoirs_[k][slot] = std::move(item);
    }
  }
  // A verified item of a version chosen uniformly (so old versions keep being exercised).
  const Item* RandomVerified() {
    std::vector<uint32_t> versions;
    for (uint32_t k = 0; k < reservoirs_.size(); ++k) {
      if (!reservoirs_[k].empty()) versions.push_back(k);
    }
    if (versions.empty()) return nullptr;
    const auto& r = reservoirs_[versions[rng_() % versions.size()]];
    return &r[rng_() % r.size()];
  }
  const std::vector<std::vector<Item>>& reservoirs() const { return reservoirs_; }

  std::string NewSeed() {
    std::string seed(kSeedBytes, '\0');
    for (size_t i = 0; i < kSeedBytes; i += 8) {
      const uint64_t r = rng_();
      std::memcpy(seed.data() + i, &r, std::min<size_t>(8, kSeedBytes - i));
    }
    return seed;
  }

 private:
  std::mt19937_64 rng_;
  std::deque<Item> unverified_;
  std::vector<std::vector<Item>> reservoirs_;
  std::vector<uint64_t> seen_;
};

// ---- results --------------------------------------------------------------------------------------

enum Phase { kBefore, kOutage, kRecovery, kAfter, kFinal, kPhaseCount };
constexpr const char* kPhaseNames[kPhaseCount] = {"before the outage", "outage (down..up)", "recovery (up..+allowance)",
                                                  "after recovery", "final check"};
constexpr int kCodeCount = 17;

const char* CodeName(int code) {
  static constexpr const char* kNames[kCodeCount] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
      "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < kCodeCount ? kNames[code] : "?";
}

struct Counts {
  size_t answered = 0;
  size_t encrypt_ok = 0, decrypt_ok = 0;
  size_t decrypt_unverified = 0, decrypt_old = 0;  // decrypts issued by kind
  size_t decrypt_older_version = 0;  // decrypts OK of a version older than the active one at the time
  size_t wrong_plaintexts = 0;
  size_t bad_encrypts = 0;   // OK but empty ciphertext/key_id, or the seed visible in the ciphertext
  size_t flipbacks = 0;      // an Encrypt started after a newer version was seen came back under an older one
  std::array<std::array<size_t, kCodeCount>, kPhaseCount> errors{};
  std::vector<size_t> encrypts_by_version, decrypts_by_version;
  std::vector<int64_t> latencies_ns;  // of OK calls
  int64_t slowest_ns = 0, slowest_end_ns = 0;  // the slowest OK call, to place it among the events
  bool slowest_encrypt = false;
  size_t errors_in(Phase p) const {
    size_t n = 0;
    for (size_t c : errors[p]) n += c;
    return n;
  }
};

struct Rotation {
  size_t at_request = 0;
  std::string key_id;
  int tool_exit = -1;
  double tool_ms = 0;
  std::optional<double> active_ms;  // SIGHUP -> the plugin's Status reports its key_id
  int64_t hup_ns = 0;
};

// ---- shared between the load thread, the controller and the sampler --------------------------------

struct Shared {
  std::atomic<size_t> issued{0};
  // The load issues no request numbered `gate` or above until the controller moves it: an event
  // (a rotation settling, the outage) is never overtaken by the next one, nor by the end of the run.
  std::atomic<size_t> gate{SIZE_MAX};
  std::atomic<size_t> answered{0};
  std::atomic<bool> load_done{false};
  // Set when the run cannot go on (the plugin exited, --time-limit passed): the load stops issuing.
  std::atomic<const char*> abort{nullptr};
  std::atomic<int64_t> down_ns{0}, up_ns{0};
  std::atomic<int64_t> first_ok_after_up_ns{0}, last_error_after_up_ns{0};
  std::atomic<size_t> errors{0};
  std::mutex keys_mutex;
  std::vector<std::pair<std::string, int64_t>> keys;  // key_id, first seen in an Encrypt answer (ns)

  std::optional<int64_t> KeySeen(const std::string& key_id) {
    std::lock_guard lock(keys_mutex);
    for (const auto& [id, at] : keys) {
      if (id == key_id) return at;
    }
    return std::nullopt;
  }
};

// ---- the load: `streams` calls in flight until `requests` are answered ------------------------------

class Load {
 public:
  Load(v2::KeyManagementService::Stub& stub, Shared& shared, size_t requests, int streams, int64_t allowance_ns)
      : stub_(stub), shared_(shared), requests_(requests), streams_(streams), allowance_ns_(allowance_ns),
        corpus_(std::random_device{}() ^ static_cast<uint64_t>(NowNs())) {
    counts_.latencies_ns.reserve(requests);
  }

  void Run() {
    grpc::CompletionQueue cq;
    std::vector<std::unique_ptr<Slot>> slots;
    for (int i = 0; i < streams_; ++i) slots.push_back(std::make_unique<Slot>());
    int outstanding = 0;
    for (auto& slot : slots) {
      if (Issue(*slot, cq)) ++outstanding;
    }
    void* tag = nullptr;
    bool ok = false;
    while (outstanding > 0 && cq.Next(&tag, &ok)) {
      Tag& t = *static_cast<Tag*>(tag);
      Slot& slot = *t.slot;
      if (t.is_alarm) {
        if (!Issue(slot, cq)) --outstanding;
        continue;
      }
      const bool failed = !Complete(slot);
      if (failed && shared_.issued.load() < requests_) {
        slot.alarm.Set(&cq, std::chrono::system_clock::now() + kPauseAfterError, &slot.alarm_tag);
      } else if (!Issue(slot, cq)) {
        --outstanding;
      }
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    counts_.answered = shared_.answered.load();
  }

  Counts& counts() { return counts_; }
  double held_seconds() const { return static_cast<double>(held_ns_) / 1e9; }
  Corpus& corpus() { return corpus_; }
  const std::vector<std::string>& key_ids() const { return key_ids_; }

 private:
  enum Kind { kEncrypt, kDecryptUnverified, kDecryptOld };
  struct Slot;
  struct Tag {
    Slot* slot;
    bool is_alarm;
  };
  struct Slot {
    Slot() : call_tag{this, false}, alarm_tag{this, true} {}
    Tag call_tag, alarm_tag;
    Kind kind = kEncrypt;
    Item item;
    std::unique_ptr<grpc::ClientContext> context;
    v2::EncryptRequest encrypt_request;
    v2::EncryptResponse encrypt_response;
    v2::DecryptRequest decrypt_request;
    v2::DecryptResponse decrypt_response;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v2::EncryptResponse>> encrypt_reader;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v2::DecryptResponse>> decrypt_reader;
    grpc::Status status;
    int64_t start_ns = 0;
    grpc::Alarm alarm;
  };

  // Starts the next call on `slot` (or, held at the gate, looks again in a moment); false when the
  // request budget is spent.
  bool Issue(Slot& slot, grpc::CompletionQueue& cq) {
    const size_t n = shared_.issued.load();
    if (n >= requests_ || shared_.abort.load() != nullptr) return false;
    if (n >= shared_.gate.load()) {
      if (held_since_ns_ == 0) held_since_ns_ = NowNs();
      slot.alarm.Set(&cq, std::chrono::system_clock::now() + kGatePoll, &slot.alarm_tag);
      return true;
    }
    if (held_since_ns_ != 0) {
      held_ns_ += NowNs() - held_since_ns_;
      held_since_ns_ = 0;
    }
    shared_.issued.store(n + 1);  // this thread alone issues
    // One in three calls seals a fresh seed; one decrypts the oldest ciphertext nobody has decrypted
    // yet (so every ciphertext sealed is checked once), one decrypts a random earlier one of a random
    // version (so old versions keep decrypting after each rotation).
    Kind kind = static_cast<Kind>(n % 3);
    std::optional<Item> item;
    const Item* old = nullptr;
    if (kind == kDecryptUnverified) {
      item = corpus_.TakeUnverified();
      if (!item) kind = kDecryptOld;
    }
    if (kind == kDecryptOld) {
      old = corpus_.RandomVerified();
      if (old == nullptr) {
        item = corpus_.TakeUnverified();
        kind = item ? kDecryptUnverified : kEncrypt;
      }
    }
    slot.kind = kind;
    slot.context = NewContext();
    slot.start_ns = NowNs();
    if (kind == kEncrypt) {
      slot.item = Item{};
      slot.item.seed = corpus_.NewSeed();
      slot.encrypt_request.set_plaintext(slot.item.seed);
      slot.encrypt_request.set_uid(kUid);
      slot.encrypt_response.Clear();
      slot.encrypt_reader = stub_.PrepareAsyncEncrypt(slot.context.get(), slot.encrypt_request, &cq);
      slot.encrypt_reader->StartCall();
      slot.encrypt_reader->Finish(&slot.encrypt_response, &slot.status, &slot.call_tag);
      return true;
    }
    if (item) {
      slot.item = std::move(*item);
    } else {
      slot.item = *old;
    }
    if (kind == kDecryptUnverified) {
      ++counts_.decrypt_unverified;
    } else {
      ++counts_.decrypt_old;
    }
    slot.decrypt_request.Clear();
    slot.decrypt_request.set_ciphertext(slot.item.ciphertext);
    slot.decrypt_request.set_uid(kUid);
    slot.decrypt_request.set_key_id(slot.item.key_id);
    for (const auto& [k, v] : slot.item.annotations) (*slot.decrypt_request.mutable_annotations())[k] = v;
    slot.decrypt_response.Clear();
    slot.decrypt_reader = stub_.PrepareAsyncDecrypt(slot.context.get(), slot.decrypt_request, &cq);
    slot.decrypt_reader->StartCall();
    slot.decrypt_reader->Finish(&slot.decrypt_response, &slot.status, &slot.call_tag);
    return true;
  }

  Phase PhaseAt(int64_t ns) const {
    const int64_t down = shared_.down_ns.load(), up = shared_.up_ns.load();
    if (down == 0 || ns < down) return kBefore;
    if (up == 0 || ns < up) return kOutage;
    if (ns < up + allowance_ns_) return kRecovery;
    return kAfter;
  }

  uint32_t KeyIndex(const std::string& key_id, int64_t now) {
    if (auto it = key_index_.find(key_id); it != key_index_.end()) return it->second;
    const auto index = static_cast<uint32_t>(key_ids_.size());
    key_index_.emplace(key_id, index);
    key_ids_.push_back(key_id);
    key_first_seen_ns_.push_back(now);
    counts_.encrypts_by_version.resize(key_ids_.size(), 0);
    counts_.decrypts_by_version.resize(key_ids_.size(), 0);
    std::lock_guard lock(shared_.keys_mutex);
    shared_.keys.emplace_back(key_id, now);
    return index;
  }

  // Checks the answer on `slot`; false if the call failed (an error, not a wrong answer).
  bool Complete(Slot& slot) {
    const int64_t now = NowNs();
    shared_.answered.fetch_add(1);
    const bool up_seen = shared_.up_ns.load() != 0;
    if (!slot.status.ok()) {
      const int code = static_cast<int>(slot.status.error_code());
      ++counts_.errors[PhaseAt(now)][code >= 0 && code < kCodeCount ? code : static_cast<int>(grpc::UNKNOWN)];
      shared_.errors.fetch_add(1);
      if (up_seen && now > shared_.up_ns.load()) shared_.last_error_after_up_ns.store(now);
      if (slot.kind == kDecryptUnverified) corpus_.ReturnUnverified(std::move(slot.item));
      return false;
    }
    if (up_seen && shared_.first_ok_after_up_ns.load() == 0 && slot.start_ns > shared_.up_ns.load()) {
      shared_.first_ok_after_up_ns.store(now);
    }
    counts_.latencies_ns.push_back(now - slot.start_ns);
    if (now - slot.start_ns > counts_.slowest_ns) {
      counts_.slowest_ns = now - slot.start_ns;
      counts_.slowest_end_ns = now;
      counts_.slowest_encrypt = slot.kind == kEncrypt;
    }
    if (slot.kind == kEncrypt) {
      ++counts_.encrypt_ok;
      const v2::EncryptResponse& r = slot.encrypt_response;
      if (r.ciphertext().empty() || r.key_id().empty() ||
          r.ciphertext().find(slot.item.seed) != std::string::npos) {
        ++counts_.bad_encrypts;
        return true;
      }
      const uint32_t index = KeyIndex(r.key_id(), now);
      if (index + 1 < key_ids_.size() && slot.start_ns > key_first_seen_ns_.back()) ++counts_.flipbacks;
      ++counts_.encrypts_by_version[index];
      slot.item.ciphertext = r.ciphertext();
      slot.item.key_id = r.key_id();
      slot.item.key_index = index;
      slot.item.annotations.assign(r.annotations().begin(), r.annotations().end());
      corpus_.AddUnverified(std::move(slot.item));
      return true;
    }
    ++counts_.decrypt_ok;
    ++counts_.decrypts_by_version[slot.item.key_index];
    if (slot.item.key_index + 1 < key_ids_.size()) ++counts_.decrypt_older_version;
    if (slot.decrypt_response.plaintext() != slot.item.seed) {
      ++counts_.wrong_plaintexts;
      return true;
    }
    if (slot.kind == kDecryptUnverified) corpus_.AddVerified(std::move(slot.item));
    return true;
  }

  v2::KeyManagementService::Stub& stub_;
  Shared& shared_;
  const size_t requests_;
  const int streams_;
  const int64_t allowance_ns_;
  Corpus corpus_;
  Counts counts_;
  std::unordered_map<std::string, uint32_t> key_index_;
  std::vector<std::string> key_ids_;
  std::vector<int64_t> key_first_seen_ns_;
  int64_t held_since_ns_ = 0, held_ns_ = 0;
};

// ---- the controller: rotations and the outage, in request order -----------------------------------

struct Outage {
  size_t at_request = 0;
  int64_t down_ns = 0, up_ns = 0;
  std::optional<double> first_ok_ms;   // "up" -> first OK answer to a call started after "up"
  std::optional<double> last_error_ms;  // "up" -> last error answered
};

struct Plan {
  std::vector<size_t> rotations;  // request numbers
  std::optional<size_t> outage_at;
};

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

std::string JsonField(const std::string& text, const std::string& key) {
  const std::string needle = StrCat("\"", key, "\":\"");
  const size_t at = text.find(needle);
  if (at == std::string::npos) return {};
  const size_t begin = at + needle.size();
  const size_t end = text.find('"', begin);
  return end == std::string::npos ? std::string() : text.substr(begin, end - begin);
}

class Controller {
 public:
  // Status goes over the load's channel (kube-apiserver too has one connection): a second one would
  // be one more fd in the plugin.
  Controller(const SoakOptions& o, Shared& shared, pid_t plugin, const std::shared_ptr<grpc::Channel>& channel,
             std::string tool_uri, std::string control, std::string work_dir, std::chrono::milliseconds outage)
      : o_(o), shared_(shared), plugin_(plugin), status_stub_(v2::KeyManagementService::NewStub(channel)),
        tool_uri_(std::move(tool_uri)), control_(std::move(control)), work_dir_(std::move(work_dir)),
        outage_length_(outage) {}

  void Run(const Plan& plan) {
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

  const std::vector<Rotation>& rotations() const { return rotations_; }
  const std::optional<Outage>& outage() const { return outage_; }
  bool skipped() const { return skipped_; }

 private:
  void DoRotation() {
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
      Progress("rotation at request %zu: trousseau-hsm-init key rotate failed (exit %d):\n%s", r.at_request,
               r.tool_exit, tool.Log().c_str());
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
             r.key_id.c_str(), r.tool_ms,
             r.active_ms ? StrCat(static_cast<long>(*r.active_ms), " ms").c_str() : "NEVER");
    r.hup_ns = hup;
    rotations_.push_back(r);
  }

  bool ToolHasNoWait() {
    if (!tool_has_no_wait_) {
      Subprocess help({o_.init_tool, "key", "rotate", "--help"}, StrCat(work_dir_, "/rotate-help.log"));
      help.Wait(30s);
      tool_has_no_wait_ = help.Log().find("--no-wait") != std::string::npos;
    }
    return *tool_has_no_wait_;
  }

  void DoOutage() {
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

  const SoakOptions& o_;
  Shared& shared_;
  const pid_t plugin_;
  std::unique_ptr<v2::KeyManagementService::Stub> status_stub_;
  const std::string tool_uri_;
  const std::string control_;
  const std::string work_dir_;
  const std::chrono::milliseconds outage_length_;
  std::vector<Rotation> rotations_;
  std::optional<Outage> outage_;
  bool skipped_ = false;
  std::optional<bool> tool_has_no_wait_;
};

// ---- the final check: every version still decrypts ----------------------------------------------

struct FinalCheck {
  size_t calls = 0, errors = 0, wrong = 0;
  std::vector<size_t> ok_by_version;
};

FinalCheck DecryptAgain(v2::KeyManagementService::Stub& stub, Corpus& corpus, size_t versions, Counts& counts) {
  FinalCheck check;
  check.ok_by_version.assign(versions, 0);
  auto one = [&](const Item& item) {
    ++check.calls;
    v2::DecryptRequest request;
    request.set_ciphertext(item.ciphertext);
    request.set_uid(kUid);
    request.set_key_id(item.key_id);
    for (const auto& [k, v] : item.annotations) (*request.mutable_annotations())[k] = v;
    v2::DecryptResponse response;
    const grpc::Status status = stub.Decrypt(NewContext().get(), request, &response);
    if (!status.ok()) {
      ++check.errors;
      const int code = static_cast<int>(status.error_code());
      ++counts.errors[kFinal][code >= 0 && code < kCodeCount ? code : static_cast<int>(grpc::UNKNOWN)];
      return;
    }
    if (response.plaintext() != item.seed) {
      ++check.wrong;
      return;
    }
    if (item.key_index < versions) ++check.ok_by_version[item.key_index];
  };
  for (const std::vector<Item>& r : corpus.reservoirs()) {
    for (size_t i = 0; i < r.size() && i < kFinalCheckPerVersion; ++i) one(r[i]);
  }
  // Ciphertexts whose first Decrypt never came (the budget ended first, or it failed in the outage).
  for (const Item& item : corpus.unverified_items()) one(item);
  return check;
}

// ---- the report -----------------------------------------------------------------------------------

struct Criterion {
  std::string what;
  std::string measured;
  bool pass;
};

}  // namespace

int Soak(const SoakOptions& options) {
  const SoakOptions& o = options;
  const std::optional<std::chrono::milliseconds> outage = ParseDuration(o.outage);
  const std::optional<std::chrono::milliseconds> allowance = ParseDuration(o.recovery_allowance);
  const std::optional<std::chrono::milliseconds> time_limit = ParseDuration(o.time_limit);
  if (!outage || !allowance || !time_limit) {
    Progress("--outage, --recovery-allowance and --time-limit take a duration such as 10s, 500ms or 30m");
    return 2;
  }
  const int64_t time_limit_ns = std::chrono::nanoseconds(*time_limit).count();
  for (const std::string* binary : {&o.plugin, &o.init_tool}) {
    if (access(binary->c_str(), X_OK) != 0) {
      Progress("no executable at %s", binary->c_str());
      return 2;
    }
  }
  if (access(o.fault_shim.c_str(), R_OK) != 0) {
    Progress("no fault shim at %s (--fault-shim)", o.fault_shim.c_str());
    return 2;
  }
  if (o.streams < 1 || o.requests < static_cast<size_t>(o.streams)) {
    Progress("--requests must be at least --streams");
    return 2;
  }

  Progress("creating a SoftHSM token with key version 1");
  std::unique_ptr<SoftHsmToken> token = SoftHsmToken::Create("trousseau-soak");
  if (!token) {
    Progress("cannot create a SoftHSM token (is softhsm2-util installed?)");
    return 1;
  }
  if (Status s = token->GenerateKek(1, "kek"); !s.ok()) {
    Progress("GenerateKek: %s", s.ToString().c_str());
    return 1;
  }
  // The plugin reaches the token through the shim; the operator's tool reaches it directly (the
  // outage is the plugin's link to the HSM).
  const std::string control = token->dir() + "/shim.control";
  support::WriteShimControl(control, "up");
  setenv("TROUSSEAU_FAULT_SHIM_MODULE", o.softhsm_module.c_str(), 1);
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);

  const std::string socket = token->dir() + "/soak.sock";
  const std::string log = token->dir() + "/plugin.log";
  std::vector<std::string> argv = {o.plugin, "--listen", "unix://" + socket, "--pkcs11-uri",
                                   token->Uri("kek", o.fault_shim)};
  if (o.hsm_sessions > 0) {
    argv.push_back("--hsm-sessions");
    argv.push_back(std::to_string(o.hsm_sessions));
  }
  signal(SIGINT, KillPluginAndExit);
  signal(SIGTERM, KillPluginAndExit);
  Subprocess plugin(argv, log);
  g_plugin_pid.store(plugin.pid());
  auto channel = UnixChannel(socket);
  if (!plugin.started() || !support::Eventually([&] { return support::UnixSocketAccepts(socket); }, 15s) ||
      !WaitConnected(channel, 5s)) {
    Progress("the plugin did not start serving; its log:\n%s", plugin.Log().c_str());
    return 1;
  }
  auto stub = v2::KeyManagementService::NewStub(channel);
  {
    // Serving means Status "ok" (the socket is bound before the first login).
    const bool ok = support::Eventually(
        [&] {
          v2::StatusResponse r;
          return stub->Status(NewContext().get(), v2::StatusRequest(), &r).ok() && r.healthz() == "ok";
        },
        15s);
    if (!ok) {
      Progress("the plugin never reported Status ok; its log:\n%s", plugin.Log().c_str());
      return 1;
    }
  }

  const Plan plan = MakePlan(o.requests, o.rotate_every, outage->count() > 0);
  const std::string date = UtcNow();
  Progress("%zu requests at %d streams, rotation every %zu, outage %s at request %zu; plugin pid %d", o.requests,
           o.streams, o.rotate_every, o.outage.c_str(), plan.outage_at.value_or(0), plugin.pid());

  Shared shared;
  Load load(*stub, shared, o.requests, o.streams, std::chrono::nanoseconds(*allowance).count());
  Controller controller(o, shared, plugin.pid(), channel, token->Uri("kek", o.softhsm_module), control,
                        token->dir(), *outage);
  std::vector<Sample> samples;
  std::mutex samples_mutex;
  const long fds_start = OpenFds(plugin.pid());
  const long rss_start = VmRssKib(plugin.pid());

  const int64_t begin = NowNs();
  std::thread sampler([&] {
    int decile = 0;
    while (!shared.load_done.load()) {
      Sample s{static_cast<double>(shared.answered.load()) / static_cast<double>(o.requests), NowNs(),
               VmRssKib(plugin.pid()), OpenFds(plugin.pid())};
      {
        std::lock_guard lock(samples_mutex);
        samples.push_back(s);
      }
      if (s.progress * 10 >= decile + 1) {
        decile = static_cast<int>(s.progress * 10);
        Progress("%3d %%  %zu answered, %zu errors, %.0f /s, VmRSS %ld KiB, %ld fds", decile * 10,
                 shared.answered.load(), shared.errors.load(),
                 static_cast<double>(shared.answered.load()) / (static_cast<double>(NowNs() - begin) / 1e9),
                 s.rss_kib, s.fds);
      }
      // No VmRSS line: the plugin has exited (a zombie has none either).
      if (s.rss_kib == 0) shared.abort.store("the plugin exited during the run");
      if (NowNs() - begin > time_limit_ns) shared.abort.store("--time-limit passed");
      std::this_thread::sleep_for(kSamplePeriod);
    }
  });
  std::thread control_thread([&] { controller.Run(plan); });
  load.Run();
  const double seconds = static_cast<double>(NowNs() - begin) / 1e9;
  shared.load_done.store(true);
  // 100 %: right after the last answer.
  const Sample end_sample{1.0, NowNs(), VmRssKib(plugin.pid()), OpenFds(plugin.pid())};
  sampler.join();
  control_thread.join();
  samples.push_back(end_sample);

  Counts& counts = load.counts();
  const std::vector<std::string> key_ids = load.key_ids();
  Progress("final check: decrypting up to %zu sealed items of each of %zu versions again", kFinalCheckPerVersion,
           key_ids.size());
  const FinalCheck final_check = DecryptAgain(*stub, load.corpus(), key_ids.size(), counts);

  const long rss_after_final = VmRssKib(plugin.pid());
  const bool plugin_alive = kill(plugin.pid(), 0) == 0 && !plugin.Wait(0ms);
  plugin.Signal(SIGTERM);
  const std::optional<int> plugin_exit = plugin.Wait(15s);
  // The plugin logs every Encrypt that succeeds (a third of a million lines in a full run): the copy
  // kept for the report leaves those out and says how many there were.
  size_t key_changes = 0, ok_lines = 0;
  {
    std::istringstream in(plugin.Log());
    std::ofstream kept;
    if (!o.plugin_log.empty()) kept.open(o.plugin_log);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("active key changed") != std::string::npos) ++key_changes;
      if (line.find(" code=OK ") != std::string::npos) {
        ++ok_lines;
        continue;
      }
      if (kept) kept << line << "\n";
    }
    if (kept) kept << "[trousseau-bench soak: " << ok_lines << " lines of calls answered OK left out]\n";
  }

  // ---- figures ------------------------------------------------------------------------------------
  const Sample* at10 = nullptr;
  long rss_min = 0, rss_max = 0, fds_min = 0, fds_max = 0;
  for (const Sample& s : samples) {
    if (at10 == nullptr && s.progress >= 0.10) at10 = &s;
    rss_min = rss_min == 0 ? s.rss_kib : std::min(rss_min, s.rss_kib);
    rss_max = std::max(rss_max, s.rss_kib);
    fds_min = fds_min == 0 ? s.fds : std::min(fds_min, s.fds);
    fds_max = std::max(fds_max, s.fds);
  }
  if (at10 == nullptr) at10 = &samples.back();
  const double rss_growth =
      at10->rss_kib > 0 ? static_cast<double>(end_sample.rss_kib - at10->rss_kib) / static_cast<double>(at10->rss_kib)
                        : 1.0;
  const std::optional<Outage>& out = controller.outage();
  size_t outage_errors = 0, outage_unavailable = 0, stray_errors = 0;
  for (int p : {kOutage, kRecovery}) {
    outage_errors += counts.errors_in(static_cast<Phase>(p));
    outage_unavailable += counts.errors[p][grpc::UNAVAILABLE];
  }
  for (int p : {kBefore, kAfter, kFinal}) stray_errors += counts.errors_in(static_cast<Phase>(p));
  std::optional<double> last_error_ms;
  if (out && shared.last_error_after_up_ns.load() != 0) last_error_ms = Ms(shared.last_error_after_up_ns - out->up_ns);
  const size_t wrong = counts.wrong_plaintexts + final_check.wrong;
  std::vector<int64_t> latencies = std::move(counts.latencies_ns);
  const Summary lat = Summarize(latencies, 0, seconds);

  size_t rotations_active = 0;
  double worst_activation_ms = 0;
  for (const Rotation& r : controller.rotations()) {
    if (r.active_ms) {
      ++rotations_active;
      worst_activation_ms = std::max(worst_activation_ms, *r.active_ms);
    }
  }
  size_t versions_final_ok = 0;
  for (size_t n : final_check.ok_by_version) versions_final_ok += n > 0 ? 1 : 0;

  std::vector<Criterion> criteria;
  const char* aborted = shared.abort.load();
  criteria.push_back({"the run went to its end", aborted ? aborted : "yes", aborted == nullptr});
  criteria.push_back({"every request answered", Fmt("%zu / %zu", counts.answered, o.requests),
                      counts.answered == o.requests});
  criteria.push_back({"0 wrong plaintexts (run + final check)", Fmt("%zu", wrong), wrong == 0});
  criteria.push_back({"every Encrypt answer well-formed, never under an older version",
                      Fmt("%zu bad, %zu flip-backs", counts.bad_encrypts, counts.flipbacks),
                      counts.bad_encrypts == 0 && counts.flipbacks == 0});
  criteria.push_back({"no error outside the outage + recovery allowance", Fmt("%zu", stray_errors), stray_errors == 0});
  if (out) {
    criteria.push_back({"outage errors all UNAVAILABLE", Fmt("%zu of %zu", outage_unavailable, outage_errors),
                        outage_unavailable == outage_errors});
    criteria.push_back({"the outage was felt (some UNAVAILABLE)", Fmt("%zu", outage_errors), outage_errors > 0});
    criteria.push_back({Fmt("serving again within %s of \"up\"", o.recovery_allowance.c_str()),
                        out->first_ok_ms ? Fmt("%.0f ms", *out->first_ok_ms) : "never",
                        out->first_ok_ms && *out->first_ok_ms <= static_cast<double>(allowance->count())});
  } else if (plan.outage_at) {
    criteria.push_back({"the outage took place", "no", false});
  }
  criteria.push_back({"every rotation active after SIGHUP",
                      Fmt("%zu / %zu (worst %.0f ms)", rotations_active, plan.rotations.size(), worst_activation_ms),
                      rotations_active == plan.rotations.size() && !controller.skipped()});
  criteria.push_back({"every version decrypts at the end",
                      Fmt("%zu / %zu versions, %zu calls", versions_final_ok, key_ids.size(), final_check.calls),
                      versions_final_ok == key_ids.size() && key_ids.size() == plan.rotations.size() + 1});
  criteria.push_back({"VmRSS growth 10 % -> 100 % < 5 %",
                      Fmt("%ld -> %ld KiB = %+.2f %%", at10->rss_kib, end_sample.rss_kib, 100 * rss_growth),
                      end_sample.rss_kib > 0 && rss_growth < kRssGrowthLimit});
  criteria.push_back({"open fds do not grow (10 % -> 100 %)", Fmt("%ld -> %ld", at10->fds, end_sample.fds),
                      end_sample.rss_kib > 0 && end_sample.fds <= at10->fds});
  criteria.push_back({"plugin alive (same PID) and exits 0 on SIGTERM",
                      Fmt("%s, exit %d", plugin_alive ? "alive" : "GONE", plugin_exit.value_or(-1)),
                      plugin_alive && plugin_exit == 0});

  // ---- summary ------------------------------------------------------------------------------------
  std::printf("\ntrousseau-hsm soak   %s   %u CPU(s)\n", date.c_str(), std::thread::hardware_concurrency());
  std::printf("plugin %s (pid %d), through the fault shim to SoftHSM; %d streams, 3 s deadline per call\n",
              o.plugin.c_str(), plugin.pid(), o.streams);
  std::printf("requests %zu answered in %.1f s = %.0f /s  (OK: Encrypt %zu, Decrypt %zu; Decrypts issued: %zu first "
              "decrypts of a new ciphertext, %zu of a random earlier one; Decrypts OK under an older version than "
              "the newest: %zu)\n",
              counts.answered, seconds, static_cast<double>(counts.answered) / seconds, counts.encrypt_ok,
              counts.decrypt_ok, counts.decrypt_unverified, counts.decrypt_old, counts.decrypt_older_version);
  std::printf("load held at an event's mark (waiting for the previous rotation or recovery): %.2f s\n",
              load.held_seconds());
  std::printf("latency of OK calls: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.1f ms\n", lat.p50_us, lat.p90_us,
              lat.p99_us, lat.max_us / 1000);
  {
    // Where the slowest OK call ended, against the events (seconds since the start of the load).
    auto at = [&](int64_t ns) { return static_cast<double>(ns - begin) / 1e9; };
    std::string timeline;
    for (const Rotation& r : controller.rotations()) {
      if (r.hup_ns != 0) timeline += Fmt(" SIGHUP %.2f s (%s),", at(r.hup_ns), r.key_id.substr(0, r.key_id.find('-', 5)).c_str());
    }
    if (out) timeline += Fmt(" down %.2f s, up %.2f s,", at(out->down_ns), at(out->up_ns));
    if (!timeline.empty()) timeline.pop_back();
    std::printf("slowest OK call: %s, %.1f ms, ended at %.2f s; events:%s\n",
                counts.slowest_encrypt ? "Encrypt" : "Decrypt", Ms(counts.slowest_ns), at(counts.slowest_end_ns),
                timeline.c_str());
  }
  std::printf("errors by phase and code:\n");
  for (int p = 0; p < kPhaseCount; ++p) {
    std::string line;
    for (int c = 0; c < kCodeCount; ++c) {
      if (counts.errors[p][c] > 0) line += Fmt(" %s %zu", CodeName(c), counts.errors[p][c]);
    }
    std::printf("  %-28s%s\n", kPhaseNames[p], line.empty() ? " none" : line.c_str());
  }
  std::printf("wrong plaintexts: %zu in the run, %zu in the final check (%zu Decrypts: up to %zu per version + %zu "
              "never decrypted before, %zu errors)\n",
              counts.wrong_plaintexts, final_check.wrong, final_check.calls, kFinalCheckPerVersion,
              load.corpus().unverified(), final_check.errors);
  std::printf("rotations (trousseau-hsm-init key rotate, then SIGHUP; times after the SIGHUP):\n");
  for (const Rotation& r : controller.rotations()) {
    const std::optional<int64_t> first_encrypt = shared.KeySeen(r.key_id);
    std::printf("  at request %7zu  %-44s tool %4.0f ms, exit %d; Status reports it after %s, first Encrypt "
                "under it after %s\n",
                r.at_request, r.key_id.c_str(), r.tool_ms, r.tool_exit,
                r.active_ms ? Fmt("%.0f ms", *r.active_ms).c_str() : "NEVER",
                first_encrypt && r.hup_ns ? Fmt("%.0f ms", Ms(*first_encrypt - r.hup_ns)).c_str() : "never");
  }
  std::printf("  plugin log: %zu \"active key changed\" lines\n", key_changes);
  std::printf("per version (Encrypt OK / Decrypt OK in the run / final-check OK):\n");
  for (size_t k = 0; k < key_ids.size(); ++k) {
    std::printf("  %-44s %8zu %8zu %6zu\n", key_ids[k].c_str(), counts.encrypts_by_version[k],
                counts.decrypts_by_version[k], final_check.ok_by_version[k]);
  }
  if (out) {
    std::printf("outage: shim \"down\" at request %zu for %.1f s; after \"up\": first OK %s, last error %s\n",
                out->at_request, Ms(out->up_ns - out->down_ns) / 1000,
                out->first_ok_ms ? Fmt("%.0f ms", *out->first_ok_ms).c_str() : "never",
                last_error_ms ? Fmt("%.0f ms", *last_error_ms).c_str() : "none after up");
  }
  std::printf("VmRSS KiB: start %ld, at 10 %% %ld, at 100 %% %ld (min %ld, max %ld over %zu samples), after the final "
              "check %ld\n",
              rss_start, at10->rss_kib, end_sample.rss_kib, rss_min, rss_max, samples.size(), rss_after_final);
  std::printf("open fds: start %ld, at 10 %% %ld, at 100 %% %ld (min %ld, max %ld)\n", fds_start, at10->fds,
              end_sample.fds, fds_min, fds_max);
  std::printf("\nCriteria\n");
  bool all = true;
  for (const Criterion& c : criteria) {
    std::printf("  %-62s %-34s %s\n", c.what.c_str(), c.measured.c_str(), c.pass ? "PASS" : "FAIL");
    all = all && c.pass;
  }
  std::printf("soak: %s\n", all ? "PASS" : "FAIL");

  if (!o.json_file.empty()) {
    Json j;
    j.Open();
    j.Str("date", date).Int("requests", static_cast<int64_t>(o.requests)).Int("streams", o.streams);
    j.Int("rotate_every", static_cast<int64_t>(o.rotate_every)).Str("outage", o.outage);
    j.Int("answered", static_cast<int64_t>(counts.answered)).Num("seconds", seconds);
    j.Num("held_seconds", load.held_seconds());
    j.Num("per_second", static_cast<double>(counts.answered) / seconds);
    j.Int("encrypt_ok", static_cast<int64_t>(counts.encrypt_ok)).Int("decrypt_ok", static_cast<int64_t>(counts.decrypt_ok));
    j.Int("wrong_plaintexts", static_cast<int64_t>(wrong));
    j.Summ("latency_ok", lat);
    j.Open("errors");
    for (int p = 0; p < kPhaseCount; ++p) {
      j.Open(kPhaseNames[p]);
      for (int c = 0; c < kCodeCount; ++c) {
        if (counts.errors[p][c] > 0) j.Int(CodeName(c), static_cast<int64_t>(counts.errors[p][c]));
      }
      j.Close();
    }
    j.Close();
    j.OpenArray("rotations");
    for (const Rotation& r : controller.rotations()) {
      j.Open().Int("at_request", static_cast<int64_t>(r.at_request)).Str("key_id", r.key_id);
      j.Num("tool_ms", r.tool_ms).Num("active_ms", r.active_ms.value_or(-1)).Close();
    }
    j.CloseArray();
    if (out) {
      j.Open("outage").Int("at_request", static_cast<int64_t>(out->at_request));
      j.Num("seconds", Ms(out->up_ns - out->down_ns) / 1000).Num("first_ok_ms", out->first_ok_ms.value_or(-1));
      j.Num("last_error_ms", last_error_ms.value_or(-1)).Close();
    }
    j.Int("rss_kib_10pct", at10->rss_kib).Int("rss_kib_100pct", end_sample.rss_kib).Num("rss_growth_pct", 100 * rss_growth);
    j.Int("fds_10pct", at10->fds).Int("fds_100pct", end_sample.fds).Int("fds_max", fds_max);
    j.Bool("pass", all);
    j.Close();
    std::ofstream(o.json_file) << j.text() << "\n";
  }
  return all ? 0 : 1;
}

}  // namespace trousseau::bench
