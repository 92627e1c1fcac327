#include "hsm/pkcs11_module.h"

#include <dlfcn.h>

#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {

StatusOr<std::unique_ptr<Pkcs11Module>> Pkcs11Module::Load(const std::string& path,
                                                           std::optional<std::string> init_reserved) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return FailedPreconditionError(
        StrCat("cannot load PKCS#11 module ", path, ": ", why != nullptr ? why : "unknown error"));
  }
  auto get_function_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
  if (get_function_list == nullptr) {
    dlclose(handle);
    return FailedPreconditionError(StrCat(path, " is not a PKCS#11 module (no C_GetFunctionList)"));
  }
  CK_FUNCTION_LIST* api = nullptr;
  if (const CK_RV rv = get_function_list(&api); rv != CKR_OK || api == nullptr) {
    dlclose(handle);
    return FailedPreconditionError(StrCat("C_GetFunctionList of ", path, " failed: ", RvName(rv)));
  }
  return std::unique_ptr<Pkcs11Module>(new Pkcs11Module(path, std::move(init_reserved), handle, api));
}

Pkcs11Module::~Pkcs11Module() {
  Finalize();
  dlclose(handle_);
}

Status Pkcs11Module::Initialize() {
  if (initialized_) return OkStatus();
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  // The module only reads it; the string lives as long as this object.
  if (init_reserved_) args.pReserved = const_cast<char*>(init_reserved_->c_str());
  const CK_RV rv = api_->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) return OkStatus();  // someone else in this process owns it
  if (rv == CKR_ARGUMENTS_BAD) {
    return FailedPreconditionError(
        StrCat("C_Initialize of ", path_, " failed: CKR_ARGUMENTS_BAD: ",
               init_reserved_
                   ? "the module refused the initialisation string given in the URI's x-init-reserved"
                   : "the module needs initialisation arguments; give them percent-encoded in the URI's "
                     "x-init-reserved query attribute (e.g. NSS softoken: x-init-reserved=configdir%3D%27sql%3A"
                     "%2Fpath%2Fto%2Fdb%27%20certPrefix%3D%27%27%20keyPrefix%3D%27%27%20secmod%3D%27secmod.db%27)"));
  }
  if (rv == CKR_CANT_LOCK || rv == CKR_NEED_TO_CREATE_THREADS) {
    return FailedPreconditionError(StrCat("C_Initialize of ", path_, " failed: ", RvName(rv),
                                          ": the module cannot be used from several threads with OS locking"));
  }
  if (rv != CKR_OK) return UnavailableError(StrCat("C_Initialize of ", path_, " failed: ", RvName(rv)));
  initialized_ = true;
  return OkStatus();
}

void Pkcs11Module::Finalize() {
  if (!initialized_) return;
  api_->C_Finalize(nullptr);
  initialized_ = false;
}

}  // namespace trousseau::hsm
