// Tests for the fault-injecting PKCS#11 shim, against a real SoftHSM token.
//
// Each test process creates its own SoftHSM token directory, loads the shim
// with dlopen (the shim in turn dlopens SoftHSM) and talks PKCS#11 to it like
// the plugin does: C_Initialize with CKF_OS_LOCKING_OK, session, login,
// AES-256 session key, AES-GCM.

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <p11-kit/pkcs11.h>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kLabel = "shimtest";
constexpr std::string_view kUserPin = "87654321";

// Suite-wide state: one token directory and one loaded shim per process.
fs::path g_dir;
CK_FUNCTION_LIST* g_p11 = nullptr;

fs::path ControlPath() { return g_dir / "control"; }

// Atomic replace (temp file + rename), as recommended for real writers.
void WriteControl(const std::string& text) {
  const fs::path tmp = g_dir / "control.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text << "\n";
    ASSERT_TRUE(out.good());
  }
  fs::rename(tmp, ControlPath());
}

// In-place rewrite (truncate + write): the shim must notice it by size/mtime.
void RewriteControlInPlace(const std::string& text) {
  std::ofstream out(ControlPath(), std::ios::trunc);
  out << text << "\n";
  ASSERT_TRUE(out.good());
}

CK_RV Initialize() {
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  return g_p11->C_Initialize(&args);
}

// SoftHSM assigns random slot ids: find ours by its (blank-padded) label.
CK_RV FindSlot(CK_SLOT_ID* slot) {
  CK_ULONG n = 0;
  CK_RV rv = g_p11->C_GetSlotList(CK_TRUE, nullptr, &n);
  if (rv != CKR_OK) return rv;
  std::vector<CK_SLOT_ID> slots(n);
  rv = g_p11->C_GetSlotList(CK_TRUE, slots.data(), &n);
  if (rv != CKR_OK) return rv;
  for (CK_ULONG i = 0; i < n; ++i) {
    CK_TOKEN_INFO info{};
    if (g_p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
    std::string label(reinterpret_cast<const char*>(info.label), sizeof info.label);
    label.erase(label.find_last_not_of(' ') + 1);
    if (label == kLabel) {
      *slot = slots[i];
      return CKR_OK;
    }
  }
  return CKR_TOKEN_NOT_PRESENT;
}

CK_RV OpenSession(CK_SLOT_ID slot, CK_SESSION_HANDLE* session) {
  return g_p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, session);
}

CK_RV Login(CK_SESSION_HANDLE session) {
  std::string pin(kUserPin);
  return g_p11->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
}

CK_RV GenerateAesKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE* key) {
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ULONG len = 32;
  CK_ATTRIBUTE tmpl[] = {
      {CKA_TOKEN, &no, sizeof no},     {CKA_SENSITIVE, &yes, sizeof yes}, {CKA_EXTRACTABLE, &no, sizeof no},
      {CKA_ENCRYPT, &yes, sizeof yes}, {CKA_DECRYPT, &yes, sizeof yes},   {CKA_VALUE_LEN, &len, sizeof len},
  };
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  return g_p11->C_GenerateKey(session, &mech, tmpl, std::size(tmpl), key);
}

// Fixed IV: fine for a test that never reuses the key for anything else.
struct Gcm {
  CK_BYTE iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  CK_GCM_PARAMS params{};
  CK_MECHANISM mech{};
  Gcm() {
    params.pIv = iv;
    params.ulIvLen = sizeof iv;
    params.ulIvBits = 96;
    params.pAAD = nullptr;
    params.ulAADLen = 0;
    params.ulTagBits = 128;
    mech = {CKM_AES_GCM, &params, sizeof params};
  }
};

// What a client of a FIPS-mode HSM passes: 12 zero bytes for the device to fill with the IV it uses.
struct DeviceIvGcm : Gcm {
  DeviceIvGcm() { std::fill(std::begin(iv), std::end(iv), CK_BYTE{0}); }
  std::vector<CK_BYTE> Iv() const { return {std::begin(iv), std::end(iv)}; }
};

CK_RV EncryptWith(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, Gcm& gcm, const std::vector<CK_BYTE>& pt,
                  std::vector<CK_BYTE>* ct) {
  CK_RV rv = g_p11->C_EncryptInit(s, &gcm.mech, key);
  if (rv != CKR_OK) return rv;
  std::vector<CK_BYTE> in = pt;
  ct->assign(pt.size() + 16, 0);
  CK_ULONG len = ct->size();
  rv = g_p11->C_Encrypt(s, in.data(), in.size(), ct->data(), &len);
  ct->resize(rv == CKR_OK ? len : 0);
  return rv;
}

CK_RV Encrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<CK_BYTE>& pt, std::vector<CK_BYTE>* ct) {
  Gcm gcm;
  return EncryptWith(s, key, gcm, pt, ct);
}

CK_RV DecryptWith(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, Gcm& gcm, const std::vector<CK_BYTE>& ct,
                  std::vector<CK_BYTE>* pt) {
  CK_RV rv = g_p11->C_DecryptInit(s, &gcm.mech, key);
  if (rv != CKR_OK) return rv;
  std::vector<CK_BYTE> in = ct;
  pt->assign(ct.size(), 0);
  CK_ULONG len = pt->size();
  rv = g_p11->C_Decrypt(s, in.data(), in.size(), pt->data(), &len);
  pt->resize(rv == CKR_OK ? len : 0);
  return rv;
}

CK_RV Decrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<CK_BYTE>& ct, std::vector<CK_BYTE>* pt) {
  Gcm gcm;
  return DecryptWith(s, key, gcm, ct, pt);
}

// Decrypts under `iv` (the caller's IV, as a FIPS-mode device takes it for decryption).
CK_RV DecryptUnder(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<CK_BYTE>& iv,
                   const std::vector<CK_BYTE>& ct, std::vector<CK_BYTE>* pt) {
  Gcm gcm;
  if (iv.size() != sizeof gcm.iv) return CKR_ARGUMENTS_BAD;
  std::copy(iv.begin(), iv.end(), gcm.iv);
  return DecryptWith(s, key, gcm, ct, pt);
}

// Encrypt then decrypt, checking the result; returns the first failure.
CK_RV RoundTrip(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key) {
  const std::vector<CK_BYTE> pt = {'h', 'e', 'l', 'l', 'o', ' ', 'k', 'm', 's'};
  std::vector<CK_BYTE> ct, back;
  if (CK_RV rv = Encrypt(s, key, pt, &ct); rv != CKR_OK) return rv;
  EXPECT_EQ(ct.size(), pt.size() + 16);  // ciphertext || 128-bit tag
  if (CK_RV rv = Decrypt(s, key, ct, &back); rv != CKR_OK) return rv;
  EXPECT_EQ(back, pt);
  return CKR_OK;
}

// Process-wide setup: one token directory and one loaded shim per process
// (SoftHSM and the shim are process singletons anyway).
class SoftHsmEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "fault_shim_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    g_dir = tmpl;
    fs::create_directory(g_dir / "tokens");
    {
      std::ofstream conf(g_dir / "softhsm2.conf");
      conf << "directories.tokendir = " << (g_dir / "tokens").string() << "\n"
           << "objectstore.backend = file\n"
           << "log.level = ERROR\n";
    }
    // Before anything loads SoftHSM; softhsm2-util inherits it too.
    setenv("SOFTHSM2_CONF", (g_dir / "softhsm2.conf").c_str(), 1);
    const std::string cmd = std::string(SOFTHSM2_UTIL) + " --init-token --free --label " + std::string(kLabel) +
                            " --so-pin 12345678 --pin " + std::string(kUserPin) + " >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

    // Never dlclose'd: the shim keeps SoftHSM loaded for the process anyway.
    void* shim = dlopen(FAULT_SHIM_PATH, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(shim, nullptr) << dlerror();
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(shim, "C_GetFunctionList"));
    ASSERT_NE(get_list, nullptr);
    ASSERT_EQ(get_list(&g_p11), CKR_OK);
    ASSERT_NE(g_p11, nullptr);
  }

  void TearDown() override {
    std::error_code ec;
    if (!g_dir.empty()) fs::remove_all(g_dir, ec);
  }
};

[[maybe_unused]] ::testing::Environment* const g_env = ::testing::AddGlobalTestEnvironment(new SoftHsmEnvironment);

class FaultShimTest : public ::testing::Test {
 protected:
  // Controlled tests point the shim at the control file; see PassThroughTest.
  virtual bool Controlled() const { return true; }

  void SetUp() override {
    ASSERT_NE(g_p11, nullptr) << "environment setup failed";
    WriteControl("up");
    if (Controlled()) {
      setenv("TROUSSEAU_FAULT_SHIM_CONTROL", ControlPath().c_str(), 1);
    } else {
      unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
    }
    ASSERT_EQ(Initialize(), CKR_OK);  // the shim reads the env var here
    initialized_ = true;
    ASSERT_NO_FATAL_FAILURE(Connect());
  }

  void TearDown() override {
    if (initialized_) {
      WriteControl("up");
      g_p11->C_Finalize(nullptr);
    }
  }

  // What a client does after (re)initialising: slot, session, login, key.
  void Connect() {
    ASSERT_EQ(FindSlot(&slot_), CKR_OK);
    ASSERT_EQ(OpenSession(slot_, &session_), CKR_OK);
    ASSERT_EQ(Login(session_), CKR_OK);
    ASSERT_EQ(GenerateAesKey(session_, &key_), CKR_OK);
  }

  bool initialized_ = false;
  CK_SLOT_ID slot_ = 0;
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE key_ = CK_INVALID_HANDLE;
};

TEST_F(FaultShimTest, FunctionListIsCompleteAndStable) {
  EXPECT_EQ(g_p11->version.major, 2);
  EXPECT_EQ(g_p11->version.minor, 40);
  // Every entry after `version` is a function pointer; none may be missing.
  const auto* fns = reinterpret_cast<const CK_C_Initialize*>(&g_p11->C_Initialize);
  const size_t n = (sizeof(CK_FUNCTION_LIST) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(CK_C_Initialize);
  EXPECT_EQ(n, 68u);
  for (size_t i = 0; i < n; ++i) EXPECT_NE(fns[i], nullptr) << "entry " << i;
  CK_FUNCTION_LIST* again = nullptr;
  ASSERT_EQ(g_p11->C_GetFunctionList(&again), CKR_OK);
  EXPECT_EQ(again, g_p11);
}

TEST_F(FaultShimTest, PassThroughRoundTrip) {
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);

  // Errors from the real module come back unchanged.
  const std::vector<CK_BYTE> pt(32, 0x42);
  std::vector<CK_BYTE> ct, back;
  ASSERT_EQ(Encrypt(session_, key_, pt, &ct), CKR_OK);
  ct.back() ^= 1;  // corrupt the tag
  EXPECT_NE(Decrypt(session_, key_, ct, &back), CKR_OK);

  CK_INFO info{};
  ASSERT_EQ(g_p11->C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(info.manufacturerID), 12),
            "SoftHSM     ");  // really SoftHSM's answer, not the shim's
}

TEST_F(FaultShimTest, DownFailsEverythingButLifecycleCalls) {
  Gcm gcm;
  ASSERT_EQ(g_p11->C_EncryptInit(session_, &gcm.mech, key_), CKR_OK);

  WriteControl("down");
  CK_BYTE in[16] = {}, out[64];
  CK_ULONG out_len = sizeof out;
  EXPECT_EQ(g_p11->C_Encrypt(session_, in, sizeof in, out, &out_len), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &gcm.mech, key_), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_DecryptInit(session_, &gcm.mech, key_), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_GenerateRandom(session_, out, 8), CKR_DEVICE_ERROR);
  CK_ULONG n = 0;
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_DEVICE_ERROR);
  CK_SESSION_HANDLE other = CK_INVALID_HANDLE;
  EXPECT_EQ(OpenSession(slot_, &other), CKR_DEVICE_ERROR);
  CK_SESSION_INFO sinfo{};
  EXPECT_EQ(g_p11->C_GetSessionInfo(session_, &sinfo), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_Login(session_, CKU_USER, nullptr, 0), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_WaitForSlotEvent(CKF_DONT_BLOCK, &n, nullptr), CKR_DEVICE_ERROR);

  // The lifecycle calls keep working so a client can tear down and retry.
  CK_INFO info{};
  EXPECT_EQ(g_p11->C_GetInfo(&info), CKR_OK);
  CK_FUNCTION_LIST* list = nullptr;
  EXPECT_EQ(g_p11->C_GetFunctionList(&list), CKR_OK);
  EXPECT_EQ(g_p11->C_Finalize(nullptr), CKR_OK);
  EXPECT_EQ(Initialize(), CKR_OK);  // file still says down
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_DEVICE_ERROR);
}

TEST_F(FaultShimTest, UpAfterDownInvalidatesOldSessionsUntilReconnect) {
  ASSERT_EQ(RoundTrip(session_, key_), CKR_OK);

  WriteControl("down");
  CK_ULONG n = 0;
  // The shim only looks at the file on calls: one call must see the outage.
  ASSERT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_DEVICE_ERROR);
  WriteControl("up");

  // Link is back, but the old session (and its session key) died with it.
  CK_SESSION_INFO sinfo{};
  EXPECT_NE(g_p11->C_GetSessionInfo(session_, &sinfo), CKR_OK);
  EXPECT_NE(RoundTrip(session_, key_), CKR_OK);

  // A new session without C_Finalize works but is logged out, as after a
  // real outage: the client must log in again.
  CK_SESSION_HANDLE fresh = CK_INVALID_HANDLE;
  ASSERT_EQ(OpenSession(slot_, &fresh), CKR_OK);
  ASSERT_EQ(g_p11->C_GetSessionInfo(fresh, &sinfo), CKR_OK);
  EXPECT_EQ(sinfo.state, CKS_RW_PUBLIC_SESSION);

  // The recovery path a client takes: finalise, re-initialise, reconnect.
  ASSERT_EQ(g_p11->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(Initialize(), CKR_OK);
  ASSERT_NO_FATAL_FAILURE(Connect());
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);
}

TEST_F(FaultShimTest, CryptoFailBreaksOnlyCryptographicCallsAndKeepsSessions) {
  ASSERT_EQ(RoundTrip(session_, key_), CKR_OK);
  WriteControl("crypto_fail");
  Gcm gcm;
  CK_BYTE out[8];
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &gcm.mech, key_), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_DecryptInit(session_, &gcm.mech, key_), CKR_DEVICE_ERROR);
  EXPECT_EQ(g_p11->C_GenerateRandom(session_, out, sizeof out), CKR_DEVICE_ERROR);
  // Lookups, sessions and login state still answer: the plugin can list its keys.
  CK_SESSION_INFO sinfo{};
  ASSERT_EQ(g_p11->C_GetSessionInfo(session_, &sinfo), CKR_OK);
  EXPECT_EQ(sinfo.state, CKS_RW_USER_FUNCTIONS);
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  CK_ATTRIBUTE by_class{CKA_CLASS, &secret, sizeof secret};
  ASSERT_EQ(g_p11->C_FindObjectsInit(session_, &by_class, 1), CKR_OK);
  CK_OBJECT_HANDLE found[4];
  CK_ULONG count = 0;
  EXPECT_EQ(g_p11->C_FindObjects(session_, found, 4, &count), CKR_OK);
  EXPECT_GE(count, 1u);
  EXPECT_EQ(g_p11->C_FindObjectsFinal(session_), CKR_OK);
  WriteControl("up");
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK) << "the same session works again";
}

TEST_F(FaultShimTest, InPlaceRewriteOfControlFileIsNoticed) {
  ASSERT_EQ(RoundTrip(session_, key_), CKR_OK);
  RewriteControlInPlace("down");
  CK_ULONG n = 0;
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_DEVICE_ERROR);
  RewriteControlInPlace("up");
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);
}

TEST_F(FaultShimTest, DelaySlowsCryptographicCalls) {
  WriteControl("up delay_us=20000");
  Gcm gcm;
  ASSERT_EQ(g_p11->C_EncryptInit(session_, &gcm.mech, key_), CKR_OK);
  CK_BYTE in[16] = {}, out[64];
  CK_ULONG out_len = sizeof out;
  auto start = Clock::now();
  ASSERT_EQ(g_p11->C_Encrypt(session_, in, sizeof in, out, &out_len), CKR_OK);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(20));

  start = Clock::now();
  ASSERT_EQ(g_p11->C_GenerateRandom(session_, out, 16), CKR_OK);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(20));
}

// Many threads encrypting while the link drops: each call either completes
// normally or fails with CKR_DEVICE_ERROR. Anything else (e.g.
// CKR_SESSION_HANDLE_INVALID) would mean a session was closed under a call
// that had already been let through.
TEST_F(FaultShimTest, ConcurrentCallsSeeOnlyOkThenDeviceError) {
  constexpr int kThreads = 8;
  std::atomic<int> ready{0};
  std::atomic<long> ops{0};
  std::vector<CK_RV> first_failure(kThreads, CKR_OK);
  std::vector<CK_SESSION_HANDLE> sessions(kThreads, CK_INVALID_HANDLE);
  std::vector<std::thread> threads;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
      CK_RV rv = OpenSession(slot_, &sessions[t]);  // logged in: login is per token
      if (rv == CKR_OK) rv = GenerateAesKey(sessions[t], &key);
      ready.fetch_add(1);
      const std::vector<CK_BYTE> pt(64, static_cast<CK_BYTE>(t));
      std::vector<CK_BYTE> ct;
      while (rv == CKR_OK && Clock::now() < deadline) {
        rv = Encrypt(sessions[t], key, pt, &ct);
        ops.fetch_add(1);
      }
      first_failure[t] = rv;
    });
  }
  while ((ready.load() < kThreads || ops.load() < 200) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  WriteControl("down");
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(first_failure[t], CKR_DEVICE_ERROR) << "thread " << t;
  }

  WriteControl("up");
  for (int t = 0; t < kThreads; ++t) {
    CK_SESSION_INFO sinfo{};
    EXPECT_NE(g_p11->C_GetSessionInfo(sessions[t], &sinfo), CKR_OK) << "thread " << t;
  }
}

TEST_F(FaultShimTest, MissingControlFileMeansUp) {
  std::error_code ec;
  fs::remove(ControlPath(), ec);
  CK_ULONG n = 0;
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);
}

// ---- device_iv: a FIPS-mode HSM that generates the GCM IV itself --------------------------------

const std::vector<CK_BYTE> kZeroIv(12, 0);

std::vector<std::string> CallLogLines(const fs::path& log) {
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST_F(FaultShimTest, DeviceIvRefusesACallerChosenIvForEncryption) {
  WriteControl("device_iv");
  const fs::path call_log = g_dir / "calls";
  fs::remove(call_log);
  setenv("TROUSSEAU_FAULT_SHIM_CALL_LOG", call_log.c_str(), 1);

  Gcm caller_iv;
  const std::vector<CK_BYTE> chosen(std::begin(caller_iv.iv), std::end(caller_iv.iv));
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &caller_iv.mech, key_), CKR_MECHANISM_PARAM_INVALID);
  EXPECT_EQ(std::vector<CK_BYTE>(std::begin(caller_iv.iv), std::end(caller_iv.iv)), chosen) << "caller's IV untouched";

  // A single non-zero byte is a caller's IV too.
  DeviceIvGcm almost_zero;
  almost_zero.iv[11] = 1;
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &almost_zero.mech, key_), CKR_MECHANISM_PARAM_INVALID);

  // Zeros of another length, no buffer at all, no parameters: not a request for a 96-bit device IV.
  CK_BYTE zeros16[16] = {};
  DeviceIvGcm long_iv;
  long_iv.params.pIv = zeros16;
  long_iv.params.ulIvLen = sizeof zeros16;
  long_iv.params.ulIvBits = 128;
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &long_iv.mech, key_), CKR_MECHANISM_PARAM_INVALID);
  DeviceIvGcm no_buffer;
  no_buffer.params.pIv = nullptr;
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &no_buffer.mech, key_), CKR_MECHANISM_PARAM_INVALID);
  CK_MECHANISM bare{CKM_AES_GCM, nullptr, 0};
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &bare, key_), CKR_MECHANISM_PARAM_INVALID);

  // "up" later in the file does not clear it.
  WriteControl("device_iv up");
  EXPECT_EQ(g_p11->C_EncryptInit(session_, &caller_iv.mech, key_), CKR_MECHANISM_PARAM_INVALID);

  // Refusals never reached the device (nothing in the call log) and left no operation active on the
  // session: the request for a device IV that follows, on the same session, is accepted.
  EXPECT_TRUE(CallLogLines(call_log).empty());
  DeviceIvGcm asks;
  std::vector<CK_BYTE> ct;
  EXPECT_EQ(EncryptWith(session_, key_, asks, {'p', 't'}, &ct), CKR_OK);
  EXPECT_EQ(CallLogLines(call_log), std::vector<std::string>{"C_EncryptInit 0x0"});
  unsetenv("TROUSSEAU_FAULT_SHIM_CALL_LOG");
}

TEST_F(FaultShimTest, DeviceIvFillsTheZeroBufferWithTheIvTheDeviceUsed) {
  WriteControl("device_iv");
  const std::vector<CK_BYTE> pt = {'d', 'a', 't', 'a', ' ', 'k', 'e', 'y'};

  DeviceIvGcm first, second;
  std::vector<CK_BYTE> ct1, ct2;
  ASSERT_EQ(EncryptWith(session_, key_, first, pt, &ct1), CKR_OK);
  ASSERT_EQ(EncryptWith(session_, key_, second, pt, &ct2), CKR_OK);
  EXPECT_EQ(ct1.size(), pt.size() + 16);
  EXPECT_NE(first.Iv(), kZeroIv) << "the device returns its IV in pIv";
  EXPECT_NE(second.Iv(), kZeroIv);
  EXPECT_NE(first.Iv(), second.Iv()) << "a fresh IV for every encryption";
  EXPECT_NE(ct1, ct2);
  EXPECT_EQ(first.params.ulIvLen, 12u);

  // Decryption takes the caller's IV: the returned one gives the plaintext back, so it is the IV the
  // device really encrypted under (not the zeros, not the other encryption's).
  std::vector<CK_BYTE> back;
  ASSERT_EQ(DecryptUnder(session_, key_, first.Iv(), ct1, &back), CKR_OK);
  EXPECT_EQ(back, pt);
  ASSERT_EQ(DecryptUnder(session_, key_, second.Iv(), ct2, &back), CKR_OK);
  EXPECT_EQ(back, pt);
  EXPECT_NE(DecryptUnder(session_, key_, kZeroIv, ct1, &back), CKR_OK);
  EXPECT_NE(DecryptUnder(session_, key_, second.Iv(), ct1, &back), CKR_OK);

  // An init the real module refuses (no such key) used no IV: the buffer stays zero.
  DeviceIvGcm refused;
  EXPECT_NE(g_p11->C_EncryptInit(session_, &refused.mech, CK_INVALID_HANDLE), CKR_OK);
  EXPECT_EQ(refused.Iv(), kZeroIv);
}

TEST_F(FaultShimTest, DeviceIvLeavesOtherMechanismsAndDecryptionAlone) {
  // GCM decryption with any caller IV: what the plain shim encrypted decrypts under device_iv.
  const std::vector<CK_BYTE> pt(40, 0x5a);
  std::vector<CK_BYTE> ct, back;
  ASSERT_EQ(Encrypt(session_, key_, pt, &ct), CKR_OK);
  WriteControl("device_iv");
  ASSERT_EQ(Decrypt(session_, key_, ct, &back), CKR_OK);
  EXPECT_EQ(back, pt);

  // Another mechanism keeps its caller-chosen IV.
  CK_BYTE cbc_iv[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
  CK_MECHANISM cbc{CKM_AES_CBC_PAD, cbc_iv, sizeof cbc_iv};
  ASSERT_EQ(g_p11->C_EncryptInit(session_, &cbc, key_), CKR_OK);
  std::vector<CK_BYTE> in = pt, out(pt.size() + 16);
  CK_ULONG out_len = out.size();
  EXPECT_EQ(g_p11->C_Encrypt(session_, in.data(), in.size(), out.data(), &out_len), CKR_OK);
  EXPECT_EQ(out_len, 48u);
  EXPECT_EQ(cbc_iv[0], 9);
}

TEST_F(FaultShimTest, WithoutDeviceIvCallerIvsWorkAndZerosStayZeros) {
  WriteControl("device_iv");
  Gcm caller_iv;
  ASSERT_EQ(g_p11->C_EncryptInit(session_, &caller_iv.mech, key_), CKR_MECHANISM_PARAM_INVALID);

  WriteControl("up");  // the word is gone: a caller IV works again, in the same session
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);
  // And a zero IV is just the caller's IV: used as given, never replaced.
  DeviceIvGcm zeros;
  const std::vector<CK_BYTE> pt = {'z'};
  std::vector<CK_BYTE> ct, back;
  ASSERT_EQ(EncryptWith(session_, key_, zeros, pt, &ct), CKR_OK);
  EXPECT_EQ(zeros.Iv(), kZeroIv);
  ASSERT_EQ(DecryptUnder(session_, key_, kZeroIv, ct, &back), CKR_OK);
  EXPECT_EQ(back, pt);
}

// No TROUSSEAU_FAULT_SHIM_CONTROL at C_Initialize: the control file, even
// one saying "down", is ignored.
class FaultShimPassThroughTest : public FaultShimTest {
 protected:
  bool Controlled() const override { return false; }
};

TEST_F(FaultShimPassThroughTest, NoControlEnvIgnoresControlFile) {
  WriteControl("down delay_us=20000");
  CK_ULONG n = 0;
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);
  CK_SESSION_INFO sinfo{};
  ASSERT_EQ(g_p11->C_GetSessionInfo(session_, &sinfo), CKR_OK);
  EXPECT_EQ(sinfo.state, CKS_RW_USER_FUNCTIONS);  // sessions were not closed
}

// The env var is read on every C_Initialize: controlled, then unset again.
TEST_F(FaultShimPassThroughTest, ControlEnvIsReadOnEachInitialize) {
  WriteControl("down");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", ControlPath().c_str(), 1);
  ASSERT_EQ(g_p11->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(Initialize(), CKR_OK);
  CK_ULONG n = 0;
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_DEVICE_ERROR);

  unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  ASSERT_EQ(g_p11->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(Initialize(), CKR_OK);
  EXPECT_EQ(g_p11->C_GetSlotList(CK_FALSE, nullptr, &n), CKR_OK);  // file still says down
  ASSERT_NO_FATAL_FAILURE(Connect());
  EXPECT_EQ(RoundTrip(session_, key_), CKR_OK);
}

}  // namespace
