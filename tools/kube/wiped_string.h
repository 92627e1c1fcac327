// A std::string that holds a secret (a request body with a Secret's data, an apiserver response,
// a bearer token header) and is wiped before it is freed. Grow it only with AppendWiped, which
// copies into a larger buffer and wipes the old one instead of letting std::string reallocate.
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"

namespace trousseau::kube {

inline void WipeString(std::string& s) {
  WipeMemory(s.data(), s.capacity());
  s.clear();
}

struct WipedString {
  std::string value;
  WipedString() = default;
  explicit WipedString(size_t reserve) { value.reserve(reserve); }
  WipedString(WipedString&& other) noexcept : value(std::move(other.value)) {}
  WipedString& operator=(WipedString&& other) noexcept {
    if (this != &other) {
      WipeString(value);
      value.swap(other.value);
    }
    return *this;
  }
  WipedString(const WipedString&) = delete;
  WipedString& operator=(const WipedString&) = delete;
  ~WipedString() { WipeString(value); }
};

// Appends `piece` to `out`, moving to a buffer twice as large (and wiping the old one) when it is full.
inline void AppendWiped(WipedString& out, std::string_view piece) {
  if (out.value.size() + piece.size() > out.value.capacity()) {
    std::string larger;
    larger.reserve(2 * (out.value.size() + piece.size()) + 64);
    larger.assign(out.value);
    WipeString(out.value);
    out.value.swap(larger);
  }
  out.value.append(piece);
}

}  // namespace trousseau::kube
