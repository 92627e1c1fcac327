// KeyBackend on a TPM 2.0: each key version is an AES-256-CFB key and an HMAC-SHA256 key created
// inside the TPM (fixedTPM | fixedParent | sensitiveDataOrigin: never exported, never duplicated);
// only their TPM-encrypted blobs live in the key directory. See docs/tpm.md.
//
// The TPM is a serial device: one worker thread owns the ESYS context and runs requests one at a
// time from a queue. Every request has a deadline (request_timeout); a request still queued when
// its deadline passes fails with UNAVAILABLE without touching the TPM, and a caller whose request
// is still running at its deadline gets UNAVAILABLE (the result is dropped when it arrives; the
// hand-off is core/abandonable_call.h).
// When the link fails (TCTI error) or the TPM restarted under us, the context is dropped and the
// next request re-opens it, re-derives the primary and reloads keys: the backend recovers by itself.
//
// With a recipient directory (TpmBackendOptions::recipient_dir) the same backend, through the same
// worker and ESYS context (swtpm without a resource manager takes one connection), is also the
// node's RecipientDevice of multi-recipient envelopes (core/recipient_device.h, tpm/recipient_key.h).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "core/defaults.h"
#include "core/key_backend.h"
#include "core/recipient_device.h"
#include "tpm/key_store.h"
#include "tpm/tpm_aead.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {

// The key family label of the TPM backend, part of every key_id (DeriveKeyId("tpm2", label, ...)).
// The plugin passes it to its KmsEngine and `trousseau-hsm-init tpm ...` to the provisioning calls
// (tpm/provisioning.h), so the key_ids the tool prints are the plugin's Status key_ids.
inline constexpr char kTpmFamilyLabel[] = "kek";

struct TpmBackendOptions {
  // TCTI configuration: "device:/dev/tpmrm0" (default), "tabrmd", "swtpm:path=/run/swtpm/sock", ...
  std::string tcti = defaults::kTpmTcti;
  // Directory holding the key versions' blobs (see key_store.h). May be empty when recipient_dir is
  // set (a node of a multi-recipient set needs no key family); LoadKeys then fails.
  std::string key_dir;
  // Directory holding the recipient key's blobs (recipient.pub / recipient.priv, key_store.h; may be
  // key_dir). Empty: this backend is no RecipientDevice (AsRecipient() is null).
  std::string recipient_dir{};
  // Deadline of each Seal/Open/Probe, from the call until the TPM answered (or the caller's
  // deadline, when sooner).
  std::chrono::milliseconds request_timeout = defaults::kDeviceTimeout;
  // Deadline of LoadKeys (loads and fingerprints every version).
  std::chrono::milliseconds load_timeout{30000};
  // Key versions kept loaded at once (2 transient objects each, plus the primary while loading).
  // 1 fits the 3 transient slots of a TPM without a resource manager (swtpm, or the kernel's
  // per-file limit of /dev/tpmrm0).
  size_t loaded_versions = 1;
  // Transient objects the backend keeps in the TPM at once, counting the storage primary while a key
  // loads: 3 is what every TPM 2.0 guarantees (TPM_PT_HR_TRANSIENT_MIN). Loading a key version flushes
  // the recipient key, and loading the recipient key flushes versions, when both would not fit.
  size_t object_slots = 3;
  // Use TPM2_EncryptDecrypt2 when the TPM has it (it takes the data as the first parameter, which
  // parameter encryption can protect); false forces TPM2_EncryptDecrypt. Same ciphertexts either way.
  bool prefer_encrypt_decrypt2 = true;
  // Requests waiting for the worker beyond this are refused at once (UNAVAILABLE): a TPM that hangs
  // must not let the queue grow without bound.
  size_t max_queue = 1024;
};

class TpmBackend final : public KeyBackend, public RecipientDevice {
 public:
  // Starts the worker; connects to the TPM on the first request.
  static StatusOr<std::unique_ptr<TpmBackend>> Create(TpmBackendOptions options);
  ~TpmBackend() override;

  using KeyBackend::LoadKeys;
  using KeyBackend::Open;
  using KeyBackend::Probe;
  using KeyBackend::Seal;
  std::string_view Kind() const override { return "tpm2"; }
  std::string Describe() const override;
  StatusOr<std::vector<BackendKey>> LoadKeys(Deadline deadline) override;
  StatusOr<std::string> Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                             Deadline deadline) override;
  StatusOr<SecureBytes> Open(uint64_t version, std::string_view sealed, std::string_view aad,
                             Deadline deadline) override;
  // 48 (IV + MAC) for AES-CFB+HMAC; for an RSA-OAEP active version 256, an upper bound (its sealed
  // bytes are always 256).
  size_t SealOverhead() const override { return seal_overhead_.load(); }
  Status Probe(uint64_t version, Deadline deadline) override;

  // This backend as the node's recipient device, or null when no recipient_dir is configured.
  RecipientDevice* AsRecipient() { return options_.recipient_dir.empty() ? nullptr : this; }
  std::string_view RecipientKind() const override { return "tpm2"; }
  std::string DescribeRecipient() const override;
  // The point of the recipient key, once it loaded in this TPM (the first call loads it: no TPM
  // command after that). A directory without a recipient key is FAILED_PRECONDITION.
  StatusOr<std::string> RecipientPublicPoint(Deadline deadline) override;
  // TPM2_ECDH_ZGen with the recipient key; a point that is not 65 bytes 0x04||X||Y, or that the TPM
  // refuses, is INVALID_ARGUMENT.
  StatusOr<SecureBytes> RecipientSharedSecret(std::string_view peer_point, Deadline deadline) override;

  struct Stats {
    uint64_t requests_run = 0;        // requests that reached the TPM
    uint64_t expired_in_queue = 0;    // requests failed unrun because their deadline passed
    uint64_t connects = 0;            // ESYS contexts opened
    uint64_t connection_losses = 0;   // contexts dropped after a link / restart failure
    uint64_t refused_queue_full = 0;  // requests refused because max_queue were waiting
    uint64_t waiting = 0;             // requests in the queue now (not the one the TPM is running)
  };
  Stats stats() const;
  // Requests whose caller gave up at its deadline and that the worker has not got past yet (it is
  // stuck in, or queued behind, a TPM command that does not return).
  size_t calls_stuck() const { return abandoned_.load(); }

 private:
  struct Job {
    Clock::time_point deadline;
    // Runs on the worker; `expired` = the deadline passed before it could run.
    std::function<void(bool expired)> run;
  };
  struct KeyEntry {
    VersionBlobs blobs;
    std::string fingerprint;
  };

  explicit TpmBackend(TpmBackendOptions options);
  // Queues `op` and waits for its result until `deadline`.
  template <typename T>
  StatusOr<T> Submit(Clock::time_point deadline, std::function<StatusOr<T>()> op);
  // The sooner of the caller's deadline and request_timeout from now.
  Clock::time_point RequestDeadline(Deadline deadline) const;
  void WorkerLoop();

  // Worker-thread only below.
  Status EnsureConnected(Clock::time_point deadline);
  void DropConnection(const Status& why);
  StatusOr<const LoadedVersion*> EnsureLoaded(uint64_t version);
  // Loads the recipient key if it is not loaded (reading its blobs the first time).
  StatusOr<const TransientObject*> EnsureRecipientLoaded();
  // Flushes loaded objects until `objects` more fit in object_slots: the recipient key first when
  // room is made for a key version (`for_recipient` false), versions least recently used first when
  // it is made for the recipient key.
  void MakeRoom(size_t objects, bool for_recipient);
  size_t ObjectsLoaded() const;
  // Runs `op` on a live connection; if the link was lost or the TPM restarted, drops the
  // connection, and if the deadline allows, re-opens it and retries once.
  template <typename T>
  StatusOr<T> WithDevice(Clock::time_point deadline, const std::function<StatusOr<T>()>& op);
  StatusOr<std::vector<BackendKey>> LoadKeysOnWorker(Clock::time_point deadline);

  const TpmBackendOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::atomic<size_t> seal_overhead_{kSealOverhead};
  std::atomic<size_t> abandoned_{0};
  std::atomic<uint64_t> requests_run_{0}, expired_in_queue_{0}, connects_{0}, connection_losses_{0},
      refused_queue_full_{0};

  // Owned by the worker thread.
  std::unique_ptr<TpmDevice> device_;
  TpmCapabilities caps_;
  std::map<uint64_t, KeyEntry> keys_;
  std::map<uint64_t, LoadedVersion> loaded_;
  std::list<uint64_t> lru_;                     // front = most recently used
  std::optional<ObjectBlobs> recipient_blobs_;  // read once, on the first recipient request that finds them
  std::string recipient_point_;
  TransientObject recipient_key_;

  std::thread worker_;  // last: started after everything above exists
};

}  // namespace trousseau::tpm
