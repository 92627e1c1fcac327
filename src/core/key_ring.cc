#include "core/key_ring.h"

#include "core/key_id.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau {

StatusOr<KeyRing> KeyRing::Build(std::string_view backend_kind, std::string_view family_label,
                                 const std::vector<BackendKey>& keys, uint64_t active_version) {
  if (keys.empty()) {
    return FailedPreconditionError(
        StrCat("no key of family '", family_label, "' found; provision one with trousseau-hsm-init"));
  }
  KeyRing ring;
  for (const BackendKey& key : keys) {
    if (key.version == 0) return FailedPreconditionError("key version 0 is not allowed");
    std::string key_id = DeriveKeyId(backend_kind, family_label, key.version, key.fingerprint);
    if (!ring.key_ids_.emplace(key.version, key_id).second) {
      return FailedPreconditionError(StrCat("key family '", family_label, "' has two keys with version ", key.version));
    }
    ring.versions_by_key_id_.emplace(std::move(key_id), key.version);
    ring.formats_.emplace(key.version, key.envelope_format);
  }
  ring.active_version_ = active_version == 0 ? ring.key_ids_.rbegin()->first : active_version;
  if (!ring.key_ids_.contains(ring.active_version_)) {
    return FailedPreconditionError(
        StrCat("key version ", active_version, " of family '", family_label, "' is not on the device"));
  }
  return ring;
}

std::optional<uint64_t> KeyRing::VersionOf(std::string_view key_id) const {
  auto it = versions_by_key_id_.find(std::string(key_id));
  if (it == versions_by_key_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* KeyRing::KeyIdOf(uint64_t version) const {
  auto it = key_ids_.find(version);
  return it == key_ids_.end() ? nullptr : &it->second;
}

uint8_t KeyRing::EnvelopeFormatOf(uint64_t version) const {
  auto it = formats_.find(version);
  return it == formats_.end() ? 0 : it->second;
}

}  // namespace trousseau
