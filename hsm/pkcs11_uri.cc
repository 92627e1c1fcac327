#include "hsm/pkcs11_uri.h"
#include "core/status.h"
#include "core/strings.h"

#include <p11-kit/uri.h>

#include <algorithm>
#include <iterator>
#include <string_view>
#include <vector>

namespace trousseau::hsm {

std::string TrimPadded(const unsigned char* text, size_t size) {
  std::string out(reinterpret_cast<const char*>(text), size);
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

namespace {

// RFC 7512's attribute names (path, then query) and the vendor ones we read.
constexpr std::string_view kPathAttributes[] = {
    "token",           "manufacturer", "serial", "model", "library-manufacturer", "library-description",
    "library-version", "object",       "type",   "id",    "slot-description",     "slot-manufacturer",
    "slot-id"};
constexpr std::string_view kQueryAttributes[] = {"pin-source",      "pin-value", "module-name", "module-path",
                                                 "x-init-reserved", "x-gcm-iv",  "x-recipient"};

bool IsAttributeName(std::string_view name) {
  return !name.empty() && name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
  });
}

template <size_t N>
bool Among(std::string_view name, const std::string_view (&names)[N]) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// What is wrong with the URI's layout, said by attribute name (values are never shown: one may be a PIN),
// or "" when nothing is: '&' in the path where '?' should start the query, a query attribute in the path,
// an attribute nobody knows (with the nearest known one).
std::string LayoutProblem(std::string_view text) {
  // A pin-value makes every part after it suspect (a PIN may hold '&' or '='): p11-kit parses it and
  // Parse refuses it without a word of its value.
  if (!text.starts_with("pkcs11:") || text.find("pin-value") != std::string_view::npos) return "";
  const size_t query_at = text.find('?');
  const std::string_view path = text.substr(7, query_at == std::string_view::npos ? text.npos : query_at - 7);
  const std::string_view query = query_at == std::string_view::npos ? std::string_view() : text.substr(query_at + 1);
  std::vector<std::string> known;
  for (std::string_view n : kPathAttributes) known.emplace_back(n);
  for (std::string_view n : kQueryAttributes) known.emplace_back(n);
  const auto check = [&](std::string_view part, char separator, bool in_path) -> std::string {
    size_t start = 0;
    while (start <= part.size()) {
      const size_t end = std::min(part.find(separator, start), part.size());
      const std::string_view item = part.substr(start, end - start);
      start = end + 1;
      if (item.empty()) continue;
      const std::string_view name = item.substr(0, item.find('='));
      // '&' may stand in a path value (RFC 7512), but '&module-path=' there is a query begun with '&'.
      for (size_t amp = item.find('&'); in_path && amp != std::string_view::npos; amp = item.find('&', amp + 1)) {
        const std::string_view after = item.substr(amp + 1);
        if (Among(after.substr(0, after.find('=')), kQueryAttributes) && after.find('=') != std::string_view::npos) {
          return "the attributes after the path go in a query that starts with '?': "
                 "pkcs11:token=...;object=...?module-path=...&pin-source=... ('&' only separates query attributes)";
        }
      }
      // Only an item that is NAME=... is judged: a piece without '=' may be part of a value.
      if (!IsAttributeName(name) || item.find('=') == std::string_view::npos) continue;
      if (in_path && Among(name, kQueryAttributes)) {
        return StrCat(name, "= belongs in the query, after '?': pkcs11:token=...;object=...?", name, "=...");
      }
      if (!in_path && Among(name, kPathAttributes)) {
        return StrCat(name, "= belongs in the path, before '?', separated by ';'");
      }
      if (!Among(name, kPathAttributes) && !Among(name, kQueryAttributes) && !name.starts_with("x-")) {
        // Named only when it is a near miss of a real attribute (a typo), never otherwise.
        const std::string nearest = NearestName(name, known);
        if (nearest.empty()) return "an attribute no PKCS#11 URI has (not shown; RFC 7512 lists them)";
        return StrCat("unknown attribute ", name, "= (did you mean ", nearest, "=?)");
      }
      if (end == part.size()) break;
    }
    return "";
  };
  if (std::string problem = check(path, ';', /*in_path=*/true); !problem.empty()) return problem;
  return check(query, '&', /*in_path=*/false);
}

}  // namespace

StatusOr<Pkcs11Uri> Pkcs11Uri::Parse(const std::string& text, KeyFamilyInUri family) {
  if (std::string problem = LayoutProblem(text); !problem.empty()) {
    return InvalidArgumentError(StrCat("--pkcs11-uri: ", problem));
  }
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
  if (p11_kit_uri_get_slot_id(uri) != static_cast<CK_SLOT_ID>(-1)) {
    return InvalidArgumentError(
        "--pkcs11-uri must not contain slot-id=: slot ids change (SoftHSM draws them anew, network HSM clients "
        "renumber after a reconnect); name the token by token= (its label) and, if two share it, serial=");
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
