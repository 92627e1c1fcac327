#include "app/backend_factory.h"

#include <cstdlib>

#include "core/strings.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/pkcs11_uri.h"
#include "tpm/tpm_backend.h"

namespace trousseau::app {
namespace {

StatusOr<ConfiguredBackend> MakePkcs11Backend(const PluginOptions& options) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(options.pkcs11_uri);
  if (!uri.ok()) return uri.status();
  const std::string family_label = uri->object_label();
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> created = hsm::Pkcs11Backend::Create(
      *std::move(uri), {.sessions = options.hsm_sessions, .session_key_copies = !options.no_session_key_copies});
  if (!created.ok()) return created.status();
  std::shared_ptr<hsm::Pkcs11Backend> backend = *std::move(created);
  ConfiguredBackend configured;
  configured.backend = backend;
  configured.family_label = family_label;
  configured.summary = StrCat("with ", options.hsm_sessions, " session(s)");
  configured.on_reload = [backend] { backend->AllowLoginRetry(); };
  // Concurrent `key rotate` runs decide who keeps a version within their settle timeout, after the
  // losers' keys were visible on the token: confirm a new active version after twice that. (TPM
  // rotations serialise on the key directory's lock and never replace a file: nothing to wait for.)
  configured.new_version_settle = 2 * hsm::kKekSettleTimeout;
  configured.session_pool = [backend](size_t& in_use, size_t& size) {
    in_use = backend->sessions_in_use();
    size = backend->session_count();
  };
  configured.device_timeout = options.hsm_timeout;
  configured.calls_stuck = [backend] { return backend->calls_stuck(); };
  return configured;
}

StatusOr<ConfiguredBackend> MakeTpmBackend(const PluginOptions& options) {
  // tpm2-tss writes its own error lines to stderr, which would break --log-format json; our
  // Status messages already carry the decoded TPM error. An operator's TSS2_LOG still wins.
  setenv("TSS2_LOG", "all+none", /*overwrite=*/0);
  StatusOr<std::unique_ptr<tpm::TpmBackend>> created = tpm::TpmBackend::Create(
      {.tcti = options.tpm_tcti, .key_dir = options.tpm_key_dir, .request_timeout = options.tpm_timeout});
  if (!created.ok()) return created.status();
  std::shared_ptr<tpm::TpmBackend> backend = *std::move(created);
  ConfiguredBackend configured;
  configured.backend = backend;
  configured.family_label = tpm::kTpmFamilyLabel;
  configured.device_timeout = options.tpm_timeout;
  configured.calls_stuck = [backend] { return backend->calls_stuck(); };
  return configured;
}

}  // namespace

StatusOr<ConfiguredBackend> MakeBackend(const PluginOptions& options) {
  return options.tpm_key_dir.empty() ? MakePkcs11Backend(options) : MakeTpmBackend(options);
}

}  // namespace trousseau::app
