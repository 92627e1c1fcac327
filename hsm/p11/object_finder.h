// RAII search for objects: C_FindObjectsInit on construction, C_FindObjectsFinal on destruction, so a
// session is never left with an active search (which would make its next C_FindObjectsInit fail with
// CKR_OPERATION_ACTIVE).
#pragma once

#include <vector>

#include "core/status.h"
#include "hsm/p11/attributes.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

class ObjectFinder {
 public:
  // Starts a search for objects matching `match`.
  static StatusOr<ObjectFinder> Start(const Session& session, AttributeTemplate& match);
  ~ObjectFinder();
  ObjectFinder(ObjectFinder&& other) noexcept;
  ObjectFinder& operator=(ObjectFinder&&) = delete;
  ObjectFinder(const ObjectFinder&) = delete;
  ObjectFinder& operator=(const ObjectFinder&) = delete;

  // Every remaining match (C_FindObjects in batches until it returns none).
  StatusOr<std::vector<CK_OBJECT_HANDLE>> All();

 private:
  explicit ObjectFinder(const Session& session) : session_(&session) {}
  const Session* session_;  // nullptr once moved from or finished
};

// Convenience: Start + All + Final.
StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(const Session& session, AttributeTemplate& match);

}  // namespace trousseau::hsm::p11
