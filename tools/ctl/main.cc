// trousseauctl: an operator's client for a running trousseau-hsm (or any KMS v2 plugin) socket.
// Data goes through stdin/stdout, never argv, so it stays out of shell history and `ps`.
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <iterator>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "core/defaults.h"
#include "core/process_hardening.h"
#include "core/secure_bytes.h"
#include "core/strings.h"
#include "tools/ctl/plugin_keys.h"
#include "tools/ctl/secret_command.h"
#include "tools/support/cli_errors.h"
#include "v1beta1/kms.grpc.pb.h"
#include "v2/kms.grpc.pb.h"

namespace {

std::string Base64Encode(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  out.resize(n);
  return out;
}

bool Base64Decode(std::string in, std::string* out) {
  std::erase_if(in, [](char c) { return c == '\n' || c == '\r' || c == ' '; });
  if (in.size() % 4 != 0) return false;
  out->assign(3 * in.size() / 4, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out->data()),
                                reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return false;
  size_t padding = 0;
  if (!in.empty() && in.back() == '=') ++padding;
  if (in.size() > 1 && in[in.size() - 2] == '=') ++padding;
  out->resize(static_cast<size_t>(n) - padding);
  return true;
}

// Plaintext and base64 of plaintext live in std::strings (protobuf wants them); each is wiped before
// it is freed, and grown only by copying into a larger one and wiping the old.
void Wipe(std::string& secret) {
  trousseau::WipeMemory(secret.data(), secret.size());
  secret.clear();
}

struct WipedString {
  std::string value;
  WipedString() = default;
  WipedString(const WipedString&) = delete;
  WipedString& operator=(const WipedString&) = delete;
  ~WipedString() { Wipe(value); }
};

// Reads all of stdin without leaving unwiped copies behind in freed memory.
bool ReadStdin(std::string& out) {
  std::string buffer;
  buffer.reserve(4096);
  char chunk[4096];
  for (;;) {
    const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      trousseau::WipeMemory(chunk, sizeof chunk);
      Wipe(buffer);
      return false;
    }
    if (n == 0) break;
    if (buffer.size() + static_cast<size_t>(n) > buffer.capacity()) {
      std::string larger;
      larger.reserve(2 * (buffer.size() + static_cast<size_t>(n)));
      larger.assign(buffer);
      Wipe(buffer);
      buffer.swap(larger);
    }
    buffer.append(chunk, static_cast<size_t>(n));
  }
  trousseau::WipeMemory(chunk, sizeof chunk);
  out.swap(buffer);
  Wipe(buffer);
  return true;
}

struct Options {
  std::string socket = trousseau::defaults::kListenEndpoint;
  // kube-apiserver's own timeout for one KMS call: trousseauctl sees what the apiserver would.
  double timeout_seconds = std::chrono::duration<double>(trousseau::defaults::kKmsCallTimeout).count();
  bool json = false;
  std::string api = "v2";
  std::string key_id;
  // status: the plugin's --health-listen, to show every key version it holds (from /metrics).
  std::string health_listen;
};

// The key versions the plugin holds, from its /metrics page: a JSON member list (",\"keys\":...")
// or text lines. Empty without --health-listen. A page that cannot be had is said, not fatal: the
// KMS Status decides the exit code.
std::string PluginKeysReport(const Options& o) {
  if (o.health_listen.empty()) return "";
  std::string page, error;
  if (!trousseauctl::FetchMetrics(o.health_listen, o.timeout_seconds, page, error)) {
    return o.json ? ",\"keys_error\":" + trousseau::JsonQuote(error) : "keys:    (unknown: " + error + ")\n";
  }
  const trousseauctl::PluginKeys keys = trousseauctl::ParsePluginKeys(page);
  std::string out;
  if (o.json) {
    const auto list = [](const std::vector<trousseauctl::KeyVersionSeen>& seen) {
      std::string items;
      for (const auto& key : seen) {
        items += trousseau::StrCat(items.empty() ? "" : ",", "{\"version\":", key.version,
                                   ",\"key_id\":", trousseau::JsonQuote(key.key_id),
                                   ",\"state\":", trousseau::JsonQuote(key.state), "}");
      }
      return "[" + items + "]";
    };
    std::string devices;
    for (const auto& device : keys.devices) {
      devices +=
          trousseau::StrCat(devices.empty() ? "" : ",", "{\"name\":", trousseau::JsonQuote(device.name),
                            ",\"up\":", device.up ? "true" : "false", ",\"latency_ms\":", device.latency_ms, "}");
    }
    return trousseau::StrCat(",\"keys\":", list(keys.versions), ",\"vanished_keys\":", list(keys.vanished),
                             ",\"activation_pending\":", keys.activation_pending ? "true" : "false", ",\"devices\":[",
                             devices, "]");
  }
  for (const auto& key : keys.versions) {
    out += trousseau::StrCat(key.state == "active" ? "key active:       " : "key decrypt-only: ", key.key_id,
                             " (version ", key.version, ")\n");
  }
  if (keys.activation_pending) out += "key activation pending: a newer version waits for its activation delay\n";
  // Multi-node mode: each recipient device of the node; the plugin serves while one is up.
  for (const auto& device : keys.devices) {
    char latency[32];
    std::snprintf(latency, sizeof latency, "%.1f ms", device.latency_ms);
    out += device.up ? trousseau::StrCat("device up:        ", device.name, " (", latency, ")\n")
                     : trousseau::StrCat("DEVICE DOWN:      ", device.name, "\n");
  }
  for (const auto& key : keys.vanished) {
    out += trousseau::StrCat("KEY VANISHED:     ", key.key_id, " (version ", key.version,
                             "): gone from the device; ciphertexts under it cannot be decrypted any more (see the "
                             "plugin's error log)\n");
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Context(const Options& o) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(
                            std::chrono::duration<double>(o.timeout_seconds)));
  return context;
}

// A bare path is a unix socket, as for the plugin's --listen (gRPC would look it up as a host name).
std::string Target(const Options& o) { return o.socket.starts_with("/") ? "unix://" + o.socket : o.socket; }

std::shared_ptr<grpc::Channel> Channel(const Options& o) {
  grpc::ChannelArguments args;
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "localhost");  // as kube-apiserver sends it
  return grpc::CreateCustomChannel(Target(o), grpc::InsecureChannelCredentials(), args);
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    default:
      return "error";
  }
}

// What went wrong, said for an operator: no plugin at the socket, no permission on it, no answer in
// time, or what the plugin itself answered (its message is written for operators already).
int Fail(const Options& o, const grpc::Status& s) {
  const std::string& message = s.error_message();
  const bool connect_failed =
      s.error_code() == grpc::StatusCode::UNAVAILABLE &&
      (message.find("failed to connect") != std::string::npos ||
       message.find("DNS resolution failed") != std::string::npos ||
       message.find("Connection refused") != std::string::npos || message.find("No such file") != std::string::npos ||
       message.find("Permission denied") != std::string::npos);
  if (connect_failed && message.find("Permission denied") != std::string::npos) {
    std::cerr << "error: no permission to connect to " << Target(o)
              << ": the plugin's socket is mode 0600 (--socket-mode); run as its owner (root, or the plugin's "
                 "--socket-owner) or a member of its --socket-group\n";
  } else if (connect_failed) {
    std::cerr << "error: no plugin answers on " << Target(o)
              << ". Is trousseau-hsm running, and is this its --listen socket? Give it with --socket "
                 "unix:///path/kms.sock (default "
              << trousseau::defaults::kListenEndpoint << ")\n  (gRPC: " << message << ")\n";
  } else if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    std::cerr << "error: the plugin on " << Target(o) << " did not answer within " << o.timeout_seconds
              << " s (--timeout); kube-apiserver would have given up too. Check its log and /readyz?verbose\n";
  } else {
    std::cerr << "error: the plugin answered " << CodeName(s.error_code()) << " (" << s.error_code() << "): " << message
              << "\n";
  }
  return 1;
}

// The v1beta1 API reports no health: check it as kube-apiserver's KMS v1 health check does, with an
// Encrypt and Decrypt of a fixed probe.
int StatusV1beta1(const Options& o) {
  auto stub = v1beta1::KeyManagementService::NewStub(Channel(o));
  v1beta1::VersionRequest request;
  request.set_version("v1beta1");
  v1beta1::VersionResponse response;
  if (grpc::Status s = stub->Version(Context(o).get(), request, &response); !s.ok()) return Fail(o, s);
  const std::string probe = "trousseauctl health probe";
  std::string healthz = "ok";
  v1beta1::EncryptRequest encrypt;
  encrypt.set_version("v1beta1");
  encrypt.set_plain(probe);
  v1beta1::EncryptResponse sealed;
  v1beta1::DecryptResponse opened;
  if (grpc::Status s = stub->Encrypt(Context(o).get(), encrypt, &sealed); !s.ok()) {
    healthz = "Encrypt failed: " + s.error_message();
  } else {
    v1beta1::DecryptRequest decrypt;
    decrypt.set_version("v1beta1");
    decrypt.set_cipher(sealed.cipher());
    if (grpc::Status d = stub->Decrypt(Context(o).get(), decrypt, &opened); !d.ok()) {
      healthz = "Decrypt failed: " + d.error_message();
    } else if (opened.plain() != probe) {
      healthz = "Decrypt returned other bytes than were encrypted";
    }
  }
  const bool healthy = healthz == "ok";
  if (o.json) {
    std::cout << "{\"healthy\":" << (healthy ? "true" : "false") << ",\"healthz\":" << trousseau::JsonQuote(healthz)
              << ",\"version\":" << trousseau::JsonQuote(response.version())
              << ",\"runtime_name\":" << trousseau::JsonQuote(response.runtime_name())
              << ",\"runtime_version\":" << trousseau::JsonQuote(response.runtime_version()) << PluginKeysReport(o)
              << "}\n";
  } else {
    std::cout << "healthz: " << healthz << "\nversion: " << response.version()
              << "\nruntime: " << response.runtime_name() << " " << response.runtime_version() << "\n"
              << PluginKeysReport(o);
  }
  return healthy ? 0 : 3;
}

int StatusV2(const Options& o) {
  auto stub = v2::KeyManagementService::NewStub(Channel(o));
  v2::StatusResponse response;
  if (grpc::Status s = stub->Status(Context(o).get(), {}, &response); !s.ok()) return Fail(o, s);
  const bool healthy = response.healthz() == "ok" && response.version() == "v2" && !response.key_id().empty();
  if (o.json) {
    std::cout << "{\"healthy\":" << (healthy ? "true" : "false")
              << ",\"version\":" << trousseau::JsonQuote(response.version())
              << ",\"healthz\":" << trousseau::JsonQuote(response.healthz())
              << ",\"key_id\":" << trousseau::JsonQuote(response.key_id()) << PluginKeysReport(o) << "}\n";
  } else {
    std::cout << "healthz: " << response.healthz() << "\nversion: " << response.version()
              << "\nkey_id:  " << response.key_id() << "\n"
              << PluginKeysReport(o);
  }
  return healthy ? 0 : 3;
}

int Status(const Options& o) { return o.api == "v1beta1" ? StatusV1beta1(o) : StatusV2(o); }

int Encrypt(const Options& o) {
  WipedString plaintext;
  if (!ReadStdin(plaintext.value)) {
    std::cerr << "error: cannot read stdin\n";
    return 2;
  }
  std::string ciphertext, key_id;
  if (o.api == "v1beta1") {
    auto stub = v1beta1::KeyManagementService::NewStub(Channel(o));
    v1beta1::EncryptRequest request;
    request.set_version("v1beta1");
    request.mutable_plain()->swap(plaintext.value);
    v1beta1::EncryptResponse response;
    grpc::Status s = stub->Encrypt(Context(o).get(), request, &response);
    Wipe(*request.mutable_plain());
    if (!s.ok()) return Fail(o, s);
    ciphertext = response.cipher();
  } else {
    auto stub = v2::KeyManagementService::NewStub(Channel(o));
    v2::EncryptRequest request;
    request.mutable_plaintext()->swap(plaintext.value);
    request.set_uid("trousseauctl");
    v2::EncryptResponse response;
    grpc::Status s = stub->Encrypt(Context(o).get(), request, &response);
    Wipe(*request.mutable_plaintext());
    if (!s.ok()) return Fail(o, s);
    ciphertext = response.ciphertext();
    key_id = response.key_id();
  }
  if (o.json) {
    std::cout << "{\"ciphertext\":" << trousseau::JsonQuote(Base64Encode(ciphertext))
              << ",\"key_id\":" << trousseau::JsonQuote(key_id) << "}\n";
  } else {
    std::cout << Base64Encode(ciphertext) << "\n";
    if (!key_id.empty()) std::cerr << "key_id: " << key_id << "\n";
  }
  return 0;
}

int Decrypt(const Options& o) {
  std::string encoded_ciphertext, ciphertext;
  if (!ReadStdin(encoded_ciphertext) || !Base64Decode(std::move(encoded_ciphertext), &ciphertext)) {
    std::cerr << "error: stdin is not base64 (as `trousseauctl encrypt` prints it)\n";
    return 2;
  }
  WipedString plaintext;
  if (o.api == "v1beta1") {
    auto stub = v1beta1::KeyManagementService::NewStub(Channel(o));
    v1beta1::DecryptRequest request;
    request.set_version("v1beta1");
    request.set_cipher(ciphertext);
    v1beta1::DecryptResponse response;
    grpc::Status s = stub->Decrypt(Context(o).get(), request, &response);
    plaintext.value.swap(*response.mutable_plain());
    Wipe(*response.mutable_plain());
    if (!s.ok()) return Fail(o, s);
  } else {
    if (o.key_id.empty()) {
      std::cerr << "error: v2 decrypt needs --key-id (printed by encrypt)\n";
      return 2;
    }
    auto stub = v2::KeyManagementService::NewStub(Channel(o));
    v2::DecryptRequest request;
    request.set_ciphertext(ciphertext);
    request.set_key_id(o.key_id);
    request.set_uid("trousseauctl");
    v2::DecryptResponse response;
    grpc::Status s = stub->Decrypt(Context(o).get(), request, &response);
    plaintext.value.swap(*response.mutable_plaintext());
    Wipe(*response.mutable_plaintext());
    if (!s.ok()) return Fail(o, s);
  }
  if (o.json) {
    WipedString encoded, quoted;
    encoded.value = Base64Encode(plaintext.value);
    quoted.value = trousseau::JsonQuote(encoded.value);
    std::cout << "{\"plaintext\":" << quoted.value << "}\n";
  } else {
    std::cout << plaintext.value;
  }
  std::cout.flush();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Plaintext passes through this process: keep it out of core files and away from ptrace.
  if (trousseau::HardeningResult hardened = trousseau::HardenProcess(); !hardened.ok()) {
    std::cerr << "trousseauctl: warning: " << hardened.failed_step()
              << " failed: a crash may write plaintext to a core file\n";
  }
  Options o;
  CLI::App app{
      "trousseauctl: talk to a KMS plugin socket (health, and encrypt/decrypt for debugging), and write\n"
      "Secrets nobody sees (secret generate|inject).\n"
      "Data is read from stdin, never from arguments.",
      "trousseauctl"};
  app.set_version_flag("--version", std::string("trousseauctl ") + TROUSSEAU_VERSION);
  app.require_subcommand(1);
  // Global options may also follow the subcommand: `trousseauctl status --socket unix:///...`.
  app.fallthrough();
  app.add_option("--socket", o.socket, "Plugin endpoint: unix:///path/kms.sock, or the bare path")
      ->capture_default_str();
  // The plugin's duration syntax (3s, 500ms), or plain seconds as before.
  app.add_option_function<std::string>(
         "--timeout",
         [&o](const std::string& text) {
           if (std::optional<std::chrono::milliseconds> d = trousseau::ParseDuration(text)) {
             o.timeout_seconds = std::chrono::duration<double>(*d).count();
           } else {
             o.timeout_seconds = std::stod(text);
           }
         },
         "Time per call: 3s, 500ms (or plain seconds); default kube-apiserver's 3s")
      ->check([](const std::string& text) -> std::string {
        double seconds = 0;
        if (std::optional<std::chrono::milliseconds> d = trousseau::ParseDuration(text)) {
          seconds = std::chrono::duration<double>(*d).count();
        } else {
          char* end = nullptr;
          seconds = std::strtod(text.c_str(), &end);
          if (end == text.c_str() || *end != '\0') return "must be a duration such as 3s or 500ms";
        }
        return seconds >= 0.001 && seconds <= 86400 ? "" : "must be between 1ms and 24h";
      });
  app.add_option("--api", o.api, "KMS API to use")->check(CLI::IsMember({"v2", "v1beta1"}))->capture_default_str();
  app.add_flag("--json", o.json, "Machine-readable output");
  int rc = 0;
  auto* status = app.add_subcommand("status", "Print health, API version and key_id; exit 3 when unhealthy");
  status->add_option("--health-listen,--metrics-listen", o.health_listen,
                     "Where the plugin serves /metrics (HOST:PORT: its --metrics-listen if it has one, else its "
                     "--health-listen): also list every key version it holds, pending activations and versions "
                     "that vanished from the device");
  status->callback([&] { rc = Status(o); });
  app.add_subcommand("encrypt", "Encrypt stdin; prints base64 ciphertext (key_id on stderr)")->callback([&] {
    rc = Encrypt(o);
  });
  auto* decrypt = app.add_subcommand("decrypt", "Decrypt base64 ciphertext from stdin to stdout");
  decrypt->add_option("--key-id", o.key_id, "key_id the ciphertext was made with (v2)");
  decrypt->callback([&] { rc = Decrypt(o); });
  trousseauctl::AddSecretCommand(app, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (std::optional<std::string> unknown = trousseau::support::UnknownCommandError(app, argc, argv)) {
      std::cerr << "trousseauctl: " << *unknown << "\n";
      return 2;
    }
    if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
      // Not echoed: data belongs on stdin, and a stray argument may be exactly that data.
      std::cerr << "trousseauctl: unexpected arguments (not shown); data goes on stdin, see --help\n";
      return 2;
    }
    return app.exit(e) == 0 ? 0 : 2;
  }
  return rc;
}
