#include "core/secure_bytes.h"

#include <openssl/crypto.h>

#include <cstring>
#include <utility>

namespace trousseau {

void WipeMemory(void* data, size_t size) {
  if (data != nullptr && size > 0) OPENSSL_cleanse(data, size);
}

SecureBytes::SecureBytes(size_t size) : data_(new uint8_t[size == 0 ? 1 : size]()), size_(size) {}

SecureBytes SecureBytes::CopyOf(std::string_view data) {
  SecureBytes out(data.size());
  if (!data.empty()) std::memcpy(out.data(), data.data(), data.size());
  return out;
}

SecureBytes::~SecureBytes() { Wipe(); }

SecureBytes::SecureBytes(SecureBytes&& other) noexcept
    : data_(std::move(other.data_)), size_(std::exchange(other.size_, 0)) {}

SecureBytes& SecureBytes::operator=(SecureBytes&& other) noexcept {
  if (this != &other) {
    Wipe();
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void SecureBytes::Truncate(size_t size) {
  if (size >= size_) return;
  WipeMemory(data_.get() + size, size_ - size);
  size_ = size;
}

void SecureBytes::Wipe() {
  if (data_) WipeMemory(data_.get(), size_);
  data_.reset();
  size_ = 0;
}

}  // namespace trousseau
