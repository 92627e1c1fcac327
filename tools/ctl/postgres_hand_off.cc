#include "tools/ctl/postgres_hand_off.h"

#include <utility>

#include "core/strings.h"
#include "tools/kube/base64.h"
#include "tools/postgres/dsn_file.h"
#include "tools/postgres/handoff.h"

namespace trousseauctl {
namespace {

using trousseau::SecureBytes;
using trousseau::Status;
using trousseau::StatusOr;
using trousseau::StrCat;

class PostgresRoleHandOff : public trousseau::secret::HandOff {
 public:
  explicit PostgresRoleHandOff(trousseau::postgres::PostgresHandOff hand_off) : hand_off_(std::move(hand_off)) {}
  std::string Describe() const override { return StrCat("PostgreSQL role '", hand_off_.role(), "'"); }
  Status Apply(const SecureBytes& value) override {
    Status s = hand_off_.Apply(value.view());
    if (!s.ok()) return Status(s.code(), StrCat(s.message(), " (", hand_off_.Describe(), ")"));
    return s;
  }
  Status Rollback() override {
    Status s = hand_off_.Rollback();
    if (!s.ok()) return Status(s.code(), StrCat(s.message(), " (", hand_off_.Describe(), ")"));
    return s;
  }

 private:
  trousseau::postgres::PostgresHandOff hand_off_;
};

StatusOr<SecureBytes> DsnFromSecret(trousseau::kube::SecretsClient& client, const std::string& ns,
                                    const PostgresOptions& options) {
  const std::string where = StrCat("secret ", ns, "/", options.dsn_secret, " key '", options.dsn_key, "'");
  StatusOr<std::optional<trousseau::kube::SecretSnapshot>> secret = client.Get(ns, options.dsn_secret, options.dsn_key);
  if (!secret.ok()) return secret.status();
  if (!secret->has_value()) {
    return trousseau::NotFoundError(
        StrCat("--postgres-dsn-secret: secret ", ns, "/", options.dsn_secret, " does not exist"));
  }
  if (!(*secret)->value_base64) {
    return trousseau::NotFoundError(StrCat("--postgres-dsn-secret: ", where, " does not exist (--postgres-dsn-key)"));
  }
  StatusOr<SecureBytes> dsn = trousseau::kube::Base64Decode((*secret)->value_base64->value);
  if (!dsn.ok()) return trousseau::InvalidArgumentError(StrCat("--postgres-dsn-secret: ", where, " is not base64"));
  // A DSN written with `kubectl create secret --from-file` may end in a newline.
  size_t size = dsn->size();
  while (size > 0 && (dsn->data()[size - 1] == '\n' || dsn->data()[size - 1] == '\r')) --size;
  dsn->Truncate(size);
  return dsn;
}

}  // namespace

Status CheckPostgresOptions(const PostgresOptions& options) {
  const bool any_dsn = !options.dsn_secret.empty() || !options.dsn_file.empty();
  if (options.role.empty()) {
    if (any_dsn || options.allow_no_rollback || options.allow_sslmode_require) {
      return trousseau::InvalidArgumentError("the --postgres-* options go with --postgres-role");
    }
    return trousseau::OkStatus();
  }
  if (options.dsn_secret.empty() == options.dsn_file.empty()) {
    return trousseau::InvalidArgumentError(
        "--postgres-role needs the admin DSN from exactly one of --postgres-dsn-secret NAME (key --postgres-dsn-key, "
        "default 'dsn') or --postgres-dsn-file PATH (owner-only); never on the command line");
  }
  return trousseau::OkStatus();
}

StatusOr<std::unique_ptr<trousseau::secret::HandOff>> OpenPostgresHandOff(trousseau::kube::SecretsClient& client,
                                                                          const std::string& ns,
                                                                          const PostgresOptions& options,
                                                                          std::vector<std::string>& notes) {
  StatusOr<SecureBytes> dsn = options.dsn_file.empty() ? DsnFromSecret(client, ns, options)
                                                       : trousseau::postgres::ReadAdminDsnFile(options.dsn_file);
  if (!dsn.ok()) return dsn.status();
  trousseau::postgres::HandOffOptions hand_off_options;
  hand_off_options.allow_no_rollback = options.allow_no_rollback;
  hand_off_options.connect.allow_sslmode_require = options.allow_sslmode_require;
  hand_off_options.connect.application_name = "trousseauctl secret generate";
  StatusOr<trousseau::postgres::PostgresHandOff> hand_off =
      trousseau::postgres::PostgresHandOff::Begin(dsn->view(), options.role, hand_off_options);
  if (!hand_off.ok()) {
    return Status(hand_off.status().code(),
                  StrCat("PostgreSQL role '", options.role, "': ", hand_off.status().message()));
  }
  notes = hand_off->notes();
  return std::unique_ptr<trousseau::secret::HandOff>(new PostgresRoleHandOff(*std::move(hand_off)));
}

}  // namespace trousseauctl
