#include "tpm/tpm_device.h"

#include <fcntl.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "core/strings.h"

namespace trousseau::tpm {
namespace {

// Frees what ESYS allocated for an output parameter.
template <typename T>
struct EsysFreer {
  void operator()(T* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFreer<T>>;

// The TPM's own response code with the handle/parameter/session number removed.
TPM2_RC BaseTpmRc(TSS2_RC rc) {
  if (rc & TPM2_RC_FMT1) return rc & (TPM2_RC_FMT1 | 0x3F);
  return rc & 0xFFF;
}

constexpr int kMaxAttempts = 6;
constexpr auto kFlushBudget = std::chrono::milliseconds(500);

}  // namespace

RcClass ClassifyRc(TSS2_RC rc) {
  if (rc == TSS2_RC_SUCCESS) return RcClass::kOk;
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TCTI_RC_LAYER) return RcClass::kTransport;
  if (layer == TSS2_RESMGR_RC_LAYER) return RcClass::kTransport;
  if (layer == TSS2_ESAPI_RC_LAYER || layer == TSS2_SYS_RC_LAYER) {
    switch (rc & 0xFFFF) {
      case TSS2_BASE_RC_IO_ERROR:
      case TSS2_BASE_RC_NO_CONNECTION:
      case TSS2_BASE_RC_MALFORMED_RESPONSE:
      case TSS2_BASE_RC_INSUFFICIENT_RESPONSE:
      case TSS2_BASE_RC_BAD_SEQUENCE:
      case TSS2_BASE_RC_TRY_AGAIN:
        return RcClass::kTransport;
      default:
        return RcClass::kOther;
    }
  }
  if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER) return RcClass::kOther;
  switch (BaseTpmRc(rc)) {
    case TPM2_RC_RETRY:
    case TPM2_RC_YIELDED:
    case TPM2_RC_TESTING:
    case TPM2_RC_NV_RATE:
    case TPM2_RC_NV_UNAVAILABLE:
    case TPM2_RC_MEMORY:
    case TPM2_RC_OBJECT_MEMORY:
    case TPM2_RC_SESSION_MEMORY:
    case TPM2_RC_CANCELED:
    case TPM2_RC_LOCKOUT:  // our keys are noDA; a lockout seen here is someone else's and passes
      return RcClass::kRetry;
    case TPM2_RC_INITIALIZE:
    case TPM2_RC_REFERENCE_H0:
    case TPM2_RC_REFERENCE_H1:
    case TPM2_RC_REFERENCE_H2:
    case TPM2_RC_HANDLE:
    case TPM2_RC_REBOOT:
      return RcClass::kStale;
    case TPM2_RC_INTEGRITY:
    case TPM2_RC_SENSITIVE:
    case TPM2_RC_BAD_CONTEXT:
      return RcClass::kIntegrity;
    case TPM2_RC_COMMAND_CODE:
      return RcClass::kUnsupported;
    default:
      return RcClass::kOther;
  }
}

std::string DescribeRc(TSS2_RC rc, std::string_view what) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%08x", rc);
  const char* text = Tss2_RC_Decode(rc);
  return StrCat(what, ": ", text ? text : "unknown error", " (", code, ")");
}

Status RcStatus(TSS2_RC rc, std::string_view what) {
  switch (ClassifyRc(rc)) {
    case RcClass::kOk:
      return OkStatus();
    case RcClass::kTransport:
      if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER && (rc & 0xFFFF) == TSS2_BASE_RC_TRY_AGAIN) {
        return UnavailableError(StrCat("the TPM did not answer before the deadline: ", DescribeRc(rc, what)));
      }
      [[fallthrough]];
    case RcClass::kStale:
      return UnavailableError(StrCat("TPM unreachable or restarted: ", DescribeRc(rc, what)));
    case RcClass::kIntegrity:
      return FailedPreconditionError(DescribeRc(rc, what));
    case RcClass::kUnsupported:
      return FailedPreconditionError(StrCat("the TPM does not implement a required command: ", DescribeRc(rc, what)));
    case RcClass::kRetry:
      return UnavailableError(StrCat("the TPM stayed busy: ", DescribeRc(rc, what)));
    case RcClass::kOther:
      break;
  }
  return UnavailableError(DescribeRc(rc, what));
}

TransientObject& TransientObject::operator=(TransientObject&& other) noexcept {
  if (this != &other) {
    Flush();
    device_ = std::exchange(other.device_, nullptr);
    handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
  }
  return *this;
}

void TransientObject::Abandon() {
  if (device_ && handle_ != ESYS_TR_NONE) Esys_TR_Close(device_->esys(), &handle_);  // local only
  handle_ = ESYS_TR_NONE;
  device_ = nullptr;
}

void TransientObject::Flush() {
  if (device_ && handle_ != ESYS_TR_NONE) device_->FlushContext(handle_);
  handle_ = ESYS_TR_NONE;
  device_ = nullptr;
}

StatusOr<std::unique_ptr<TpmDevice>> TpmDevice::Open(const std::string& tcti) {
  if (tcti.empty()) return FailedPreconditionError(kEmptyTctiMessage);
  std::unique_ptr<TpmDevice> device(new TpmDevice());
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &device->tcti_);
  if (rc != TSS2_RC_SUCCESS) {
    std::string why = DescribeRc(rc, "Tss2_TctiLdr_Initialize");
    // The device TCTI reports the errno only in its own log line (silenced by TSS2_LOG): say it here,
    // since EACCES (not in the tss group) and EPERM (a container's device cgroup) need different fixes.
    if (tcti.rfind("device:", 0) == 0) {
      const std::string path = tcti.substr(7);
      const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOCTTY);
      if (fd >= 0) {
        ::close(fd);
      } else {
        why = StrCat("open ", path, ": ", std::strerror(errno), "; ", why);
      }
    }
    return UnavailableError(StrCat("cannot open TCTI '", tcti, "': ", why));
  }
  rc = Esys_Initialize(&device->esys_, device->tcti_, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    return UnavailableError(StrCat("cannot start ESYS on TCTI '", tcti, "': ", DescribeRc(rc, "Esys_Initialize")));
  }
  return device;
}

TpmDevice::~TpmDevice() {
  if (esys_) Esys_Finalize(&esys_);
  if (tcti_) Tss2_TctiLdr_Finalize(&tcti_);
}

TSS2_RC TpmDevice::Note(TSS2_RC rc) {
  const RcClass c = ClassifyRc(rc);
  if (c == RcClass::kTransport || c == RcClass::kStale) link_lost_ = true;
  return rc;
}

int32_t TpmDevice::MillisecondsLeft() const {
  if (deadline_ == Clock::time_point::max()) return TSS2_TCTI_TIMEOUT_BLOCK;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
  return static_cast<int32_t>(std::clamp<int64_t>(left, 0, INT32_MAX));
}

template <typename Finish>
TSS2_RC TpmDevice::AwaitResponse(Finish finish) {
  for (;;) {
    // The synchronous Esys_* calls force an infinite TCTI timeout; the _Finish half honours this one
    // (the device and tabrmd TCTIs poll with it; swtpm's and mssim's ignore it and block, which the
    // backend's worker deadline covers).
    Esys_SetTimeout(esys_, MillisecondsLeft());
    const TSS2_RC rc = finish();
    if ((rc & 0xFFFF) != TSS2_BASE_RC_TRY_AGAIN) return rc;
    // The command is still in flight and ESYS waits for its answer: this context can never send
    // another. Note() marks the link lost so the backend opens a new one.
    if (Clock::now() >= deadline_) return rc;
  }
}

template <typename Start, typename Finish>
TSS2_RC TpmDevice::Execute(Start start, Finish finish) {
  auto backoff = std::chrono::milliseconds(5);
  for (int attempt = 1;; ++attempt) {
    ++commands_sent_;
    TSS2_RC rc = start();
    if (rc == TSS2_RC_SUCCESS) rc = AwaitResponse(finish);
    rc = Note(rc);
    if (ClassifyRc(rc) != RcClass::kRetry || attempt == kMaxAttempts) return rc;
    if (Clock::now() + backoff >= deadline_) return rc;
    std::this_thread::sleep_for(backoff);
    backoff *= 2;
  }
}

void TpmDevice::FlushContext(ESYS_TR& handle) {
  if (!link_lost_) {
    // Flushing frees a TPM slot, which matters on a TPM without a resource manager; it must not hang
    // a destructor, so it gets a short deadline of its own when the request's is spent.
    const Clock::time_point saved = deadline_;
    deadline_ = std::max(deadline_, Clock::now() + kFlushBudget);
    const ESYS_TR object = handle;
    const TSS2_RC rc = Execute([&] { return Esys_FlushContext_Async(esys_, object); },
                               [&] { return Esys_FlushContext_Finish(esys_); });
    deadline_ = saved;
    if (rc == TSS2_RC_SUCCESS) {
      handle = ESYS_TR_NONE;  // ESYS closed its record of the object
      return;
    }
  }
  Esys_TR_Close(esys_, &handle);  // local only
}

Status TpmDevice::FlushLeftoverTransients() {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_GetCapability_Async(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                                        TPM2_TRANSIENT_FIRST, TPM2_MAX_CAP_HANDLES);
      },
      [&] { return Esys_GetCapability_Finish(esys_, &more, &raw); });
  EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_GetCapability(TPM_CAP_HANDLES, transient)");
  const TPML_HANDLE& handles = data->data.handles;
  for (UINT32 i = 0; i < handles.count; ++i) {
    ESYS_TR object = ESYS_TR_NONE;
    rc = Execute(
        [&] { return Esys_TR_FromTPMPublic_Async(esys_, handles.handle[i], ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE); },
        [&] { return Esys_TR_FromTPMPublic_Finish(esys_, &object); });
    if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_ReadPublic(leftover transient object)");
    FlushContext(object);
    if (link_lost_) return UnavailableError("the TPM stopped answering while leftover objects were flushed");
  }
  return OkStatus();
}

StatusOr<std::set<TPM2_CC>> TpmDevice::SupportedCommands() {
  std::set<TPM2_CC> commands;
  UINT32 next = TPM2_CC_FIRST;
  for (;;) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TSS2_RC rc = Execute(
        [&] {
          return Esys_GetCapability_Async(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_COMMANDS, next,
                                          TPM2_MAX_CAP_CC);
        },
        [&] { return Esys_GetCapability_Finish(esys_, &more, &raw); });
    EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_GetCapability(TPM_CAP_COMMANDS)");
    const TPML_CCA& list = data->data.command;
    for (UINT32 i = 0; i < list.count; ++i) {
      commands.insert(list.commandAttributes[i] & TPMA_CC_COMMANDINDEX_MASK);
    }
    if (!more || list.count == 0) break;
    next = (list.commandAttributes[list.count - 1] & TPMA_CC_COMMANDINDEX_MASK) + 1;
  }
  return commands;
}

StatusOr<size_t> TpmDevice::MaxInputBuffer() {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_GetCapability_Async(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                        TPM2_PT_INPUT_BUFFER, 1);
      },
      [&] { return Esys_GetCapability_Finish(esys_, &more, &raw); });
  EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_GetCapability(TPM_PT_INPUT_BUFFER)");
  size_t size = TPM2_MAX_DIGEST_BUFFER;
  const TPML_TAGGED_TPM_PROPERTY& props = data->data.tpmProperties;
  if (props.count > 0 && props.tpmProperty[0].property == TPM2_PT_INPUT_BUFFER) {
    size = std::min<size_t>(size, props.tpmProperty[0].value);
  }
  return size;
}

StatusOr<TransientObject> TpmDevice::CreateStoragePrimary() {
  TPM2B_PUBLIC in_public{};
  TPMT_PUBLIC& area = in_public.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  area.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  area.parameters.eccDetail.symmetric.keyBits.aes = 128;
  area.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  area.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  area.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  area.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return CreatePrimaryIn(ESYS_TR_RH_OWNER, in_public, "TPM2_CreatePrimary(owner, ECC P-256 storage key)", nullptr);
}

StatusOr<ObjectBlobs> TpmDevice::CreateKey(const TransientObject& parent, KeyKind kind) {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC in_public{};
  TPMT_PUBLIC& area = in_public.publicArea;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
  if (kind == KeyKind::kRsa2048Oaep) {
    area.type = TPM2_ALG_RSA;
    area.objectAttributes |= TPMA_OBJECT_DECRYPT;
    area.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    area.parameters.rsaDetail.scheme.scheme = TPM2_ALG_OAEP;
    area.parameters.rsaDetail.scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
    area.parameters.rsaDetail.keyBits = 2048;
    area.parameters.rsaDetail.exponent = 0;  // 65537
  } else if (kind == KeyKind::kEccP256Ecdh) {
    // Unrestricted decrypt, no sign: TPM2_ECDH_ZGen is the one operation it allows. No symmetric
    // (a storage parent would need one), no scheme and no KDF: the host derives keys from Z.
    area.type = TPM2_ALG_ECC;
    area.objectAttributes |= TPMA_OBJECT_DECRYPT;
    area.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    area.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    area.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    area.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  } else if (kind == KeyKind::kAes256Cfb) {
    area.type = TPM2_ALG_SYMCIPHER;
    area.objectAttributes |= TPMA_OBJECT_DECRYPT | TPMA_OBJECT_SIGN_ENCRYPT;
    area.parameters.symDetail.sym.algorithm = TPM2_ALG_AES;
    area.parameters.symDetail.sym.keyBits.aes = 256;
    area.parameters.symDetail.sym.mode.aes = TPM2_ALG_CFB;
  } else {
    area.type = TPM2_ALG_KEYEDHASH;
    area.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
    area.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
    area.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
  }
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  TPM2B_PRIVATE* out_private = nullptr;
  TPM2B_PUBLIC* out_public = nullptr;
  TPM2B_CREATION_DATA* creation_data = nullptr;
  TPM2B_DIGEST* creation_hash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_Create_Async(esys_, parent.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                 &in_public, &outside, &pcrs);
      },
      [&] { return Esys_Create_Finish(esys_, &out_private, &out_public, &creation_data, &creation_hash, &ticket); });
  EsysPtr<TPM2B_PRIVATE> priv(out_private);
  EsysPtr<TPM2B_PUBLIC> pub(out_public);
  Esys_Free(creation_data);
  Esys_Free(creation_hash);
  Esys_Free(ticket);
  const char* what = kind == KeyKind::kAes256Cfb     ? "TPM2_Create(AES-256-CFB key)"
                     : kind == KeyKind::kHmacSha256  ? "TPM2_Create(HMAC-SHA256 key)"
                     : kind == KeyKind::kEccP256Ecdh ? "TPM2_Create(ECC P-256 ECDH key)"
                                                     : "TPM2_Create(RSA-2048 OAEP key)";
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, what);

  ObjectBlobs blobs;
  uint8_t buffer[sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE)];
  size_t offset = 0;
  rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub.get(), buffer, sizeof buffer, &offset);
  if (rc != TSS2_RC_SUCCESS) return InternalError(DescribeRc(rc, "marshalling TPM2B_PUBLIC"));
  blobs.public_area.assign(reinterpret_cast<char*>(buffer), offset);
  offset = 0;
  rc = Tss2_MU_TPM2B_PRIVATE_Marshal(priv.get(), buffer, sizeof buffer, &offset);
  if (rc != TSS2_RC_SUCCESS) return InternalError(DescribeRc(rc, "marshalling TPM2B_PRIVATE"));
  blobs.private_area.assign(reinterpret_cast<char*>(buffer), offset);
  return blobs;
}

StatusOr<TPM2B_PUBLIC> TpmDevice::ParsePublic(std::string_view marshalled) {
  TPM2B_PUBLIC pub{};
  size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(reinterpret_cast<const uint8_t*>(marshalled.data()), marshalled.size(),
                                              &offset, &pub);
  if (rc != TSS2_RC_SUCCESS || offset != marshalled.size()) {
    return FailedPreconditionError("not a TPM2B_PUBLIC blob");
  }
  // tpm2-tss unmarshals some values it refuses to marshal again (found by tests/fuzz/tpm_key_dir_fuzz):
  // Esys_Load would then fail with a marshalling error that reads as a device fault. Only a blob that
  // writes back byte for byte, as tpm2-tss itself wrote it, is a key file.
  uint8_t again[sizeof(TPM2B_PUBLIC)];
  size_t again_size = 0;
  rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, again, sizeof again, &again_size);
  if (rc != TSS2_RC_SUCCESS || std::string_view(reinterpret_cast<const char*>(again), again_size) != marshalled) {
    return FailedPreconditionError("not a TPM2B_PUBLIC blob");
  }
  return pub;
}

StatusOr<std::string> TpmDevice::EccPublicPoint(const TPM2B_PUBLIC& pub) {
  const TPMT_PUBLIC& area = pub.publicArea;
  if (area.type != TPM2_ALG_ECC || area.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    return FailedPreconditionError("not an ECC NIST P-256 key");
  }
  const TPM2B_ECC_PARAMETER& x = area.unique.ecc.x;
  const TPM2B_ECC_PARAMETER& y = area.unique.ecc.y;
  if (x.size == 0 || y.size == 0 || x.size > kEccP256CoordinateSize || y.size > kEccP256CoordinateSize) {
    return FailedPreconditionError("the ECC key's public point is not a P-256 point");
  }
  // TPM2B coordinates may drop leading zero bytes; SEC1 has fixed-size ones.
  std::string point(kEccP256PointSize, '\0');
  point[0] = 0x04;
  std::memcpy(point.data() + 1 + kEccP256CoordinateSize - x.size, x.buffer, x.size);
  std::memcpy(point.data() + 1 + 2 * kEccP256CoordinateSize - y.size, y.buffer, y.size);
  return point;
}

StatusOr<TransientObject> TpmDevice::Load(const TransientObject& parent, const ObjectBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> pub = ParsePublic(blobs.public_area);
  if (!pub.ok()) return pub.status();
  TPM2B_PRIVATE priv{};
  size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(reinterpret_cast<const uint8_t*>(blobs.private_area.data()),
                                               blobs.private_area.size(), &offset, &priv);
  if (rc != TSS2_RC_SUCCESS || offset != blobs.private_area.size()) {
    return FailedPreconditionError("not a TPM2B_PRIVATE blob");
  }
  ESYS_TR handle = ESYS_TR_NONE;
  rc = Execute(
      [&] {
        return Esys_Load_Async(esys_, parent.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &*pub);
      },
      [&] { return Esys_Load_Finish(esys_, &handle); });
  WipeMemory(&priv, sizeof priv);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_Load");
  return TransientObject(this, handle);
}

StatusOr<std::string> TpmDevice::Name(const TransientObject& object) {
  TPM2B_NAME* raw = nullptr;
  TSS2_RC rc = Note(Esys_TR_GetName(esys_, object.handle(), &raw));
  EsysPtr<TPM2B_NAME> name(raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "Esys_TR_GetName");
  return std::string(reinterpret_cast<const char*>(name->name), name->size);
}

StatusOr<std::string> TpmDevice::Hmac(const TransientObject& key, std::string_view data) {
  TPM2B_MAX_BUFFER buffer{};
  if (data.size() > sizeof buffer.buffer) return InternalError("HMAC input larger than the TPM buffer");
  buffer.size = static_cast<UINT16>(data.size());
  std::memcpy(buffer.buffer, data.data(), data.size());
  TPM2B_DIGEST* raw = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_HMAC_Async(esys_, key.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buffer,
                               TPM2_ALG_SHA256);
      },
      [&] { return Esys_HMAC_Finish(esys_, &raw); });
  EsysPtr<TPM2B_DIGEST> digest(raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_HMAC");
  return std::string(reinterpret_cast<const char*>(digest->buffer), digest->size);
}

Status TpmDevice::Cfb(const TransientObject& key, bool decrypt, bool use_v2, size_t chunk, std::string_view iv,
                      std::string_view in, uint8_t* out) {
  TPM2B_IV iv_in{};
  if (iv.size() != 16) return InternalError("AES-CFB needs a 16-byte IV");
  iv_in.size = 16;
  std::memcpy(iv_in.buffer, iv.data(), 16);
  chunk = std::min(chunk, sizeof(TPM2B_MAX_BUFFER::buffer)) / 16 * 16;
  TPM2B_MAX_BUFFER data{};
  Status status;
  for (size_t done = 0; done < in.size();) {
    const size_t n = std::min(chunk, in.size() - done);
    data.size = static_cast<UINT16>(n);
    std::memcpy(data.buffer, in.data() + done, n);
    TPM2B_MAX_BUFFER* raw_out = nullptr;
    TPM2B_IV* raw_iv = nullptr;
    const TPMI_YES_NO direction = decrypt ? TPM2_YES : TPM2_NO;
    TSS2_RC rc = Execute(
        [&] {
          return use_v2 ? Esys_EncryptDecrypt2_Async(esys_, key.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                                     &data, direction, TPM2_ALG_CFB, &iv_in)
                        : Esys_EncryptDecrypt_Async(esys_, key.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                                    direction, TPM2_ALG_CFB, &iv_in, &data);
        },
        [&] {
          return use_v2 ? Esys_EncryptDecrypt2_Finish(esys_, &raw_out, &raw_iv)
                        : Esys_EncryptDecrypt_Finish(esys_, &raw_out, &raw_iv);
        });
    EsysPtr<TPM2B_MAX_BUFFER> result(raw_out);
    EsysPtr<TPM2B_IV> next_iv(raw_iv);
    if (rc != TSS2_RC_SUCCESS) {
      status = RcStatus(rc, use_v2 ? "TPM2_EncryptDecrypt2" : "TPM2_EncryptDecrypt");
      break;
    }
    if (result->size != n || next_iv->size != 16) {
      status = UnavailableError("the TPM returned a malformed AES-CFB result");
      break;
    }
    std::memcpy(out + done, result->buffer, n);
    WipeMemory(result->buffer, n);
    iv_in = *next_iv;
    done += n;
  }
  WipeMemory(&data, sizeof data);
  return status;
}

StatusOr<SecureBytes> TpmDevice::RsaOaepDecrypt(const TransientObject& key, std::string_view ciphertext,
                                                std::string_view label) {
  TPM2B_PUBLIC_KEY_RSA in{};
  TPM2B_DATA tpm_label{};
  if (ciphertext.size() > sizeof in.buffer) return InvalidArgumentError("RSA ciphertext too long");
  if (label.size() > sizeof tpm_label.buffer) return InternalError("OAEP label too long for the TPM");
  in.size = static_cast<UINT16>(ciphertext.size());
  std::memcpy(in.buffer, ciphertext.data(), ciphertext.size());
  tpm_label.size = static_cast<UINT16>(label.size());
  std::memcpy(tpm_label.buffer, label.data(), label.size());
  TPMT_RSA_DECRYPT scheme{};
  scheme.scheme = TPM2_ALG_OAEP;
  scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
  TPM2B_PUBLIC_KEY_RSA* raw = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_RSA_Decrypt_Async(esys_, key.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in, &scheme,
                                      &tpm_label);
      },
      [&] { return Esys_RSA_Decrypt_Finish(esys_, &raw); });
  EsysPtr<TPM2B_PUBLIC_KEY_RSA> message(raw);
  if (rc != TSS2_RC_SUCCESS) {
    if (ClassifyRc(rc) == RcClass::kOther && (BaseTpmRc(rc) == TPM2_RC_VALUE || BaseTpmRc(rc) == TPM2_RC_SIZE)) {
      return InvalidArgumentError("ciphertext failed authentication (RSA-OAEP padding or label mismatch)");
    }
    return RcStatus(rc, "TPM2_RSA_Decrypt");
  }
  SecureBytes plaintext =
      SecureBytes::CopyOf(std::string_view(reinterpret_cast<const char*>(message->buffer), message->size));
  WipeMemory(message->buffer, message->size);
  return plaintext;
}

StatusOr<SecureBytes> TpmDevice::EcdhZGen(const TransientObject& key, std::string_view point) {
  if (point.size() != kEccP256PointSize || point[0] != 0x04) {
    return InvalidArgumentError("not an uncompressed P-256 point (65 bytes starting with 0x04)");
  }
  TPM2B_ECC_POINT in{};
  in.point.x.size = kEccP256CoordinateSize;
  in.point.y.size = kEccP256CoordinateSize;
  std::memcpy(in.point.x.buffer, point.data() + 1, kEccP256CoordinateSize);
  std::memcpy(in.point.y.buffer, point.data() + 1 + kEccP256CoordinateSize, kEccP256CoordinateSize);
  TPM2B_ECC_POINT* raw = nullptr;
  TSS2_RC rc = Execute(
      [&] { return Esys_ECDH_ZGen_Async(esys_, key.handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in); },
      [&] { return Esys_ECDH_ZGen_Finish(esys_, &raw); });
  // The product point is the shared secret: wiped before ESYS frees it.
  auto wipe_and_free = [](TPM2B_ECC_POINT* p) {
    if (p) WipeMemory(p, sizeof *p);
    Esys_Free(p);
  };
  std::unique_ptr<TPM2B_ECC_POINT, decltype(wipe_and_free)> product(raw, wipe_and_free);
  if (rc != TSS2_RC_SUCCESS) {
    const TPM2_RC base = BaseTpmRc(rc);
    if (ClassifyRc(rc) == RcClass::kOther &&
        (base == TPM2_RC_ECC_POINT || base == TPM2_RC_NO_RESULT || base == TPM2_RC_SIZE)) {
      return InvalidArgumentError(
          StrCat("the TPM refused the peer point (not a point of P-256): ", DescribeRc(rc, "TPM2_ECDH_ZGen")));
    }
    return RcStatus(rc, "TPM2_ECDH_ZGen");
  }
  const TPM2B_ECC_PARAMETER& x = product->point.x;
  if (x.size == 0 || x.size > kEccP256CoordinateSize) {
    return UnavailableError("the TPM returned a malformed TPM2_ECDH_ZGen result");
  }
  SecureBytes secret(kEccP256CoordinateSize);
  std::memcpy(secret.data() + kEccP256CoordinateSize - x.size, x.buffer, x.size);
  return secret;
}

StatusOr<TransientObject> TpmDevice::CreatePrimaryIn(ESYS_TR hierarchy, const TPM2B_PUBLIC& in_public,
                                                     std::string_view what, std::string* public_area) {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  ESYS_TR handle = ESYS_TR_NONE;
  TPM2B_PUBLIC* out_public = nullptr;
  TPM2B_CREATION_DATA* creation_data = nullptr;
  TPM2B_DIGEST* creation_hash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_CreatePrimary_Async(esys_, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                        &in_public, &outside, &pcrs);
      },
      [&] { return Esys_CreatePrimary_Finish(esys_, &handle, &out_public, &creation_data, &creation_hash, &ticket); });
  EsysPtr<TPM2B_PUBLIC> pub(out_public);
  Esys_Free(creation_data);
  Esys_Free(creation_hash);
  Esys_Free(ticket);
  if (rc != TSS2_RC_SUCCESS) {
    Status s = RcStatus(rc, what);
    if (BaseTpmRc(rc) == TPM2_RC_AUTH_FAIL || BaseTpmRc(rc) == TPM2_RC_BAD_AUTH) {
      return FailedPreconditionError(StrCat(s.message(), "; the ",
                                            hierarchy == ESYS_TR_RH_OWNER ? "owner" : "endorsement",
                                            " hierarchy needs an empty auth value"));
    }
    return s;
  }
  TransientObject object(this, handle);
  if (public_area != nullptr) {
    uint8_t buffer[sizeof(TPM2B_PUBLIC)];
    size_t offset = 0;
    rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub.get(), buffer, sizeof buffer, &offset);
    if (rc != TSS2_RC_SUCCESS) return InternalError(DescribeRc(rc, "marshalling TPM2B_PUBLIC"));
    public_area->assign(reinterpret_cast<char*>(buffer), offset);
  }
  return object;
}

StatusOr<TransientObject> TpmDevice::CreateEndorsementKey(std::string* public_area) {
  // TCG EK Credential Profile 2.0, template L-1; the policy digest is PolicySecret(TPM_RH_ENDORSEMENT).
  static constexpr uint8_t kEkPolicy[32] = {0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC,
                                            0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52,
                                            0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};
  TPM2B_PUBLIC in_public{};
  TPMT_PUBLIC& area = in_public.publicArea;
  area.type = TPM2_ALG_RSA;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  area.authPolicy.size = sizeof kEkPolicy;
  std::memcpy(area.authPolicy.buffer, kEkPolicy, sizeof kEkPolicy);
  area.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
  area.parameters.rsaDetail.symmetric.keyBits.aes = 128;
  area.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  area.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  area.parameters.rsaDetail.keyBits = 2048;
  area.parameters.rsaDetail.exponent = 0;
  area.unique.rsa.size = 256;  // zeros, as the template says
  return CreatePrimaryIn(ESYS_TR_RH_ENDORSEMENT, in_public, "TPM2_CreatePrimary(endorsement, RSA 2048 EK)",
                         public_area);
}

StatusOr<TransientObject> TpmDevice::CreateAttestationKey(std::string* public_area) {
  TPM2B_PUBLIC in_public{};
  TPMT_PUBLIC& area = in_public.publicArea;
  area.type = TPM2_ALG_ECC;
  area.nameAlg = TPM2_ALG_SHA256;
  area.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                          TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED |
                          TPMA_OBJECT_SIGN_ENCRYPT;
  area.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  area.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  area.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  area.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  area.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return CreatePrimaryIn(ESYS_TR_RH_ENDORSEMENT, in_public, "TPM2_CreatePrimary(endorsement, ECDSA P-256 AK)",
                         public_area);
}

StatusOr<TpmDevice::Certification> TpmDevice::Certify(const TransientObject& object, const TransientObject& signer,
                                                      std::string_view qualifying_data) {
  TPM2B_DATA qualifying{};
  if (qualifying_data.size() > sizeof qualifying.buffer) return InvalidArgumentError("qualifying data too long");
  qualifying.size = static_cast<UINT16>(qualifying_data.size());
  std::memcpy(qualifying.buffer, qualifying_data.data(), qualifying_data.size());
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the signing key's own scheme (ECDSA-SHA256)
  TPM2B_ATTEST* attest_raw = nullptr;
  TPMT_SIGNATURE* signature_raw = nullptr;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_Certify_Async(esys_, object.handle(), signer.handle(), ESYS_TR_PASSWORD, ESYS_TR_PASSWORD,
                                  ESYS_TR_NONE, &qualifying, &scheme);
      },
      [&] { return Esys_Certify_Finish(esys_, &attest_raw, &signature_raw); });
  EsysPtr<TPM2B_ATTEST> attest(attest_raw);
  EsysPtr<TPMT_SIGNATURE> signature(signature_raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_Certify");
  if (signature->sigAlg != TPM2_ALG_ECDSA) return InternalError("TPM2_Certify: the signature is not ECDSA");
  const TPM2B_ECC_PARAMETER& r = signature->signature.ecdsa.signatureR;
  const TPM2B_ECC_PARAMETER& sig_s = signature->signature.ecdsa.signatureS;
  if (r.size > kEccP256CoordinateSize || sig_s.size > kEccP256CoordinateSize) {
    return InternalError("TPM2_Certify: the signature is not a P-256 one");
  }
  Certification out;
  out.attest.assign(reinterpret_cast<const char*>(attest->attestationData), attest->size);
  out.signature.assign(2 * kEccP256CoordinateSize, '\0');
  std::memcpy(out.signature.data() + kEccP256CoordinateSize - r.size, r.buffer, r.size);
  std::memcpy(out.signature.data() + 2 * kEccP256CoordinateSize - sig_s.size, sig_s.buffer, sig_s.size);
  return out;
}

StatusOr<SecureBytes> TpmDevice::ActivateCredential(const TransientObject& activated,
                                                    const TransientObject& endorsement,
                                                    std::string_view credential_blob,
                                                    std::string_view encrypted_secret) {
  TPM2B_ID_OBJECT blob{};
  TPM2B_ENCRYPTED_SECRET secret{};
  size_t offset = 0;
  if (Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(reinterpret_cast<const uint8_t*>(credential_blob.data()),
                                        credential_blob.size(), &offset, &blob) != TSS2_RC_SUCCESS ||
      offset != credential_blob.size()) {
    return InvalidArgumentError("the credential blob is not a TPM2B_ID_OBJECT");
  }
  offset = 0;
  if (Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(reinterpret_cast<const uint8_t*>(encrypted_secret.data()),
                                               encrypted_secret.size(), &offset, &secret) != TSS2_RC_SUCCESS ||
      offset != encrypted_secret.size()) {
    return InvalidArgumentError("the encrypted secret is not a TPM2B_ENCRYPTED_SECRET");
  }
  // The EK may be used only through a policy session satisfying PolicySecret(TPM_RH_ENDORSEMENT).
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_NULL;
  ESYS_TR session = ESYS_TR_NONE;
  TSS2_RC rc = Execute(
      [&] {
        return Esys_StartAuthSession_Async(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                           nullptr, TPM2_SE_POLICY, &symmetric, TPM2_ALG_SHA256);
      },
      [&] { return Esys_StartAuthSession_Finish(esys_, &session); });
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_StartAuthSession(policy)");
  TransientObject session_guard(this, session);  // flushed on every path
  TPM2B_NONCE nonce_tpm{};
  TPM2B_DIGEST cp_hash{};
  TPM2B_NONCE policy_ref{};
  TPM2B_TIMEOUT* timeout = nullptr;
  TPMT_TK_AUTH* ticket = nullptr;
  rc = Execute(
      [&] {
        return Esys_PolicySecret_Async(esys_, ESYS_TR_RH_ENDORSEMENT, session, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                       ESYS_TR_NONE, &nonce_tpm, &cp_hash, &policy_ref, 0);
      },
      [&] { return Esys_PolicySecret_Finish(esys_, &timeout, &ticket); });
  Esys_Free(timeout);
  Esys_Free(ticket);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_PolicySecret(endorsement)");
  TPM2B_DIGEST* cert_info = nullptr;
  rc = Execute(
      [&] {
        return Esys_ActivateCredential_Async(esys_, activated.handle(), endorsement.handle(), ESYS_TR_PASSWORD, session,
                                             ESYS_TR_NONE, &blob, &secret);
      },
      [&] { return Esys_ActivateCredential_Finish(esys_, &cert_info); });
  auto wipe_and_free = [](TPM2B_DIGEST* d) {
    if (d) WipeMemory(d, sizeof *d);
    Esys_Free(d);
  };
  std::unique_ptr<TPM2B_DIGEST, decltype(wipe_and_free)> recovered(cert_info, wipe_and_free);
  if (rc != TSS2_RC_SUCCESS) {
    const TPM2_RC base = BaseTpmRc(rc);
    bool foreign = (ClassifyRc(rc) == RcClass::kOther || ClassifyRc(rc) == RcClass::kIntegrity) &&
                   (base == TPM2_RC_INTEGRITY || base == TPM2_RC_VALUE || base == TPM2_RC_SIZE);
    // libtpms (swtpm) answers TPM_RC_FAILURE when the seed does not decrypt under its EK, and goes on
    // serving: only a TPM that still answers afterwards was refusing the challenge, not failing.
    if (base == TPM2_RC_FAILURE && !link_lost_) foreign = GetRandom(1).ok();
    if (foreign) {
      return InvalidArgumentError(
          StrCat("the challenge was not made for this TPM's endorsement key and attestation "
                 "key: ",
                 DescribeRc(rc, "TPM2_ActivateCredential")));
    }
    return RcStatus(rc, "TPM2_ActivateCredential");
  }
  return SecureBytes::CopyOf(std::string_view(reinterpret_cast<const char*>(recovered->buffer), recovered->size));
}

StatusOr<std::string> TpmDevice::ReadNv(TPM2_HANDLE index) {
  ESYS_TR nv = ESYS_TR_NONE;
  TSS2_RC rc =
      Execute([&] { return Esys_TR_FromTPMPublic_Async(esys_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE); },
              [&] { return Esys_TR_FromTPMPublic_Finish(esys_, &nv); });
  if (rc != TSS2_RC_SUCCESS) {
    if (BaseTpmRc(rc) == TPM2_RC_HANDLE) {
      char name[16];
      std::snprintf(name, sizeof name, "0x%08x", index);
      return NotFoundError(StrCat("NV index ", name, " is not defined"));
    }
    return RcStatus(rc, "TPM2_NV_ReadPublic");
  }
  struct CloseLocally {
    ESYS_CONTEXT* esys;
    ESYS_TR* handle;
    ~CloseLocally() { Esys_TR_Close(esys, handle); }  // an NV index is not flushed, only forgotten
  } close_nv{esys_, &nv};
  TPM2B_NV_PUBLIC* nv_public_raw = nullptr;
  TPM2B_NAME* nv_name_raw = nullptr;
  rc = Execute([&] { return Esys_NV_ReadPublic_Async(esys_, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE); },
               [&] { return Esys_NV_ReadPublic_Finish(esys_, &nv_public_raw, &nv_name_raw); });
  EsysPtr<TPM2B_NV_PUBLIC> nv_public(nv_public_raw);
  EsysPtr<TPM2B_NAME> nv_name(nv_name_raw);
  if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_NV_ReadPublic");
  const size_t size = nv_public->nvPublic.dataSize;
  // Read with the index's own (empty) auth where it allows that, else as the owner.
  const ESYS_TR auth = (nv_public->nvPublic.attributes & TPMA_NV_AUTHREAD) ? nv : ESYS_TR_RH_OWNER;
  std::string content;
  while (content.size() < size) {
    const UINT16 chunk = static_cast<UINT16>(std::min<size_t>(size - content.size(), 512));
    const UINT16 at = static_cast<UINT16>(content.size());
    TPM2B_MAX_NV_BUFFER* data_raw = nullptr;
    rc = Execute(
        [&] { return Esys_NV_Read_Async(esys_, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, chunk, at); },
        [&] { return Esys_NV_Read_Finish(esys_, &data_raw); });
    EsysPtr<TPM2B_MAX_NV_BUFFER> data(data_raw);
    if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_NV_Read");
    if (data->size == 0) return InternalError("TPM2_NV_Read returned no data");
    content.append(reinterpret_cast<const char*>(data->buffer), data->size);
  }
  return content;
}

StatusOr<SecureBytes> TpmDevice::GetRandom(size_t size) {
  SecureBytes out(size);
  for (size_t done = 0; done < size;) {
    const UINT16 want = static_cast<UINT16>(std::min<size_t>(size - done, sizeof(TPM2B_DIGEST::buffer)));
    TPM2B_DIGEST* raw = nullptr;
    TSS2_RC rc = Execute([&] { return Esys_GetRandom_Async(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, want); },
                         [&] { return Esys_GetRandom_Finish(esys_, &raw); });
    auto wipe_and_free = [](TPM2B_DIGEST* p) {
      if (p) WipeMemory(p, sizeof *p);
      Esys_Free(p);
    };
    std::unique_ptr<TPM2B_DIGEST, decltype(wipe_and_free)> bytes(raw, wipe_and_free);
    if (rc != TSS2_RC_SUCCESS) return RcStatus(rc, "TPM2_GetRandom");
    if (bytes->size == 0 || bytes->size > want)
      return UnavailableError("the TPM returned a malformed TPM2_GetRandom result");
    std::memcpy(out.data() + done, bytes->buffer, bytes->size);
    done += bytes->size;
  }
  return out;
}

}  // namespace trousseau::tpm
