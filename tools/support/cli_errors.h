// A mistyped subcommand, said as such: CLI11 alone answers "A subcommand is required" for
// `trousseau-hsm-init kee list`, without naming the word or the commands there are.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

namespace trousseau::support {

// The error for the first argument of `argv` that stands where a subcommand of `app` is expected but
// names none: "unknown command 'kee' for 'trousseau-hsm-init'; did you mean 'key'?" (or the list of
// commands). The word is shown only when it is a near miss of a command (a typo): anything else may be
// a secret pasted in the wrong place. nullopt when every command word is known, or after an unknown
// option (its value could be the next word).
std::optional<std::string> UnknownCommandError(CLI::App& app, int argc, char** argv);

}  // namespace trousseau::support
