#include "tools/kube/base64.h"

#include <openssl/evp.h>

namespace trousseau::kube {

WipedString Base64Encode(std::string_view data) {
  WipedString out;
  out.value.resize(4 * ((data.size() + 2) / 3) + 1);
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.value.data()),
                                reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.value.resize(static_cast<size_t>(n));
  return out;
}

StatusOr<SecureBytes> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return InvalidArgumentError("not base64 (its length is not a multiple of 4)");
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool alphabet =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    const bool padding = c == '=' && i + 2 >= text.size() && (i + 1 == text.size() || text[i + 1] == '=');
    if (!alphabet && !padding) return InvalidArgumentError("not base64 (a character outside its alphabet)");
  }
  SecureBytes out(3 * text.size() / 4);
  if (text.empty()) return out;
  const int n =
      EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return InvalidArgumentError("not base64");
  size_t padding = 0;
  if (text.back() == '=') ++padding;
  if (text[text.size() - 2] == '=') ++padding;
  out.Truncate(static_cast<size_t>(n) - padding);
  return out;
}

}  // namespace trousseau::kube
