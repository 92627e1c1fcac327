// Fuzzes the TPM key-directory reader (tpm/key_store.h ReadKeyDir) and the blob parser the TPM
// backend applies to what it reads (TpmDevice::ParsePublic, tpm2-tss unmarshalling): a directory
// whose file names and contents come from the input, as a careless operator, a half-finished
// rotation or an attacker with write access to a backup could leave it.
// Input: a sequence of files, each <name index or literal name> <content>, split by FuzzedDataProvider.
// Invariants: never crashes, never hangs; every version it returns has the files its scheme needs
// with exactly their contents; a public area that parses re-marshals to the same bytes.
#include <fuzzer/FuzzedDataProvider.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tss2/tss2_mu.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "tests/fuzz/fuzz_check.h"
#include "tpm/key_store.h"
#include "tpm/tpm_device.h"

namespace {

// Names the reader looks for, so the fuzzer reaches complete versions quickly.
constexpr const char* kNames[] = {
    "v000001.aes.pub",  "v000001.aes.priv", "v000001.hmac.pub", "v000001.hmac.priv", "v000002.rsa.pub",
    "v000002.rsa.priv", "v000001.rsa.pub",  "v1.aes.pub",       "v0000000.aes.pub",  ".lock",
    "v000003.aes.pub",  "v000003.aes.priv", "v000003.hmac.pub", "v000003.hmac.priv", "v1234567.rsa.pub",
    "v1234567.rsa.priv"};

const std::string& ScratchDir() {
  // Never destroyed: the atexit cleanup below runs after static destructors.
  static const std::string* const dir = [] {
    auto* pattern = new std::string((std::filesystem::temp_directory_path() / "tpm_key_dir_fuzz.XXXXXX").string());
    FUZZ_CHECK(::mkdtemp(pattern->data()) != nullptr);
    std::atexit([] { std::filesystem::remove_all(ScratchDir()); });
    return pattern;
  }();
  return *dir;
}

void CheckPublicArea(const std::string& blob) {
  trousseau::StatusOr<TPM2B_PUBLIC> pub = trousseau::tpm::TpmDevice::ParsePublic(blob);
  if (!pub.ok()) return;
  uint8_t out[sizeof(TPM2B_PUBLIC) + 16];
  size_t offset = 0;
  // Whatever parses is a structure tpm2-tss writes back byte for byte (what Esys_Load will send).
  const TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&*pub, out, sizeof out, &offset);
  if (rc != TSS2_RC_SUCCESS) std::fprintf(stderr, "re-marshalling a parsed TPM2B_PUBLIC: rc 0x%x\n", rc);
  FUZZ_CHECK(rc == TSS2_RC_SUCCESS);
  FUZZ_CHECK(std::string(reinterpret_cast<const char*>(out), offset) == blob);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = ScratchDir();
  std::filesystem::remove_all(dir);
  FUZZ_CHECK(::mkdir(dir.c_str(), 0700) == 0);

  FuzzedDataProvider in(data, size);
  std::map<std::string, std::string> files;
  while (in.remaining_bytes() > 0 && files.size() < 12) {
    std::string name;
    if (in.ConsumeBool()) {
      name = kNames[in.ConsumeIntegralInRange<size_t>(0, std::size(kNames) - 1)];
    } else {
      name = in.ConsumeRandomLengthString(24);
      if (name.empty() || name.find('/') != std::string::npos || name.find('\0') != std::string::npos || name == "." ||
          name == "..") {
        continue;
      }
    }
    // Mostly private files; sometimes group-readable, which the reader must refuse.
    const mode_t mode = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? 0640 : 0600;
    std::string content = in.ConsumeRandomLengthString(512);
    const std::string path = dir + "/" + name;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) continue;
    FUZZ_CHECK(::fchmod(fd, mode) == 0);
    FUZZ_CHECK(::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
    ::close(fd);
    files[name] = std::move(content);
  }

  trousseau::StatusOr<std::map<uint64_t, trousseau::tpm::VersionBlobs>> versions = trousseau::tpm::ReadKeyDir(dir);
  if (!versions.ok()) {
    FUZZ_CHECK(versions.status().code() == trousseau::StatusCode::kFailedPrecondition);
    return 0;
  }
  for (const auto& [version, blobs] : *versions) {
    FUZZ_CHECK(version != 0 && blobs.version == version);
    const std::string stem = trousseau::tpm::VersionStem(version);
    auto content_of = [&](const char* suffix) -> const std::string& {
      auto it = files.find(stem + suffix);
      FUZZ_CHECK(it != files.end());
      return it->second;
    };
    if (blobs.scheme == trousseau::tpm::Scheme::kAesCfbHmac) {
      FUZZ_CHECK(blobs.aes.public_area == content_of(".aes.pub"));
      FUZZ_CHECK(blobs.aes.private_area == content_of(".aes.priv"));
      FUZZ_CHECK(blobs.hmac.public_area == content_of(".hmac.pub"));
      FUZZ_CHECK(blobs.hmac.private_area == content_of(".hmac.priv"));
      CheckPublicArea(blobs.aes.public_area);
      CheckPublicArea(blobs.hmac.public_area);
    } else {
      FUZZ_CHECK(blobs.rsa.public_area == content_of(".rsa.pub"));
      FUZZ_CHECK(blobs.rsa.private_area == content_of(".rsa.priv"));
      CheckPublicArea(blobs.rsa.public_area);
    }
  }
  return 0;
}
