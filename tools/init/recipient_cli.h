// The CLI of the recipient commands (recipient_commands.h): `recipients add|remove|sign|show`,
// `recipient create|export` (PKCS#11) and `tpm recipient create|export`.
#pragma once

#include <CLI/CLI.hpp>

#include "tools/init/recipient_commands.h"

namespace trousseau::init {

// Each subcommand's options, alive until its callback runs (one struct each, as in main.cc).
struct RecipientCli {
  int* rc = nullptr;
  RecipientsOptions add, remove, sign, show;
  RecipientKeyOptions tpm_create, tpm_export, pkcs11_create, pkcs11_export;
  AttestationOptions challenge, activate;
};

// Adds `recipients` and `recipient` to `app`, and `recipient` under the existing `tpm` command.
void AddRecipientCommands(CLI::App& app, CLI::App& tpm, RecipientCli& cli);

}  // namespace trousseau::init
