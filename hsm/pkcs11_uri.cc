#include "hsm/pkcs11_uri.h"
#include "core/status.h"
#include "core/strings.h"

#include <p11-kit/uri.h>

namespace trousseau::hsm {

std::string TrimPadded(const unsigned char* text, size_t size) {
  std::string out(reinterpret_cast<const char*>(text), size);
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

StatusOr<Pkcs11Uri> Pkcs11Uri::Parse(const std::string& text, KeyFamilyInUri family) {
  Pkcs11Uri parsed;
  parsed.uri_.reset(p11_kit_uri_new(), p11_kit_uri_free);
  P11KitUri* uri = parsed.uri_.get();
  const int rc = p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_ANY, uri);
  if (rc != P11_KIT_URI_OK) {
    // The URI may hold a pin-value, so it is never echoed back.
    return InvalidArgumentError(StrCat("--pkcs11-uri is not a valid RFC 7512 URI: ", p11_kit_uri_message(rc)));
  }
  if (p11_kit_uri_get_pin_value(uri) != nullptr) {
    return InvalidArgumentError(
        "--pkcs11-uri carries a pin-value; a PIN on the command line is visible to every user of the node. "
        "Use pin-source=file:/path (mode 0600) or the TROUSSEAU_HSM_PIN environment variable");
  }
  if (p11_kit_uri_any_unrecognized(uri)) {
    return InvalidArgumentError("--pkcs11-uri has attributes p11-kit does not recognise");
  }
  const char* module_path = p11_kit_uri_get_module_path(uri);
  if (module_path == nullptr || module_path[0] != '/') {
    return InvalidArgumentError(
        "--pkcs11-uri needs module-path=/absolute/path/to/module.so (e.g. /usr/lib/softhsm/libsofthsm2.so)");
  }
  parsed.module_path_ = module_path;

  if (const char* recipient = p11_kit_uri_get_vendor_query(uri, "x-recipient"); recipient != nullptr) {
    if (recipient[0] == '\0') return InvalidArgumentError("--pkcs11-uri has an empty x-recipient");
    parsed.recipient_label_ = recipient;
  }

  CK_ATTRIBUTE* label = p11_kit_uri_get_attribute(uri, CKA_LABEL);
  if (label == nullptr || label->ulValueLen == 0) {
    if (family == KeyFamilyInUri::kRequired || !parsed.recipient_label_) {
      return InvalidArgumentError(family == KeyFamilyInUri::kRequired
                                      ? "--pkcs11-uri needs object=LABEL naming the key family"
                                      : "--pkcs11-uri needs object=LABEL naming the key family, "
                                        "x-recipient=LABEL naming the recipient key, or both");
    }
  } else {
    parsed.object_label_.assign(static_cast<const char*>(label->pValue), label->ulValueLen);
  }
  if (p11_kit_uri_get_attribute(uri, CKA_ID) != nullptr) {
    return InvalidArgumentError(
        "--pkcs11-uri must not contain id=: every key labelled object= is one version of the family, "
        "and its CKA_ID is its version number");
  }
  if (CK_ATTRIBUTE* cls = p11_kit_uri_get_attribute(uri, CKA_CLASS);
      cls != nullptr &&
      (cls->ulValueLen != sizeof(CK_OBJECT_CLASS) || *static_cast<CK_OBJECT_CLASS*>(cls->pValue) != CKO_SECRET_KEY)) {
    return InvalidArgumentError("--pkcs11-uri type= must be secret-key (or absent)");
  }

  if (const char* source = p11_kit_uri_get_pin_source(uri); source != nullptr) {
    std::string path = source;
    if (path.starts_with("file:")) path = path.substr(5);
    if (path.starts_with("//")) path = path.substr(2);  // file:///etc/... form
    if (path.empty() || path[0] != '/') {
      return InvalidArgumentError("pin-source must be file:/absolute/path");
    }
    parsed.pin_file_ = path;
  }

  if (const char* init = p11_kit_uri_get_vendor_query(uri, "x-init-reserved"); init != nullptr) {
    if (init[0] == '\0') return InvalidArgumentError("--pkcs11-uri has an empty x-init-reserved");
    parsed.init_reserved_ = init;
  }
  if (const char* iv = p11_kit_uri_get_vendor_query(uri, "x-gcm-iv"); iv != nullptr) {
    const std::string_view value = iv;
    if (value == "device") {
      parsed.gcm_iv_source_ = GcmIvSource::kDevice;
    } else if (value == "caller") {
      parsed.gcm_iv_source_ = GcmIvSource::kCaller;
    } else {
      return InvalidArgumentError("--pkcs11-uri: x-gcm-iv must be 'device' or 'caller'");
    }
  }

  CK_TOKEN_INFO* token = p11_kit_uri_get_token_info(uri);
  const std::string token_label = TrimPadded(token->label, sizeof token->label);
  const std::string serial = TrimPadded(token->serialNumber, sizeof token->serialNumber);
  parsed.token_description_ = token_label.empty() ? "any token" : StrCat("token '", token_label, "'");
  if (!serial.empty()) StrAppend(parsed.token_description_, " serial ", serial);
  return parsed;
}

bool Pkcs11Uri::MatchesSlot(const CK_SLOT_INFO& info, CK_SLOT_ID id) const {
  const CK_SLOT_ID wanted = p11_kit_uri_get_slot_id(uri_.get());
  if (wanted != static_cast<CK_SLOT_ID>(-1) && wanted != id) return false;
  return p11_kit_uri_match_slot_info(uri_.get(), &info) == 1;
}

bool Pkcs11Uri::MatchesToken(const CK_TOKEN_INFO& info) const {
  return p11_kit_uri_match_token_info(uri_.get(), &info) == 1;
}

}  // namespace trousseau::hsm
