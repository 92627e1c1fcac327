/*
 * The environment of the second fault shim (trousseau_fault_shim_second, for two_hsm_test).
 *
 * The shim (tests/fault_shim/fault_shim.c) reads TROUSSEAU_FAULT_SHIM_MODULE, _CONTROL, _DEBUG and
 * _CALL_LOG, and environment variables are process-wide: two copies of one shim file in one process
 * would front the same real module (dlopen of one path gives one instance) under one control file,
 * so the plugin could not lose one HSM while keeping the other. The second shim is the same source
 * compiled with getenv renamed to second_shim_getenv (CMake), which reads
 * TROUSSEAU_FAULT_SHIM_SECOND_<rest> instead: its own real module (a copy of libsofthsm2.so at
 * another path, hence a SoftHSM instance of its own) and its own control file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *second_shim_getenv(const char *name);

char *second_shim_getenv(const char *name) {
  static const char kPrefix[] = "TROUSSEAU_FAULT_SHIM_";
  const size_t prefix_len = sizeof kPrefix - 1;
  if (strncmp(name, kPrefix, prefix_len) != 0) return getenv(name);
  char renamed[128];
  const int n = snprintf(renamed, sizeof renamed, "%sSECOND_%s", kPrefix, name + prefix_len);
  if (n < 0 || (size_t)n >= sizeof renamed) return NULL;
  return getenv(renamed);
}
