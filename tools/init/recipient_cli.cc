#include "tools/init/recipient_cli.h"

#include "core/defaults.h"

namespace trousseau::init {
namespace {

void AddSetFile(CLI::App* command, RecipientsOptions& options) {
  command->add_option("--set", options.set_file, "The recipient set file (JSON)")->required();
}

// recipients add | remove | sign | show
void AddSetCommands(CLI::App& app, RecipientCli& cli) {
  CLI::App* recipients = app.add_subcommand(
      "recipients",
      "The signed recipient set of a multi-node cluster (docs/ha.md): every plugin started with --recipient-set "
      "wraps each Secret's seed to every member, so every node decrypts what any node wrote. add and remove "
      "write a new epoch (unsigned); sign adds an administrator's signature; show prints the members and the "
      "key_id every plugin holding the set reports. Exit codes: 0 ok, 1 refused (show: not verified), 2 usage");
  recipients->require_subcommand(1);

  CLI::App* add = recipients->add_subcommand(
      "add", "Add a member (the JSON `tpm recipient export` or `recipient export` printed) as a new epoch");
  AddSetFile(add, cli.add);
  add->add_option("--member", cli.add.member_file, "The member's description (JSON file)")->required();
  add->add_option("--name", cli.add.name, "The set's name, when --set does not exist yet (it starts at epoch 1)");
  add->add_option("--ek-ca", cli.add.attestation.ek_ca_file,
                  "Require the member to be attested: the TPM makers' CA certificates (PEM) its EK certificate must "
                  "chain to; needs --challenge and --answer");
  add->add_option("--challenge", cli.add.attestation.challenge_file, "The challenge `recipients challenge` wrote");
  add->add_option("--answer", cli.add.attestation.answer_file,
                  "A file holding what `tpm recipient activate` printed on the member's node");
  add->callback([&cli] { *cli.rc = RecipientsAdd(cli.add); });

  CLI::App* challenge = recipients->add_subcommand(
      "challenge",
      "Check a TPM member's attestation (`tpm recipient export --attest`) and write a challenge only its TPM can "
      "answer (`tpm recipient activate`)");
  challenge->add_option("--member", cli.challenge.member_file, "The member's description with its attestation")
      ->required();
  challenge->add_option("--ek-ca", cli.challenge.ek_ca_file, "The TPM makers' CA certificates (PEM bundle)")
      ->required();
  challenge->add_option("--out", cli.challenge.challenge_file, "Where to write the challenge (JSON)")->required();
  challenge->callback([&cli] { *cli.rc = RecipientsChallenge(cli.challenge); });

  CLI::App* remove = recipients->add_subcommand("remove", "Remove a member as a new epoch");
  AddSetFile(remove, cli.remove);
  remove->add_option("--id", cli.remove.id, "The member to remove")->required();
  remove->callback([&cli] { *cli.rc = RecipientsRemove(cli.remove); });

  CLI::App* sign = recipients->add_subcommand(
      "sign", "Sign the set with an administrator's Ed25519 key (openssl genpkey -algorithm ed25519)");
  AddSetFile(sign, cli.sign);
  sign->add_option("--admin-key-file", cli.sign.admin_key_file,
                   "The administrator's private key (PEM); a regular file only its owner can read")
      ->required();
  sign->callback([&cli] { *cli.rc = RecipientsSign(cli.sign); });

  CLI::App* show = recipients->add_subcommand("show", "Print the members, the key_id and the signatures");
  AddSetFile(show, cli.show);
  show->add_option("--admin-key", cli.show.admin_public_keys,
                   "Verify against these administrator public keys (PEM files), as a plugin would");
  show->add_option("--threshold", cli.show.threshold, "Signatures needed to verify")->capture_default_str();
  show->add_flag("--json", cli.show.json, "Print JSON");
  show->callback([&cli] { *cli.rc = RecipientsShow(cli.show); });
}

// recipient create | export (PKCS#11)
void AddPkcs11KeyCommands(CLI::App& app, RecipientCli& cli) {
  CLI::App* recipient = app.add_subcommand(
      "recipient",
      "This HSM's recipient key for a multi-node recipient set: an EC P-256 key pair made on the token (the "
      "private key sensitive, never extractable, derive only). create and export print the member JSON that "
      "`recipients add --member` takes");
  recipient->require_subcommand(1);
  for (auto [name, options, help] :
       {std::tuple{"create", &cli.pkcs11_create, "Create the key pair x-recipient names on the token"},
        std::tuple{"export", &cli.pkcs11_export, "Print the member JSON of the existing key pair"}}) {
    CLI::App* command = recipient->add_subcommand(name, help);
    command->add_option("--pkcs11-uri", options->pkcs11_uri, "URI of the token, with x-recipient=LABEL")->required();
    command->add_option("--id", options->id, "This member's name in the set")->required();
    RecipientKeyOptions* o = options;
    const bool create = std::string_view(name) == "create";
    command->callback([&cli, o, create] { *cli.rc = create ? Pkcs11RecipientCreate(*o) : Pkcs11RecipientExport(*o); });
  }
}

// tpm recipient create | export
void AddTpmKeyCommands(CLI::App& tpm, RecipientCli& cli) {
  CLI::App* recipient = tpm.add_subcommand(
      "recipient",
      "This node's TPM recipient key for a multi-node recipient set: an ECC P-256 decrypt key made in the TPM "
      "(fixedTPM | fixedParent | sensitiveDataOrigin). create and export print the member JSON that `recipients "
      "add --member` takes");
  recipient->require_subcommand(1);
  for (auto [name, options, help] :
       {std::tuple{"create", &cli.tpm_create, "Create the recipient key in the directory (0700)"},
        std::tuple{"export", &cli.tpm_export, "Print the member JSON of the existing key"}}) {
    CLI::App* command = recipient->add_subcommand(name, help);
    options->tcti = defaults::kTpmTcti;
    // The plugin's names (--tcti and --recipient-dir are accepted too).
    command
        ->add_option("--tpm-tcti,--tcti", options->tcti,
                     "TCTI of the TPM, as the plugin's --tpm-tcti (env TROUSSEAU_HSM_TPM_TCTI)")
        ->envname("TROUSSEAU_HSM_TPM_TCTI")
        ->capture_default_str();
    command
        ->add_option("--tpm-recipient-dir,--recipient-dir", options->recipient_dir,
                     "Directory of the recipient key (0700), the plugin's --tpm-recipient-dir")
        ->required();
    command->add_option("--id", options->id, "This member's name in the set")->required();
    command->add_flag("--attest", options->attest,
                      "Add the TPM's evidence (TPM2_Certify by an attestation key, the EK and its certificate) for "
                      "`recipients challenge`");
    RecipientKeyOptions* o = options;
    const bool create = std::string_view(name) == "create";
    command->callback([&cli, o, create] { *cli.rc = create ? TpmRecipientCreate(*o) : TpmRecipientExport(*o); });
  }
  CLI::App* activate = recipient->add_subcommand(
      "activate", "Answer an administrator's attestation challenge with this TPM (TPM2_ActivateCredential)");
  cli.activate.tcti = defaults::kTpmTcti;
  activate->add_option("--tpm-tcti,--tcti", cli.activate.tcti, "TCTI of the TPM")
      ->envname("TROUSSEAU_HSM_TPM_TCTI")
      ->capture_default_str();
  activate->add_option("--challenge", cli.activate.challenge_file, "The challenge file")->required();
  activate->callback([&cli] { *cli.rc = TpmRecipientActivate(cli.activate); });
}

}  // namespace

void AddRecipientCommands(CLI::App& app, CLI::App& tpm, RecipientCli& cli) {
  AddSetCommands(app, cli);
  AddPkcs11KeyCommands(app, cli);
  AddTpmKeyCommands(tpm, cli);
}

}  // namespace trousseau::init
