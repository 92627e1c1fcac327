// FOR TESTS ONLY (see software_backend.h).
#include "tests/testing/software_backend.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <utility>

#include "core/strings.h"

namespace trousseau::testing {
namespace {

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

const unsigned char* Bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

Status OutOfRange(std::string_view what) { return InternalError(StrCat("software AES-GCM: ", what)); }

bool Expired(Deadline deadline) { return std::chrono::steady_clock::now() > deadline; }

}  // namespace

StatusOr<std::string> AesGcmSeal(std::string_view key, std::string_view iv, std::string_view plaintext,
                                 std::string_view aad) {
  if (key.size() != SoftwareBackend::kKeySize || iv.size() != SoftwareBackend::kIvSize) {
    return OutOfRange("bad key or IV size");
  }
  CipherCtx ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  std::string out(iv);
  out.resize(iv.size() + plaintext.size() + SoftwareBackend::kTagSize);
  auto* ct = reinterpret_cast<unsigned char*>(out.data()) + iv.size();
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, Bytes(key), Bytes(iv)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, Bytes(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &len, Bytes(plaintext), static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), ct + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, SoftwareBackend::kTagSize, ct + plaintext.size()) != 1) {
    return OutOfRange("EVP encryption failed");
  }
  return out;
}

StatusOr<SecureBytes> AesGcmOpen(std::string_view key, std::string_view sealed, std::string_view aad) {
  if (key.size() != SoftwareBackend::kKeySize) return OutOfRange("bad key size");
  if (sealed.size() < SoftwareBackend::kIvSize + SoftwareBackend::kTagSize) {
    return InvalidArgumentError("sealed data is shorter than an IV and a tag");
  }
  const std::string_view iv = sealed.substr(0, SoftwareBackend::kIvSize);
  const std::string_view ct =
      sealed.substr(SoftwareBackend::kIvSize, sealed.size() - SoftwareBackend::kIvSize - SoftwareBackend::kTagSize);
  std::string tag(sealed.substr(sealed.size() - SoftwareBackend::kTagSize));
  CipherCtx ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  // One spare byte: EVP wants a non-null output pointer even for an empty ciphertext.
  SecureBytes plaintext(ct.size() + 1);
  int len = 0, final_len = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, Bytes(key), Bytes(iv)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, Bytes(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), plaintext.data(), &len, Bytes(ct), static_cast<int>(ct.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, SoftwareBackend::kTagSize, tag.data()) != 1) {
    return OutOfRange("EVP decryption failed");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), plaintext.data() + len, &final_len) != 1) {
    return InvalidArgumentError("ciphertext failed authentication");
  }
  plaintext.Truncate(static_cast<size_t>(len + final_len));
  return plaintext;
}

void SoftwareBackend::AddVersion(uint64_t version) {
  SecureBytes key(kKeySize);
  if (RAND_bytes(key.data(), kKeySize) != 1) std::abort();  // a test machine without entropy: nothing to test
  std::lock_guard lock(mu_);
  keys_[version] = std::move(key);
}

void SoftwareBackend::AddVersion(uint64_t version, std::string_view key) {
  if (key.size() != kKeySize) std::abort();  // a broken test, not a runtime condition
  std::lock_guard lock(mu_);
  keys_[version] = SecureBytes::CopyOf(key);
}

void SoftwareBackend::RemoveVersion(uint64_t version) {
  std::lock_guard lock(mu_);
  keys_.erase(version);
}

void SoftwareBackend::SetUnavailable(bool unavailable) {
  SetFailure(unavailable ? UnavailableError("software backend is down (test outage)") : OkStatus());
}

void SoftwareBackend::SetFailure(Status failure) {
  std::lock_guard lock(mu_);
  failure_ = std::move(failure);
}

void SoftwareBackend::OnDeviceCall(std::function<void()> hook) {
  std::lock_guard lock(mu_);
  on_device_call_ = std::move(hook);
}

int SoftwareBackend::device_calls() const {
  std::lock_guard lock(mu_);
  return device_calls_;
}

void SoftwareBackend::RunDeviceCallHook() {
  std::function<void()> hook;
  {
    std::lock_guard lock(mu_);
    hook = on_device_call_;
  }
  if (hook) hook();
}

void SoftwareBackend::OnLoadKeys(std::function<void(int)> hook) {
  std::lock_guard lock(mu_);
  on_load_keys_ = std::move(hook);
}

int SoftwareBackend::load_keys_calls() const {
  std::lock_guard lock(mu_);
  return load_keys_calls_;
}

StatusOr<SecureBytes> SoftwareBackend::KeyFor(uint64_t version, Deadline deadline) const {
  std::lock_guard lock(mu_);
  ++device_calls_;
  if (!failure_.ok()) return failure_;
  if (Expired(deadline)) return UnavailableError("software backend: the call's deadline had passed");
  auto it = keys_.find(version);
  if (it == keys_.end()) return NotFoundError(StrCat("key version ", version, " is not in the software backend"));
  return SecureBytes::CopyOf(it->second.view());
}

StatusOr<std::vector<BackendKey>> SoftwareBackend::LoadKeys(Deadline deadline) {
  std::function<void(int)> hook;
  int call = 0;
  {
    std::lock_guard lock(mu_);
    call = ++load_keys_calls_;
    hook = on_load_keys_;
  }
  if (hook) hook(call);
  std::lock_guard lock(mu_);
  ++device_calls_;
  if (!failure_.ok()) return failure_;
  if (Expired(deadline)) return UnavailableError("software backend: the call's deadline had passed");
  std::vector<BackendKey> keys;
  for (const auto& [version, key] : keys_) {
    // A MAC of a fixed message under the key: public, and different for every key.
    static constexpr char kMessage[] = "trousseau-hsm software backend fingerprint";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(kMessage),
             sizeof kMessage - 1, mac, &mac_len) == nullptr) {
      return InternalError("HMAC failed");
    }
    keys.push_back({version, HexEncode(std::string_view(reinterpret_cast<const char*>(mac), mac_len))});
  }
  return keys;
}

StatusOr<std::string> SoftwareBackend::Seal(uint64_t version, std::string_view plaintext, std::string_view aad,
                                            Deadline deadline) {
  RunDeviceCallHook();
  StatusOr<SecureBytes> key = KeyFor(version, deadline);
  if (!key.ok()) return key.status();
  unsigned char iv[kIvSize];
  if (RAND_bytes(iv, sizeof iv) != 1) return UnavailableError("no random bytes for an IV");
  return AesGcmSeal(key->view(), std::string_view(reinterpret_cast<const char*>(iv), sizeof iv), plaintext, aad);
}

StatusOr<SecureBytes> SoftwareBackend::Open(uint64_t version, std::string_view sealed, std::string_view aad,
                                            Deadline deadline) {
  RunDeviceCallHook();
  StatusOr<SecureBytes> key = KeyFor(version, deadline);
  if (!key.ok()) return key.status();
  return AesGcmOpen(key->view(), sealed, aad);
}

Status SoftwareBackend::Probe(uint64_t version, Deadline deadline) {
  static constexpr std::string_view kProbe = "probe";
  StatusOr<std::string> sealed = Seal(version, kProbe, "", deadline);
  if (!sealed.ok()) return sealed.status();
  StatusOr<SecureBytes> opened = Open(version, *sealed, "", deadline);
  if (!opened.ok()) return opened.status();
  if (opened->view() != kProbe) return InternalError("software backend probe round trip mismatch");
  return OkStatus();
}

}  // namespace trousseau::testing
