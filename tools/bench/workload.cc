#include "workload.h"

#include <random>

#include "echo_server.h"
#include "report.h"

namespace trousseau::bench {
namespace {

using namespace std::chrono_literals;

std::string RandomSeed() {
  std::random_device rd;
  std::string seed(32, '\0');
  for (char& c : seed) c = static_cast<char>(rd());
  return seed;
}

LoadOptions ThroughputLoad(const RunOptions& o, int concurrency, double seconds) {
  LoadOptions load;
  load.concurrency = concurrency;
  load.client_threads = o.client_threads;
  load.warmup_seconds = o.warmup_seconds;
  load.seconds = seconds;
  return load;
}

}  // namespace

EchoMessage SizedEcho(size_t wire_bytes) {
  EchoMessage message;
  for (size_t payload = wire_bytes; payload > 0; --payload) {
    message.set_payload(std::string(payload, '\xa5'));
    if (message.ByteSizeLong() <= wire_bytes) break;
  }
  return message;
}

bool SealASeed(v2::KeyManagementService::Stub& stub, Workload& w) {
  w.seed = RandomSeed();
  v2::EncryptRequest request;
  request.set_plaintext(w.seed);
  request.set_uid(kRunUid);
  v2::EncryptResponse sealed;
  grpc::Status status = stub.Encrypt(NewContext().get(), request, &sealed);
  if (!status.ok()) {
    Progress("Encrypt failed: %s", status.error_message().c_str());
    return false;
  }
  w.decrypt.set_ciphertext(sealed.ciphertext());
  w.decrypt.set_uid(kRunUid);
  w.decrypt.set_key_id(sealed.key_id());
  return true;
}

std::optional<SeededPlugin> SealASeed(const std::string& socket) {
  auto channel = UnixChannel(socket);
  WaitConnected(channel, 5s);
  SeededPlugin seeded{v2::KeyManagementService::NewStub(channel), {}};
  if (!SealASeed(*seeded.stub, seeded.workload)) return std::nullopt;
  return seeded;
}

bool CallDecrypt(v2::KeyManagementService::Stub& stub, const Workload& w) {
  v2::DecryptResponse response;
  return stub.Decrypt(NewContext().get(), w.decrypt, &response).ok() && response.plaintext() == w.seed;
}

bool CallEcho(Echo::Stub& stub, const EchoMessage& request) {
  EchoMessage response;
  return stub.Echo(NewContext().get(), request, &response).ok() && response.payload().size() == kEchoReplyBytes;
}

PhaseResult LoadEcho(const RunOptions& o, Echo::Stub& stub, const EchoMessage& request, int concurrency,
                     double seconds) {
  return ClosedLoop<EchoMessage>(
      ThroughputLoad(o, concurrency, seconds),
      [&](grpc::ClientContext* context, grpc::CompletionQueue* cq) {
        return stub.PrepareAsyncEcho(context, request, cq);
      },
      [](const EchoMessage& reply) { return reply.payload().size() == kEchoReplyBytes; });
}

PhaseResult LoadDecrypt(const RunOptions& o, v2::KeyManagementService::Stub& stub, const Workload& w, int concurrency,
                        double seconds) {
  return ClosedLoop<v2::DecryptResponse>(
      ThroughputLoad(o, concurrency, seconds),
      [&](grpc::ClientContext* context, grpc::CompletionQueue* cq) {
        return stub.PrepareAsyncDecrypt(context, w.decrypt, cq);
      },
      [&](const v2::DecryptResponse& reply) { return reply.plaintext() == w.seed; });
}

}  // namespace trousseau::bench
