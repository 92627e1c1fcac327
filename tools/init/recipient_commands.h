// recipients add | remove | sign | show: the signed recipient set every plugin of a multi-node
// cluster loads (docs/ha.md, src/recipients/recipient_set.h). The set is a public document: these
// commands print and write it freely. The administrator's private key comes from a file readable
// by its owner only, never from a flag value.
#pragma once

#include <string>
#include <vector>

#include "tools/init/attestation_commands.h"

namespace trousseau::init {

struct RecipientsOptions {
  std::string set_file;
  std::string name;                // add: the set's name when the file does not exist yet
  std::string member_file;         // add: a member description (`tpm recipient export` / `recipient export`)
  std::string id;                  // remove
  std::string admin_key_file;      // sign: Ed25519 private key (PEM), owner-only permissions
  AttestationOptions attestation;  // add: --ek-ca, --challenge, --answer
  std::vector<std::string> admin_public_keys;  // show: verify against these (PEM files)
  size_t threshold = 1;                        // show
  bool json = false;
};

// The device side: make (or show) this node's recipient key and print its member description, the
// JSON `recipients add --member` takes.
struct RecipientKeyOptions {
  std::string id;          // the member's id in the set (e.g. the node's name)
  std::string pkcs11_uri;  // recipient create|export: a URI with x-recipient=LABEL
  std::string tcti;        // tpm recipient create|export
  std::string recipient_dir;
  bool attest = false;  // tpm recipient create|export --attest: add the TPM's evidence
};
int TpmRecipientCreate(const RecipientKeyOptions& options);
int TpmRecipientExport(const RecipientKeyOptions& options);
int Pkcs11RecipientCreate(const RecipientKeyOptions& options);
int Pkcs11RecipientExport(const RecipientKeyOptions& options);

int RecipientsAdd(const RecipientsOptions& options);
int RecipientsRemove(const RecipientsOptions& options);
int RecipientsSign(const RecipientsOptions& options);
int RecipientsShow(const RecipientsOptions& options);

}  // namespace trousseau::init
