/*
 * trousseau_fault_shim: a fault-injecting PKCS#11 module, for tests only.
 *
 * It sits between a PKCS#11 client and a real module (SoftHSM in our tests)
 * and forwards every call of CK_FUNCTION_LIST 2.40. A small control file lets
 * a test make the "HSM" slow or cut its link, so the plugin's outage and
 * recovery paths can be exercised against a real token instead of a mock.
 *
 * Environment:
 *   TROUSSEAU_FAULT_SHIM_MODULE   real module (default /usr/lib/softhsm/libsofthsm2.so),
 *                                 dlopen'ed once, on first C_GetFunctionList/C_Initialize.
 *   TROUSSEAU_FAULT_SHIM_CONTROL  control file path; unset = pure pass-through.
 *                                 Read again on every C_Initialize, so one process
 *                                 can switch between controlled and pass-through.
 *   TROUSSEAU_FAULT_SHIM_DEBUG=1  diagnostics on stderr (never stdout).
 *   TROUSSEAU_FAULT_SHIM_CALL_LOG file to which every C_Login that reaches the
 *                                 real module, and every call that starts an
 *                                 operation (C_EncryptInit, C_DecryptInit,
 *                                 C_GenerateRandom), appends one line
 *                                 "<function> 0x<rv>" (never an argument), so a
 *                                 test can count login attempts and device
 *                                 operations.
 *
 * Control file: whitespace-separated words.
 *   up | down      link state (default up; the last one wins).
 *   delay_us=N     sleep N microseconds before forwarding each cryptographic
 *                  call (Encrypt*, Decrypt*, GenerateRandom): a network HSM.
 *   crypto_fail    C_EncryptInit, C_DecryptInit and C_GenerateRandom fail with
 *                  CKR_DEVICE_ERROR (an operation already begun may finish) while
 *                  everything else (sessions, login, object search) works: an
 *                  HSM whose crypto engine has failed (a self-test or
 *                  tamper error state) but which still answers lookups.
 *                  "up" or "down" later in the file does not clear it.
 *   device_iv      a FIPS-mode HSM that generates GCM IVs itself (Thales Luna
 *                  and others refuse a caller-chosen IV for encryption): a
 *                  C_EncryptInit with CKM_AES_GCM must pass CK_GCM_PARAMS
 *                  (ulParameterLen == sizeof(CK_GCM_PARAMS)) whose pIv points
 *                  to ulIvLen == 12 zero bytes (ulIvBits is not looked at);
 *                  anything else (a caller IV, another length, no
 *                  parameters, a NULL pIv) fails with
 *                  CKR_MECHANISM_PARAM_INVALID without reaching the real
 *                  module ("down" and crypto_fail are checked first and win).
 *                  Otherwise the shim draws 12 random bytes (getrandom, never
 *                  all zero), writes them into the caller's pIv (the PKCS#11
 *                  2.40/3.0 convention: the device returns the IV it used
 *                  there) and forwards the caller's init, so the real module
 *                  encrypts under that IV; if the real module refuses the
 *                  init, the buffer is zeroed again (no IV was used). An init
 *                  the shim refuses itself is not in the call log.
 *                  C_DecryptInit takes the caller's IV as usual; every other
 *                  call and mechanism is unchanged. "up" or "down" later in
 *                  the file does not clear it.
 *   hang           every call (C_Initialize and C_Finalize included, as with a
 *                  black-holed network HSM) blocks until the file no longer
 *                  says "hang", then goes on as usual. Calls already inside
 *                  the real module finish.
 *   max_sessions=N C_GetTokenInfo reports ulMaxSessionCount = N (and
 *                  ulMaxRwSessionCount no more than N) instead of the real
 *                  module's (SoftHSM says CK_EFFECTIVELY_INFINITE): a token
 *                  with a session limit, for a client that sizes its pool
 *                  from it. Reported only: C_OpenSession is not refused
 *                  beyond N. 0 (or absent) reports the real module's values.
 *   Unknown words are ignored. A missing file means "up", no delay.
 *   The file is re-read only when its mtime (ns), size or inode changes, so
 *   each call costs one stat(). Writers should write a temp file and rename(2)
 *   it over the control file: the reader then never sees a half-written file,
 *   and the new inode is noticed even within one mtime tick.
 *   The file is only looked at when a call arrives: "down" then "up" with no
 *   PKCS#11 call in between is no outage at all (no sessions are closed).
 *
 * While down, every call returns CKR_DEVICE_ERROR except C_GetFunctionList,
 * C_Initialize, C_Finalize and C_GetInfo (so a client can finalise and
 * re-initialise). On the up->down transition the shim closes every real
 * session (C_CloseAllSessions on each slot), which also destroys session
 * objects and logs out: after "up" the client's old handles are invalid,
 * exactly as after a real outage.
 */
#define _GNU_SOURCE /* PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP */

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define SHIM_EXPORT __attribute__((visibility("default")))

static const char kDefaultModule[] = "/usr/lib/softhsm/libsofthsm2.so";

/* ---- diagnostics --------------------------------------------------------- */

static bool g_debug;

static void debugf(const char *fmt, ...) {
  if (!g_debug) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("trousseau_fault_shim: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---- the real module ----------------------------------------------------- */

/* Written once inside pthread_once, which also publishes it to other threads. */
static CK_FUNCTION_LIST *g_real;
static pthread_once_t g_load_once = PTHREAD_ONCE_INIT;

static void load_real(void) {
  const char *dbg = getenv("TROUSSEAU_FAULT_SHIM_DEBUG");
  g_debug = dbg != NULL && strcmp(dbg, "1") == 0;

  const char *path = getenv("TROUSSEAU_FAULT_SHIM_MODULE");
  if (path == NULL || *path == '\0') path = kDefaultModule;

  /* Never dlclose'd: like p11-kit, keep the module for the process lifetime
   * (unloading SoftHSM/OpenSSL while anything may still call in is a crash). */
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    debugf("dlopen(%s) failed: %s", path, dlerror());
    return;
  }
  CK_C_GetFunctionList get_list;
  void *sym = dlsym(handle, "C_GetFunctionList");
  memcpy(&get_list, &sym, sizeof get_list); /* object -> function pointer, POSIX-style */
  CK_FUNCTION_LIST *list = NULL;
  if (sym == NULL || get_list(&list) != CKR_OK || list == NULL) {
    debugf("%s: no usable C_GetFunctionList", path);
    return;
  }
  debugf("forwarding to %s", path);
  g_real = list;
}

static bool ensure_loaded(void) {
  pthread_once(&g_load_once, load_real);
  return g_real != NULL;
}

/* ---- control state ------------------------------------------------------- */

/* Control file path, NULL = pass-through. Replaced on C_Initialize. */
static _Atomic(const char *) g_control_path;
static atomic_bool g_down;
static atomic_ulong g_delay_us;
static atomic_bool g_crypto_fail;
static atomic_bool g_device_iv;
static atomic_bool g_hang;
static atomic_ulong g_max_sessions; /* 0: report the real module's */

/* Identity of the control file as last read. INT64_MIN never matches a stat. */
static _Atomic int64_t g_seen_mtime_ns = INT64_MIN;
static _Atomic int64_t g_seen_size = INT64_MIN;
static _Atomic uint64_t g_seen_ino;

/* Serialises re-reading the file (rare) and the up->down transition. */
static pthread_mutex_t g_reload_mu = PTHREAD_MUTEX_INITIALIZER;

/* Every forwarded call holds this for reading while inside the real module;
 * the up->down transition takes it for writing before closing sessions.
 * SoftHSM frees its Session objects in C_CloseAllSessions, so closing them
 * under a concurrent C_Encrypt would be a use-after-free inside SoftHSM.
 * Writer-preferring, or a busy client would starve the transition forever
 * (no thread ever takes it twice, so non-recursive is safe). */
static pthread_rwlock_t g_calls = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;

struct file_key {
  int64_t mtime_ns, size;
  uint64_t ino;
};

static struct file_key stat_key(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return (struct file_key){-1, -1, 0}; /* missing */
  return (struct file_key){(int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
                           (int64_t)st.st_size, (uint64_t)st.st_ino};
}

static bool key_is_seen(struct file_key k) {
  return k.mtime_ns == atomic_load(&g_seen_mtime_ns) && k.size == atomic_load(&g_seen_size) &&
         k.ino == atomic_load(&g_seen_ino);
}

struct control {
  bool down, crypto_fail, device_iv, hang;
  unsigned long delay_us, max_sessions;
};

static struct control parse_control(const char *path) {
  struct control c = {0};
  FILE *f = fopen(path, "r");
  if (f == NULL) return c; /* missing file: up, no delay */
  char word[64];
  while (fscanf(f, "%63s", word) == 1) {
    if (strcmp(word, "down") == 0) {
      c.down = true;
    } else if (strcmp(word, "up") == 0) {
      c.down = false;
    } else if (strncmp(word, "delay_us=", 9) == 0) {
      c.delay_us = strtoul(word + 9, NULL, 10);
    } else if (strncmp(word, "max_sessions=", 13) == 0) {
      c.max_sessions = strtoul(word + 13, NULL, 10);
    } else if (strcmp(word, "crypto_fail") == 0) {
      c.crypto_fail = true;
    } else if (strcmp(word, "device_iv") == 0) {
      c.device_iv = true;
    } else if (strcmp(word, "hang") == 0) {
      c.hang = true;
    } else {
      debugf("ignoring control word '%s'", word);
    }
  }
  fclose(f);
  return c;
}

/* Like a dropped link: every session of this process is gone. Errors are
 * ignored (e.g. CKR_CRYPTOKI_NOT_INITIALIZED if the client has finalised). */
static void close_all_real_sessions(void) {
  CK_ULONG n = 0;
  if (g_real->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n == 0) return;
  CK_SLOT_ID *slots = calloc(n, sizeof *slots);
  if (slots == NULL) return;
  if (g_real->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK) {
    for (CK_ULONG i = 0; i < n; i++) {
      CK_RV rv = g_real->C_CloseAllSessions(slots[i]);
      debugf("C_CloseAllSessions(slot %lu) = 0x%lx", (unsigned long)slots[i], (unsigned long)rv);
    }
  }
  free(slots);
}

/* Called with g_reload_mu held. */
static void apply_control_file(const char *path) {
  const struct control c = parse_control(path);
  const bool down = c.down;
  atomic_store(&g_hang, c.hang);
  debugf("control: %s delay_us=%lu%s%s", down ? "down" : "up", c.delay_us, c.crypto_fail ? " crypto_fail" : "",
         c.device_iv ? " device_iv" : "");
  atomic_store(&g_delay_us, c.delay_us);
  atomic_store(&g_max_sessions, c.max_sessions);
  atomic_store(&g_crypto_fail, c.crypto_fail);
  atomic_store(&g_device_iv, c.device_iv);
  if (down && !atomic_load(&g_down)) {
    pthread_rwlock_wrlock(&g_calls); /* drain in-flight real calls */
    atomic_store(&g_down, true);
    close_all_real_sessions();
    pthread_rwlock_unlock(&g_calls);
  } else {
    atomic_store(&g_down, down);
  }
}

/* At most one stat() per call; the file is parsed only when it changed. */
static void refresh(void) {
  const char *path = atomic_load(&g_control_path);
  if (path == NULL) return;
  /* Stat before reading: a change racing with the read leaves a stale key,
   * which only causes one extra re-read later, never a missed change. */
  struct file_key k = stat_key(path);
  if (key_is_seen(k)) return;
  pthread_mutex_lock(&g_reload_mu);
  if (!key_is_seen(k)) {
    apply_control_file(path);
    atomic_store(&g_seen_mtime_ns, k.mtime_ns);
    atomic_store(&g_seen_size, k.size);
    atomic_store(&g_seen_ino, k.ino);
  }
  pthread_mutex_unlock(&g_reload_mu);
}

/* Every control path ever used, never freed: a concurrent caller may still be
 * reading an old one. Kept reachable (and deduplicated) so leak checkers stay
 * quiet and memory is bounded by the number of distinct paths. Guarded by
 * g_reload_mu. */
struct known_path {
  struct known_path *next;
  char path[];
};
static struct known_path *g_known_paths;

static const char *intern_path(const char *path) {
  for (struct known_path *k = g_known_paths; k != NULL; k = k->next) {
    if (strcmp(k->path, path) == 0) return k->path;
  }
  struct known_path *k = malloc(sizeof *k + strlen(path) + 1);
  if (k == NULL) return NULL; /* out of memory: pass-through */
  strcpy(k->path, path);
  k->next = g_known_paths;
  g_known_paths = k;
  return k->path;
}

/* C_Initialize: pick up TROUSSEAU_FAULT_SHIM_CONTROL again and forget the
 * cached state, so the next refresh() re-reads the (possibly new) file. */
static void reset_control_from_env(void) {
  const char *env = getenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  pthread_mutex_lock(&g_reload_mu);
  atomic_store(&g_control_path, env == NULL || *env == '\0' ? NULL : intern_path(env));
  atomic_store(&g_down, false);
  atomic_store(&g_delay_us, 0);
  atomic_store(&g_crypto_fail, false);
  atomic_store(&g_device_iv, false);
  atomic_store(&g_hang, false);
  atomic_store(&g_seen_mtime_ns, INT64_MIN);
  atomic_store(&g_seen_size, INT64_MIN);
  pthread_mutex_unlock(&g_reload_mu);
  debugf("control file: %s", env != NULL && *env != '\0' ? env : "(none, pass-through)");
}

/* ---- forwarding ---------------------------------------------------------- */

enum policy {
  ALWAYS,   /* forwarded even while down (C_Finalize, C_GetInfo) */
  GATED,    /* CKR_DEVICE_ERROR while down */
  CRYPTO,   /* GATED, plus the configured delay */
  CRYPTO_START, /* CRYPTO, and CKR_DEVICE_ERROR under crypto_fail: starts an operation;
                   recorded in TROUSSEAU_FAULT_SHIM_CALL_LOG */
  UNLOCKED, /* GATED, but may block indefinitely: must not hold g_calls */
  COUNTED,  /* GATED, and recorded in TROUSSEAU_FAULT_SHIM_CALL_LOG */
};

static void sleep_us(unsigned long us) {
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* A hung device: the caller waits, holding no lock, until the test lets go. */
static void wait_while_hung(void) {
  refresh();
  while (atomic_load(&g_hang)) {
    sleep_us(5000);
    refresh();
  }
}

static void record_call(const char *name, CK_RV rv) {
  const char *path = getenv("TROUSSEAU_FAULT_SHIM_CALL_LOG");
  if (path == NULL || *path == '\0') return;
  FILE *f = fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s 0x%lx\n", name, (unsigned long)rv);
  fclose(f);
}

static CK_RV enter(enum policy p) {
  if (!ensure_loaded()) return CKR_GENERAL_ERROR;
  wait_while_hung();
  if (p != ALWAYS && atomic_load(&g_down)) return CKR_DEVICE_ERROR;
  if (p == CRYPTO_START && atomic_load(&g_crypto_fail)) return CKR_DEVICE_ERROR;
  if (p == CRYPTO || p == CRYPTO_START) {
    unsigned long us = atomic_load(&g_delay_us);
    if (us != 0) sleep_us(us); /* outside the lock: a slow HSM must not stall a transition */
  }
  if (p == UNLOCKED) return CKR_OK;
  pthread_rwlock_rdlock(&g_calls);
  /* Re-check under the lock: we may have slept or waited for a transition. */
  if (p != ALWAYS && atomic_load(&g_down)) {
    pthread_rwlock_unlock(&g_calls);
    return CKR_DEVICE_ERROR;
  }
  return CKR_OK;
}

static void leave(enum policy p) {
  if (p != UNLOCKED) pthread_rwlock_unlock(&g_calls);
}

/* X(name, policy, (parameters), (arguments)) for every CK_FUNCTION_LIST 2.40
 * entry except C_Initialize, C_GetFunctionList, C_EncryptInit and
 * C_GetTokenInfo, written by hand below. */
#define SHIM_FUNCTIONS(X)                                                                     \
  X(C_Finalize, ALWAYS, (CK_VOID_PTR reserved), (reserved))                                   \
  X(C_GetInfo, ALWAYS, (CK_INFO_PTR info), (info))                                            \
  X(C_GetSlotList, GATED, (CK_BBOOL present, CK_SLOT_ID_PTR slots, CK_ULONG_PTR n),           \
    (present, slots, n))                                                                      \
  X(C_GetSlotInfo, GATED, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))             \
  X(C_GetMechanismList, GATED, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR mechs, CK_ULONG_PTR n), \
    (slot, mechs, n))                                                                         \
  X(C_GetMechanismInfo, GATED, (CK_SLOT_ID slot, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i), \
    (slot, t, i))                                                                             \
  X(C_InitToken, GATED, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pl, CK_UTF8CHAR_PTR l), \
    (slot, pin, pl, l))                                                                       \
  X(C_InitPIN, GATED, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pl), (s, pin, pl))  \
  X(C_SetPIN, GATED,                                                                          \
    (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR o, CK_ULONG ol, CK_UTF8CHAR_PTR n, CK_ULONG nl),    \
    (s, o, ol, n, nl))                                                                        \
  X(C_OpenSession, GATED,                                                                     \
    (CK_SLOT_ID slot, CK_FLAGS f, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR s), \
    (slot, f, app, notify, s))                                                                \
  X(C_CloseSession, GATED, (CK_SESSION_HANDLE s), (s))                                        \
  X(C_CloseAllSessions, GATED, (CK_SLOT_ID slot), (slot))                                     \
  X(C_GetSessionInfo, GATED, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info), (s, info))      \
  X(C_GetOperationState, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR st, CK_ULONG_PTR stl),      \
    (s, st, stl))                                                                             \
  X(C_SetOperationState, GATED,                                                               \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR st, CK_ULONG stl, CK_OBJECT_HANDLE ek, CK_OBJECT_HANDLE ak), \
    (s, st, stl, ek, ak))                                                                     \
  X(C_Login, COUNTED, (CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG pl),  \
    (s, u, pin, pl))                                                                          \
  X(C_Logout, GATED, (CK_SESSION_HANDLE s), (s))                                              \
  X(C_CreateObject, GATED,                                                                    \
    (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o), (s, t, n, o)) \
  X(C_CopyObject, GATED,                                                                      \
    (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,                 \
     CK_OBJECT_HANDLE_PTR no),                                                                \
    (s, o, t, n, no))                                                                         \
  X(C_DestroyObject, GATED, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))                \
  X(C_GetObjectSize, GATED, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR sz),       \
    (s, o, sz))                                                                               \
  X(C_GetAttributeValue, GATED,                                                               \
    (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))  \
  X(C_SetAttributeValue, GATED,                                                               \
    (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))  \
  X(C_FindObjectsInit, GATED, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n)) \
  X(C_FindObjects, GATED,                                                                     \
    (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n), (s, o, max, n)) \
  X(C_FindObjectsFinal, GATED, (CK_SESSION_HANDLE s), (s))                                    \
  X(C_Encrypt, CRYPTO,                                                                        \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_EncryptUpdate, CRYPTO,                                                                  \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_EncryptFinal, CRYPTO, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR outl),        \
    (s, out, outl))                                                                           \
  X(C_DecryptInit, CRYPTO_START, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),     \
    (s, m, k))                                                                                \
  X(C_Decrypt, CRYPTO,                                                                        \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_DecryptUpdate, CRYPTO,                                                                  \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_DecryptFinal, CRYPTO, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR outl),        \
    (s, out, outl))                                                                           \
  X(C_DigestInit, GATED, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))                   \
  X(C_Digest, GATED,                                                                          \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_DigestUpdate, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl), (s, in, inl)) \
  X(C_DigestKey, GATED, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))                    \
  X(C_DigestFinal, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR outl),          \
    (s, out, outl))                                                                           \
  X(C_SignInit, GATED, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k)) \
  X(C_Sign, GATED,                                                                            \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR sig, CK_ULONG_PTR sigl),  \
    (s, in, inl, sig, sigl))                                                                  \
  X(C_SignUpdate, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl), (s, in, inl))   \
  X(C_SignFinal, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG_PTR sigl),            \
    (s, sig, sigl))                                                                           \
  X(C_SignRecoverInit, GATED, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),  \
    (s, m, k))                                                                                \
  X(C_SignRecover, GATED,                                                                     \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR sig, CK_ULONG_PTR sigl),  \
    (s, in, inl, sig, sigl))                                                                  \
  X(C_VerifyInit, GATED, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),       \
    (s, m, k))                                                                                \
  X(C_Verify, GATED,                                                                          \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR sig, CK_ULONG sigl),      \
    (s, in, inl, sig, sigl))                                                                  \
  X(C_VerifyUpdate, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl), (s, in, inl)) \
  X(C_VerifyFinal, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sigl), (s, sig, sigl)) \
  X(C_VerifyRecoverInit, GATED, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), \
    (s, m, k))                                                                                \
  X(C_VerifyRecover, GATED,                                                                   \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sigl, CK_BYTE_PTR out, CK_ULONG_PTR outl), \
    (s, sig, sigl, out, outl))                                                                \
  X(C_DigestEncryptUpdate, GATED,                                                             \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_DecryptDigestUpdate, GATED,                                                             \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_SignEncryptUpdate, GATED,                                                               \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_DecryptVerifyUpdate, GATED,                                                             \
    (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl),  \
    (s, in, inl, out, outl))                                                                  \
  X(C_GenerateKey, GATED,                                                                     \
    (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k), \
    (s, m, t, n, k))                                                                          \
  X(C_GenerateKeyPair, GATED,                                                                 \
    (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pubt, CK_ULONG pubn,           \
     CK_ATTRIBUTE_PTR privt, CK_ULONG privn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv), \
    (s, m, pubt, pubn, privt, privn, pub, priv))                                              \
  X(C_WrapKey, GATED,                                                                         \
    (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k,        \
     CK_BYTE_PTR out, CK_ULONG_PTR outl),                                                     \
    (s, m, wk, k, out, outl))                                                                 \
  X(C_UnwrapKey, GATED,                                                                       \
    (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG inl, \
     CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),                                 \
    (s, m, uk, in, inl, t, n, k))                                                             \
  X(C_DeriveKey, GATED,                                                                       \
    (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE bk, CK_ATTRIBUTE_PTR t, CK_ULONG n, \
     CK_OBJECT_HANDLE_PTR k),                                                                 \
    (s, m, bk, t, n, k))                                                                      \
  X(C_SeedRandom, GATED, (CK_SESSION_HANDLE s, CK_BYTE_PTR seed, CK_ULONG l), (s, seed, l))   \
  X(C_GenerateRandom, CRYPTO_START, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG l), (s, out, l)) \
  X(C_GetFunctionStatus, GATED, (CK_SESSION_HANDLE s), (s))                                   \
  X(C_CancelFunction, GATED, (CK_SESSION_HANDLE s), (s))                                      \
  X(C_WaitForSlotEvent, UNLOCKED, (CK_FLAGS f, CK_SLOT_ID_PTR slot, CK_VOID_PTR r), (f, slot, r))

#define SHIM_DEFINE(name, policy, params, args) \
  static CK_RV shim_##name params {             \
    CK_RV rv = enter(policy);                   \
    if (rv != CKR_OK) return rv;                \
    rv = g_real->name args;                     \
    leave(policy);                              \
    if (policy == COUNTED || policy == CRYPTO_START) record_call(#name, rv); \
    return rv;                                  \
  }
SHIM_FUNCTIONS(SHIM_DEFINE)

/* ---- device_iv: a FIPS-mode HSM that chooses the GCM IV itself ----------- */

enum { kDeviceIvLen = 12 };

static bool all_zero(const CK_BYTE *p, size_t n) {
  CK_BYTE any = 0;
  for (size_t i = 0; i < n; i++) any |= p[i];
  return any == 0;
}

/* Never all zero: that is the caller's "choose one for me", so a client that
 * checks it got an IV back must never be fooled by a (2^-96) coincidence. */
static bool draw_device_iv(CK_BYTE iv[kDeviceIvLen]) {
  do {
    size_t got = 0;
    while (got < kDeviceIvLen) {
      ssize_t n = getrandom(iv + got, kDeviceIvLen - got, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return false;
      got += (size_t)n;
    }
  } while (all_zero(iv, kDeviceIvLen));
  return true;
}

/* The only GCM encryption such a device accepts: CK_GCM_PARAMS whose pIv is a
 * 12-byte buffer of zeros, for the device to fill. */
static bool asks_for_device_iv(const CK_MECHANISM *m) {
  if (m->pParameter == NULL || m->ulParameterLen != sizeof(CK_GCM_PARAMS)) return false;
  const CK_GCM_PARAMS *params = m->pParameter;
  return params->pIv != NULL && params->ulIvLen == kDeviceIvLen && all_zero(params->pIv, kDeviceIvLen);
}

/* Called inside enter()/leave(). The IV goes into the caller's own buffer
 * before forwarding, so the real module sees exactly the caller's mechanism
 * (and a module that kept the pIv pointer until C_Encrypt would still read a
 * live buffer); a refused init puts the zeros back, as a device that returned
 * no IV. */
static CK_RV device_iv_encrypt_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, bool *forwarded) {
  *forwarded = false;
  if (!asks_for_device_iv(m)) {
    debugf("device_iv: refusing a GCM encryption that does not ask for the device's IV");
    return CKR_MECHANISM_PARAM_INVALID;
  }
  CK_BYTE iv[kDeviceIvLen];
  if (!draw_device_iv(iv)) return CKR_DEVICE_ERROR; /* the "device's" RNG failed */
  CK_BYTE *caller_iv = ((CK_GCM_PARAMS *)m->pParameter)->pIv;
  memcpy(caller_iv, iv, sizeof iv);
  *forwarded = true;
  CK_RV rv = g_real->C_EncryptInit(s, m, k);
  if (rv != CKR_OK) memset(caller_iv, 0, sizeof iv);
  return rv;
}

static CK_RV shim_C_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
  CK_RV rv = enter(CRYPTO_START);
  if (rv != CKR_OK) return rv;
  bool forwarded = true;
  if (atomic_load(&g_device_iv) && m != NULL && m->mechanism == CKM_AES_GCM) {
    rv = device_iv_encrypt_init(s, m, k, &forwarded);
  } else {
    rv = g_real->C_EncryptInit(s, m, k);
  }
  leave(CRYPTO_START);
  if (forwarded) record_call("C_EncryptInit", rv); /* as every logged call: only what reached the real module */
  return rv;
}

/* ---- max_sessions: a token with a session limit -------------------------- */

static CK_RV shim_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
  CK_RV rv = enter(GATED);
  if (rv != CKR_OK) return rv;
  rv = g_real->C_GetTokenInfo(slot, info);
  leave(GATED);
  const unsigned long max = atomic_load(&g_max_sessions);
  if (rv == CKR_OK && info != NULL && max != 0) {
    info->ulMaxSessionCount = max;
    const CK_ULONG rw = info->ulMaxRwSessionCount;
    if (rw == CK_EFFECTIVELY_INFINITE || rw == CK_UNAVAILABLE_INFORMATION || rw > max) info->ulMaxRwSessionCount = max;
  }
  return rv;
}

static CK_FUNCTION_LIST g_list;

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  if (out == NULL) return CKR_ARGUMENTS_BAD;
  if (!ensure_loaded()) return CKR_GENERAL_ERROR;
  *out = &g_list;
  return CKR_OK;
}

static CK_RV shim_C_Initialize(CK_VOID_PTR args) {
  if (!ensure_loaded()) return CKR_GENERAL_ERROR;
  reset_control_from_env();
  wait_while_hung();
  CK_RV rv = enter(ALWAYS);
  if (rv != CKR_OK) return rv;
  rv = g_real->C_Initialize(args);
  leave(ALWAYS);
  return rv;
}

#define SHIM_ENTRY(name, policy, params, args) .name = shim_##name,
static CK_FUNCTION_LIST g_list = {
    .version = {2, 40},
    .C_Initialize = shim_C_Initialize,
    .C_GetFunctionList = shim_C_GetFunctionList,
    .C_EncryptInit = shim_C_EncryptInit,
    .C_GetTokenInfo = shim_C_GetTokenInfo,
    SHIM_FUNCTIONS(SHIM_ENTRY)};

/* Every slot of the 2.40 list is filled: the X-list plus the four above. */
#define SHIM_COUNT(name, policy, params, args) +1
_Static_assert(4 SHIM_FUNCTIONS(SHIM_COUNT) ==
                   (sizeof(CK_FUNCTION_LIST) - offsetof(CK_FUNCTION_LIST, C_Initialize)) /
                       sizeof(CK_C_Initialize),
               "SHIM_FUNCTIONS must cover all of CK_FUNCTION_LIST");

SHIM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
  return shim_C_GetFunctionList(out);
}
