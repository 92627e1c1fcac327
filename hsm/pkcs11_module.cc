#include "hsm/pkcs11_module.h"

#include <dlfcn.h>

#include <string>
#include <string_view>

#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {
namespace {

// opencryptoki's library, by its file name (PKCS11_API.so, libopencryptoki.so*): C_GetInfo cannot tell
// before C_Initialize has succeeded.
bool IsOpencryptoki(std::string_view path) {
  const size_t slash = path.rfind('/');
  const std::string_view file = slash == std::string_view::npos ? path : path.substr(slash + 1);
  return file.starts_with("PKCS11_API.so") || file.starts_with("libopencryptoki.so");
}

// What a C_Initialize failure means where a module gives it another sense than its name.
std::string InitializeHint(CK_RV rv, std::string_view path) {
  // opencryptoki answers CKR_HOST_MEMORY when it cannot reach its slot daemon's socket, not for memory.
  if (rv == CKR_HOST_MEMORY && IsOpencryptoki(path)) {
    return " (opencryptoki says this when it cannot reach its slot daemon: is pkcsslotd running?)";
  }
  return "";
}

}  // namespace

StatusOr<std::unique_ptr<Pkcs11Module>> Pkcs11Module::Load(const std::string& path,
                                                           std::optional<std::string> init_reserved) {
  // RTLD_NODELETE: once loaded, a module stays mapped for the life of the process, so the dlclose of a
  // destroyed Pkcs11Module followed by a new Load is only C_Finalize + C_Initialize on the same library.
  // Unloading is not safe for every module: opencryptoki's PKCS11_API.so needs libitm.so.1 (GCC
  // transactional memory), dlclose unloads libitm with it, and the freshly loaded libitm crashed
  // (SIGSEGV in _ITM_beginTransaction) in the next C_Initialize: `key generate` died of it while
  // waiting for a token (issue 18; docs/devices.md, "Re-initialising a module").
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
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
                   ? "the module refused its initialisation string (x-init-reserved in the URI, "
                     "--module-init-reserved for token init)"
                   : "the module needs initialisation arguments: its initialisation string (x-init-reserved query "
                     "attribute in the URI, percent-encoded, e.g. NSS softoken: x-init-reserved=configdir%3D%27sql%3A"
                     "%2Fpath%2Fto%2Fdb%27%20certPrefix%3D%27%27%20keyPrefix%3D%27%27%20secmod%3D%27secmod.db%27; "
                     "--module-init-reserved for token init, as it is)"));
  }
  if (rv == CKR_CANT_LOCK || rv == CKR_NEED_TO_CREATE_THREADS) {
    return FailedPreconditionError(StrCat("C_Initialize of ", path_, " failed: ", RvName(rv),
                                          ": the module cannot be used from several threads with OS locking"));
  }
  if (rv != CKR_OK) {
    return UnavailableError(StrCat("C_Initialize of ", path_, " failed: ", RvName(rv), InitializeHint(rv, path_)));
  }
  initialized_ = true;
  return OkStatus();
}

void Pkcs11Module::Finalize() {
  if (!initialized_) return;
  api_->C_Finalize(nullptr);
  initialized_ = false;
}

}  // namespace trousseau::hsm
