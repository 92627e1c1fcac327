// trousseauctl's heap is wiped block by block: every operator delete zeroes the block (its usable
// size, malloc_usable_size) before free. `secret generate|inject` hand values to libraries that copy
// them into their own std::strings (nlohmann::json parsing an apiserver answer that holds a Secret's
// data, yaml-cpp reading a kubeconfig with a client key): those copies are freed without a wipe of their
// own, so the wipe is done here, for the whole program. curl's allocations are wiped the same way
// (tools/kube/http_client.cc, curl_global_init_mem). Only trousseauctl is built with this file.
#include <malloc.h>

#include <cstdlib>
#include <new>

#include "core/secure_bytes.h"

namespace {

void* Allocate(std::size_t size) {
  if (size == 0) size = 1;
  for (;;) {
    if (void* p = std::malloc(size)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void Release(void* p) noexcept {
  if (p == nullptr) return;
  trousseau::WipeMemory(p, malloc_usable_size(p));
  std::free(p);
}

}  // namespace

void* operator new(std::size_t size) { return Allocate(size); }
void* operator new[](std::size_t size) { return Allocate(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return Allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return Allocate(size);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { Release(p); }
void operator delete[](void* p) noexcept { Release(p); }
void operator delete(void* p, std::size_t) noexcept { Release(p); }
void operator delete[](void* p, std::size_t) noexcept { Release(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { Release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { Release(p); }
