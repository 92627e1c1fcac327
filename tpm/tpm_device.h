// The only place that talks ESYS: a TPM connection (TCTI + ESYS context) and transient objects,
// each owned by an RAII type, plus the handful of TPM2 commands the TPM backend needs. Every TPM
// error is turned into a Status whose message carries Tss2_RC_Decode's text and the raw code.
//
// Not thread-safe: one thread owns a TpmDevice (the backend's worker; the provisioning helpers'
// caller).
#pragma once

#include <tss2/tss2_esys.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::tpm {

using Clock = std::chrono::steady_clock;

// How a failed TSS2_RC should be handled.
enum class RcClass {
  kOk,
  kRetry,        // the TPM asks to be asked again (RETRY, YIELDED, TESTING, NV_RATE, memory pressure, ...)
  kTransport,    // TCTI / transport failure: the link is gone (swtpm stopped, tabrmd restarted, ...)
  kStale,        // our handles are not valid on the TPM any more (TPM restarted under us)
  kIntegrity,    // a key blob does not belong to this TPM / parent (TPM_RC_INTEGRITY and friends)
  kUnsupported,  // TPM_RC_COMMAND_CODE: command not implemented
  kOther,
};
RcClass ClassifyRc(TSS2_RC rc);
// "Esys_Load: tpm:parameter(1):integrity check failed (0x0000099f)".
std::string DescribeRc(TSS2_RC rc, std::string_view what);
// The Status for a failed call: transport/stale/retry/other -> UNAVAILABLE, unsupported/integrity ->
// FAILED_PRECONDITION. Callers refine where they know better. Whether the link was lost is not in
// the Status (messages reach operators): ask TpmDevice::link_lost().
Status RcStatus(TSS2_RC rc, std::string_view what);

// Why an empty TCTI is refused (TpmDevice::Open, provisioning): tctildr would pick a default TPM,
// maybe not the one the keys belong to.
inline constexpr char kEmptyTctiMessage[] =
    "no TCTI configured (an empty one would let tpm2-tss pick a default TPM); name the TPM, e.g. "
    "device:/dev/tpmrm0, tabrmd or swtpm:path=/run/swtpm/sock";

class TpmDevice;

// A transient object loaded in the TPM; flushed (TPM2_FlushContext) when destroyed. Must not
// outlive its TpmDevice.
class TransientObject {
 public:
  TransientObject() = default;
  TransientObject(TpmDevice* device, ESYS_TR handle) : device_(device), handle_(handle) {}
  ~TransientObject() { Flush(); }
  TransientObject(TransientObject&& other) noexcept { *this = std::move(other); }
  TransientObject& operator=(TransientObject&& other) noexcept;
  TransientObject(const TransientObject&) = delete;
  TransientObject& operator=(const TransientObject&) = delete;

  ESYS_TR handle() const { return handle_; }
  explicit operator bool() const { return handle_ != ESYS_TR_NONE; }
  // Forgets the object without a TPM command: for a TPM that restarted (the handle may already
  // belong to someone else) or a link that is gone.
  void Abandon();
  void Flush();

 private:
  TpmDevice* device_ = nullptr;
  ESYS_TR handle_ = ESYS_TR_NONE;
};

// Marshalled TPM2B_PUBLIC and TPM2B_PRIVATE of an object: what tpm2_create -u/-r would write.
struct ObjectBlobs {
  std::string public_area;
  std::string private_area;  // encrypted by the TPM under its parent; useless elsewhere
};

// kEccP256Ecdh: the recipient key of a multi-recipient envelope (docs/ha.md): an unrestricted
// ECC NIST P-256 decryption key, so TPM2_ECDH_ZGen works with it and nothing else does (no sign).
enum class KeyKind { kAes256Cfb, kHmacSha256, kRsa2048Oaep, kEccP256Ecdh };

// Uncompressed SEC1 encoding of a P-256 point (0x04 || X || Y) and the size of one coordinate.
inline constexpr size_t kEccP256CoordinateSize = 32;
inline constexpr size_t kEccP256PointSize = 1 + 2 * kEccP256CoordinateSize;

class TpmDevice {
 public:
  // Loads the TCTI named by `tcti` ("device:/dev/tpmrm0", "tabrmd", "swtpm:path=/run/swtpm/sock")
  // and initialises an ESYS context on it. Sends no command. An empty `tcti` is FAILED_PRECONDITION:
  // tctildr would pick some default TPM, maybe not the one the keys belong to.
  static StatusOr<std::unique_ptr<TpmDevice>> Open(const std::string& tcti);
  ~TpmDevice();
  TpmDevice(const TpmDevice&) = delete;
  TpmDevice& operator=(const TpmDevice&) = delete;

  // Every command must be answered by `deadline`: a TPM that does not answer in time costs this
  // context (link_lost() turns true, the command is still in flight) instead of a hung thread, on
  // the TCTIs that can wait with a timeout (device, tabrmd). Also the budget for retrying TPM
  // warnings (RETRY, YIELDED, TESTING, ...): bounded attempts with exponential backoff.
  void set_deadline(Clock::time_point deadline) { deadline_ = deadline; }

  // Commands the TPM implements (TPM2_GetCapability(TPM_CAP_COMMANDS)).
  StatusOr<std::set<TPM2_CC>> SupportedCommands();
  // Flushes the transient objects this connection can see. On a TPM behind a resource manager
  // (/dev/tpmrm0, tabrmd) a new connection sees none; on one without (swtpm, /dev/tpm0) they are
  // what an abandoned earlier context left, and they would fill the TPM's few object slots.
  Status FlushLeftoverTransients();
  // TPM2_FlushContext, or only forgets `handle` locally when the link is gone; `handle` becomes
  // ESYS_TR_NONE.
  void FlushContext(ESYS_TR& handle);
  // TPM_PT_INPUT_BUFFER, capped at the TSS buffer size (1024).
  StatusOr<size_t> MaxInputBuffer();

  // The storage root: ECC NIST P-256 restricted decryption key in the owner hierarchy, the TCG
  // "SRK" template (AES-128-CFB symmetric, noDA, empty auth). Deterministic: same TPM and owner seed
  // give the same key every time.
  StatusOr<TransientObject> CreateStoragePrimary();
  // A new key under `parent`: fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA,
  // empty auth. Not loaded.
  StatusOr<ObjectBlobs> CreateKey(const TransientObject& parent, KeyKind kind);
  StatusOr<TransientObject> Load(const TransientObject& parent, const ObjectBlobs& blobs);
  // The object's TPM name (nameAlg || H(public area)).
  StatusOr<std::string> Name(const TransientObject& object);
  // Reads the public area of a marshalled TPM2B_PUBLIC (no TPM command).
  static StatusOr<TPM2B_PUBLIC> ParsePublic(std::string_view marshalled);
  // The public point of an ECC NIST P-256 key's public area, uncompressed SEC1 (kEccP256PointSize
  // bytes; coordinates left-padded to 32 bytes). FAILED_PRECONDITION for another key type or curve.
  static StatusOr<std::string> EccPublicPoint(const TPM2B_PUBLIC& pub);

  // TPM2_HMAC with a keyed-hash key; `data` at most MaxInputBuffer() bytes.
  StatusOr<std::string> Hmac(const TransientObject& key, std::string_view data);
  // AES-CFB with a symmetric key, chunked at `chunk` bytes (a multiple of 16) with the IV chained
  // through ivOut. `use_v2` picks TPM2_EncryptDecrypt2 over TPM2_EncryptDecrypt.
  Status Cfb(const TransientObject& key, bool decrypt, bool use_v2, size_t chunk, std::string_view iv,
             std::string_view in, uint8_t* out);

  // TPM2_RSA_Decrypt with RSAES-OAEP-SHA256 and `label` (at most 64 bytes, must end in a NUL byte). A
  // padding / label mismatch is INVALID_ARGUMENT.
  StatusOr<SecureBytes> RsaOaepDecrypt(const TransientObject& key, std::string_view ciphertext, std::string_view label);

  // TPM2_ECDH_ZGen: the x-coordinate (32 bytes) of d * `point`, d the private key of an
  // unrestricted ECC P-256 decryption key. `point` is uncompressed SEC1 (kEccP256PointSize bytes).
  // A point the TPM refuses (malformed, not on the curve, the product is the point at infinity) is
  // INVALID_ARGUMENT.
  StatusOr<SecureBytes> EcdhZGen(const TransientObject& key, std::string_view point);

  // Attestation of a recipient key (tpm/attestation.h, docs/ha.md):
  // The endorsement key as the TCG EK Credential Profile's template L-1 makes it (RSA 2048, AES-128-CFB,
  // SHA-256, adminWithPolicy with PolicySecret(TPM_RH_ENDORSEMENT)): the key the TPM maker's EK
  // certificate names. `public_area` receives its marshalled TPM2B_PUBLIC. Needs an empty endorsement auth.
  StatusOr<TransientObject> CreateEndorsementKey(std::string* public_area);
  // An attestation key: a restricted ECDSA-P256-SHA256 signing primary in the endorsement hierarchy
  // (fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign, empty auth), the
  // same key every time on one TPM. A restricted key signs only what the TPM itself generated.
  StatusOr<TransientObject> CreateAttestationKey(std::string* public_area);
  // TPM2_Certify of `object` by `signer` with `qualifying_data` (at most 64 bytes): the marshalled
  // TPMS_ATTEST and the ECDSA signature over it as r || s (32 bytes each).
  struct Certification {
    std::string attest;
    std::string signature;
  };
  StatusOr<Certification> Certify(const TransientObject& object, const TransientObject& signer,
                                  std::string_view qualifying_data);
  // TPM2_ActivateCredential: the secret MakeCredential sealed for `activated`'s name to `endorsement`
  // (a key made by CreateEndorsementKey, authorised through a PolicySecret(endorsement) session).
  // `credential_blob` and `encrypted_secret` are the marshalled TPM2B_ID_OBJECT and
  // TPM2B_ENCRYPTED_SECRET. A challenge not made for this TPM and key is INVALID_ARGUMENT.
  StatusOr<SecureBytes> ActivateCredential(const TransientObject& activated, const TransientObject& endorsement,
                                           std::string_view credential_blob, std::string_view encrypted_secret);
  // The whole content of NV index `index` (an EK certificate), read with the index's own empty auth.
  // NOT_FOUND when the index is not defined.
  StatusOr<std::string> ReadNv(TPM2_HANDLE index);

  // TPM2_GetRandom until `size` bytes are had (a TPM gives at most one digest's worth per command).
  // For `trousseauctl secret generate` (docs/secrets.md).
  StatusOr<SecureBytes> GetRandom(size_t size);

  ESYS_CONTEXT* esys() { return esys_; }
  uint64_t commands_sent() const { return commands_sent_; }
  // True once a command failed with a transport error or stale handles (RcClass kTransport or
  // kStale): this context is no good any more and must be dropped. Sticky.
  bool link_lost() const { return link_lost_; }

 private:
  TpmDevice() = default;
  // Runs one ESYS command as `start` (its _Async half) and `finish` (its _Finish half), retrying TPM
  // warnings with backoff within the deadline.
  template <typename Start, typename Finish>
  TSS2_RC Execute(Start start, Finish finish);
  // Calls `finish` until the response arrives or the deadline passes.
  template <typename Finish>
  TSS2_RC AwaitResponse(Finish finish);
  // What is left of the deadline, as the TCTI timeout (TSS2_TCTI_TIMEOUT_BLOCK when there is none).
  int32_t MillisecondsLeft() const;
  // TPM2_CreatePrimary in `hierarchy`; `public_area` (if given) receives the marshalled TPM2B_PUBLIC.
  StatusOr<TransientObject> CreatePrimaryIn(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public, std::string_view what,
                                            std::string* public_area);
  // Records a lost link; returns `rc`.
  TSS2_RC Note(TSS2_RC rc);

  TSS2_TCTI_CONTEXT* tcti_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  Clock::time_point deadline_ = Clock::time_point::max();
  uint64_t commands_sent_ = 0;
  bool link_lost_ = false;
};

}  // namespace trousseau::tpm
