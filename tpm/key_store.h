// The key directory: per key version, the TPM-encrypted blobs of its two TPM objects, as
// tpm2-tools would write them (marshalled TPM2B_PUBLIC / TPM2B_PRIVATE):
//   v000001.hmac.pub  v000001.hmac.priv  v000001.aes.priv  v000001.aes.pub
// written in that order, mode 0600, each through a temp file of its own (unique name, fsync, then
// rename, then fsync of the directory). `vNNNNNN.aes.pub` is written last, with link() so it never
// replaces an existing file, and is what makes a version exist: a crash half-way through leaves no
// version, only leftovers that the next rotation overwrites.
// Provisioning runs hold an exclusive flock on `.lock` in the directory for their whole
// check + create + write, so two runs cannot pick the same version number. Names starting with a
// dot (the lock file, temp files) are never key files.
// The blobs are useless without the TPM that made them: the private parts are encrypted and
// integrity-protected under that TPM's storage primary key. Still, whoever can write the directory
// or a key file can swap the keys the plugin uses, so both must not be group or world writable.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "core/status.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {

// How a version seals: AES-256-CFB + HMAC-SHA256 (two objects), or, for TPMs without
// TPM2_EncryptDecrypt(2), RSA-2048-OAEP-SHA256 (one object: `vNNNNNN.rsa.pub/.priv`, `.rsa.pub` last).
enum class Scheme { kAesCfbHmac, kRsaOaep };

struct VersionBlobs {
  uint64_t version = 0;
  Scheme scheme = Scheme::kAesCfbHmac;
  ObjectBlobs aes;
  ObjectBlobs hmac;
  ObjectBlobs rsa;
  bool operator==(const VersionBlobs& o) const {
    return version == o.version && scheme == o.scheme && aes.public_area == o.aes.public_area &&
           aes.private_area == o.aes.private_area && hmac.public_area == o.hmac.public_area &&
           hmac.private_area == o.hmac.private_area && rsa.public_area == o.rsa.public_area &&
           rsa.private_area == o.rsa.private_area;
  }
};

// The recipient key of a multi-recipient envelope (docs/ha.md, tpm/recipient_key.h): one ECC
// P-256 object per directory, `recipient.priv` then `recipient.pub` (written last, never replacing an
// existing one: it is what makes the key exist), same modes, temp files and checks as the versions.
// A key directory may hold both: ReadKeyDir ignores these names.
inline constexpr char kRecipientPublicFile[] = "recipient.pub";
inline constexpr char kRecipientPrivateFile[] = "recipient.priv";

// The advisory lock file of a key directory (created 0600, never removed: removing a lock file
// while another run waits on it would let a third one lock a new file).
inline constexpr char kLockFileName[] = ".lock";

// "v000001" (at least 6 digits).
std::string VersionStem(uint64_t version);

// Every complete version in `dir`. FAILED_PRECONDITION if the directory is missing or unreadable,
// if it or a version's file is writable by group or others, or if a version's files are incomplete
// or unreadable. An empty map if there are no keys. Ignores the lock file and temp files.
StatusOr<std::map<uint64_t, VersionBlobs>> ReadKeyDir(const std::string& dir);

// Writes one version's files (see above). Refuses (ALREADY_EXISTS) to overwrite an existing
// complete version, also one that appears while it writes. Call it holding the KeyDirLock.
Status WriteVersion(const std::string& dir, const VersionBlobs& blobs);

// Deletes one version's files, its marker (`.aes.pub` / `.rsa.pub`) first so that a crash half-way
// leaves no version, only leftovers. NOT_FOUND if the version does not exist. Call it holding the
// KeyDirLock.
Status RemoveVersion(const std::string& dir, uint64_t version);

// The recipient key's blobs in `dir`: NOT_FOUND if there is none (no `recipient.pub`);
// FAILED_PRECONDITION for the directory and file checks of ReadKeyDir, or a `recipient.pub` without
// its `recipient.priv`.
StatusOr<ObjectBlobs> ReadRecipientKey(const std::string& dir);

// Writes the recipient key's files; ALREADY_EXISTS if `dir` has one (also one that appears while it
// writes). Call it holding the KeyDirLock.
Status WriteRecipientKey(const std::string& dir, const ObjectBlobs& blobs);

// Creates `dir` (mode 0700) if missing, then checks it like CheckKeyDirForWriting.
Status EnsureKeyDir(const std::string& dir);

// FAILED_PRECONDITION (naming the path and the fix) unless `dir` is a directory owned by this user
// or root and not writable by its group or others.
Status CheckKeyDirForWriting(const std::string& dir);

// Temp files of runs that died while writing (`.NAME.tmp-XXXXXX`). Only safe holding the lock:
// every writer holds it while its temp files exist.
void RemoveStaleTempFiles(const std::string& dir);

// An exclusive flock on `<dir>/.lock`, held until destroyed (closing the file releases it). The
// plugin never takes it: it only reads committed versions.
class KeyDirLock {
 public:
  // Waits up to `wait` for a run that holds the lock; ABORTED if it keeps it longer.
  static StatusOr<KeyDirLock> Acquire(const std::string& dir, std::chrono::milliseconds wait);
  KeyDirLock(KeyDirLock&& other) noexcept;
  KeyDirLock& operator=(KeyDirLock&&) = delete;
  KeyDirLock(const KeyDirLock&) = delete;
  ~KeyDirLock();

 private:
  explicit KeyDirLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace trousseau::tpm
