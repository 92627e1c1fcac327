#include "tpm/recipient_provisioning.h"

#include "core/strings.h"
#include "tpm/key_store.h"
#include "tpm/recipient_key.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {
namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

Status CheckConfig(const RecipientConfig& config) {
  if (config.tcti.empty()) return FailedPreconditionError(kEmptyTctiMessage);
  if (config.recipient_dir.empty()) return FailedPreconditionError("no TPM recipient key directory configured");
  return OkStatus();
}

StatusOr<std::unique_ptr<TpmDevice>> Connect(const RecipientConfig& config) {
  StatusOr<std::unique_ptr<TpmDevice>> device = TpmDevice::Open(config.tcti);
  if (device.ok()) (*device)->set_deadline(Clock::now() + kTimeout);
  return device;
}

// Loads `blobs` in the TPM and describes the key. A key that does not load here is
// FAILED_PRECONDITION naming the directory and the TCTI; UNAVAILABLE passes through (it says
// nothing about the key).
StatusOr<RecipientInfo> Describe(TpmDevice& device, const ObjectBlobs& blobs, const RecipientConfig& config) {
  StatusOr<TransientObject> key = LoadRecipientObject(device, blobs);
  if (!key.ok()) {
    if (IsUnavailable(key.status())) return key.status();
    return FailedPreconditionError(StrCat("the TPM recipient key in ", config.recipient_dir,
                                          " does not load in the TPM at '", config.tcti,
                                          "': ", key.status().message()));
  }
  StatusOr<std::string> name = device.Name(*key);
  if (!name.ok()) return name.status();
  StatusOr<std::string> point = RecipientPoint(blobs);
  if (!point.ok()) return point.status();
  StatusOr<TPM2B_PUBLIC> pub = TpmDevice::ParsePublic(blobs.public_area);
  if (!pub.ok()) return pub.status();
  const TPMA_OBJECT attributes = pub->publicArea.objectAttributes;
  RecipientInfo info;
  info.public_point = *std::move(point);
  info.tpm_name = *std::move(name);
  info.public_area = blobs.public_area;
  info.object_attributes = attributes;
  info.fixed_tpm = (attributes & TPMA_OBJECT_FIXEDTPM) != 0;
  info.fixed_parent = (attributes & TPMA_OBJECT_FIXEDPARENT) != 0;
  info.sensitive_data_origin = (attributes & TPMA_OBJECT_SENSITIVEDATAORIGIN) != 0;
  return info;
}

}  // namespace

StatusOr<RecipientInfo> CreateRecipientKey(const RecipientConfig& config) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  if (Status s = EnsureKeyDir(config.recipient_dir); !s.ok()) return s;
  StatusOr<KeyDirLock> lock = KeyDirLock::Acquire(config.recipient_dir, config.lock_wait);
  if (!lock.ok()) return lock.status();
  RemoveStaleTempFiles(config.recipient_dir);
  StatusOr<ObjectBlobs> existing = ReadRecipientKey(config.recipient_dir);
  if (existing.ok()) {
    return AlreadyExistsError(StrCat(config.recipient_dir,
                                     " already holds a TPM recipient key; remove it first (its wraps then no longer "
                                     "open) to make another"));
  }
  if (!IsNotFound(existing.status())) return existing.status();
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  StatusOr<ObjectBlobs> blobs = CreateRecipientObject(**device);
  if (!blobs.ok()) return blobs.status();
  StatusOr<RecipientInfo> info = Describe(**device, *blobs, config);
  if (!info.ok()) return info.status();
  if (Status s = WriteRecipientKey(config.recipient_dir, *blobs); !s.ok()) return s;
  return info;
}

StatusOr<RecipientInfo> ShowRecipient(const RecipientConfig& config) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  StatusOr<ObjectBlobs> blobs = ReadRecipientKey(config.recipient_dir);
  if (!blobs.ok()) return blobs.status();
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  return Describe(**device, *blobs, config);
}

}  // namespace trousseau::tpm
