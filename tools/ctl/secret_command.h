// `trousseauctl secret generate|inject` (issue 15, docs/secrets.md): values nobody sees, written
// straight into a Kubernetes Secret that the plugin then encrypts in etcd.
#pragma once

#include <CLI/CLI.hpp>

namespace trousseauctl {

// Adds the `secret` command and its subcommands to `app`; the chosen one sets `rc`.
void AddSecretCommand(CLI::App& app, int& rc);

}  // namespace trousseauctl
