#include "hsm_client.h"

#include <algorithm>
#include <vector>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11_uri.h"
#include "report.h"

namespace trousseau::bench {

std::unique_ptr<RawHsm> RawHsm::Open(const std::string& uri_text) {
  auto raw = std::unique_ptr<RawHsm>(new RawHsm());
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(uri_text);
  if (!uri.ok()) return Fail(uri.status());
  StatusOr<std::unique_ptr<hsm::Pkcs11Module>> module =
      hsm::Pkcs11Module::Load(uri->module_path(), uri->init_reserved());
  if (!module.ok()) return Fail(module.status());
  raw->module_ = *std::move(module);
  if (Status s = raw->module_->Initialize(); !s.ok()) return Fail(s);
  StatusOr<hsm::TokenSlot> slot = hsm::FindToken(raw->module_->api(), *uri);
  if (!slot.ok()) return Fail(slot.status());
  StatusOr<hsm::Session> session = hsm::OpenSession(raw->module_->api(), slot->slot, /*read_write=*/false);
  if (!session.ok()) return Fail(session.status());
  raw->session_ = *std::move(session);
  if (Status s = hsm::LoginUser(raw->session_, *slot, uri->pin_file()); !s.ok()) return Fail(s);
  return raw;
}

bool RawHsm::UseKey(const std::string& family) {
  copy_ = hsm::SessionObject();
  StatusOr<std::vector<hsm::KeyObject>> keys = hsm::ListKeyFamily(session_, family);
  if (!keys.ok() || keys->empty()) {
    Progress("raw HSM: no key family '%s': %s", family.c_str(), keys.status().ToString().c_str());
    return false;
  }
  key_ = keys->front().handle;
  StatusOr<hsm::ObjectHandle> copy = hsm::CopyToSessionObject(session_, key_);
  if (copy.ok()) {
    copy_ = hsm::SessionObject(session_.api(), session_.handle(), *copy);
    key_ = *copy;
    key_kind_ = "session copy";
  } else {
    key_kind_ = "token object";
  }
  return true;
}

bool RawHsm::OpenOnce(const ParsedEnvelope& envelope, std::string_view expected) {
  GcmIv iv;
  std::copy(envelope.sealed.begin(), envelope.sealed.begin() + kGcmIvSize, iv.begin());
  SecureBytes plaintext;
  const Status opened =
      hsm::GcmOpen(session_, key_, iv, envelope.header, envelope.sealed.substr(kGcmIvSize), plaintext);
  return opened.ok() && plaintext.view() == expected;
}

std::unique_ptr<RawHsm> RawHsm::Fail(const Status& status) {
  Progress("raw HSM: %s", status.ToString().c_str());
  return nullptr;
}

}  // namespace trousseau::bench
