#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

#include <cstdio>

namespace trousseau::hsm {

std::string RvName(CK_RV rv) {
  switch (rv) {
#define TROUSSEAU_RV(name) \
  case name:               \
    return #name;
    TROUSSEAU_RV(CKR_OK)
    TROUSSEAU_RV(CKR_CANCEL)
    TROUSSEAU_RV(CKR_HOST_MEMORY)
    TROUSSEAU_RV(CKR_SLOT_ID_INVALID)
    TROUSSEAU_RV(CKR_GENERAL_ERROR)
    TROUSSEAU_RV(CKR_FUNCTION_FAILED)
    TROUSSEAU_RV(CKR_ARGUMENTS_BAD)
    TROUSSEAU_RV(CKR_ATTRIBUTE_READ_ONLY)
    TROUSSEAU_RV(CKR_ATTRIBUTE_SENSITIVE)
    TROUSSEAU_RV(CKR_ATTRIBUTE_TYPE_INVALID)
    TROUSSEAU_RV(CKR_ATTRIBUTE_VALUE_INVALID)
    TROUSSEAU_RV(CKR_ACTION_PROHIBITED)
    TROUSSEAU_RV(CKR_DATA_INVALID)
    TROUSSEAU_RV(CKR_DATA_LEN_RANGE)
    TROUSSEAU_RV(CKR_DEVICE_ERROR)
    TROUSSEAU_RV(CKR_DEVICE_MEMORY)
    TROUSSEAU_RV(CKR_DEVICE_REMOVED)
    TROUSSEAU_RV(CKR_ENCRYPTED_DATA_INVALID)
    TROUSSEAU_RV(CKR_ENCRYPTED_DATA_LEN_RANGE)
    TROUSSEAU_RV(CKR_FUNCTION_CANCELED)
    TROUSSEAU_RV(CKR_FUNCTION_NOT_SUPPORTED)
    TROUSSEAU_RV(CKR_KEY_HANDLE_INVALID)
    TROUSSEAU_RV(CKR_KEY_SIZE_RANGE)
    TROUSSEAU_RV(CKR_KEY_TYPE_INCONSISTENT)
    TROUSSEAU_RV(CKR_KEY_FUNCTION_NOT_PERMITTED)
    TROUSSEAU_RV(CKR_MECHANISM_INVALID)
    TROUSSEAU_RV(CKR_MECHANISM_PARAM_INVALID)
    TROUSSEAU_RV(CKR_OBJECT_HANDLE_INVALID)
    TROUSSEAU_RV(CKR_OPERATION_ACTIVE)
    TROUSSEAU_RV(CKR_OPERATION_NOT_INITIALIZED)
    TROUSSEAU_RV(CKR_PIN_INCORRECT)
    TROUSSEAU_RV(CKR_PIN_INVALID)
    TROUSSEAU_RV(CKR_PIN_LEN_RANGE)
    TROUSSEAU_RV(CKR_PIN_EXPIRED)
    TROUSSEAU_RV(CKR_PIN_LOCKED)
    TROUSSEAU_RV(CKR_SESSION_CLOSED)
    TROUSSEAU_RV(CKR_SESSION_COUNT)
    TROUSSEAU_RV(CKR_SESSION_HANDLE_INVALID)
    TROUSSEAU_RV(CKR_SESSION_READ_ONLY)
    TROUSSEAU_RV(CKR_SESSION_EXISTS)
    TROUSSEAU_RV(CKR_TEMPLATE_INCOMPLETE)
    TROUSSEAU_RV(CKR_TEMPLATE_INCONSISTENT)
    TROUSSEAU_RV(CKR_TOKEN_NOT_PRESENT)
    TROUSSEAU_RV(CKR_TOKEN_NOT_RECOGNIZED)
    TROUSSEAU_RV(CKR_TOKEN_WRITE_PROTECTED)
    TROUSSEAU_RV(CKR_USER_ALREADY_LOGGED_IN)
    TROUSSEAU_RV(CKR_USER_NOT_LOGGED_IN)
    TROUSSEAU_RV(CKR_USER_PIN_NOT_INITIALIZED)
    TROUSSEAU_RV(CKR_USER_TYPE_INVALID)
    TROUSSEAU_RV(CKR_BUFFER_TOO_SMALL)
    TROUSSEAU_RV(CKR_CRYPTOKI_NOT_INITIALIZED)
    TROUSSEAU_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED)
    TROUSSEAU_RV(CKR_RANDOM_NO_RNG)
#undef TROUSSEAU_RV
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKR_0x%08lX", static_cast<unsigned long>(rv));
      return buf;
    }
  }
}

// The one classifier of the project. UNAVAILABLE (connection lost) drives the backend's breaker: the
// connection is marked broken, calls fail fast, and the admin lane re-initialises the module, finds the
// token again by its URI, logs in and reloads the key family. So a code belongs here when that rebuild
// is the remedy, or when on a network HSM it is how the client library reports a dropped link. A code
// outside it (INTERNAL) fails the one call and leaves the connection alone.
bool IsConnectionLost(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:    // the device (or the network HSM's client link) failed
    case CKR_DEVICE_REMOVED:  // the token went away
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_CLOSED:  // our sessions, and the login on them, are gone (HSM restart, failover)
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:  // the library lost its state: only C_Initialize helps
    case CKR_USER_NOT_LOGGED_IN:        // the login ended with a device-side session reset
    case CKR_OBJECT_HANDLE_INVALID:     // handles (and our session key copies) die with the device's sessions;
    case CKR_KEY_HANDLE_INVALID:        // reloading the family finds the keys again
      return true;
    // CKR_DEVICE_MEMORY: the device ran out of memory, on a network HSM typically filled with session
    // objects. Our own session key copies are among them, and the rebuild (C_Finalize) frees them,
    // so it is the remedy, not a per-call error.
    case CKR_DEVICE_MEMORY:
    // CKR_SLOT_ID_INVALID: the slot we hold is no longer there. Slot ids are not stable (SoftHSM draws
    // them anew, network HSM clients renumber after reconnecting to another partition member); only
    // finding the token again by the URI's label/serial helps.
    case CKR_SLOT_ID_INVALID:
    // CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED: "unrecoverable" / "could not be performed". Network HSM
    // client libraries report a dropped or timed-out link with these, and a local module that says
    // them has no state worth keeping. Counted as lost, so the breaker rebuilds. The one exception,
    // a tag that does not verify at C_Decrypt, is decided first by IsTagMismatch (SoftHSM answers
    // CKR_GENERAL_ERROR there): never an outage, or forged ciphertexts could take the plugin down.
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
      return true;
    default:
      return false;
  }
}

bool IsTagMismatch(CK_RV rv) {
  return rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_GENERAL_ERROR ||
         rv == CKR_FUNCTION_FAILED || rv == CKR_DATA_INVALID || rv == CKR_DATA_LEN_RANGE;
}

bool IsPinRejected(CK_RV rv) {
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
      return true;
    default:
      return false;
  }
}

Status RvStatus(CK_RV rv, std::string_view what) {
  std::string message = StrCat(what, ": ", RvName(rv));
  return IsConnectionLost(rv) ? UnavailableError(message) : InternalError(message);
}

}  // namespace trousseau::hsm
