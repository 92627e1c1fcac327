#include "hsm/p11/object_finder.h"

#include <iterator>

#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {

StatusOr<ObjectFinder> ObjectFinder::Start(const Session& session, AttributeTemplate& match) {
  if (CK_RV rv = session.api()->C_FindObjectsInit(session.handle(), match.data(), match.size()); rv != CKR_OK) {
    return RvStatus(rv, "C_FindObjectsInit");
  }
  return ObjectFinder(session);
}

ObjectFinder::ObjectFinder(ObjectFinder&& other) noexcept : session_(std::exchange(other.session_, nullptr)) {}

ObjectFinder::~ObjectFinder() {
  if (session_ != nullptr) session_->api()->C_FindObjectsFinal(session_->handle());
}

StatusOr<std::vector<CK_OBJECT_HANDLE>> ObjectFinder::All() {
  std::vector<CK_OBJECT_HANDLE> handles;
  CK_OBJECT_HANDLE batch[32];
  CK_ULONG found = 0;
  CK_RV rv;
  while ((rv = session_->api()->C_FindObjects(session_->handle(), batch, std::size(batch), &found)) == CKR_OK &&
         found > 0) {
    handles.insert(handles.end(), batch, batch + found);
  }
  if (rv != CKR_OK) return RvStatus(rv, "C_FindObjects");
  return handles;
}

StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(const Session& session, AttributeTemplate& match) {
  StatusOr<ObjectFinder> finder = ObjectFinder::Start(session, match);
  if (!finder.ok()) return finder.status();
  return finder->All();
}

}  // namespace trousseau::hsm::p11
