// The soak's load: `streams` mixed v2 Encrypt/Decrypt calls in flight on one channel until `requests`
// are answered, every answer checked and counted by phase (before / during / after the outage). The
// controller (soak_controller.h) holds the load at an event's mark through Shared::gate.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "soak_corpus.h"
#include "stats.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {

// kube-apiserver sends a UUID as uid.
inline constexpr char kSoakUid[] = "5c1f8a3e-2d4b-4f6a-8e9c-0b1a2c3d4e5f";

enum Phase { kBefore, kOutage, kRecovery, kAfter, kFinal, kPhaseCount };
inline constexpr const char* kPhaseNames[kPhaseCount] = {"before the outage", "outage (down..up)",
                                                         "recovery (up..+allowance)", "after recovery", "final check"};
inline constexpr int kCodeCount = 17;

inline const char* CodeName(int code) {
  static constexpr const char* kNames[kCodeCount] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < kCodeCount ? kNames[code] : "?";
}

// The status code a failed call is counted under (UNKNOWN for one out of range).
inline int CountedCode(int code) { return code >= 0 && code < kCodeCount ? code : static_cast<int>(grpc::UNKNOWN); }

struct Counts {
  size_t answered = 0;
  size_t encrypt_ok = 0, decrypt_ok = 0;
  size_t decrypt_unverified = 0, decrypt_old = 0;  // decrypts issued by kind
  size_t decrypt_older_version = 0;                // decrypts OK of a version older than the active one at the time
  size_t wrong_plaintexts = 0;
  size_t bad_encrypts = 0;  // OK but empty ciphertext/key_id, or the seed visible in the ciphertext
  size_t flipbacks = 0;     // an Encrypt started after a newer version was seen came back under an older one
  std::array<std::array<size_t, kCodeCount>, kPhaseCount> errors{};
  std::vector<size_t> encrypts_by_version, decrypts_by_version;
  std::vector<int64_t> latencies_ns;           // of OK calls
  int64_t slowest_ns = 0, slowest_end_ns = 0;  // the slowest OK call, to place it among the events
  bool slowest_encrypt = false;
  size_t errors_in(Phase p) const {
    size_t n = 0;
    for (size_t c : errors[p]) n += c;
    return n;
  }
};

// Shared between the load thread, the controller and the sampler.

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

class Load {
 public:
  Load(v2::KeyManagementService::Stub& stub, Shared& shared, size_t requests, int streams, int64_t allowance_ns)
      : stub_(stub),
        shared_(shared),
        requests_(requests),
        streams_(streams),
        allowance_ns_(allowance_ns),
        corpus_(std::random_device{}() ^ static_cast<uint64_t>(NowNs())) {
    counts_.latencies_ns.reserve(requests);
  }

  void Run();

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
  bool Issue(Slot& slot, grpc::CompletionQueue& cq);
  // Which call comes next: n % 3, or another kind when the corpus has nothing for it.
  Kind NextKind(size_t n, std::optional<Item>& item, const Item*& old);
  void StartEncrypt(Slot& slot, grpc::CompletionQueue& cq);
  void StartDecrypt(Slot& slot, grpc::CompletionQueue& cq);
  Phase PhaseAt(int64_t ns) const;
  uint32_t KeyIndex(const std::string& key_id, int64_t now);
  // Checks the answer on `slot`; false if the call failed (an error, not a wrong answer).
  bool Complete(Slot& slot);
  void CountError(Slot& slot, int64_t now);
  void CheckEncrypt(Slot& slot, int64_t now);
  void CheckDecrypt(Slot& slot);

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

}  // namespace trousseau::bench
