// Tests for the fault-injecting PKCS#11 shim, against a real SoftHSM token.
//
// Each test process creates its own SoftHSM token directory, loads the shim
// with dlopen (the shim in turn dlopens SoftHSM) and talks PKCS#11 to it like
// the plugin does: C_Initialize with CKF_OS_LOCKING_OK, session, login,
// AES-256 session key, AES-GCM.

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

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

CK_RV Encrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<CK_BYTE>& pt, std::vector<CK_BYTE>* ct) {
  Gcm gcm;
  CK_RV rv = g_p11->C_EncryptInit(s, &gcm.mech, key);
  if (rv != CKR_OK) return rv;
  std::vector<CK_BYTE> in = pt;
  ct->assign(pt.size() + 16, 0);
  CK_ULONG len = ct->size();
  rv = g_p11->C_Encrypt(s, in.data(), in.size(), ct->data(), &len);
  ct->resize(rv == CKR_OK ? len : 0);
  return rv;
}

CK_RV Decrypt(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const std::vector<CK_BYTE>& ct, std::vector<CK_BYTE>* pt) {
  Gcm gcm;
  CK_RV rv = g_p11->C_DecryptInit(s, &gcm.mech, key);
  if (rv != CKR_OK) return rv;
  std::vector<CK_BYTE> in = ct;
  pt->assign(ct.size(), 0);
  CK_ULONG len = pt->size();
  rv = g_p11->C_Decrypt(s, in.data(), in.size(), pt->data(), &len);
  pt->resize(rv == CKR_OK ? len : 0);
  return rv;
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
