#include "hsm/pkcs11_module.h"

#include <dlfcn.h>

#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {

StatusOr<std::unique_ptr<Pkcs11Module>> Pkcs11Module::Load(const std::string& path) {
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
  return std::unique_ptr<Pkcs11Module>(new Pkcs11Module(path, handle, api));
}

Pkcs11Module::~Pkcs11Module() {
  Finalize();
  dlclose(handle_);
}

Status Pkcs11Module::Initialize() {
  if (initialized_) return OkStatus();
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  const CK_RV rv = api_->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) return OkStatus();  // someone else in this process owns it
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
