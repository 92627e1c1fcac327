#include "server/kms_v1beta1_service.h"

#include "core/secure_bytes.h"
#include "core/status.h"
#include "core/strings.h"
#include "server/grpc_status.h"
#include "server/request_deadline.h"

namespace trousseau::server {
namespace {

// kube-apiserver always sends "v1beta1"; empty is tolerated for hand-driven debugging clients.
grpc::Status CheckVersion(const std::string& version) {
  if (version.empty() || version == kV1beta1Version) return grpc::Status::OK;
  return grpc::Status(
      grpc::StatusCode::INVALID_ARGUMENT,
      StrCat("unsupported KMS API version ", QuoteForMessage(version, 32), "; this service speaks v1beta1"));
}

// Wipes a request's secret field when the handler returns, by whichever path: gRPC frees the request
// message without wiping it, and the buffer is the handler's to wipe once the call has reached it.
class WipeOnReturn {
 public:
  explicit WipeOnReturn(const std::string& field) : field_(const_cast<std::string&>(field)) {}
  ~WipeOnReturn() { WipeMemory(field_.data(), field_.size()); }
  WipeOnReturn(const WipeOnReturn&) = delete;
  WipeOnReturn& operator=(const WipeOnReturn&) = delete;

 private:
  std::string& field_;
};

}  // namespace

grpc::Status KmsV1beta1Service::Version(grpc::ServerContext*, const v1beta1::VersionRequest* request,
                                        v1beta1::VersionResponse* response) {
  RequestTimer timer(observer_, "v1beta1", "Version", "");
  if (grpc::Status ok = CheckVersion(request->version()); !ok.ok()) return timer.Done(ok);
  response->set_version(kV1beta1Version);
  response->set_runtime_name("trousseau-hsm");
  response->set_runtime_version(runtime_version_);
  return timer.Done(grpc::Status::OK);
}

grpc::Status KmsV1beta1Service::Encrypt(grpc::ServerContext* context, const v1beta1::EncryptRequest* request,
                                        v1beta1::EncryptResponse* response) {
  const WipeOnReturn wipe_plain(request->plain());  // also when the version is refused
  RequestTimer timer(observer_, "v1beta1", "Encrypt", "");
  if (grpc::Status ok = CheckVersion(request->version()); !ok.ok()) return timer.Done(ok);
  StatusOr<EncryptResult> result = engine_.Encrypt(request->plain(), kV1MaxCiphertext, RequestDeadline(*context));
  if (!result.ok()) return timer.Done(ToGrpc(result.status()));
  response->set_cipher(std::move(result->ciphertext));
  return timer.Done(grpc::Status::OK, result->key_id);
}

grpc::Status KmsV1beta1Service::Decrypt(grpc::ServerContext* context, const v1beta1::DecryptRequest* request,
                                        v1beta1::DecryptResponse* response) {
  RequestTimer timer(observer_, "v1beta1", "Decrypt", "");
  if (grpc::Status ok = CheckVersion(request->version()); !ok.ok()) return timer.Done(ok);
  if (request->cipher().size() > kV1MaxCiphertext) {
    return timer.Done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cipher is longer than 65535 bytes"));
  }
  StatusOr<SecureBytes> plain = engine_.Decrypt(request->cipher(), /*claimed_key_id=*/"", RequestDeadline(*context));
  if (!plain.ok()) return timer.Done(ToGrpc(plain.status()));
  response->set_plain(plain->data(), plain->size());
  return timer.Done(grpc::Status::OK);
}

}  // namespace trousseau::server
