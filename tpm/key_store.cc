#include "tpm/key_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "core/strings.h"

namespace trousseau::tpm {
namespace {

constexpr std::string_view kTempInfix = ".tmp-";  // temp files: ".NAME.tmp-XXXXXX"
constexpr size_t kTempRandom = 6;                 // mkstemp's X's

std::string Errno(std::string_view what, const std::string& path) {
  return StrCat(what, " ", path, ": ", std::strerror(errno));
}

std::string Octal(mode_t mode) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "%04o", static_cast<unsigned>(mode & 07777));
  return buffer;
}

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

// A temp file that is removed when this goes out of scope, unless renamed away (`path` cleared).
struct TempFile {
  std::string path;
  ~TempFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

// Whoever can write the key directory or a key file can swap in keys of their own making (created
// in this same TPM, they load fine) and so decide which key the plugin encrypts with.
Status CheckNotWritableByOthers(const struct stat& st, const std::string& path, bool directory) {
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) return OkStatus();
  return FailedPreconditionError(StrCat(directory ? "the TPM key directory " : "the TPM key file ", path,
                                        " is writable by ", (st.st_mode & S_IWOTH) ? "everyone" : "its group",
                                        " (mode ", Octal(st.st_mode),
                                        "): whoever can write there can swap the keys; "
                                        "fix with `chmod ",
                                        directory ? "700 " : "600 ", path, "`"));
}

// The blobs load, in this TPM, for anyone who can open the TPM (the keys have an empty auth value):
// on this node, reading them is using the KEK, and a readable RSA public key lets one forge
// envelopes. So a key file grants nothing to group or others, not even read.
Status CheckKeyFileIsPrivate(const struct stat& st, const std::string& path) {
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) == 0) return OkStatus();
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) return CheckNotWritableByOthers(st, path, /*directory=*/false);
  return FailedPreconditionError(StrCat("the TPM key file ", path, " is readable by ",
                                        (st.st_mode & S_IROTH) ? "everyone" : "its group", " (mode ", Octal(st.st_mode),
                                        "): on this node whoever can read it and open the TPM "
                                        "can use the key; fix with `chmod 600 ",
                                        path, "`"));
}

// The directory's owner can always chmod it open again: only the reading user or root may own it.
Status CheckKeyDirOwner(const struct stat& st, const std::string& dir) {
  const uid_t me = ::geteuid();
  if (st.st_uid == me || st.st_uid == 0) return OkStatus();
  return FailedPreconditionError(StrCat("the TPM key directory ", dir, " is owned by uid ", st.st_uid,
                                        ", not by this user (uid ", me,
                                        ") or root: its owner can swap the keys; "
                                        "fix with `chown ",
                                        me, " ", dir, "` or run as its owner"));
}

bool IsTempName(std::string_view name) {
  return name.starts_with('.') && name.size() > kTempInfix.size() + kTempRandom &&
         name.substr(name.size() - kTempRandom - kTempInfix.size(), kTempInfix.size()) == kTempInfix;
}

// One key file, opened relative to the key directory. NOT_FOUND if it is missing.
StatusOr<std::string> ReadKeyFile(int dir_fd, const std::string& name, const std::string& path) {
  // O_NONBLOCK: a FIFO under a key file's name must not hang the plugin (it is then refused as not
  // a regular file); it changes nothing for regular files.
  Fd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd && errno == ENOENT) return NotFoundError(Errno("cannot open", path));
  if (!fd) return FailedPreconditionError(Errno("cannot open", path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return FailedPreconditionError(Errno("cannot stat", path));
  if (!S_ISREG(st.st_mode)) return FailedPreconditionError(StrCat(path, " is not a regular file"));
  if (Status s = CheckKeyFileIsPrivate(st, path); !s.ok()) return s;
  std::string data;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError(Errno("cannot read", path));
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > 64 * 1024) return FailedPreconditionError(StrCat(path, " is too large to be a TPM key blob"));
  }
  return data;
}

Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPreconditionError(Errno("cannot write", path));
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

// Moves `from` to `to` unless `to` exists (ALREADY_EXISTS then): renameat2(RENAME_NOREPLACE), or
// link() on filesystems without it. Either way an existing file is never replaced.
Status RenameNoReplace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return OkStatus();
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    if (errno == EEXIST) return AlreadyExistsError(StrCat(to, " already exists"));
    return FailedPreconditionError(Errno("cannot rename into", to));
  }
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) return AlreadyExistsError(StrCat(to, " already exists"));
    return FailedPreconditionError(Errno("cannot link into", to));
  }
  ::unlink(from.c_str());
  return OkStatus();
}

void SyncDirectory(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd) ::fsync(fd.get());
}

// Writes `name` through a temp file of its own (a unique name, so a concurrent writer never
// shares it): 0600, fsync, then rename (or, for `commit`, a rename that refuses to replace an
// existing file), then fsync of the directory.
Status WriteFileAtomically(const std::string& dir, const std::string& name, const std::string& data, bool commit) {
  const std::string path = StrCat(dir, "/", name);
  std::string pattern = StrCat(dir, "/.", name, kTempInfix, std::string(kTempRandom, 'X'));
  Fd fd(::mkostemp(pattern.data(), O_CLOEXEC));
  if (!fd) return FailedPreconditionError(Errno("cannot create a temp file for", path));
  TempFile temp{pattern};
  if (Status s = WriteAll(fd.get(), data, temp.path); !s.ok()) return s;
  if (::fchmod(fd.get(), 0600) != 0 || ::fsync(fd.get()) != 0 || ::close(fd.release()) != 0) {
    return FailedPreconditionError(Errno("cannot sync", temp.path));
  }
  if (commit) {
    if (Status s = RenameNoReplace(temp.path, path); !s.ok()) return s;
  } else if (::rename(temp.path.c_str(), path.c_str()) != 0) {
    return FailedPreconditionError(Errno("cannot rename into", path));
  }
  temp.path.clear();
  SyncDirectory(dir);
  return OkStatus();
}

}  // namespace

std::string VersionStem(uint64_t version) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "v%06llu", static_cast<unsigned long long>(version));
  return buffer;
}

Status CheckKeyDirForWriting(const std::string& dir) {
  if (dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return FailedPreconditionError(Errno("cannot access the TPM key directory", dir));
  if (!S_ISDIR(st.st_mode)) return FailedPreconditionError(StrCat("the key directory ", dir, " is not a directory"));
  if (Status s = CheckKeyDirOwner(st, dir); !s.ok()) return s;
  return CheckNotWritableByOthers(st, dir, /*directory=*/true);
}

Status EnsureKeyDir(const std::string& dir) {
  if (dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  // Parents as a package would make them (/var/lib/trousseau-hsm on a fresh node): 0755.
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(dir).parent_path();
  if (!parent.empty() && !std::filesystem::exists(parent, ec)) {
    std::filesystem::create_directories(parent, ec);
    if (ec) return FailedPreconditionError(StrCat("cannot create ", parent.string(), ": ", ec.message()));
    std::filesystem::permissions(parent, std::filesystem::perms(0755), ec);
  }
  if (::mkdir(dir.c_str(), 0700) == 0) {
    // mkdir's mode went through the umask, which may have taken our own bits too: exactly 0700.
    if (::chmod(dir.c_str(), 0700) != 0) return FailedPreconditionError(Errno("cannot chmod 700", dir));
  } else if (errno != EEXIST) {
    return FailedPreconditionError(Errno("cannot create the key directory", dir));
  }
  return CheckKeyDirForWriting(dir);
}

namespace {

// Opens a key directory for reading and checks its owner and mode. The checks and the reads go
// through this one descriptor, so they concern the same directory.
StatusOr<int> OpenCheckedKeyDir(const std::string& dir) {
  if (dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return FailedPreconditionError(Errno("cannot read the TPM key directory", dir));
  struct stat st {};
  if (::fstat(dir_fd.get(), &st) != 0) return FailedPreconditionError(Errno("cannot stat", dir));
  if (Status s = CheckKeyDirOwner(st, dir); !s.ok()) return s;
  if (Status s = CheckNotWritableByOthers(st, dir, /*directory=*/true); !s.ok()) return s;
  return dir_fd.release();
}

}  // namespace

StatusOr<std::map<uint64_t, VersionBlobs>> ReadKeyDir(const std::string& dir) {
  StatusOr<int> opened = OpenCheckedKeyDir(dir);
  if (!opened.ok()) return opened.status();
  Fd dir_fd(*opened);
  // fdopendir takes the descriptor; dirfd() lends it back for openat.
  std::unique_ptr<DIR, int (*)(DIR*)> d(::fdopendir(dir_fd.get()), ::closedir);
  if (!d) return FailedPreconditionError(Errno("cannot read the TPM key directory", dir));
  dir_fd.release();
  std::map<uint64_t, VersionBlobs> versions;
  while (dirent* entry = ::readdir(d.get())) {
    std::string_view name = entry->d_name;
    if (name.starts_with('.')) continue;  // ".", "..", the lock file, temp files: never key files
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
    const std::string stem = VersionStem(*version);
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
      const std::string file = StrCat(stem, part.suffix);
      StatusOr<std::string> data = ReadKeyFile(::dirfd(d.get()), file, StrCat(dir, "/", file));
      if (IsNotFound(data.status())) {
        return FailedPreconditionError(StrCat("key version ", *version, " is incomplete: ", data.status().message()));
      }
      if (!data.ok()) return FailedPreconditionError(StrCat("key version ", *version, ": ", data.status().message()));
      *part.into = *std::move(data);
    }
    versions.emplace(*version, std::move(blobs));
  }
  return versions;
}

Status WriteVersion(const std::string& dir, const VersionBlobs& blobs) {
  if (blobs.version == 0) return InvalidArgumentError("key versions start at 1");
  const std::string stem = VersionStem(blobs.version);
  struct stat st {};
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
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool commit = i + 1 == parts.size();
    Status s = WriteFileAtomically(dir, StrCat(stem, parts[i].first), *parts[i].second, commit);
    if (commit && s.code() == StatusCode::kAlreadyExists) {
      return AlreadyExistsError(StrCat("key version ", blobs.version, " appeared in ", dir,
                                       " while this run wrote it (another writer that does not take ", dir, "/",
                                       kLockFileName, "?); left it alone"));
    }
    if (!s.ok()) return s;
  }
  return OkStatus();
}

StatusOr<ObjectBlobs> ReadRecipientKey(const std::string& dir) {
  StatusOr<int> opened = OpenCheckedKeyDir(dir);
  if (!opened.ok()) return opened.status();
  Fd dir_fd(*opened);
  ObjectBlobs blobs;
  StatusOr<std::string> pub = ReadKeyFile(dir_fd.get(), kRecipientPublicFile, StrCat(dir, "/", kRecipientPublicFile));
  if (IsNotFound(pub.status())) {
    return NotFoundError(StrCat("no TPM recipient key in ", dir, " (no ", kRecipientPublicFile, ")"));
  }
  if (!pub.ok()) return pub.status();
  StatusOr<std::string> priv =
      ReadKeyFile(dir_fd.get(), kRecipientPrivateFile, StrCat(dir, "/", kRecipientPrivateFile));
  if (IsNotFound(priv.status())) {
    return FailedPreconditionError(
        StrCat("the TPM recipient key in ", dir, " is incomplete: ", priv.status().message()));
  }
  if (!priv.ok()) return priv.status();
  blobs.public_area = *std::move(pub);
  blobs.private_area = *std::move(priv);
  return blobs;
}

Status WriteRecipientKey(const std::string& dir, const ObjectBlobs& blobs) {
  struct stat st {};
  if (::lstat(StrCat(dir, "/", kRecipientPublicFile).c_str(), &st) == 0) {
    return AlreadyExistsError(StrCat(dir, " already holds a TPM recipient key"));
  }
  if (Status s = WriteFileAtomically(dir, kRecipientPrivateFile, blobs.private_area, /*commit=*/false); !s.ok()) {
    return s;
  }
  Status s = WriteFileAtomically(dir, kRecipientPublicFile, blobs.public_area, /*commit=*/true);
  if (s.code() == StatusCode::kAlreadyExists) {
    return AlreadyExistsError(StrCat("a TPM recipient key appeared in ", dir,
                                     " while this run wrote one (another "
                                     "writer that does not take ",
                                     dir, "/", kLockFileName, "?); left it alone"));
  }
  return s;
}

Status RemoveVersion(const std::string& dir, uint64_t version) {
  const std::string stem = VersionStem(version);
  struct stat st {};
  const bool aes = ::lstat(StrCat(dir, "/", stem, ".aes.pub").c_str(), &st) == 0;
  const bool rsa = !aes && ::lstat(StrCat(dir, "/", stem, ".rsa.pub").c_str(), &st) == 0;
  if (!aes && !rsa) return NotFoundError(StrCat("key version ", version, " is not in ", dir));
  const std::vector<const char*> parts =
      aes ? std::vector<const char*>{".aes.pub", ".aes.priv", ".hmac.pub", ".hmac.priv"}
          : std::vector<const char*>{".rsa.pub", ".rsa.priv"};
  for (const char* part : parts) {
    const std::string path = StrCat(dir, "/", stem, part);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return FailedPreconditionError(Errno("cannot remove", path));
    if (part == parts.front()) SyncDirectory(dir);  // the version is gone before its private parts go
  }
  SyncDirectory(dir);
  return OkStatus();
}

void RemoveStaleTempFiles(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return;
  while (dirent* entry = ::readdir(d.get())) {
    if (IsTempName(entry->d_name)) ::unlinkat(::dirfd(d.get()), entry->d_name, 0);
  }
}

StatusOr<KeyDirLock> KeyDirLock::Acquire(const std::string& dir, std::chrono::milliseconds wait) {
  const std::string path = StrCat(dir, "/", kLockFileName);
  // O_NOFOLLOW: never lock (or create) whatever a planted symlink points to. Read-only is enough
  // for flock, and works for every run however the umask narrowed the file's mode when it was made.
  KeyDirLock lock(::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (lock.fd_ < 0) return FailedPreconditionError(Errno("cannot open the lock file", path));
  (void)::fchmod(lock.fd_, 0600);  // only succeeds for its owner; the mode is cosmetic, it holds no secret
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (::flock(lock.fd_, LOCK_EX | LOCK_NB) == 0) return lock;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return FailedPreconditionError(Errno("cannot lock", path));
    // Polled rather than a blocking flock: a run stuck on a hung TPM must not block us forever.
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status(StatusCode::kAborted, StrCat("another provisioning run holds ", path, " (waited ",
                                                 std::chrono::duration_cast<std::chrono::seconds>(wait).count(),
                                                 " s); nothing was changed, try again once it has finished"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

KeyDirLock::KeyDirLock(KeyDirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

KeyDirLock::~KeyDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace trousseau::tpm
