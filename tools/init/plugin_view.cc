// What a running plugin will see of a key version this tool created: who owns the token's storage
// (SoftHSM), and what the plugin's Status reports over its socket.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/strings.h"
#include "tools/init/init_tool.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::init {
namespace {

std::string Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) text.remove_suffix(1);
  return std::string(text);
}

// directories.tokendir of SoftHSM's configuration (SOFTHSM2_CONF, else the packaged default).
std::optional<std::string> SoftHsmTokenDir() {
  const char* conf = std::getenv("SOFTHSM2_CONF");
  std::ifstream in(conf != nullptr && conf[0] != '\0' ? conf : "/etc/softhsm/softhsm2.conf");
  std::string line;
  while (std::getline(in, line)) {
    const std::string text = Trim(line);
    if (text.empty() || text[0] == '#') continue;
    const size_t eq = text.find('=');
    if (eq == std::string::npos || Trim(std::string_view(text).substr(0, eq)) != "directories.tokendir") continue;
    return Trim(std::string_view(text).substr(eq + 1));
  }
  return std::nullopt;
}

}  // namespace

StorageOwner TokenStorageOwner(const std::string& module_path, const std::string& serial) {
  StorageOwner result;
  if (module_path.find("softhsm") == std::string::npos) {
    result.note =
        "this module's storage is not known to the tool, so it cannot tell whether the plugin's user sees "
        "the new key; --socket checks it with the running plugin";
    return result;
  }
  const std::optional<std::string> token_dir = SoftHsmTokenDir();
  if (!token_dir) {
    result.note = "SoftHSM's configuration names no directories.tokendir; the token's owner was not checked";
    return result;
  }
  // SoftHSM keeps each token in its own directory, whose token.object holds the serial number.
  DIR* dir = opendir(token_dir->c_str());
  if (dir == nullptr || serial.empty()) {
    if (dir != nullptr) closedir(dir);
    result.note = StrCat("cannot read SoftHSM's token directory ", *token_dir, "; the token's owner was not checked");
    return result;
  }
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const std::string path = StrCat(*token_dir, "/", entry->d_name);
    std::ifstream in(path + "/token.object", std::ios::binary);
    const std::string content{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    struct stat st {};
    if (content.find(serial) == std::string::npos || stat(path.c_str(), &st) != 0) continue;
    result.known = true;
    result.path = path;
    result.owner = st.st_uid;
    break;
  }
  closedir(dir);
  if (!result.known) {
    result.note = StrCat("the token's directory was not found in ", *token_dir, "; its owner was not checked");
  }
  return result;
}

std::optional<std::string> DefaultPluginSocket() {
  struct stat st {};
  if (lstat(kDefaultPluginSocket, &st) == 0) return StrCat("unix://", kDefaultPluginSocket);
  return std::nullopt;
}

PluginWait WaitForPluginKeyId(const std::string& socket, const std::string& key_id, std::chrono::milliseconds timeout) {
  grpc::ChannelArguments args;
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "localhost");  // as kube-apiserver sends it
  const std::string target = socket.starts_with("unix:") ? socket : StrCat("unix://", socket);
  auto stub =
      v2::KeyManagementService::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  PluginWait result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    v2::StatusResponse status;
    if (grpc::Status s = stub->Status(&context, {}, &status); s.ok()) {
      result.last_key_id = status.key_id();
      result.last_error.clear();
      if (status.key_id() == key_id) {
        result.confirmed = true;
        return result;
      }
    } else {
      result.last_error = s.error_message();
    }
    if (std::chrono::steady_clock::now() >= deadline) return result;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a poll interval, not synchronisation
  }
}

}  // namespace trousseau::init
