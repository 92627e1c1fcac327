#include "recipients/set_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/strings.h"

namespace trousseau::recipients {
namespace {

namespace fs = std::filesystem;

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return FailedPreconditionError(StrCat("cannot read ", path, ": ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The state directory holds what decides which sets are trusted: only its owner may change it.
Status EnsurePrivateDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return FailedPreconditionError(StrCat("cannot create ", dir, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return FailedPreconditionError(StrCat(dir, " is not a directory"));
  }
  if ((st.st_mode & 022) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return FailedPreconditionError(StrCat(dir, " is writable by group or others (mode ", mode,
                                          "); chmod 700 it: it decides which recipient sets are trusted"));
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return FailedPreconditionError(StrCat(dir, " belongs to another user"));
  }
  return OkStatus();
}

Status WriteAtomically(const std::string& dir, const std::string& name, const std::string& data) {
  const std::string tmp = StrCat(dir, "/.", name, ".tmp");
  const std::string path = StrCat(dir, "/", name);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return FailedPreconditionError(StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : ENOSPC;
      ::close(fd);
      ::unlink(tmp.c_str());  // no half-written file left in the state directory
      return FailedPreconditionError(StrCat("cannot write ", tmp, ": ", std::strerror(error)));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    return FailedPreconditionError(StrCat("cannot store ", path, ": ", std::strerror(error)));
  }
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return OkStatus();
}

std::string StoredName(uint64_t epoch) { return StrCat("epoch-", epoch, ".json"); }

}  // namespace

StatusOr<std::vector<RecipientSet>> LoadAcceptedSets(const SetStoreOptions& options, const SetAdmission& admit) {
  if (Status s = EnsurePrivateDir(options.state_dir); !s.ok()) return s;
  std::map<uint64_t, RecipientSet> accepted;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(options.state_dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (!file.starts_with("epoch-") || !file.ends_with(".json")) continue;
    StatusOr<std::string> text = ReadFile(entry.path().string());
    if (!text.ok()) return text.status();
    StatusOr<RecipientSet> set = ParseRecipientSet(*text);
    if (!set.ok()) return FailedPreconditionError(StrCat(entry.path().string(), ": ", set.status().message()));
    if (file != StoredName(set->epoch)) {
      return FailedPreconditionError(StrCat(entry.path().string(), " holds epoch ", set->epoch));
    }
    if (Status s = VerifySet(*set, options.policy); !s.ok()) {
      return FailedPreconditionError(
          StrCat(entry.path().string(), " (accepted earlier): ", s.message(),
                 ". Remove the file if its epoch is retired, or configure its signers again"));
    }
    accepted.emplace(set->epoch, *std::move(set));
  }
  if (ec) return FailedPreconditionError(StrCat("cannot list ", options.state_dir, ": ", ec.message()));

  StatusOr<std::string> text = ReadFile(options.set_file);
  if (!text.ok()) return text.status();
  StatusOr<RecipientSet> current = ParseRecipientSet(*text);
  if (!current.ok()) return FailedPreconditionError(StrCat(options.set_file, ": ", current.status().message()));
  if (Status s = VerifySet(*current, options.policy); !s.ok()) {
    return FailedPreconditionError(StrCat(options.set_file, ": ", s.message()));
  }
  if (!accepted.empty()) {
    const RecipientSet& newest = accepted.rbegin()->second;
    if (current->name != newest.name) {
      return FailedPreconditionError(StrCat(options.set_file, " is set '", current->name,
                                            "', but this node holds set '", newest.name, "' (", options.state_dir,
                                            "): one node, one set"));
    }
    if (current->epoch < newest.epoch) {
      return FailedPreconditionError(StrCat(options.set_file, " has epoch ", current->epoch, ", lower than epoch ",
                                            newest.epoch,
                                            " accepted earlier: refused, a recipient set never goes back"));
    }
    auto same = accepted.find(current->epoch);
    if (same != accepted.end() && SetDigest(same->second) != SetDigest(*current)) {
      return FailedPreconditionError(StrCat(options.set_file, " has epoch ", current->epoch,
                                            " but is another set than the epoch ", current->epoch,
                                            " accepted earlier (other members or another sealing key): a new "
                                            "membership needs a new epoch"));
    }
  }
  if (!accepted.contains(current->epoch)) {
    if (admit) {
      if (Status s = admit(*current); !s.ok()) return s;
    }
    if (Status s = WriteAtomically(options.state_dir, StoredName(current->epoch), SerializeRecipientSet(*current));
        !s.ok()) {
      return s;
    }
    accepted.emplace(current->epoch, *std::move(current));
  }
  std::vector<RecipientSet> sets;
  for (auto& [epoch, set] : accepted) sets.push_back(std::move(set));
  return sets;
}

}  // namespace trousseau::recipients
