// KeyBackend over a recipient set (docs/ha.md): every key version is an epoch of the set, Seal wraps
// to every member in software, and Open asks one of this node's recipient devices (its TPM, its HSMs)
// for the ECDH shared secret of its own wrap. The key_id is derived from the set alone, so every node
// that holds the same set reports the same key_id.
//
// Every envelope ends with a sender tag under the epoch's sealing secret (recipients/sealing_key.h),
// which this node opens once per epoch with its device and keeps: Seal then needs no device call, and
// Open refuses an envelope with a wrong tag before it asks any device.
//
// Several local devices: Open tries the devices that are up first, fastest first (average of their
// recent calls), each but the last with half the time left, so a device that hangs still leaves time
// to fail over within the same request; a device whose call fails UNAVAILABLE is taken out at once
// and asked again (by Probe or Open) only once its capped exponential backoff has passed: while every
// member device rests, calls fail UNAVAILABLE at once instead of each reconnecting to a dead device. A device that has
// not told its public point yet (down since the start) is asked again by Probe on the same schedule. Health (Probe) is
// OK while one device opens a fresh wrap.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/envelope.h"
#include "core/key_backend.h"
#include "core/recipient_device.h"
#include "recipients/multi_wrap.h"
#include "recipients/recipient_set.h"
#include "recipients/set_store.h"

namespace trousseau::recipients {

// The envelope format byte of multi-recipient envelopes (core/envelope.h).
inline constexpr uint8_t kRecipientEnvelopeFormat = kEnvelopeFormatV3;
// Kind() and the family label the plugin gives KmsEngine: with the set's digest as the version's
// fingerprint, they make the key_id (core/key_id.h) that every node holding the set reports, and
// that `trousseau-hsm-init recipients show` prints.
inline constexpr char kRecipientBackendKind[] = "recipients";
inline constexpr char kRecipientFamilyLabel[] = "set";

struct LocalRecipient {
  std::string name;  // how health, metrics and logs name it: "tpm2", "pkcs11 token 'hsm-a'"
  std::shared_ptr<RecipientDevice> device;
};

struct RecipientBackendOptions {
  // Every accepted set, lowest epoch first: LoadAcceptedSets bound to its options, passing on the
  // admission check the backend gives it (this node must be a member of a new epoch).
  std::function<StatusOr<std::vector<RecipientSet>>(const SetAdmission& admit)> load_sets;
  std::vector<LocalRecipient> devices;
  // How long a failed device stays out before Probe tries it again: doubling from min up to max.
  std::chrono::milliseconds retry_min{1000};
  std::chrono::milliseconds retry_max{10000};
};

struct RecipientDeviceState {
  std::string name;
  std::string kind;       // RecipientDevice::RecipientKind()
  bool up = false;        // its last call succeeded
  std::string member_id;  // its id in the newest set; "" when it is not a member (or its key is unknown)
  std::string last_error;
  double latency_ms = 0;  // moving average of its successful calls
};

class RecipientBackend final : public KeyBackend {
 public:
  // FAILED_PRECONDITION without devices or without a set loader.
  static StatusOr<std::unique_ptr<RecipientBackend>> Create(RecipientBackendOptions options);

  using KeyBackend::LoadKeys;
  using KeyBackend::Open;
  using KeyBackend::Probe;
  using KeyBackend::Seal;
  std::string_view Kind() const override { return kRecipientBackendKind; }
  std::string Describe() const override;
  // Reads each device's public point, then loads the sets, refusing (FAILED_PRECONDITION, before it is
  // stored) a new epoch none of this node's devices belongs to: the node could not open what it seals.
  StatusOr<std::vector<BackendKey>> LoadKeys(Deadline deadline) override;
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                             Deadline deadline) override;
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad,
                             Deadline deadline) override;
  size_t SealOverhead() const override;
  // Seals a fresh secret to epoch `version` and opens it with every local member device that is up
  // or due for a retry; OK when one of them did.
  Status Probe(uint64_t version, Deadline deadline) override;

  std::vector<RecipientDeviceState> DeviceStates() const;

 private:
  struct Slot {
    LocalRecipient local;
    std::string point;  // uncompressed; empty until read
    bool up = false;
    std::string last_error;
    double latency_ms = 0;
    std::chrono::steady_clock::time_point retry_at{};
    std::chrono::milliseconds backoff{0};
  };
  struct Attempt {
    size_t slot;
    size_t member;
  };

  explicit RecipientBackend(RecipientBackendOptions options);
  std::shared_ptr<const std::vector<RecipientSet>> Sets() const;
  // Asks each device whose point is unknown (and whose backoff has passed) for it.
  void LearnUnknownPoints(Deadline deadline);
  // Why this node cannot be sure it is a member of `set` (a device's point unknown), or OK.
  Status MembershipOf(const RecipientSet& set) const;
  // The local devices that are members of `set` and may be asked now (up, or their backoff passed), in
  // the order Open should try them; `resting`: whether a member device waits for its backoff.
  std::vector<Attempt> Candidates(const RecipientSet& set, bool* resting) const;
  void RecordSuccess(size_t slot, std::chrono::steady_clock::duration took);
  void RecordFailure(size_t slot, const Status& why);
  // One device opens `sealed` with its wrap.
  StatusOr<SecureBytes> OpenWith(const Attempt& attempt, const RecipientSet& set, const ParsedWraps& parsed,
                                 Deadline deadline);
  // The first of this node's member devices that opens `parsed`, in Candidates' order; `what` names the
  // sealed thing in errors ("the envelope", "the epoch's sealing key").
  StatusOr<SecureBytes> OpenWithAnyDevice(const RecipientSet& set, const ParsedWraps& parsed, std::string_view what,
                                          Deadline deadline);
  // The sender tag key of `set`, opened from its sealing key on first use and kept.
  StatusOr<std::shared_ptr<const SecureBytes>> TagKeyFor(const RecipientSet& set, Deadline deadline);

  const RecipientBackendOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<RecipientSet>> sets_;  // guarded by mu_
  std::vector<Slot> slots_;                                // guarded by mu_
  size_t seal_overhead_ = 0;                               // guarded by mu_
  // By SetDigest: the sender tag key of each epoch this node has opened.
  std::map<std::string, std::shared_ptr<const SecureBytes>> tag_keys_;  // guarded by mu_
};

}  // namespace trousseau::recipients
