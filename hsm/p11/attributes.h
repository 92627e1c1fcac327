// Typed PKCS#11 attributes: a template to pass to C_GenerateKey / C_FindObjectsInit / C_CopyObject, and a
// reader that asks C_GetAttributeValue for named attributes and hands them back by type, not by index.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// Owns the values it points CK_ATTRIBUTEs at, so a template can be built in steps and passed as is.
class AttributeTemplate {
 public:
  AttributeTemplate& Add(CK_ATTRIBUTE_TYPE type, bool value);
  AttributeTemplate& Add(CK_ATTRIBUTE_TYPE type, CK_ULONG value);
  AttributeTemplate& Add(CK_ATTRIBUTE_TYPE type, std::string_view bytes);

  CK_ATTRIBUTE* data();
  CK_ULONG size() const { return static_cast<CK_ULONG>(types_.size()); }

 private:
  std::vector<CK_ATTRIBUTE_TYPE> types_;
  std::vector<std::string> values_;  // each attribute's value bytes
  std::vector<CK_ATTRIBUTE> view_;   // rebuilt by data(): values_ may have moved
};

// The attributes one C_GetAttributeValue read of one object returned. Attributes the module does not
// report (CKR_ATTRIBUTE_TYPE_INVALID / CKR_ATTRIBUTE_SENSITIVE: ulValueLen = -1) are absent, so each
// caller picks its own safe default.
class AttributeReader {
 public:
  struct Request {
    CK_ATTRIBUTE_TYPE type;
    size_t max_size;  // bytes to reserve for the value
  };

  // One C_GetAttributeValue call for all of `requests`.
  static StatusOr<AttributeReader> Read(const Session& session, CK_OBJECT_HANDLE object,
                                        const std::vector<Request>& requests);
  // Read, for an object found a moment ago: nullopt when it is gone by now (CKR_OBJECT_HANDLE_INVALID:
  // another process destroyed it between C_FindObjects and this read). A listing then lists what is
  // there, instead of failing because someone else changed the token while it was being read.
  static StatusOr<std::optional<AttributeReader>> ReadIfPresent(const Session& session, CK_OBJECT_HANDLE object,
                                                                const std::vector<Request>& requests);

  std::optional<bool> Bool(CK_ATTRIBUTE_TYPE type) const;
  std::optional<CK_ULONG> Ulong(CK_ATTRIBUTE_TYPE type) const;
  std::optional<std::string> Bytes(CK_ATTRIBUTE_TYPE type) const;

 private:
  // The one C_GetAttributeValue call; fills `out` when it returns a code Read accepts.
  static CK_RV Fill(const Session& session, CK_OBJECT_HANDLE object, const std::vector<Request>& requests,
                    AttributeReader& out);

  std::map<CK_ATTRIBUTE_TYPE, std::string> values_;
};

}  // namespace trousseau::hsm::p11
