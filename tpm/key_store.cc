#include "tpm/key_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "core/strings.h"

namespace trousseau::tpm {
namespace {

std::string Errno(std::string_view what, const std::string& path) {
  return StrCat(what, " ", path, ": ", std::strerror(errno));
}

StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FailedPreconditionError(Errno("cannot open", path));
  std::string data;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = FailedPreconditionError(Errno("cannot read", path));
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > 64 * 1024) {
      ::close(fd);
      return FailedPreconditionError(StrCat(path, " is too large to be a TPM key blob"));
    }
  }
  ::close(fd);
  return data;
}

Status WriteFileAtomically(const std::string& dir, const std::string& name, const std::string& data) {
  const std::string path = StrCat(dir, "/", name);
  const std::string temp = StrCat(dir, "/.", name, ".tmp");
  ::unlink(temp.c_str());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return FailedPreconditionError(Errno("cannot create", temp));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = FailedPreconditionError(Errno("cannot write", temp));
      ::close(fd);
      ::unlink(temp.c_str());
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0600) != 0 || ::fsync(fd) != 0) {
    Status s = FailedPreconditionError(Errno("cannot sync", temp));
    ::close(fd);
    ::unlink(temp.c_str());
    return s;
  }
  ::close(fd);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    Status s = FailedPreconditionError(Errno("cannot rename into", path));
    ::unlink(temp.c_str());
    return s;
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return OkStatus();
}

}  // namespace

std::string VersionStem(uint64_t version) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "v%06llu", static_cast<unsigned long long>(version));
  return buffer;
}

Status EnsureKeyDir(const std::string& dir) {
  if (dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return FailedPreconditionError(Errno("cannot create the key directory", dir));
  }
  struct stat st{};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return FailedPreconditionError(StrCat("the key directory ", dir, " is not a directory"));
  }
  return OkStatus();
}

StatusOr<std::map<uint64_t, VersionBlobs>> ReadKeyDir(const std::string& dir) {
  if (dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return FailedPreconditionError(Errno("cannot read the TPM key directory", dir));
  std::map<uint64_t, VersionBlobs> versions;
  while (dirent* entry = ::readdir(d.get())) {
    std::string_view name = entry->d_name;
    Scheme scheme;
    std::string_view marker;
    if (name.ends_with(".aes.pub")) {
      scheme = Scheme::kAesCfbHmac;
      marker = ".aes.pub";
    } else if (name.ends_with(".rsa.pub")) {
      scheme = Scheme::kRsaOaep;
      marker = ".rsa.pub";
    } else {
      continue;
    }
    if (name.size() <= marker.size() + 1 || name[0] != 'v') continue;
    std::optional<uint64_t> version = ParseUnsigned<uint64_t>(name.substr(1, name.size() - 1 - marker.size()));
    if (!version || *version == 0 || VersionStem(*version) != name.substr(0, name.size() - marker.size())) continue;
    if (versions.count(*version)) {
      return FailedPreconditionError(
          StrCat("key version ", *version, " exists both as AES-CFB+HMAC and as RSA-OAEP keys; remove one"));
    }
    VersionBlobs blobs;
    blobs.version = *version;
    blobs.scheme = scheme;
    const std::string stem = StrCat(dir, "/", VersionStem(*version));
    struct Part {
      const char* suffix;
      std::string* into;
    };
    std::vector<Part> parts;
    if (scheme == Scheme::kAesCfbHmac) {
      parts = {{".aes.pub", &blobs.aes.public_area},
               {".aes.priv", &blobs.aes.private_area},
               {".hmac.pub", &blobs.hmac.public_area},
               {".hmac.priv", &blobs.hmac.private_area}};
    } else {
      parts = {{".rsa.pub", &blobs.rsa.public_area}, {".rsa.priv", &blobs.rsa.private_area}};
    }
    for (const Part& part : parts) {
      StatusOr<std::string> data = ReadFile(StrCat(stem, part.suffix));
      if (!data.ok()) {
        return FailedPreconditionError(StrCat("key version ", *version, " is incomplete: ", data.status().message()));
      }
      *part.into = *std::move(data);
    }
    versions.emplace(*version, std::move(blobs));
  }
  return versions;
}

Status WriteVersion(const std::string& dir, const VersionBlobs& blobs) {
  if (blobs.version == 0) return InvalidArgumentError("key versions start at 1");
  const std::string stem = VersionStem(blobs.version);
  struct stat st{};
  if (::stat(StrCat(dir, "/", stem, ".aes.pub").c_str(), &st) == 0 ||
      ::stat(StrCat(dir, "/", stem, ".rsa.pub").c_str(), &st) == 0) {
    return AlreadyExistsError(StrCat("key version ", blobs.version, " already exists in ", dir));
  }
  std::vector<std::pair<const char*, const std::string*>> parts;
  if (blobs.scheme == Scheme::kAesCfbHmac) {
    parts = {{".hmac.pub", &blobs.hmac.public_area},
             {".hmac.priv", &blobs.hmac.private_area},
             {".aes.priv", &blobs.aes.private_area},
             {".aes.pub", &blobs.aes.public_area}};  // last: the version exists once this is there
  } else {
    parts = {{".rsa.priv", &blobs.rsa.private_area}, {".rsa.pub", &blobs.rsa.public_area}};
  }
  for (const auto& [suffix, data] : parts) {
    if (Status s = WriteFileAtomically(dir, StrCat(stem, suffix), *data); !s.ok()) return s;
  }
  return OkStatus();
}

}  // namespace trousseau::tpm
