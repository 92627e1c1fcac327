#include "tools/ctl/secret_command.h"

#include <unistd.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "core/secure_bytes.h"
#include "core/strings.h"
#include "tools/ctl/postgres_hand_off.h"
#include "tools/kube/kubeconfig.h"
#include "tools/kube/secrets_client.h"
#include "tools/secret/device_random.h"
#include "tools/secret/mixed_random.h"
#include "tools/secret/secret_input.h"
#include "tools/secret/secret_write.h"
#include "tools/secret/value_format.h"

namespace trousseauctl {
namespace {

using trousseau::SecureBytes;
using trousseau::Status;
using trousseau::StatusOr;
using trousseau::StrCat;

struct Common {
  std::string name;
  std::string key;
  std::string ns;
  std::string kubeconfig;
  std::string context;
  bool rotate = false;
  bool keep_previous = false;
};

struct GenerateOptions {
  std::string format;
  std::optional<size_t> length;
  std::optional<std::string> charset;
  trousseau::secret::DeviceChoice device;
  PostgresOptions postgres;
};

struct InjectOptions {
  bool from_stdin = false;
  std::optional<int> from_fd;
};

int Fail(const Status& s) {
  std::cerr << "trousseauctl: error: " << s.message() << "\n";
  return 1;
}

void AddCommon(CLI::App* command, Common& c) {
  command->add_option("NAME", c.name, "The Secret's name")->required();
  command->add_option("--key", c.key, "The data key the value goes under")->required();
  command->add_option("-n,--namespace", c.ns, "The Secret's namespace (default: the kubeconfig context's)");
  command->add_option("--kubeconfig", c.kubeconfig,
                      "kubeconfig file (default: the first file of $KUBECONFIG, then ~/.kube/config, then the "
                      "in-cluster service account)");
  command->add_option("--context", c.context, "kubeconfig context (default: its current-context)");
  command->add_flag("--rotate", c.rotate, "Replace the value of a key that exists (refused when it does not)");
  command->add_flag("--keep-previous", c.keep_previous,
                    "With --rotate: keep the old value under KEY.previous (an overlap window for its users)");
}

StatusOr<std::unique_ptr<trousseau::kube::SecretsClient>> Connect(Common& c) {
  StatusOr<trousseau::kube::ClusterAccess> access =
      trousseau::kube::LoadClusterAccess(trousseau::kube::AccessSources::FromEnvironment(c.kubeconfig, c.context));
  if (!access.ok()) return access.status();
  if (c.ns.empty()) c.ns = access->namespace_name;
  return trousseau::kube::SecretsClient::Create(*std::move(access));
}

trousseau::secret::WriteTarget TargetOf(const Common& c) { return {c.ns, c.name, c.key, c.rotate, c.keep_previous}; }

int Generate(Common& c, const GenerateOptions& g) {
  if (Status s = CheckPostgresOptions(g.postgres); !s.ok()) return Fail(s);
  StatusOr<trousseau::secret::ValueSpec> spec = trousseau::secret::ParseValueSpec(g.format, g.length, g.charset);
  if (!spec.ok()) return Fail(spec.status());
  if (!g.postgres.role.empty() && spec->format == trousseau::secret::ValueFormat::kPemEcP256) {
    return Fail(trousseau::InvalidArgumentError("--postgres-role takes a password: not --format pem-ec-p256"));
  }
  if (g.device.pkcs11_uri.empty() == g.device.tpm_tcti.empty()) {
    return Fail(trousseau::InvalidArgumentError(
        "name the device whose RNG to use: --pkcs11-uri (the plugin's, with its pin-source) or --tpm-tcti"));
  }
  StatusOr<std::unique_ptr<trousseau::kube::SecretsClient>> client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  const trousseau::secret::WriteTarget target = TargetOf(c);
  StatusOr<trousseau::secret::WritePlan> plan = trousseau::secret::PlanWrite(**client, target);
  if (!plan.ok()) return Fail(plan.status());

  // The hand-off is prepared before the value exists: a wrong DSN or role costs nothing and changes nothing.
  std::unique_ptr<trousseau::secret::HandOff> hand_off;
  if (!g.postgres.role.empty()) {
    std::vector<std::string> notes;
    StatusOr<std::unique_ptr<trousseau::secret::HandOff>> opened =
        OpenPostgresHandOff(**client, c.ns, g.postgres, notes);
    if (!opened.ok())
      return Fail(Status(opened.status().code(), StrCat(opened.status().message(),
                                                        "; nothing was "
                                                        "changed")));
    hand_off = *std::move(opened);
    for (const std::string& note : notes) std::cerr << "trousseauctl: note: " << note << "\n";
  }

  StatusOr<trousseau::secret::DeviceBytes> device =
      trousseau::secret::DeviceRandomBytes(g.device, trousseau::secret::kSeedBytes);
  if (!device.ok()) return Fail(device.status());
  StatusOr<trousseau::secret::MixedRandom> random = trousseau::secret::MixedRandom::FromDevice(device->bytes);
  if (!random.ok()) return Fail(random.status());
  StatusOr<SecureBytes> value = trousseau::secret::GenerateValue(*spec, *random);
  if (!value.ok()) return Fail(value.status());

  const std::string by = (*client)->WhoAmI().value_or("unknown");
  const trousseau::kube::Annotations annotations = {
      {"trousseau-hsm.io/generated-by", by},
      {"trousseau-hsm.io/generated-at", trousseau::secret::Rfc3339UtcNow()},
      {"trousseau-hsm.io/generated-from", StrCat(device->description, " mixed with the OS RNG")},
      {"trousseau-hsm.io/generated-key", c.key},
      {"trousseau-hsm.io/generated-format", trousseau::secret::Describe(*spec)},
  };
  std::string done;
  if (Status s = trousseau::secret::ApplyWrite(**client, target, *plan, *value, annotations, hand_off.get(), done);
      !s.ok()) {
    return Fail(s);
  }
  std::cout << done << ": " << trousseau::secret::Describe(*spec) << " from " << device->description
            << " mixed with the OS RNG; the value was not shown\n";
  return 0;
}

int Inject(Common& c, const InjectOptions& in) {
  if (in.from_stdin && in.from_fd) return Fail(trousseau::InvalidArgumentError("--from-stdin or --from-fd, not both"));
  if (!in.from_stdin && !in.from_fd && !isatty(STDIN_FILENO)) {
    return Fail(trousseau::FailedPreconditionError(
        "stdin is not a terminal; to read the value from it (a pipe, a file) say so with --from-stdin"));
  }
  StatusOr<std::unique_ptr<trousseau::kube::SecretsClient>> client = Connect(c);
  if (!client.ok()) return Fail(client.status());
  const trousseau::secret::WriteTarget target = TargetOf(c);
  StatusOr<trousseau::secret::WritePlan> plan = trousseau::secret::PlanWrite(**client, target);
  if (!plan.ok()) return Fail(plan.status());
  StatusOr<SecureBytes> value =
      in.from_fd      ? trousseau::secret::ReadToEnd(*in.from_fd)
      : in.from_stdin ? trousseau::secret::ReadToEnd(STDIN_FILENO)
                      : trousseau::secret::ReadFromTerminal(
                            STDIN_FILENO, StrCat("value for ", c.ns, "/", c.name, " key '", c.key, "' (not shown): "),
                            STDERR_FILENO);
  if (!value.ok()) return Fail(value.status());
  const std::string by = (*client)->WhoAmI().value_or("unknown");
  const trousseau::kube::Annotations annotations = {
      {"trousseau-hsm.io/injected-by", by},
      {"trousseau-hsm.io/injected-at", trousseau::secret::Rfc3339UtcNow()},
      {"trousseau-hsm.io/injected-key", c.key},
  };
  std::string done;
  if (Status s = trousseau::secret::ApplyWrite(**client, target, *plan, *value, annotations, nullptr, done); !s.ok()) {
    return Fail(s);
  }
  std::cout << done << " (" << value->size() << " bytes; the value was not shown)\n";
  return 0;
}

}  // namespace

void AddSecretCommand(CLI::App& app, int& rc) {
  auto* secret = app.add_subcommand(
      "secret",
      "Write values nobody sees into Kubernetes Secrets (docs/secrets.md): `generate` makes one from the device's RNG, "
      "`inject` takes one from a terminal (echo off) or stdin. Values never go through argv, env, files or logs");
  secret->require_subcommand(1);
  auto common_generate = std::make_shared<Common>();
  auto generate_options = std::make_shared<GenerateOptions>();
  auto* generate = secret->add_subcommand(
      "generate",
      "Generate a value from the device's RNG (C_GenerateRandom on the --pkcs11-uri token, or TPM2_GetRandom on "
      "--tpm-tcti) mixed with the OS CSPRNG, and write it into Secret NAME under --key; never printed. Annotates the "
      "Secret with who, when and which device (trousseau-hsm.io/generated-*)");
  AddCommon(generate, *common_generate);
  generate
      ->add_option("--format", generate_options->format,
                   "hex | base64 (of --length random bytes, default 32) | alnum (--length characters A-Za-z0-9, "
                   "default 32; the default format) | pem-ec-p256 (a P-256 private key, PKCS#8 PEM)")
      ->check(CLI::IsMember({"hex", "base64", "alnum", "pem-ec-p256"}));
  generate->add_option("--length", generate_options->length,
                       "Random bytes (hex, base64) or characters (alnum, --charset); 1-4096, default 32");
  generate->add_option("--charset", generate_options->charset,
                       "Draw --length characters uniformly from these characters (at least 2 distinct)");
  generate->add_option("--pkcs11-uri", generate_options->device.pkcs11_uri,
                       "The token whose RNG to use: the plugin's --pkcs11-uri (its pin-source gives the PIN)");
  generate->add_option("--tpm-tcti", generate_options->device.tpm_tcti,
                       "The TPM whose RNG to use (device:/dev/tpmrm0, tabrmd, swtpm:path=...)");
  generate->add_option("--postgres-role", generate_options->postgres.role,
                       "Also give the value to this PostgreSQL role as its password, first (as a SCRAM-SHA-256 "
                       "verifier: the database never gets the password); rolled back if the Secret write fails");
  generate->add_option("--postgres-dsn-secret", generate_options->postgres.dsn_secret,
                       "Secret (in the same namespace) holding the admin DSN for --postgres-role; it must ask for "
                       "sslmode=verify-full or verify-ca");
  generate
      ->add_option("--postgres-dsn-key", generate_options->postgres.dsn_key, "Key of the DSN in --postgres-dsn-secret")
      ->capture_default_str();
  generate->add_option("--postgres-dsn-file", generate_options->postgres.dsn_file,
                       "Or: a file holding the admin DSN, owned by this user and readable by nobody else");
  generate->add_flag("--postgres-allow-no-rollback", generate_options->postgres.allow_no_rollback,
                     "Proceed when the admin cannot read the role's current password verifier (not a superuser): a "
                     "failed Secret write then leaves the role with a password nobody has");
  generate->add_flag("--postgres-allow-sslmode-require", generate_options->postgres.allow_sslmode_require,
                     "Accept a DSN with sslmode=require (TLS without checking the server's certificate)");
  generate->callback([&rc, common_generate, generate_options] { rc = Generate(*common_generate, *generate_options); });

  auto common_inject = std::make_shared<Common>();
  auto inject_options = std::make_shared<InjectOptions>();
  auto* inject = secret->add_subcommand(
      "inject",
      "Write an existing value into Secret NAME under --key, read from the terminal with echo off (one line), or "
      "from stdin with --from-stdin, or from --from-fd N (every byte to EOF: a trailing newline is kept); never "
      "from arguments. A stdin that is not a terminal is refused without --from-stdin");
  AddCommon(inject, *common_inject);
  inject->add_flag("--from-stdin", inject_options->from_stdin, "Read the value from stdin (a pipe or a file)");
  inject->add_option("--from-fd", inject_options->from_fd, "Read the value from this open file descriptor")
      ->check(CLI::Range(0, 1 << 20));
  inject->callback([&rc, common_inject, inject_options] { rc = Inject(*common_inject, *inject_options); });
}

}  // namespace trousseauctl
