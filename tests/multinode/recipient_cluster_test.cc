// Multi-node mode (issue 14, docs/ha.md) with real parts: plugin processes, each with its own swtpm
// (a control-plane node's TPM) and, for the hybrid node, a SoftHSM token; the recipient set made,
// signed and changed with trousseau-hsm-init and openssl as an administrator would.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/envelope.h"
#include "recipients/multi_wrap.h"
#include "recipients/recipient_set.h"
#include "recipients/sealing_key.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/program_runner.h"
#include "tests/tpm/swtpm.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using support::Eventually;
using support::SoftHsmToken;
using support::Subprocess;
using testing::ProgramRun;

struct Node {
  std::string name;
  std::unique_ptr<testing::Swtpm> tpm;
  std::string recipient_dir, state_dir, socket;
  std::string hsm_uri;  // the hybrid node's token, with x-recipient
  int health_port = 0;
  std::unique_ptr<Subprocess> plugin;
};

class RecipientClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path();
    runner_ = std::make_unique<testing::ProgramRunner>(dir_, "run");
    ASSERT_EQ(Run({"/usr/bin/openssl", "genpkey", "-algorithm", "ed25519", "-out", dir_ + "/admin.pem"}).code, 0);
    ::chmod((dir_ + "/admin.pem").c_str(), 0600);
    ASSERT_EQ(
        Run({"/usr/bin/openssl", "pkey", "-in", dir_ + "/admin.pem", "-pubout", "-out", dir_ + "/admin.pub"}).code, 0);
    set_ = dir_ + "/set.json";
  }
  void TearDown() override {
    for (auto& [name, node] : nodes_) {
      if (node->plugin && HasFailure()) std::cerr << "--- " << name << " log:\n" << node->plugin->Log() << "\n";
    }
    nodes_.clear();
  }

  ProgramRun Run(std::vector<std::string> argv) { return runner_->Run(std::move(argv)); }
  ProgramRun Tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    return Run(std::move(args));
  }

  // A node with its own swtpm and TPM recipient key; its member file is <dir>/<name>.json.
  Node& AddNode(const std::string& name) {
    auto node = std::make_unique<Node>();
    node->name = name;
    node->tpm = testing::Swtpm::Start(dir_ + "/" + name + "-tpm");
    EXPECT_NE(node->tpm, nullptr);
    node->recipient_dir = dir_ + "/" + name + "-recipient";
    node->state_dir = dir_ + "/" + name + "-state";
    node->socket = dir_ + "/" + name + ".sock";
    node->health_port = testing::FreeLoopbackPort();
    ProgramRun created = Tool({"tpm", "recipient", "create", "--tpm-tcti", node->tpm->Tcti(), "--tpm-recipient-dir",
                               node->recipient_dir, "--id", name});
    EXPECT_EQ(created.code, 0) << created.all();
    std::ofstream(dir_ + "/" + name + ".json") << created.out;
    nodes_[name] = std::move(node);
    return *nodes_[name];
  }

  // Adds the node's SoftHSM recipient key (member <name>-hsm): the hybrid node holds a TPM and an HSM.
  void AddHsm(Node& node) {
    token_ = SoftHsmToken::Create("hybrid");
    ASSERT_NE(token_, nullptr);
    node.hsm_uri = token_->Uri() + "&x-recipient=trousseau-recipient";
    node.hsm_uri.replace(node.hsm_uri.find(";object=kek"), 11, "");
    ProgramRun created = Tool({"recipient", "create", "--pkcs11-uri", node.hsm_uri, "--id", node.name + "-hsm"});
    ASSERT_EQ(created.code, 0) << created.all();
    std::ofstream(dir_ + "/" + node.name + "-hsm.json") << created.out;
  }

  // A new epoch of the set with `member` added (the first one names the set), signed.
  void AddMember(const std::string& member) {
    std::vector<std::string> args = {"recipients", "add", "--set", set_, "--member", dir_ + "/" + member + ".json"};
    if (!std::filesystem::exists(set_)) args.insert(args.end(), {"--name", "prod"});
    ProgramRun added = Tool(args);
    ASSERT_EQ(added.code, 0) << added.all();
    Sign();
  }
  void RemoveMember(const std::string& member) {
    ProgramRun removed = Tool({"recipients", "remove", "--set", set_, "--id", member});
    ASSERT_EQ(removed.code, 0) << removed.all();
    Sign();
  }
  void Sign() {
    ProgramRun signed_set = Tool({"recipients", "sign", "--set", set_, "--admin-key-file", dir_ + "/admin.pem"});
    ASSERT_EQ(signed_set.code, 0) << signed_set.all();
  }
  std::string SetKeyId() {
    ProgramRun shown = Tool({"recipients", "show", "--set", set_, "--admin-key", dir_ + "/admin.pub", "--json"});
    EXPECT_EQ(shown.code, 0) << shown.all();
    return json::parse(shown.out, nullptr, false).value("key_id", "");
  }

  void StartPlugin(Node& node) {
    std::vector<std::string> argv = {PLUGIN_PATH,
                                     "--listen",
                                     "unix://" + node.socket,
                                     "--recipient-set",
                                     set_,
                                     "--recipient-admin-key",
                                     dir_ + "/admin.pub",
                                     "--recipient-state-dir",
                                     node.state_dir,
                                     "--tpm-recipient-dir",
                                     node.recipient_dir,
                                     "--tpm-tcti",
                                     node.tpm->Tcti(),
                                     "--health-listen",
                                     "127.0.0.1:" + std::to_string(node.health_port),
                                     "--health-cache",
                                     "500ms"};
    if (!node.hsm_uri.empty()) argv.insert(argv.end(), {"--pkcs11-uri", node.hsm_uri});
    node.plugin = std::make_unique<Subprocess>(argv, dir_ + "/" + node.name + ".log");
  }
  static std::string KeyId(const Node& node) {
    v2::StatusResponse status = testing::PluginStatus(node.socket);
    return status.healthz() == "ok" ? status.key_id() : "";
  }
  static bool Reports(const Node& node, const std::string& key_id) {
    return Eventually([&] { return KeyId(node) == key_id; }, 15s);
  }

  testing::TempDir tmp_;
  std::string dir_, set_;
  std::unique_ptr<testing::ProgramRunner> runner_;
  std::unique_ptr<SoftHsmToken> token_;
  std::map<std::string, std::unique_ptr<Node>> nodes_;
};

TEST_F(RecipientClusterTest, ASeedEncryptedOnAnyNodeDecryptsOnEveryOtherUnderOneKeyId) {
  for (const char* name : {"node-a", "node-b", "node-c"}) AddNode(name);
  for (const char* name : {"node-a", "node-b", "node-c"}) AddMember(name);
  const std::string key_id = SetKeyId();
  ASSERT_FALSE(key_id.empty());
  for (auto& [name, node] : nodes_) StartPlugin(*node);
  for (auto& [name, node] : nodes_) ASSERT_TRUE(Reports(*node, key_id)) << name << ": " << KeyId(*node);

  for (auto& [writer_name, writer] : nodes_) {
    v2::EncryptResponse sealed;
    const std::string seed = "seed written through " + writer_name;
    ASSERT_TRUE(testing::EncryptV2(writer->socket, seed, sealed).ok());
    EXPECT_EQ(sealed.key_id(), key_id);
    EXPECT_LE(sealed.ciphertext().size(), 1024u);
    for (auto& [reader_name, reader] : nodes_) {
      std::string opened;
      grpc::Status s = testing::DecryptV2(reader->socket, sealed, &opened);
      ASSERT_TRUE(s.ok()) << writer_name << " -> " << reader_name << ": " << s.error_message();
      EXPECT_EQ(opened, seed);
    }
  }
  testing::HttpResponse ready = testing::HttpGet(nodes_["node-a"]->health_port, "/readyz?verbose");
  EXPECT_NE(ready.body.find("device up: tpm2"), std::string::npos) << ready.body;
  EXPECT_NE(ready.body.find("member 'node-a'"), std::string::npos) << ready.body;
}

TEST_F(RecipientClusterTest, ANodeRemovedInANewEpochOpensNoNewEnvelopeButOldOnesStillOpen) {
  for (const char* name : {"node-a", "node-b", "node-c"}) AddNode(name);
  for (const char* name : {"node-a", "node-b", "node-c"}) AddMember(name);
  const std::string old_key_id = SetKeyId();
  for (auto& [name, node] : nodes_) StartPlugin(*node);
  for (auto& [name, node] : nodes_) ASSERT_TRUE(Reports(*node, old_key_id)) << name;
  v2::EncryptResponse old_envelope;
  ASSERT_TRUE(testing::EncryptV2(nodes_["node-b"]->socket, "before node-c left", old_envelope).ok());

  RemoveMember("node-c");
  const std::string new_key_id = SetKeyId();
  ASSERT_NE(new_key_id, old_key_id) << "a new membership is a new key_id: kube-apiserver re-encrypts";
  for (auto& [name, node] : nodes_) node->plugin->Signal(SIGHUP);
  ASSERT_TRUE(Reports(*nodes_["node-a"], new_key_id));
  ASSERT_TRUE(Reports(*nodes_["node-b"], new_key_id));
  // node-c refuses the set it is no member of and stays on what it had.
  ASSERT_TRUE(Eventually(
      [&] { return nodes_["node-c"]->plugin->Log().find("none of this node's recipient keys") != std::string::npos; },
      10s))
      << nodes_["node-c"]->plugin->Log();
  EXPECT_EQ(KeyId(*nodes_["node-c"]), old_key_id);

  v2::EncryptResponse new_envelope;
  ASSERT_TRUE(testing::EncryptV2(nodes_["node-a"]->socket, "after node-c left", new_envelope).ok());
  EXPECT_EQ(new_envelope.key_id(), new_key_id);
  EXPECT_TRUE(testing::DecryptV2(nodes_["node-b"]->socket, new_envelope).ok());
  EXPECT_FALSE(testing::DecryptV2(nodes_["node-c"]->socket, new_envelope).ok()) << "node-c left before it was sealed";
  for (auto& [name, node] : nodes_) {
    std::string opened;
    grpc::Status s = testing::DecryptV2(node->socket, old_envelope, &opened);
    ASSERT_TRUE(s.ok()) << name << ": " << s.error_message();
    EXPECT_EQ(opened, "before node-c left");
  }
}

TEST_F(RecipientClusterTest, AForgedOrLowerEpochSetIsRefusedAndTheNodeKeepsItsSet) {
  Node& a = AddNode("node-a");
  AddNode("node-b");
  AddMember("node-a");
  const std::string epoch1 = [&] {
    std::ifstream in(set_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  AddMember("node-b");
  const std::string key_id = SetKeyId();
  StartPlugin(a);
  ASSERT_TRUE(Reports(a, key_id));

  // Signed by someone who is not an administrator.
  ASSERT_EQ(Run({"/usr/bin/openssl", "genpkey", "-algorithm", "ed25519", "-out", dir_ + "/intruder.pem"}).code, 0);
  ::chmod((dir_ + "/intruder.pem").c_str(), 0600);
  ProgramRun removed = Tool({"recipients", "remove", "--set", set_, "--id", "node-b"});
  ASSERT_EQ(removed.code, 0) << removed.all();
  ASSERT_EQ(Tool({"recipients", "sign", "--set", set_, "--admin-key-file", dir_ + "/intruder.pem"}).code, 0);
  a.plugin->Signal(SIGHUP);
  ASSERT_TRUE(
      Eventually([&] { return a.plugin->Log().find("valid administrator signature") != std::string::npos; }, 10s))
      << a.plugin->Log();
  EXPECT_EQ(KeyId(a), key_id);

  // A validly signed set of a lower epoch (an old file distributed again).
  std::ofstream(set_) << epoch1;
  a.plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return a.plugin->Log().find("never goes back") != std::string::npos; }, 10s))
      << a.plugin->Log();
  EXPECT_EQ(KeyId(a), key_id);
  v2::EncryptResponse sealed;
  ASSERT_TRUE(testing::EncryptV2(a.socket, "still serving", sealed).ok());
  EXPECT_EQ(sealed.key_id(), key_id);
}

// The set file is public. With it alone, anyone able to write etcd can wrap a seed of their choosing to
// every member's TPM; what they cannot make is the sender tag, which needs the epoch's sealing secret.
TEST_F(RecipientClusterTest, AnEnvelopeMadeFromThePublicSetAloneIsRefusedByEveryNode) {
  for (const char* name : {"node-a", "node-b"}) AddNode(name);
  for (const char* name : {"node-a", "node-b"}) AddMember(name);
  const std::string key_id = SetKeyId();
  for (auto& [name, node] : nodes_) StartPlugin(*node);
  for (auto& [name, node] : nodes_) ASSERT_TRUE(Reports(*node, key_id)) << name;

  std::ifstream in(set_);
  StatusOr<recipients::RecipientSet> published =
      recipients::ParseRecipientSet(std::string(std::istreambuf_iterator<char>(in), {}));
  ASSERT_TRUE(published.ok()) << published.status().ToString();
  const std::string header = EncodeEnvelopeHeader(published->epoch, kEnvelopeFormatV3);
  StatusOr<std::string> wraps = recipients::SealToSet(*published, "a seed of the attacker's choosing", header);
  ASSERT_TRUE(wraps.ok());
  v2::EncryptResponse planted;
  planted.set_key_id(key_id);
  planted.set_ciphertext(header + *wraps + std::string(recipients::kSenderTagSize, '\x5a'));
  for (auto& [name, node] : nodes_) {
    const grpc::Status refused = testing::DecryptV2(node->socket, planted);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name << ": " << refused.error_message();
    EXPECT_NE(node->plugin->Log().find("sender tag does not verify"), std::string::npos) << node->plugin->Log();
  }
  // Every node still serves what a member sealed.
  v2::EncryptResponse genuine;
  ASSERT_TRUE(testing::EncryptV2(nodes_["node-a"]->socket, "sealed by node-a", genuine).ok());
  EXPECT_EQ(genuine.ciphertext().size(), header.size() + wraps->size() - 33 + 16 + 16)
      << "same layout as the planted one: the seed is 16 bytes shorter, the tag adds 16";
  std::string opened;
  ASSERT_TRUE(testing::DecryptV2(nodes_["node-b"]->socket, genuine, &opened).ok());
  EXPECT_EQ(opened, "sealed by node-a");
}

TEST_F(RecipientClusterTest, AHybridNodeWithATpmAndAnHsmFailsOverWhenItsTpmHangs) {
  Node& x = AddNode("node-x");
  Node& y = AddNode("node-y");
  AddHsm(x);
  AddMember("node-x");
  AddMember("node-x-hsm");
  AddMember("node-y");
  const std::string key_id = SetKeyId();
  StartPlugin(x);
  StartPlugin(y);
  ASSERT_TRUE(Reports(x, key_id)) << x.plugin->Log();
  ASSERT_TRUE(Reports(y, key_id)) << y.plugin->Log();
  v2::EncryptResponse sealed;
  ASSERT_TRUE(testing::EncryptV2(y.socket, "written through node-y", sealed).ok());
  ASSERT_TRUE(testing::DecryptV2(x.socket, sealed).ok());

  x.tpm->Pause();  // the TPM stops answering mid-load
  // Every Decrypt answers, the first one included: the hung TPM gets half the call's time, then the HSM.
  for (int i = 0; i < 5; ++i) {
    std::string opened;
    grpc::Status s = testing::DecryptV2(x.socket, sealed, &opened);
    ASSERT_TRUE(s.ok()) << i << ": " << s.error_message();
    EXPECT_EQ(opened, "written through node-y");
  }
  EXPECT_TRUE(Eventually(
      [&] {
        return testing::HttpGet(x.health_port, "/readyz?verbose").body.find("device down: tpm2") != std::string::npos;
      },
      5s))
      << testing::HttpGet(x.health_port, "/readyz?verbose").body;
  EXPECT_EQ(KeyId(x), key_id) << "health stays ok while one device serves";
  ProgramRun status = Run({CTL_PATH, "status", "--socket", "unix://" + x.socket, "--health-listen",
                           "127.0.0.1:" + std::to_string(x.health_port)});
  EXPECT_EQ(status.code, 0) << status.all();
  EXPECT_NE(status.out.find("DEVICE DOWN:      tpm2 "), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("device up:        pkcs11 "), std::string::npos) << status.out;
  EXPECT_NE(testing::HttpGet(x.health_port, "/metrics").body.find("trousseau_hsm_backend_up{backend=\"tpm2 "),
            std::string::npos);

  x.tpm->Resume();  // the TPM comes back: the prober takes it in again
  EXPECT_TRUE(Eventually(
      [&] {
        const std::string body = testing::HttpGet(x.health_port, "/readyz?verbose").body;
        return body.find("device down") == std::string::npos && body.find("device up: tpm2") != std::string::npos;
      },
      20s))
      << testing::HttpGet(x.health_port, "/readyz?verbose").body;
}

}  // namespace
}  // namespace trousseau
