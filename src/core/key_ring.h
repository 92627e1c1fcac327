// An immutable snapshot of the key family: which versions exist, their key_ids, and which encrypts.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/key_backend.h"
#include "core/status.h"

namespace trousseau {

class KeyRing {
 public:
  // `active_version` (0: the highest) encrypts; every version decrypts. Fails on an empty family,
  // duplicate versions, or an active version that is not in `keys`.
  static StatusOr<KeyRing> Build(std::string_view backend_kind, std::string_view family_label,
                                 const std::vector<BackendKey>& keys, uint64_t active_version = 0);

  uint64_t active_version() const { return active_version_; }
  const std::string& active_key_id() const { return key_ids_.at(active_version_); }
  uint64_t highest_version() const { return key_ids_.rbegin()->first; }
  std::optional<uint64_t> VersionOf(std::string_view key_id) const;
  const std::string* KeyIdOf(uint64_t version) const;
  // The envelope format `version` seals with (BackendKey::envelope_format); 0 if no such version.
  uint8_t EnvelopeFormatOf(uint64_t version) const;
  // version -> key_id, ascending.
  const std::map<uint64_t, std::string>& key_ids() const { return key_ids_; }

 private:
  KeyRing() = default;
  uint64_t active_version_ = 0;
  std::map<uint64_t, std::string> key_ids_;
  std::unordered_map<std::string, uint64_t> versions_by_key_id_;
  std::map<uint64_t, uint8_t> formats_;
};

}  // namespace trousseau
