#include "app/backend_factory.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/strings.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/pkcs11_uri.h"
#include "recipients/recipient_backend.h"
#include "recipients/set_store.h"
#include "tpm/tpm_backend.h"

namespace trousseau::app {
namespace {

StatusOr<ConfiguredBackend> MakePkcs11Backend(const PluginOptions& options, LoginObserver* login_observer) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(options.pkcs11_uris.front());
  if (!uri.ok()) return uri.status();
  const std::string family_label = uri->object_label();
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> created =
      hsm::Pkcs11Backend::Create(*std::move(uri), {.sessions = options.hsm_sessions,
                                                   .grow_sessions = options.hsm_sessions_grow,
                                                   .session_key_copies = !options.no_session_key_copies,
                                                   .login_observer = login_observer});
  if (!created.ok()) return created.status();
  std::shared_ptr<hsm::Pkcs11Backend> backend = *std::move(created);
  ConfiguredBackend configured;
  configured.backend = backend;
  configured.family_label = family_label;
  configured.summary = options.hsm_sessions_grow
                           ? StrCat("with ", options.hsm_sessions, " session(s) to start (--hsm-sessions auto)")
                           : StrCat("with ", options.hsm_sessions, " session(s)");
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
  StatusOr<std::unique_ptr<tpm::TpmBackend>> created =
      tpm::TpmBackend::Create({.tcti = options.tpm_tcti,
                               .key_dir = options.tpm_key_dir,
                               .recipient_dir = "",
                               .request_timeout = options.tpm_timeout});
  if (!created.ok()) return created.status();
  std::shared_ptr<tpm::TpmBackend> backend = *std::move(created);
  ConfiguredBackend configured;
  configured.backend = backend;
  configured.family_label = tpm::kTpmFamilyLabel;
  configured.device_timeout = options.tpm_timeout;
  configured.calls_stuck = [backend] { return backend->calls_stuck(); };
  return configured;
}

StatusOr<recipients::AdminPolicy> ReadAdminPolicy(const PluginOptions& options) {
  recipients::AdminPolicy policy{.keys = {}, .threshold = options.recipient_admin_threshold};
  for (const std::string& path : options.recipient_admin_keys) {
    std::ifstream in(path);
    std::ostringstream pem;
    pem << in.rdbuf();
    if (!in) return FailedPreconditionError(StrCat("--recipient-admin-key ", path, ": cannot read it"));
    StatusOr<recipients::AdminKey> key = recipients::AdminKey::FromPem(pem.str());
    if (!key.ok()) return FailedPreconditionError(StrCat("--recipient-admin-key ", path, ": ", key.status().message()));
    for (const recipients::AdminKey& known : policy.keys) {
      if (known.id() == key->id()) {
        // Signatures count per distinct key: a key given twice would make the threshold unreachable.
        return FailedPreconditionError(StrCat("--recipient-admin-key ", path, " is key ", key->id(),
                                              ", given already: each administrator key once"));
      }
    }
    policy.keys.push_back(*std::move(key));
  }
  if (policy.threshold > policy.keys.size()) {
    return FailedPreconditionError(StrCat("--recipient-admin-threshold ", policy.threshold, " but only ",
                                          policy.keys.size(), " --recipient-admin-key given"));
  }
  return policy;
}

// Multi-node mode (docs/ha.md): the recipient set, and this node's devices that open its wraps.
StatusOr<ConfiguredBackend> MakeRecipientBackend(const PluginOptions& options, LoginObserver* login_observer) {
  StatusOr<recipients::AdminPolicy> policy = ReadAdminPolicy(options);
  if (!policy.ok()) return policy.status();
  recipients::RecipientBackendOptions backend_options;
  std::vector<std::shared_ptr<hsm::Pkcs11Backend>> tokens;
  std::shared_ptr<tpm::TpmBackend> tpm_device;
  for (const std::string& text : options.pkcs11_uris) {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(text, hsm::KeyFamilyInUri::kOptionalWithRecipient);
    if (!uri.ok()) return uri.status();
    if (!uri->recipient_label().has_value()) {
      return FailedPreconditionError(StrCat("--pkcs11-uri for ", uri->token_description(),
                                            " names no recipient key: with --recipient-set add x-recipient=LABEL "
                                            "(trousseau-hsm-init recipient create)"));
    }
    const std::string name = StrCat("pkcs11 ", uri->token_description());
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> created =
        hsm::Pkcs11Backend::Create(*std::move(uri), {.sessions = options.hsm_sessions,
                                                     .grow_sessions = options.hsm_sessions_grow,
                                                     .session_key_copies = !options.no_session_key_copies,
                                                     .login_observer = login_observer});
    if (!created.ok()) return created.status();
    std::shared_ptr<hsm::Pkcs11Backend> token = *std::move(created);
    backend_options.devices.push_back({.name = name, .device = token});
    tokens.push_back(std::move(token));
  }
  if (!options.tpm_recipient_dir.empty()) {
    setenv("TSS2_LOG", "all+none", /*overwrite=*/0);  // as MakeTpmBackend
    StatusOr<std::unique_ptr<tpm::TpmBackend>> created =
        tpm::TpmBackend::Create({.tcti = options.tpm_tcti,
                                 .key_dir = "",
                                 .recipient_dir = options.tpm_recipient_dir,
                                 .request_timeout = options.tpm_timeout});
    if (!created.ok()) return created.status();
    tpm_device = *std::move(created);
    backend_options.devices.push_back(
        {.name = StrCat("tpm2 ", options.tpm_tcti),
         .device = std::shared_ptr<RecipientDevice>(tpm_device, tpm_device->AsRecipient())});
  }
  const recipients::SetStoreOptions store{
      .set_file = options.recipient_set, .state_dir = options.recipient_state_dir, .policy = *std::move(policy)};
  backend_options.load_sets = [store](const recipients::SetAdmission& admit) {
    return recipients::LoadAcceptedSets(store, admit);
  };
  StatusOr<std::unique_ptr<recipients::RecipientBackend>> created =
      recipients::RecipientBackend::Create(std::move(backend_options));
  if (!created.ok()) return created.status();
  std::shared_ptr<recipients::RecipientBackend> backend = *std::move(created);

  ConfiguredBackend configured;
  configured.backend = backend;
  configured.family_label = recipients::kRecipientFamilyLabel;
  configured.summary = StrCat("from ", options.recipient_set);
  configured.on_reload = [tokens] {
    for (const auto& token : tokens) token->AllowLoginRetry();
  };
  configured.session_pool =
      tokens.empty() ? std::function<void(size_t&, size_t&)>() : [tokens](size_t& in_use, size_t& size) {
        in_use = size = 0;
        for (const auto& token : tokens) {
          in_use += token->sessions_in_use();
          size += token->session_count();
        }
      };
  // One Open may try each device in turn, all within this deadline (a device that hangs gets half of it).
  configured.device_timeout = tokens.empty() ? options.tpm_timeout : options.hsm_timeout;
  configured.calls_stuck = [tokens, tpm_device] {
    size_t stuck = tpm_device ? tpm_device->calls_stuck() : 0;
    for (const auto& token : tokens) stuck += token->calls_stuck();
    return stuck;
  };
  configured.devices = [backend] {
    std::vector<DeviceHealth> devices;
    for (const recipients::RecipientDeviceState& state : backend->DeviceStates()) {
      devices.push_back({.name = state.name,
                         .up = state.up,
                         .detail = !state.up                 ? state.last_error
                                   : state.member_id.empty() ? std::string("not a member of the newest set")
                                                             : StrCat("member '", state.member_id, "'"),
                         .latency_ms = state.latency_ms});
    }
    return devices;
  };
  return configured;
}

}  // namespace

StatusOr<ConfiguredBackend> MakeBackend(const PluginOptions& options, LoginObserver* login_observer) {
  if (!options.recipient_set.empty()) return MakeRecipientBackend(options, login_observer);
  return options.tpm_key_dir.empty() ? MakePkcs11Backend(options, login_observer) : MakeTpmBackend(options);
}

}  // namespace trousseau::app
