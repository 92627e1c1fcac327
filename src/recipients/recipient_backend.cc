#include "recipients/recipient_backend.h"

#include <openssl/rand.h>

#include <algorithm>

#include "core/strings.h"
#include "recipients/multi_wrap.h"
#include "recipients/sealing_key.h"

namespace trousseau::recipients {
namespace {

using Clock = std::chrono::steady_clock;

const RecipientSet* FindEpoch(const std::vector<RecipientSet>& sets, uint64_t epoch) {
  for (const RecipientSet& set : sets) {
    if (set.epoch == epoch) return &set;
  }
  return nullptr;
}

std::optional<size_t> MemberIndex(const RecipientSet& set, std::string_view point) {
  if (point.empty()) return std::nullopt;
  for (size_t i = 0; i < set.recipients.size(); ++i) {
    if (set.recipients[i].public_key == point) return i;
  }
  return std::nullopt;
}

constexpr std::string_view kProbeAad = "trousseau-hsm recipient probe";

// With another device to fall back on, one that hangs may take half of what is left, so the failover
// still answers the same call (a Decrypt, or a probe that would otherwise open the breaker).
Deadline AttemptDeadline(Deadline deadline, bool more_to_try) {
  const Deadline now = Clock::now();
  if (!more_to_try || deadline <= now || deadline == Deadline::max()) return deadline;
  return now + (deadline - now) / 2;
}

}  // namespace

StatusOr<std::unique_ptr<RecipientBackend>> RecipientBackend::Create(RecipientBackendOptions options) {
  if (!options.load_sets) return FailedPreconditionError("recipient backend: no recipient set configured");
  if (options.devices.empty()) {
    return FailedPreconditionError("recipient backend: no local recipient device (TPM or PKCS#11 recipient key)");
  }
  for (const LocalRecipient& local : options.devices) {
    if (!local.device) return FailedPreconditionError("recipient backend: a device is missing");
  }
  return std::unique_ptr<RecipientBackend>(new RecipientBackend(std::move(options)));
}

RecipientBackend::RecipientBackend(RecipientBackendOptions options)
    : options_(std::move(options)), sets_(std::make_shared<const std::vector<RecipientSet>>()) {
  for (const LocalRecipient& local : options_.devices) {
    Slot slot;
    slot.local = local;
    slots_.push_back(std::move(slot));
  }
}

std::string RecipientBackend::Describe() const {
  std::vector<std::string> names;
  for (const LocalRecipient& local : options_.devices) names.push_back(local.name);
  std::shared_ptr<const std::vector<RecipientSet>> sets = Sets();
  const std::string set =
      sets->empty() ? std::string("recipient set (not loaded yet)") : StrCat("recipient set '", sets->back().name, "'");
  return StrCat(set, ", opened here by ", StrJoin(names, ", "));
}

std::shared_ptr<const std::vector<RecipientSet>> RecipientBackend::Sets() const {
  std::lock_guard lock(mu_);
  return sets_;
}

Status RecipientBackend::MembershipOf(const RecipientSet& set) const {
  std::lock_guard lock(mu_);
  bool unknown = false;
  for (const Slot& slot : slots_) {
    if (MemberIndex(set, slot.point).has_value()) return OkStatus();
    unknown = unknown || slot.point.empty();
  }
  if (unknown) {
    return UnavailableError(StrCat("no recipient device of this node has answered yet, so whether it belongs to set '",
                                   set.name, "' epoch ", set.epoch, " is unknown"));
  }
  return FailedPreconditionError(StrCat("none of this node's recipient keys is a member of set '", set.name, "' epoch ",
                                        set.epoch,
                                        ": the node could not open what it seals. Add its key (trousseau-hsm-init "
                                        "recipients add) and sign a new epoch"));
}

void RecipientBackend::LearnUnknownPoints(Deadline deadline) {
  for (size_t i = 0; i < options_.devices.size(); ++i) {
    {
      std::lock_guard lock(mu_);
      if (!slots_[i].point.empty() || slots_[i].retry_at > Clock::now()) continue;
    }
    const auto started = Clock::now();
    if (started >= deadline) return;  // spent on a device before: the others are not to blame
    StatusOr<std::string> point =
        options_.devices[i].device->RecipientPublicPoint(AttemptDeadline(deadline, i + 1 < options_.devices.size()));
    if (!point.ok()) {
      RecordFailure(i, point.status());
      continue;
    }
    RecordSuccess(i, Clock::now() - started);
    std::lock_guard lock(mu_);
    slots_[i].point = *std::move(point);
  }
}

StatusOr<std::vector<BackendKey>> RecipientBackend::LoadKeys(Deadline deadline) {
  // Each device's key as the device holds it now (a re-provisioned key must not be used under the
  // old point). A device that does not answer keeps the point it gave before.
  for (size_t i = 0; i < options_.devices.size(); ++i) {
    const auto started = Clock::now();
    if (started >= deadline) break;  // the time went to a device before: this one is not to blame
    StatusOr<std::string> point =
        options_.devices[i].device->RecipientPublicPoint(AttemptDeadline(deadline, i + 1 < options_.devices.size()));
    if (point.ok()) {
      RecordSuccess(i, Clock::now() - started);
      std::lock_guard lock(mu_);
      slots_[i].point = *std::move(point);
    } else {
      RecordFailure(i, point.status());
    }
  }
  StatusOr<std::vector<RecipientSet>> loaded =
      options_.load_sets([this](const RecipientSet& newest) { return MembershipOf(newest); });
  if (!loaded.ok()) return loaded.status();
  if (loaded->empty()) return FailedPreconditionError("no recipient set accepted");
  if (Status member = MembershipOf(loaded->back()); !member.ok()) return member;
  std::vector<BackendKey> keys;
  size_t widest = 0;
  for (const RecipientSet& set : *loaded) {
    keys.push_back(
        BackendKey{.version = set.epoch, .fingerprint = SetDigest(set), .envelope_format = kRecipientEnvelopeFormat});
    widest = std::max(widest, set.recipients.size());
  }
  {
    std::lock_guard lock(mu_);
    std::erase_if(tag_keys_, [&](const auto& entry) {
      return std::none_of(loaded->begin(), loaded->end(),
                          [&](const RecipientSet& set) { return SetDigest(set) == entry.first; });
    });
    sets_ = std::make_shared<const std::vector<RecipientSet>>(*loaded);
    seal_overhead_ = TaggedSealOverheadFor(widest);
  }
  // The newest epoch's sealing key opened now, so that Encrypt needs no device; if no device answers in
  // time, the first Encrypt (or the probe) opens it.
  (void)TagKeyFor(loaded->back(), deadline);
  return keys;
}

size_t RecipientBackend::SealOverhead() const {
  std::lock_guard lock(mu_);
  return seal_overhead_ != 0 ? seal_overhead_ : TaggedSealOverheadFor(kMaxRecipients);
}

StatusOr<std::string> RecipientBackend::Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                                             Deadline deadline) {
  std::shared_ptr<const std::vector<RecipientSet>> sets = Sets();
  const RecipientSet* set = FindEpoch(*sets, version);
  if (set == nullptr) return NotFoundError(StrCat("recipient set epoch ", version, " is not loaded"));
  StatusOr<std::shared_ptr<const SecureBytes>> tag_key = TagKeyFor(*set, deadline);  // no device call once opened
  if (!tag_key.ok()) return tag_key.status();
  StatusOr<std::string> sealed = SealToSet(*set, plaintext, aad);
  if (!sealed.ok()) return sealed.status();
  StatusOr<std::string> tag = SenderTag(**tag_key, aad, *sealed);
  if (!tag.ok()) return tag.status();
  sealed->append(*tag);
  return sealed;
}

StatusOr<std::shared_ptr<const SecureBytes>> RecipientBackend::TagKeyFor(const RecipientSet& set, Deadline deadline) {
  const std::string digest = SetDigest(set);
  {
    std::lock_guard lock(mu_);
    if (auto it = tag_keys_.find(digest); it != tag_keys_.end()) return it->second;
  }
  StatusOr<ParsedWraps> parsed = ParseWraps(set, set.sealing_key, kSealingKeyAad);
  if (!parsed.ok()) return parsed.status();
  StatusOr<SecureBytes> secret = OpenWithAnyDevice(set, *parsed, "the epoch's sealing key", deadline);
  if (!secret.ok()) return secret.status();
  if (secret->size() != kSealingSecretSize) {
    return InvalidArgumentError(StrCat("set '", set.name, "' epoch ", set.epoch, ": its sealing key holds ",
                                       secret->size(), " bytes, not ", kSealingSecretSize));
  }
  StatusOr<SecureBytes> tag_key = EnvelopeTagKey(set, *secret);
  if (!tag_key.ok()) return tag_key.status();
  auto shared = std::make_shared<const SecureBytes>(*std::move(tag_key));
  std::lock_guard lock(mu_);
  return tag_keys_.try_emplace(digest, std::move(shared)).first->second;  // a racing open found the same key
}

std::vector<RecipientBackend::Attempt> RecipientBackend::Candidates(const RecipientSet& set, bool* resting) const {
  std::lock_guard lock(mu_);
  const Clock::time_point now = Clock::now();
  std::vector<Attempt> ready;
  *resting = false;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const std::optional<size_t> member = MemberIndex(set, slots_[i].point);
    if (!member.has_value()) continue;
    if (slots_[i].up || slots_[i].retry_at <= now) {
      ready.push_back({i, *member});
    } else {
      *resting = true;  // failed a moment ago: asked again once its backoff has passed, not by every call
    }
  }
  std::stable_sort(ready.begin(), ready.end(), [&](const Attempt& a, const Attempt& b) {
    if (slots_[a.slot].up != slots_[b.slot].up) return slots_[a.slot].up;
    return slots_[a.slot].latency_ms < slots_[b.slot].latency_ms;
  });
  return ready;
}

void RecipientBackend::RecordSuccess(size_t slot, Clock::duration took) {
  const double ms = std::chrono::duration<double, std::milli>(took).count();
  std::lock_guard lock(mu_);
  Slot& s = slots_[slot];
  s.latency_ms = s.up && s.latency_ms > 0 ? 0.8 * s.latency_ms + 0.2 * ms : ms;
  s.up = true;
  s.last_error.clear();
  s.backoff = std::chrono::milliseconds(0);
}

void RecipientBackend::RecordFailure(size_t slot, const Status& why) {
  std::lock_guard lock(mu_);
  Slot& s = slots_[slot];
  s.last_error = std::string(why.message());
  if (why.code() != StatusCode::kUnavailable) return;  // the device answered: it is up
  s.up = false;
  s.backoff = s.backoff.count() == 0 ? options_.retry_min : std::min(options_.retry_max, s.backoff * 2);
  s.retry_at = Clock::now() + s.backoff;
}

StatusOr<SecureBytes> RecipientBackend::OpenWith(const Attempt& attempt, const RecipientSet& set,
                                                 const ParsedWraps& parsed, Deadline deadline) {
  if (!WrapOf(parsed, attempt.member).has_value()) {
    return NotFoundError(StrCat("the envelope holds no wrap for member '", set.recipients[attempt.member].id,
                                "' of set '", set.name, "' epoch ", set.epoch));
  }
  const auto started = Clock::now();
  // No time left is the caller's budget spent (on another device), not this device failing.
  if (started >= deadline) return UnavailableError("no time left to ask this device within the call's deadline");
  StatusOr<SecureBytes> z =
      options_.devices[attempt.slot].device->RecipientSharedSecret(parsed.ephemeral_point, deadline);
  if (!z.ok()) {
    RecordFailure(attempt.slot, z.status());
    return z.status();
  }
  RecordSuccess(attempt.slot, Clock::now() - started);
  return OpenWithSharedSecret(set, parsed, attempt.member, *z);
}

StatusOr<SecureBytes> RecipientBackend::OpenWithAnyDevice(const RecipientSet& set, const ParsedWraps& parsed,
                                                          std::string_view what, Deadline deadline) {
  bool resting = false;
  const std::vector<Attempt> attempts = Candidates(set, &resting);
  if (attempts.empty()) {
    if (resting) return UnavailableError(StrCat("every device of this node in set '", set.name, "' is down"));
    if (Status member = MembershipOf(set); IsUnavailable(member)) return member;
    return NotFoundError(StrCat("this node is not a member of set '", set.name, "' epoch ", set.epoch,
                                ", so it cannot open ", what,
                                ": an object written before the node joined must be re-encrypted once every node "
                                "holds a newer epoch (docs/ha.md)"));
  }
  // The most telling failure: an envelope that fails authentication beats a device that is down.
  Status failure;
  for (size_t i = 0; i < attempts.size(); ++i) {
    const Attempt& attempt = attempts[i];
    StatusOr<SecureBytes> opened = OpenWith(attempt, set, parsed, AttemptDeadline(deadline, i + 1 < attempts.size()));
    if (opened.ok()) return opened;
    if (failure.ok() || opened.status().code() != StatusCode::kUnavailable) failure = opened.status();
    if (Clock::now() >= deadline) break;
  }
  return failure;
}

StatusOr<SecureBytes> RecipientBackend::Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                             Deadline deadline) {
  std::shared_ptr<const std::vector<RecipientSet>> sets = Sets();
  const RecipientSet* set = FindEpoch(*sets, version);
  if (set == nullptr) return NotFoundError(StrCat("recipient set epoch ", version, " is not loaded on this node"));
  if (sealed.size() < kSenderTagSize) {
    return InvalidArgumentError(StrCat("recipient envelope too short (", sealed.size(), " bytes)"));
  }
  // The sender first: a forged envelope costs no device call (once the epoch's key is open).
  StatusOr<std::shared_ptr<const SecureBytes>> tag_key = TagKeyFor(*set, deadline);
  if (!tag_key.ok()) return tag_key.status();
  if (!SenderTagMatches(**tag_key, aad, sealed)) {
    return InvalidArgumentError(
        StrCat("recipient envelope: its sender tag does not verify: not sealed by a member of "
               "set '",
               set->name, "' epoch ", set->epoch, ", or altered"));
  }
  StatusOr<ParsedWraps> parsed = ParseWraps(*set, sealed.substr(0, sealed.size() - kSenderTagSize), aad);
  if (!parsed.ok()) return parsed.status();  // parsed once, whichever devices are asked
  return OpenWithAnyDevice(*set, *parsed, "the envelope", deadline);
}

Status RecipientBackend::Probe(uint64_t version, Deadline deadline) {
  LearnUnknownPoints(deadline);
  std::shared_ptr<const std::vector<RecipientSet>> sets = Sets();
  const RecipientSet* set = FindEpoch(*sets, version);
  if (set == nullptr) return NotFoundError(StrCat("recipient set epoch ", version, " is not loaded"));
  SecureBytes secret(32);
  if (RAND_bytes(secret.data(), static_cast<int>(secret.size())) != 1) {
    return UnavailableError("the system random number generator failed");
  }
  StatusOr<std::string> sealed = SealToSet(*set, secret.view(), kProbeAad);
  if (!sealed.ok()) return sealed.status();
  StatusOr<ParsedWraps> parsed = ParseWraps(*set, *sealed, kProbeAad);
  if (!parsed.ok()) return parsed.status();
  bool resting = false;
  const std::vector<Attempt> attempts = Candidates(*set, &resting);
  if (attempts.empty()) {
    // Down devices wait for their backoff; otherwise the node holds no member key (a configuration
    // problem, FAILED_PRECONDITION, unless a device's key is still unknown).
    if (resting) return UnavailableError(StrCat("every device of this node in set '", set->name, "' is down"));
    return MembershipOf(*set);
  }
  Status failure;
  bool any = false;
  for (size_t i = 0; i < attempts.size(); ++i) {
    const Attempt& attempt = attempts[i];
    StatusOr<SecureBytes> opened = OpenWith(attempt, *set, *parsed, AttemptDeadline(deadline, i + 1 < attempts.size()));
    if (opened.ok() && opened->view() == secret.view()) {
      any = true;
      continue;
    }
    failure = opened.ok() ? InternalError(StrCat(options_.devices[attempt.slot].name, " opened a wrong secret"))
                          : opened.status();
  }
  if (!any) return failure;
  // Encrypt needs the epoch's sealing key open as well (a no-op once it is).
  return TagKeyFor(*set, deadline).status();
}

std::vector<RecipientDeviceState> RecipientBackend::DeviceStates() const {
  std::shared_ptr<const std::vector<RecipientSet>> sets = Sets();
  std::lock_guard lock(mu_);
  std::vector<RecipientDeviceState> states;
  for (const Slot& slot : slots_) {
    RecipientDeviceState state{.name = slot.local.name,
                               .kind = std::string(slot.local.device->RecipientKind()),
                               .up = slot.up,
                               .member_id = "",
                               .last_error = slot.last_error,
                               .latency_ms = slot.latency_ms};
    if (!sets->empty()) {
      if (std::optional<size_t> member = MemberIndex(sets->back(), slot.point)) {
        state.member_id = sets->back().recipients[*member].id;
      }
    }
    states.push_back(std::move(state));
  }
  return states;
}

}  // namespace trousseau::recipients
