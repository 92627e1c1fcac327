#include "hsm/p11/random.h"

#include <algorithm>

#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {

StatusOr<SecureBytes> GenerateRandom(const Session& session, size_t size) {
  constexpr size_t kPiece = 256;
  SecureBytes out(size);
  for (size_t done = 0; done < size;) {
    const size_t n = std::min(kPiece, size - done);
    if (CK_RV rv = session.api()->C_GenerateRandom(session.handle(), out.data() + done, n); rv != CKR_OK) {
      return RvStatus(rv, "C_GenerateRandom");
    }
    done += n;
  }
  return out;
}

}  // namespace trousseau::hsm::p11
