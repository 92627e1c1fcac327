// tpm init | rotate | list | selftest: the TPM 2.0 key directory, through tpm/provisioning.h only
// (no ESYS here). Every key_id is derived with tpm::kTpmFamilyLabel, the label the plugin gives its
// KmsEngine, so what these commands print is what the plugin's Status reports.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include "core/strings.h"
#include "tools/init/init_tool.h"
#include "tpm/key_store.h"
#include "tpm/provisioning.h"

namespace trousseau::init {
namespace {

const char* Bool(bool b) { return b ? "true" : "false"; }

std::string SchemeName(tpm::Scheme scheme) { return scheme == tpm::Scheme::kRsaOaep ? "rsa-oaep" : "aes-cfb-hmac"; }

std::string SchemeDescription(const std::string& name) {
  if (name == "aes-cfb-hmac") return "AES-256-CFB + HMAC-SHA256";
  if (name == "rsa-oaep") return "RSA-2048-OAEP-SHA256 (fallback for TPMs without TPM2_EncryptDecrypt)";
  return "unknown scheme";
}

// The scheme of every complete version in the directory (read from its files; nothing is sent to
// the TPM). Versions that vanished since the TPM listed them are simply missing.
std::map<uint64_t, std::string> Schemes(const std::string& key_dir) {
  std::map<uint64_t, std::string> schemes;
  StatusOr<std::map<uint64_t, tpm::VersionBlobs>> blobs = tpm::ReadKeyDir(key_dir);
  if (!blobs.ok()) return schemes;
  for (const auto& [version, b] : *blobs) schemes[version] = SchemeName(b.scheme);
  return schemes;
}

std::string SchemeOf(const std::map<uint64_t, std::string>& schemes, uint64_t version) {
  auto it = schemes.find(version);
  return it == schemes.end() ? "unknown" : it->second;
}

std::string Where(const TpmOptions& options) {
  return StrCat("TPM key directory ", options.key_dir, " (TCTI ", options.tcti, ")");
}

// The directory as the plugin (which may run from another working directory) must be given it.
std::string AbsoluteKeyDir(const std::string& key_dir) {
  std::error_code ignored;
  std::filesystem::path absolute = std::filesystem::absolute(key_dir, ignored);
  return absolute.empty() ? key_dir : absolute.lexically_normal().string();
}

// An operator's hint for the TPM failures that have a usual cause.
std::string Hint(const Status& status, const TpmOptions& options) {
  const std::string& m = status.message();
  if (IsUnavailable(status) && m.find("object contexts") != std::string::npos) {
    return ". The TPM has no free object slot: a TPM without resource manager has 3 and a running trousseau-hsm "
           "holds 2. Provision through a resource manager (--tpm-tcti device:/dev/tpmrm0 or tabrmd) or stop the "
           "plugin meanwhile";
  }
  if (IsUnavailable(status) && (m.starts_with("cannot open TCTI") || m.starts_with("cannot start ESYS") ||
                                m.find("unreachable") != std::string::npos)) {
    return StrCat(". Is the TPM there and is --tpm-tcti right (", options.tcti, ")?",
                  options.tcti.starts_with("device:") ? " The TPM device needs root or the tss group" : "");
  }
  if (IsFailedPrecondition(status) && m.find("another TPM") != std::string::npos) {
    return ". These keys only work in the TPM that created them (and only until its owner hierarchy is cleared)";
  }
  return "";
}

int FailTpm(const Status& status, const TpmOptions& options) {
  return Fail(kExitFailed, StrCat(status.message(), Hint(status, options)));
}

// Flags and the key directory, before the TPM is touched. `must_exist`: the directory must already
// be there (rotate, list, selftest); init creates it. Returns kExitOk or the printed usage error.
int CheckOptions(const TpmOptions& options, bool must_exist) {
  // tpm2-tss would print its own error lines to stderr next to ours, which already carry the decoded
  // TPM error (and it would garble --json for scripts reading both streams). An operator's TSS2_LOG wins.
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);
  if (options.tcti.empty()) {
    return Fail(kExitUsage,
                "--tpm-tcti may not be empty (e.g. device:/dev/tpmrm0, tabrmd, swtpm:path=/run/swtpm/sock)");
  }
  if (options.key_dir.empty()) return Fail(kExitUsage, "--tpm-key-dir may not be empty");
  if (options.scheme != "auto" && options.scheme != "aes-cfb-hmac" && options.scheme != "rsa-oaep") {
    return Fail(kExitUsage,
                StrCat("--scheme must be auto, aes-cfb-hmac or rsa-oaep, not ", QuoteForMessage(options.scheme)));
  }
  struct stat st {};
  if (::stat(options.key_dir.c_str(), &st) != 0) {
    if (errno == ENOENT && !must_exist) return kExitOk;  // init creates it
    if (errno == ENOENT) {
      return Fail(kExitUsage, StrCat("the TPM key directory ", options.key_dir,
                                     " does not exist; create it and key "
                                     "version 1 with `",
                                     kToolName, " tpm init`, or fix --tpm-key-dir"));
    }
    return Fail(kExitUsage,
                StrCat("cannot access the TPM key directory ", options.key_dir, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Fail(kExitUsage, StrCat("--tpm-key-dir ", options.key_dir, " is not a directory"));
  }
  if (::access(options.key_dir.c_str(), must_exist ? (R_OK | X_OK) : (R_OK | W_OK | X_OK)) != 0) {
    return Fail(kExitUsage, StrCat("cannot ", must_exist ? "read" : "write to", " the TPM key directory ",
                                   options.key_dir, ": ", std::strerror(errno), " (run as the plugin's user or root)"));
  }
  // The plugin's reader refuses a directory others own or can write to (they could plant key files):
  // for every command that is a usage error naming the fix, not a failure found later.
  if (Status s = tpm::CheckKeyDirForWriting(options.key_dir); !s.ok()) return Fail(kExitUsage, s.message());
  return kExitOk;
}

tpm::TpmConfig Config(const TpmOptions& options) {
  tpm::TpmConfig config;
  config.tcti = options.tcti;
  config.key_dir = options.key_dir;
  config.scheme = options.scheme == "aes-cfb-hmac" ? tpm::KeyScheme::kAesCfbHmac
                  : options.scheme == "rsa-oaep"   ? tpm::KeyScheme::kRsaOaep
                                                   : tpm::KeyScheme::kAuto;
  return config;
}

// Prints a version init or rotate just created.
int PrintCreated(const TpmOptions& options, const tpm::TpmKeyInfo& key, bool rotation) {
  const std::string scheme = SchemeOf(Schemes(options.key_dir), key.version);
  if (options.json) {
    std::cout << "{\"version\":" << key.version << ",\"key_id\":" << JsonQuote(key.key_id)
              << ",\"scheme\":" << JsonQuote(scheme) << ",\"key_dir\":" << JsonQuote(options.key_dir)
              << ",\"active\":true}\n";
    return kExitOk;
  }
  std::ostringstream out;
  out << "created version " << key.version << " in " << Where(options) << ": " << SchemeDescription(scheme)
      << ", generated in the TPM, fixedTPM: the key never leaves this TPM\n"
      << "key_id: " << key.key_id << "\n";
  if (scheme == "rsa-oaep") {
    out << "Keep the .rsa.pub file as private as the .rsa.priv one: whoever has it can make ciphertexts that open.\n";
  }
  if (rotation) {
    out << "Version " << key.version << " is now the highest version, so it becomes the active key: a running\n"
        << "trousseau-hsm picks it up on SIGHUP or within its --key-refresh-interval (60s by default);\n"
        << "check with `" << kToolName << " tpm list` and the plugin's Status key_id. Older versions keep\n"
        << "decrypting. Re-encrypt existing Secrets (kubectl get secrets -A -o json | kubectl replace -f -)\n"
        << "before removing an older version's files from the directory.\n";
  } else {
    out << "Start (or SIGHUP) trousseau-hsm with --tpm-key-dir " << AbsoluteKeyDir(options.key_dir) << " --tpm-tcti "
        << options.tcti << ";\n"
        << "its Status reports this key_id.\n";
  }
  std::cout << out.str();
  return kExitOk;
}

}  // namespace

int TpmInit(const TpmOptions& options) {
  if (int rc = CheckOptions(options, /*must_exist=*/false); rc != kExitOk) return rc;
  // The directory first (0700), so a path that cannot be a key directory is a usage error.
  if (Status s = tpm::EnsureKeyDir(options.key_dir); !s.ok()) return Fail(kExitUsage, s.message());
  StatusOr<tpm::TpmKeyInfo> key = tpm::InitKeyDir(Config(options), tpm::kTpmFamilyLabel);
  if (!key.ok()) {
    if (key.status().code() == StatusCode::kAlreadyExists) {
      return Fail(kExitFailed, StrCat("refusing to create version 1 again: ", key.status().message(), " (`", kToolName,
                                      " tpm rotate`)"));
    }
    return FailTpm(key.status(), options);
  }
  return PrintCreated(options, *key, /*rotation=*/false);
}

int TpmRotate(const TpmOptions& options) {
  if (int rc = CheckOptions(options, /*must_exist=*/true); rc != kExitOk) return rc;
  // RotateKey itself refuses when the existing versions do not load in this TPM (a wrong
  // --tpm-tcti, a copied directory), and serialises with concurrent runs on the directory.
  StatusOr<tpm::TpmKeyInfo> key = tpm::RotateKey(Config(options), tpm::kTpmFamilyLabel);
  if (!key.ok()) return FailTpm(key.status(), options);
  return PrintCreated(options, *key, /*rotation=*/true);
}

int TpmList(const TpmOptions& options) {
  if (int rc = CheckOptions(options, /*must_exist=*/true); rc != kExitOk) return rc;
  StatusOr<std::vector<tpm::TpmKeyInfo>> keys = tpm::ListKeys(Config(options), tpm::kTpmFamilyLabel);
  if (!keys.ok()) return FailTpm(keys.status(), options);
  const std::map<uint64_t, std::string> schemes = Schemes(options.key_dir);
  const uint64_t active = keys->empty() ? 0 : keys->back().version;  // ListKeys: lowest first
  std::ostringstream out;
  if (options.json) {
    out << "{\"keys\":[";
    for (size_t i = 0; i < keys->size(); ++i) {
      const tpm::TpmKeyInfo& key = (*keys)[i];
      out << (i ? "," : "") << "{\"version\":" << key.version << ",\"key_id\":" << JsonQuote(key.key_id)
          << ",\"active\":" << Bool(key.version == active)
          << ",\"scheme\":" << JsonQuote(SchemeOf(schemes, key.version)) << "}";
    }
    out << "]}\n";
    std::cout << out.str();
    return kExitOk;
  }
  out << Where(options) << ": " << keys->size() << " version(s)";
  if (keys->empty()) {
    out << "; create version 1 with `" << kToolName << " tpm init`";
  } else {
    out << ", active version " << active;
  }
  out << "\n";
  for (const tpm::TpmKeyInfo& key : *keys) {
    const std::string scheme = SchemeOf(schemes, key.version);
    out << "\nversion " << key.version << (key.version == active ? "  (active: new encryptions use it)" : "") << "\n"
        << "  key_id:  " << key.key_id << "\n"
        << "  scheme:  " << SchemeDescription(scheme) << "\n"
        << "  files:   " << tpm::VersionStem(key.version)
        << (scheme == "rsa-oaep" ? ".rsa.{pub,priv}" : ".{aes,hmac}.{pub,priv}") << " (loaded in this TPM)\n";
  }
  std::cout << out.str();
  return kExitOk;
}

int TpmRetire(const TpmOptions& options) {
  if (int rc = CheckOptions(options, /*must_exist=*/true); rc != kExitOk) return rc;
  StatusOr<std::map<uint64_t, tpm::VersionBlobs>> versions = tpm::ReadKeyDir(options.key_dir);
  if (!versions.ok()) return FailTpm(versions.status(), options);
  if (!versions->contains(options.version)) {
    return Fail(kExitFailed, StrCat(Where(options), " has no version ", options.version));
  }
  const uint64_t active = versions->rbegin()->first;
  if (options.version == active) {
    return Fail(kExitFailed, StrCat("version ", options.version, " is the active (highest) version in ", Where(options),
                                    " and can never be retired: new encryptions use it. Rotate first (`tpm rotate`), "
                                    "re-encrypt, then retire the old version"));
  }
  if (!options.yes) {
    std::cerr << kToolName << ": not retiring without --yes. Retiring deletes version " << options.version << " in "
              << Where(options) << " for good: the TPM never stored the key, these files are its only copy\n"
              << "(delete their backups too). Everything still encrypted under its key_id becomes unreadable:\n"
              << "kube-apiserver gets NOT_FOUND from the plugin and cannot read those objects any more.\n"
              << "Re-encrypt first, so every object is rewritten under the active version " << active << ":\n"
              << "  kubectl get secrets -A -o json | kubectl replace -f -\n"
              << "(and the same for every other resource your EncryptionConfiguration encrypts), make sure it\n"
              << "completed for all objects (docs/rotation.md), then run this command again with --yes.\n";
    return kExitFailed;
  }
  if (Status s = tpm::RetireKey(Config(options), options.version); !s.ok()) return FailTpm(s, options);
  std::cout << "retired version " << options.version << " in " << Where(options) << ": its files are deleted.\n"
            << "Send SIGHUP to trousseau-hsm (or wait for its --key-refresh-interval) so it drops the version;\n"
            << "decrypting anything still under it then fails with NOT_FOUND. Active version: " << active << ".\n";
  return kExitOk;
}

int TpmSelftest(const TpmOptions& options) {
  if (int rc = CheckOptions(options, /*must_exist=*/true); rc != kExitOk) return rc;
  std::vector<std::string> failures;
  std::vector<tpm::TpmKeyInfo> keys;
  if (Status s = tpm::SelfTest(Config(options)); !s.ok()) {
    failures.push_back(StrCat(s.message(), Hint(s, options)));
  } else {
    // Passed: name what was tested, with the key_ids the plugin will report.
    StatusOr<std::vector<tpm::TpmKeyInfo>> listed = tpm::ListKeys(Config(options), tpm::kTpmFamilyLabel);
    if (listed.ok()) {
      keys = *std::move(listed);
    } else {
      failures.push_back(
          StrCat("listing the keys after the self-test: ", listed.status().message(), Hint(listed.status(), options)));
    }
  }
  const bool ok = failures.empty();
  const std::map<uint64_t, std::string> schemes = Schemes(options.key_dir);
  const uint64_t active = keys.empty() ? 0 : keys.back().version;
  std::ostringstream out;
  if (options.json) {
    out << "{\"ok\":" << Bool(ok) << ",\"failures\":[";
    for (size_t i = 0; i < failures.size(); ++i) out << (i ? "," : "") << JsonQuote(failures[i]);
    out << "],\"keys\":[";
    for (size_t i = 0; i < keys.size(); ++i) {
      out << (i ? "," : "") << "{\"version\":" << keys[i].version << ",\"key_id\":" << JsonQuote(keys[i].key_id)
          << ",\"active\":" << Bool(keys[i].version == active)
          << ",\"scheme\":" << JsonQuote(SchemeOf(schemes, keys[i].version)) << ",\"ok\":true}";
    }
    out << "]}\n";
  } else {
    out << "selftest of " << Where(options) << "\n";
    for (const std::string& f : failures) out << "  FAIL " << f << "\n";
    if (ok) {
      out << "  PASS the TPM has the commands the keys need\n";
      for (const tpm::TpmKeyInfo& key : keys) {
        out << "  PASS version " << key.version << (key.version == active ? " (active)" : "") << "  " << key.key_id
            << ": loads in this TPM, seal/open round trip, forged ciphertext refused\n";
      }
    }
    if (ok) {
      out << "\nselftest passed: " << keys.size() << " version(s)\n";
    } else {
      out << "\nselftest FAILED\n";
    }
  }
  std::cout << out.str();
  return ok ? kExitOk : kExitFailed;
}

}  // namespace trousseau::init
