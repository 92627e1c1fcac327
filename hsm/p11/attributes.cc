#include "hsm/p11/attributes.h"

#include <cstring>

#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {

AttributeTemplate& AttributeTemplate::Add(CK_ATTRIBUTE_TYPE type, bool value) {
  const CK_BBOOL b = value ? CK_TRUE : CK_FALSE;
  return Add(type, std::string_view(reinterpret_cast<const char*>(&b), sizeof b));
}

AttributeTemplate& AttributeTemplate::Add(CK_ATTRIBUTE_TYPE type, CK_ULONG value) {
  return Add(type, std::string_view(reinterpret_cast<const char*>(&value), sizeof value));
}

AttributeTemplate& AttributeTemplate::Add(CK_ATTRIBUTE_TYPE type, std::string_view bytes) {
  types_.push_back(type);
  values_.emplace_back(bytes);
  return *this;
}

CK_ATTRIBUTE* AttributeTemplate::data() {
  view_.clear();
  for (size_t i = 0; i < types_.size(); ++i) {
    view_.push_back({types_[i], values_[i].data(), static_cast<CK_ULONG>(values_[i].size())});
  }
  return view_.data();
}

CK_RV AttributeReader::Fill(const Session& session, CK_OBJECT_HANDLE object, const std::vector<Request>& requests,
                            AttributeReader& out) {
  std::vector<std::string> buffers;
  buffers.reserve(requests.size());
  std::vector<CK_ATTRIBUTE> attrs;
  for (const Request& request : requests) {
    buffers.emplace_back(request.max_size, '\0');
    attrs.push_back({request.type, buffers.back().data(), static_cast<CK_ULONG>(request.max_size)});
  }
  // Attributes a module does not report come back with ulValueLen = -1 and one of these two codes;
  // the others are still filled in.
  const CK_RV rv = session.api()->C_GetAttributeValue(session.handle(), object, attrs.data(), attrs.size());
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) return rv;
  for (size_t i = 0; i < attrs.size(); ++i) {
    if (attrs[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || attrs[i].ulValueLen > requests[i].max_size) continue;
    buffers[i].resize(attrs[i].ulValueLen);
    out.values_[requests[i].type] = std::move(buffers[i]);
  }
  return CKR_OK;
}

StatusOr<AttributeReader> AttributeReader::Read(const Session& session, CK_OBJECT_HANDLE object,
                                                const std::vector<Request>& requests) {
  AttributeReader reader;
  if (const CK_RV rv = Fill(session, object, requests, reader); rv != CKR_OK)
    return RvStatus(rv, "C_GetAttributeValue");
  return reader;
}

StatusOr<std::optional<AttributeReader>> AttributeReader::ReadIfPresent(const Session& session, CK_OBJECT_HANDLE object,
                                                                        const std::vector<Request>& requests) {
  AttributeReader reader;
  const CK_RV rv = Fill(session, object, requests, reader);
  if (rv == CKR_OBJECT_HANDLE_INVALID) return std::optional<AttributeReader>();
  if (rv != CKR_OK) return RvStatus(rv, "C_GetAttributeValue");
  return std::optional<AttributeReader>(std::move(reader));
}

std::optional<bool> AttributeReader::Bool(CK_ATTRIBUTE_TYPE type) const {
  auto it = values_.find(type);
  if (it == values_.end() || it->second.size() != sizeof(CK_BBOOL)) return std::nullopt;
  return static_cast<CK_BBOOL>(it->second[0]) == CK_TRUE;
}

std::optional<CK_ULONG> AttributeReader::Ulong(CK_ATTRIBUTE_TYPE type) const {
  auto it = values_.find(type);
  if (it == values_.end() || it->second.size() != sizeof(CK_ULONG)) return std::nullopt;
  CK_ULONG value;
  std::memcpy(&value, it->second.data(), sizeof value);
  return value;
}

std::optional<std::string> AttributeReader::Bytes(CK_ATTRIBUTE_TYPE type) const {
  auto it = values_.find(type);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

}  // namespace trousseau::hsm::p11
