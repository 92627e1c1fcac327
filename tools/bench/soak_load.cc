#include "soak_load.h"

#include <chrono>

#include "load.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;

// A stream whose call failed waits this long before its next call (kube-apiserver does not hammer a
// failing plugin either); without it the streams would spend the request budget on the outage.
constexpr auto kPauseAfterError = 100ms;
constexpr auto kGatePoll = 5ms;

}  // namespace

void Load::Run() {
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

bool Load::Issue(Slot& slot, grpc::CompletionQueue& cq) {
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
  std::optional<Item> item;
  const Item* old = nullptr;
  const Kind kind = NextKind(n, item, old);
  slot.kind = kind;
  slot.context = NewContext();
  slot.start_ns = NowNs();
  if (kind == kEncrypt) {
    StartEncrypt(slot, cq);
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
  StartDecrypt(slot, cq);
  return true;
}

// One in three calls seals a fresh seed; one decrypts the oldest ciphertext nobody has decrypted
// yet (so every ciphertext sealed is checked once), one decrypts a random earlier one of a random
// version (so old versions keep decrypting after each rotation).
Load::Kind Load::NextKind(size_t n, std::optional<Item>& item, const Item*& old) {
  Kind kind = static_cast<Kind>(n % 3);
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
  return kind;
}

void Load::StartEncrypt(Slot& slot, grpc::CompletionQueue& cq) {
  slot.item = Item{};
  slot.item.seed = corpus_.NewSeed();
  slot.encrypt_request.set_plaintext(slot.item.seed);
  slot.encrypt_request.set_uid(kSoakUid);
  slot.encrypt_response.Clear();
  slot.encrypt_reader = stub_.PrepareAsyncEncrypt(slot.context.get(), slot.encrypt_request, &cq);
  slot.encrypt_reader->StartCall();
  slot.encrypt_reader->Finish(&slot.encrypt_response, &slot.status, &slot.call_tag);
}

void Load::StartDecrypt(Slot& slot, grpc::CompletionQueue& cq) {
  slot.decrypt_request.Clear();
  slot.decrypt_request.set_ciphertext(slot.item.ciphertext);
  slot.decrypt_request.set_uid(kSoakUid);
  slot.decrypt_request.set_key_id(slot.item.key_id);
  for (const auto& [k, v] : slot.item.annotations) (*slot.decrypt_request.mutable_annotations())[k] = v;
  slot.decrypt_response.Clear();
  slot.decrypt_reader = stub_.PrepareAsyncDecrypt(slot.context.get(), slot.decrypt_request, &cq);
  slot.decrypt_reader->StartCall();
  slot.decrypt_reader->Finish(&slot.decrypt_response, &slot.status, &slot.call_tag);
}

Phase Load::PhaseAt(int64_t ns) const {
  const int64_t down = shared_.down_ns.load(), up = shared_.up_ns.load();
  if (down == 0 || ns < down) return kBefore;
  if (up == 0 || ns < up) return kOutage;
  if (ns < up + allowance_ns_) return kRecovery;
  return kAfter;
}

uint32_t Load::KeyIndex(const std::string& key_id, int64_t now) {
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

bool Load::Complete(Slot& slot) {
  const int64_t now = NowNs();
  shared_.answered.fetch_add(1);
  const bool up_seen = shared_.up_ns.load() != 0;
  if (!slot.status.ok()) {
    CountError(slot, now);
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
    CheckEncrypt(slot, now);
  } else {
    CheckDecrypt(slot);
  }
  return true;
}

void Load::CountError(Slot& slot, int64_t now) {
  const bool up_seen = shared_.up_ns.load() != 0;
  ++counts_.errors[PhaseAt(now)][CountedCode(static_cast<int>(slot.status.error_code()))];
  shared_.errors.fetch_add(1);
  if (up_seen && now > shared_.up_ns.load()) shared_.last_error_after_up_ns.store(now);
  if (slot.kind == kDecryptUnverified) corpus_.ReturnUnverified(std::move(slot.item));
}

void Load::CheckEncrypt(Slot& slot, int64_t now) {
  ++counts_.encrypt_ok;
  const v2::EncryptResponse& r = slot.encrypt_response;
  if (r.ciphertext().empty() || r.key_id().empty() || r.ciphertext().find(slot.item.seed) != std::string::npos) {
    ++counts_.bad_encrypts;
    return;
  }
  const uint32_t index = KeyIndex(r.key_id(), now);
  if (index + 1 < key_ids_.size() && slot.start_ns > key_first_seen_ns_.back()) ++counts_.flipbacks;
  ++counts_.encrypts_by_version[index];
  slot.item.ciphertext = r.ciphertext();
  slot.item.key_id = r.key_id();
  slot.item.key_index = index;
  slot.item.annotations.assign(r.annotations().begin(), r.annotations().end());
  corpus_.AddUnverified(std::move(slot.item));
}

void Load::CheckDecrypt(Slot& slot) {
  ++counts_.decrypt_ok;
  ++counts_.decrypts_by_version[slot.item.key_index];
  if (slot.item.key_index + 1 < key_ids_.size()) ++counts_.decrypt_older_version;
  if (slot.decrypt_response.plaintext() != slot.item.seed) {
    ++counts_.wrong_plaintexts;
    return;
  }
  if (slot.kind == kDecryptUnverified) corpus_.AddVerified(std::move(slot.item));
}

}  // namespace trousseau::bench
