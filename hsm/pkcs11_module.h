// RAII owners of the PKCS#11 module (dlopen + C_Initialize) and of sessions.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "hsm/pkcs11.h"
#include "core/status.h"

namespace trousseau::hsm {

// One loaded module. Initialise/Finalize can be repeated: that is how a lost device is recovered.
// The library is never unloaded (RTLD_NODELETE): loading the same path again after destroying a
// Pkcs11Module gets the same library, in which only C_Finalize and C_Initialize have happened.
class Pkcs11Module {
 public:
  // `init_reserved`: the module's initialisation string (CK_C_INITIALIZE_ARGS.pReserved), for modules
  // that need one (NSS softoken); from the URI's x-init-reserved. A module that cannot be loaded is
  // configuration (FAILED_PRECONDITION), never an outage.
  static StatusOr<std::unique_ptr<Pkcs11Module>> Load(const std::string& path,
                                                      std::optional<std::string> init_reserved = std::nullopt);
  ~Pkcs11Module();
  Pkcs11Module(const Pkcs11Module&) = delete;
  Pkcs11Module& operator=(const Pkcs11Module&) = delete;

  // C_Initialize with OS locking, since sessions are used from many threads. If another part of
  // this process already initialised the module, it is used as is and Finalize leaves it alone.
  // A refusal that no retry can fix (bad or missing initialisation arguments, no OS locking) is
  // FAILED_PRECONDITION with what to change; anything else is UNAVAILABLE (a daemon or device that
  // is not there yet; for opencryptoki's CKR_HOST_MEMORY the message asks whether pkcsslotd runs).
  Status Initialize();
  void Finalize();
  CK_FUNCTION_LIST* api() const { return api_; }
  const std::string& path() const { return path_; }

 private:
  Pkcs11Module(std::string path, std::optional<std::string> init_reserved, void* handle, CK_FUNCTION_LIST* api)
      : path_(std::move(path)), init_reserved_(std::move(init_reserved)), handle_(handle), api_(api) {}
  std::string path_;
  std::optional<std::string> init_reserved_;
  void* handle_;
  CK_FUNCTION_LIST* api_;
  bool initialized_ = false;
};

// An open session; closed on destruction unless Abandon()ed.
class Session {
 public:
  Session() = default;
  Session(CK_FUNCTION_LIST* api, CK_SESSION_HANDLE handle) : api_(api), handle_(handle) {}
  ~Session() { Close(); }
  Session(Session&& other) noexcept : api_(other.api_), handle_(std::exchange(other.handle_, CK_INVALID_HANDLE)) {}
  Session& operator=(Session&& other) noexcept {
    if (this != &other) {
      Close();
      api_ = other.api_;
      handle_ = std::exchange(other.handle_, CK_INVALID_HANDLE);
    }
    return *this;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  CK_SESSION_HANDLE handle() const { return handle_; }
  CK_FUNCTION_LIST* api() const { return api_; }
  // Forgets the session without closing it: for owners that end it with C_Finalize instead.
  void Release() { handle_ = CK_INVALID_HANDLE; }

 private:
  void Close() {
    if (handle_ != CK_INVALID_HANDLE) api_->C_CloseSession(handle_);
    handle_ = CK_INVALID_HANDLE;
  }
  CK_FUNCTION_LIST* api_ = nullptr;
  CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
};

// A session object (e.g. the in-session copy of a key); destroyed with C_DestroyObject.
class SessionObject {
 public:
  SessionObject() = default;
  SessionObject(CK_FUNCTION_LIST* api, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
      : api_(api), session_(session), object_(object) {}
  ~SessionObject() { Destroy(); }
  SessionObject(SessionObject&& other) noexcept
      : api_(other.api_), session_(other.session_), object_(std::exchange(other.object_, CK_INVALID_HANDLE)) {}
  SessionObject& operator=(SessionObject&& other) noexcept {
    if (this != &other) {
      Destroy();
      api_ = other.api_;
      session_ = other.session_;
      object_ = std::exchange(other.object_, CK_INVALID_HANDLE);
    }
    return *this;
  }
  SessionObject(const SessionObject&) = delete;
  SessionObject& operator=(const SessionObject&) = delete;

  CK_OBJECT_HANDLE handle() const { return object_; }

 private:
  void Destroy() {
    if (object_ != CK_INVALID_HANDLE) api_->C_DestroyObject(session_, object_);
    object_ = CK_INVALID_HANDLE;
  }
  CK_FUNCTION_LIST* api_ = nullptr;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE object_ = CK_INVALID_HANDLE;
};

}  // namespace trousseau::hsm
