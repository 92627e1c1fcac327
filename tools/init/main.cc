// trousseau-hsm-init: provision the PKCS#11 token for trousseau-hsm: initialise a token, generate,
// rotate, list and retire versions of the AES-256 key family, self-test it, and print the
// kube-apiserver EncryptionConfiguration. PINs come from files or TROUSSEAU_HSM_PIN, never flags.
// `tpm ...` does the same for the TPM 2.0 backend's key directory.
#include <iostream>
#include <limits>
#include <optional>

#include <CLI/CLI.hpp>

#include "core/process_hardening.h"
#include "core/strings.h"
#include "hsm/pin_source.h"
#include "tools/init/init_tool.h"
#include "tools/init/recipient_cli.h"
#include "tools/support/cli_errors.h"

#ifndef TROUSSEAU_VERSION
#define TROUSSEAU_VERSION "dev"
#endif

namespace {

using namespace trousseau::init;

constexpr char kUriHelp[] =
    "RFC 7512 URI of the key family, as the plugin takes it: "
    "pkcs11:token=LABEL;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path "
    "(object = the family's CKA_LABEL; no id=, no pin-value=). The user PIN comes from pin-source "
    "(a file with no group/other access) or the TROUSSEAU_HSM_PIN environment variable";

CLI::Option* AddUri(CLI::App* command, std::string& uri) {
  return command->add_option("--pkcs11-uri", uri, kUriHelp)->required()->envname("TROUSSEAU_HSM_PKCS11_URI");
}

// --tpm-tcti and --tpm-key-dir, with the plugin's names, defaults and environment variables.
void AddTpm(CLI::App* command, TpmOptions& options) {
  command
      ->add_option("--tpm-tcti", options.tcti,
                   "TCTI of the TPM, as the plugin takes it: device:/dev/tpmrm0 (the kernel resource manager), "
                   "tabrmd, swtpm:path=/run/swtpm/sock, ... (env TROUSSEAU_HSM_TPM_TCTI)")
      ->envname("TROUSSEAU_HSM_TPM_TCTI")
      ->capture_default_str();
  command
      ->add_option("--tpm-key-dir", options.key_dir,
                   "The key directory: one file set per key version, TPM-encrypted blobs usable only in this TPM "
                   "(0700, files 0600); the plugin's --tpm-key-dir (env TROUSSEAU_HSM_TPM_KEY_DIR)")
      ->required()
      ->envname("TROUSSEAU_HSM_TPM_KEY_DIR");
}

void AddScheme(CLI::App* command, TpmOptions& options) {
  command
      ->add_option("--scheme", options.scheme,
                   "How the new version seals: aes-cfb-hmac (AES-256-CFB + HMAC-SHA256, two TPM objects; refused on "
                   "a TPM without TPM2_EncryptDecrypt(2) and TPM2_HMAC), rsa-oaep (RSA-2048-OAEP, the fallback; "
                   "seeds of at most 190 bytes), or auto (aes-cfb-hmac if the TPM can, else rsa-oaep)")
      ->check(CLI::IsMember({"auto", "aes-cfb-hmac", "rsa-oaep"}))
      ->capture_default_str();
}

// --version (required, 1 or more) and --yes of a `retire` command.
void AddRetireChoice(CLI::App* command, uint64_t& version, const std::string& version_help, bool& yes,
                     const std::string& yes_help) {
  command->add_option("--version", version, version_help)
      ->required()
      ->check(CLI::Range(uint64_t{1}, std::numeric_limits<uint64_t>::max()));
  command->add_flag("--yes", yes, yes_help);
}

// Every subcommand's options, alive until its callback runs. One options struct per subcommand: CLI11
// applies environment variables (TROUSSEAU_HSM_PKCS11_URI, TROUSSEAU_HSM_TPM_*) to the options of every
// subcommand, invoked or not, so a shared struct would let the environment overwrite the flags given
// to the subcommand that runs.
struct Commands {
  int rc = kExitOk;  // the exit code of the subcommand that ran
  TokenInitOptions token_init;
  KeyOptions generate_options, rotate_options, list_options, retire_options, selftest_options;
  ConfigOptions config_options;
  TpmOptions tpm_init_options, tpm_rotate_options, tpm_list_options, tpm_selftest_options, tpm_retire_options;
};

// token init
void AddTokenCommands(CLI::App& app, Commands& c) {
  TokenInitOptions& token_init = c.token_init;
  CLI::App* token = app.add_subcommand("token", "Token administration");
  token->require_subcommand(1);
  CLI::App* init = token->add_subcommand(
      "init",
      "Initialise the token of a free slot (one not yet initialised; SoftHSM always offers one): set its label "
      "and SO PIN (C_InitToken), then log in as SO and set the user PIN (C_InitPIN). Refuses a label that an "
      "initialised token already has. Both PIN files must be regular files without group/other permissions.");
  init->add_option("--module", token_init.module, "Absolute path of the PKCS#11 module")->required();
  init->add_option("--module-init-reserved", token_init.module_init_reserved,
                   "The module's initialisation string for C_Initialize (CK_C_INITIALIZE_ARGS.pReserved), as it is, "
                   "for modules that need one (NSS softoken: \"configdir='sql:DIR' certPrefix='' keyPrefix='' "
                   "secmod='secmod.db' flags=\"); the other commands take it as the URI's x-init-reserved");
  init->add_option("--label", token_init.label, "Token label (1-32 bytes); the URI's token=")->required();
  init->add_option("--so-pin-file", token_init.so_pin_file, "File holding the new Security Officer PIN (mode 0600)")
      ->required();
  init->add_option("--pin-file", token_init.pin_file,
                   "File holding the new user PIN (mode 0600); the plugin's pin-source")
      ->required();
  init->add_flag("--json", token_init.json, "Print the result as JSON");
  init->callback([&c] { c.rc = TokenInit(c.token_init); });
}

// --scheme of `key generate` and `key rotate`.
void AddKeyScheme(CLI::App* command, KeyOptions& options) {
  command
      ->add_option("--scheme", options.scheme,
                   "How the new version seals: aes-gcm (one AES-256 key, AES-GCM), aes-cbc-hmac (an AES-256 key and "
                   "an HMAC-SHA256 key, both generated on the token under the same label and CKA_ID: AES-CBC-PAD then "
                   "HMAC, for tokens without AES-GCM), or auto (aes-gcm if the token has AES-GCM, else aes-cbc-hmac). "
                   "A scheme the token cannot make is refused (exit 2) before anything is created")
      ->check(CLI::IsMember({"auto", "aes-gcm", "aes-cbc-hmac"}))
      ->capture_default_str();
}

// --wait-timeout of `key rotate`: a positive duration.
void AddWaitTimeout(CLI::App* rotate, KeyOptions& rotate_options) {
  rotate->add_option_function<std::string>(
      "--wait-timeout",
      [options = &rotate_options](const std::string& text) {
        std::optional<std::chrono::milliseconds> parsed = trousseau::ParseDuration(text);
        if (!parsed || parsed->count() <= 0) throw CLI::ValidationError("--wait-timeout", "a duration such as 90s");
        options->wait_timeout = *parsed;
      },
      "How long to wait for the plugin's Status to report the new key_id (default 65s: the plugin's default "
      "--key-refresh-interval of 60s, the 2s a new version settles, and slack). Set it above the plugin's "
      "--key-refresh-interval, or SIGHUP the plugin meanwhile");
}

void AddKeyRotate(CLI::App* key, Commands& c) {
  KeyOptions& rotate_options = c.rotate_options;
  CLI::App* rotate = key->add_subcommand(
      "rotate",
      "Create version N+1 (N = the highest version present) with the same policy and print its key_id. A running "
      "plugin makes it active on SIGHUP or within its --key-refresh-interval; older versions keep decrypting. "
      "Refuses (exit 1, nothing created) when the plugin would refuse the family as a whole (a version that breaks "
      "the KEK policy, e.g. an extractable one, or two keys with one version) and, for SoftHSM, when the token's "
      "directory belongs to another user than the caller (the plugin's user could not read the new key). Then it "
      "asks the running plugin (--socket) and waits until its Status reports the new key_id; exit 1 if it does not "
      "within --wait-timeout. See docs/rotation.md for the whole procedure.");
  AddUri(rotate, rotate_options.pkcs11_uri);
  AddKeyScheme(rotate, rotate_options);
  rotate->add_flag("--json", rotate_options.json,
                   "Print {\"version\":N,\"key_id\":...,\"scheme\":...,\"active\":bool,\"plugin_confirmed\":bool} "
                   "as JSON (plugin_confirmed only when a plugin was asked)");
  rotate->add_option("--socket", rotate_options.socket,
                     std::string("The running plugin's socket (unix:///path); its KMS v2 Status must report the new "
                                 "key_id. Default: unix://") +
                         kDefaultPluginSocket + " if that file exists, else no plugin is asked");
  AddWaitTimeout(rotate, rotate_options);
  rotate->add_flag("--no-wait", rotate_options.no_wait, "Do not ask a running plugin (the new key_id is unconfirmed)");
  rotate->callback([&c] { c.rc = KeyRotate(c.rotate_options); });
}

// key generate | rotate | list | retire
void AddKeyCommands(CLI::App& app, Commands& c) {
  KeyOptions &generate_options = c.generate_options, &list_options = c.list_options, &retire_options = c.retire_options;
  CLI::App* key = app.add_subcommand("key", "The KEK family: generate, rotate, list, retire");
  key->require_subcommand(1);

  CLI::App* generate = key->add_subcommand(
      "generate",
      "Create version 1 of the key family: AES-256 generated on the token (aes-cbc-hmac: and an HMAC-SHA256 "
      "key beside it, sign/verify only), token object, private, sensitive, never extractable, encrypt/decrypt "
      "only, not modifiable, CKA_LABEL = the URI's object, CKA_ID = 01. Refuses if the family already has any "
      "key (use `key rotate`). Prints the scheme and the key_id the plugin will report.");
  AddUri(generate, generate_options.pkcs11_uri);
  AddKeyScheme(generate, generate_options);
  generate->add_flag("--json", generate_options.json, "Print {\"version\":1,\"key_id\":...,\"scheme\":...} as JSON");
  generate->callback([&c] { c.rc = KeyGenerate(c.generate_options); });

  AddKeyRotate(key, c);

  CLI::App* list = key->add_subcommand(
      "list",
      "List every version of the family: version, key_id (as the plugin derives it), scheme, CKA_ID, key type and "
      "size, attributes (sensitive, extractable, always-sensitive, never-extractable, local, modifiable), usages, "
      "whether the plugin's KEK policy accepts it, and which version is active (the highest).");
  AddUri(list, list_options.pkcs11_uri);
  list->add_flag("--json", list_options.json,
                 "Print {\"keys\":[{\"version\":N,\"key_id\":...,\"id\":\"01\",\"active\":bool,\"scheme\":...,"
                 "...,\"hmac_key\":{...}}]} (hmac_key: aes-cbc-hmac only; with --health-listen also "
                 "\"plugin\":{...} and each key's \"last_use\":{\"known\":bool,\"uses\":N,\"timestamp\":T|null})");
  CLI::Option* plugin_health =
      list->add_option("--health-listen", list_options.plugin_metrics,
                       "HOST:PORT of the running plugin's --health-listen: add each version's last use as that "
                       "plugin saw it (Encrypts and Decrypts since it started), to tell whether an old version is "
                       "still used before retiring it (docs/rotation.md)");
  list->add_option("--metrics-listen", list_options.plugin_metrics,
                   "The same, for a plugin that serves /metrics on its own --metrics-listen")
      ->excludes(plugin_health);
  list->callback([&c] { c.rc = KeyList(c.list_options); });

  CLI::App* retire = key->add_subcommand(
      "retire",
      "Destroy an old version once every object encrypted under it was re-encrypted (e.g. "
      "`kubectl get secrets -A -o json | kubectl replace -f -`). Objects still under its key_id become unreadable "
      "for good (both keys of an aes-cbc-hmac version). Without --yes only explains what would be lost and exits 1. "
      "The active (highest) version can never be retired.");
  AddUri(retire, retire_options.pkcs11_uri);
  AddRetireChoice(retire, retire_options.version, "The version to destroy", retire_options.yes, "Really destroy it");
  retire->callback([&c] { c.rc = KeyRetire(c.retire_options); });
}

// selftest
void AddSelftest(CLI::App& app, Commands& c) {
  KeyOptions& selftest_options = c.selftest_options;
  CLI::App* selftest = app.add_subcommand(
      "selftest",
      "Check every version against the plugin's KEK policy (failures: not AES-256, extractable, not sensitive, not "
      "private, "
      "cannot encrypt/decrypt; warnings: extra usages such as wrap/unwrap/sign/verify/derive, modifiable, once "
      "extractable), then an AES-GCM round trip on the device and a tamper check (a flipped bit must be rejected). "
      "Exits 0 only if every check passes.");
  AddUri(selftest, selftest_options.pkcs11_uri);
  selftest->add_flag("--json", selftest_options.json, "Print the results as JSON");
  selftest->add_flag("--strict", selftest_options.strict,
                     "Warnings fail too: every version must have exactly the policy `key generate` gives (a gate "
                     "for keys made with other tools)");
  selftest->callback([&c] { c.rc = Selftest(c.selftest_options); });
}

// config
void AddConfig(CLI::App& app, Commands& c) {
  ConfigOptions& config_options = c.config_options;
  CLI::App* config = app.add_subcommand(
      "config",
      "Print a ready kube-apiserver EncryptionConfiguration (Secrets through the KMS v2 provider, then identity) "
      "with the matching trousseau-hsm command line. Does not open the token.");
  AddUri(config, config_options.pkcs11_uri);
  config->add_option("--listen", config_options.listen, "The plugin's socket (unix:///absolute/path)")
      ->capture_default_str();
  config->add_option("--name", config_options.name, "Provider name (no ':'), part of the etcd prefix")
      ->capture_default_str();
  config->add_option("--timeout", config_options.timeout, "kube-apiserver's timeout per KMS call")
      ->capture_default_str();
  config->callback([&c] { c.rc = Config(c.config_options); });
}

// tpm init | rotate (the commands that make a key version)
void AddTpmKeyCommands(CLI::App* tpm, Commands& c) {
  TpmOptions &tpm_init_options = c.tpm_init_options, &tpm_rotate_options = c.tpm_rotate_options;
  CLI::App* tpm_init = tpm->add_subcommand(
      "init",
      "Create the key directory (0700) if needed and key version 1 in the TPM, load it back and print its key_id "
      "(as the plugin's Status will report it). Refuses (exit 1) if the directory already holds keys: use "
      "`tpm rotate` for a new version.");
  AddTpm(tpm_init, tpm_init_options);
  AddScheme(tpm_init, tpm_init_options);
  tpm_init->add_flag("--json", tpm_init_options.json, "Print {\"version\":1,\"key_id\":...,\"scheme\":...} as JSON");
  tpm_init->callback([&c] { c.rc = TpmInit(c.tpm_init_options); });

  CLI::App* tpm_rotate = tpm->add_subcommand(
      "rotate",
      "Create version N+1 (N = the highest version in the directory) and print its key_id. A running plugin makes "
      "it active on SIGHUP or within its --key-refresh-interval; older versions keep decrypting until their files "
      "are removed.");
  AddTpm(tpm_rotate, tpm_rotate_options);
  AddScheme(tpm_rotate, tpm_rotate_options);
  tpm_rotate->add_flag("--json", tpm_rotate_options.json,
                       "Print {\"version\":N,\"key_id\":...,\"scheme\":...} as JSON");
  tpm_rotate->callback([&c] { c.rc = TpmRotate(c.tpm_rotate_options); });
}

// tpm list | selftest | retire (the commands on the versions there are)
void AddTpmVersionCommands(CLI::App* tpm, Commands& c) {
  TpmOptions &tpm_list_options = c.tpm_list_options, &tpm_selftest_options = c.tpm_selftest_options,
             &tpm_retire_options = c.tpm_retire_options;
  CLI::App* tpm_list = tpm->add_subcommand(
      "list",
      "Load every version of the directory in this TPM and list it: version, key_id (as the plugin derives it), "
      "scheme, and which version is active (the highest). Fails (exit 1) if a version does not load in this TPM.");
  AddTpm(tpm_list, tpm_list_options);
  tpm_list->add_flag("--json", tpm_list_options.json,
                     "Print {\"keys\":[{\"version\":N,\"key_id\":...,\"active\":bool,\"scheme\":...}]}");
  tpm_list->callback([&c] { c.rc = TpmList(c.tpm_list_options); });

  CLI::App* tpm_selftest = tpm->add_subcommand(
      "selftest",
      "Check the TPM has the commands the keys need, then for every version: load it, seal and open a test "
      "plaintext, and make sure a forged ciphertext is refused. Exits 0 only if every check passes.");
  AddTpm(tpm_selftest, tpm_selftest_options);
  tpm_selftest->add_flag("--json", tpm_selftest_options.json,
                         "Print {\"ok\":bool,\"failures\":[...],\"keys\":[{\"version\":N,\"key_id\":...}]}");
  tpm_selftest->callback([&c] { c.rc = TpmSelftest(c.tpm_selftest_options); });

  CLI::App* tpm_retire = tpm->add_subcommand(
      "retire",
      "Delete an old version's files once every object encrypted under it was re-encrypted (e.g. "
      "`kubectl get secrets -A -o json | kubectl replace -f -`). The TPM never stored the key: those files (and any "
      "backup of them) are its only copy, so objects still under its key_id become unreadable for good. Without "
      "--yes only explains what would be lost and exits 1. The active (highest) version can never be retired. "
      "Touches no TPM; serialised with init/rotate on the directory's lock.");
  AddTpm(tpm_retire, tpm_retire_options);
  AddRetireChoice(tpm_retire, tpm_retire_options.version, "The version to delete", tpm_retire_options.yes,
                  "Really delete it");
  tpm_retire->callback([&c] { c.rc = TpmRetire(c.tpm_retire_options); });
}

// tpm init | rotate | list | selftest | retire
void AddTpmCommands(CLI::App& app, Commands& c) {
  CLI::App* tpm = app.add_subcommand(
      "tpm",
      "The TPM 2.0 backend's key directory (the plugin's --tpm-key-dir): init, rotate, list, selftest, retire. Keys "
      "are "
      "generated in the TPM (fixedTPM: they never leave it); the directory holds only blobs this TPM can load. "
      "Run through a resource manager (device:/dev/tpmrm0, tabrmd) while the plugin runs. Exit codes: 0 ok, "
      "1 the TPM failed or the operation was refused, 2 usage error (bad flag; a key directory that is missing, "
      "unreadable, or that others own or can write to)");
  tpm->require_subcommand(1);

  AddTpmKeyCommands(tpm, c);
  AddTpmVersionCommands(tpm, c);
}

}  // namespace

int main(int argc, char** argv) {
  // SO and user PINs pass through this process: keep them out of core files and away from ptrace,
  // and take TROUSSEAU_HSM_PIN out of the environment before anything else can see or inherit it.
  if (trousseau::HardeningResult hardened = trousseau::HardenProcess(); !hardened.ok()) {
    std::cerr << kToolName << ": warning: " << hardened.failed_step()
              << " failed: a crash may write a PIN to a core file\n";
  }
  trousseau::hsm::CaptureEnvironmentPin();
  CLI::App app{
      "trousseau-hsm-init: provision the PKCS#11 token of trousseau-hsm.\n"
      "Initialise a token, create and rotate the AES-256 key family (non-extractable, encrypt/decrypt only; "
      "CKA_LABEL = family, CKA_ID = version, the highest version is active), list and retire versions, "
      "self-test the keys on the device, and print the kube-apiserver EncryptionConfiguration.\n"
      "`tpm init|rotate|list|selftest|retire` does the same for the TPM 2.0 backend's key directory.\n"
      "PINs come from files (owner-only permissions) or TROUSSEAU_HSM_PIN, never from a flag.\n"
      "Exit codes: 0 ok, 1 the operation failed or was refused, 2 usage or configuration error.",
      "trousseau-hsm-init"};
  app.set_version_flag("--version", std::string("trousseau-hsm-init ") + TROUSSEAU_VERSION);
  app.require_subcommand(1);
  Commands commands;
  AddTokenCommands(app, commands);
  AddKeyCommands(app, commands);
  AddSelftest(app, commands);
  AddConfig(app, commands);
  AddTpmCommands(app, commands);
  RecipientCli recipient_cli;
  recipient_cli.rc = &commands.rc;
  AddRecipientCommands(app, *app.get_subcommand("tpm"), recipient_cli);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (std::optional<std::string> unknown = trousseau::support::UnknownCommandError(app, argc, argv)) {
      return Fail(kExitUsage, *unknown);
    }
    if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
      // Not echoed: a misplaced argument may be a secret.
      return Fail(kExitUsage, "unexpected arguments (not shown); run with --help for the usage");
    }
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  return commands.rc;
}
