#include "tools/support/cli_errors.h"

#include <string_view>
#include <vector>

#include "core/strings.h"

namespace trousseau::support {
namespace {

bool LooksLikeAWord(std::string_view word) {
  if (word.empty() || word.size() > 40) return false;
  for (char c : word) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// The option `arg` (--name or -n, without =value) as `app` or an app it falls through to knows it.
const CLI::Option* FindOption(CLI::App* app, std::string_view arg) {
  for (CLI::App* at = app; at != nullptr; at = at->get_parent()) {
    if (const CLI::Option* option = at->get_option_no_throw(std::string(arg))) return option;
  }
  return nullptr;
}

std::string CommandPath(const CLI::App* app) {
  std::string path = app->get_name();
  for (const CLI::App* at = app->get_parent(); at != nullptr; at = at->get_parent()) path = at->get_name() + " " + path;
  return path;
}

}  // namespace

std::optional<std::string> UnknownCommandError(CLI::App& app, int argc, char** argv) {
  CLI::App* current = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") return std::nullopt;
    if (arg.starts_with("-")) {
      // An option that takes a value consumes the next argument, unless given as --name=value. After an
      // unknown option the next word may be its value (`--pin 1234`): no guess, CLI11's own error stands.
      if (arg.find('=') != std::string_view::npos) continue;
      const CLI::Option* option = FindOption(current, arg);
      if (option == nullptr) return std::nullopt;
      if (option->get_type_size() != 0) ++i;
      continue;
    }
    const std::vector<CLI::App*> commands = current->get_subcommands([](CLI::App*) { return true; });
    if (commands.empty()) return std::nullopt;  // a leaf's own arguments
    std::vector<std::string> names;
    CLI::App* next = nullptr;
    for (CLI::App* command : commands) {
      if (command->check_name(std::string(arg))) next = command;
      names.push_back(command->get_name());
    }
    if (next != nullptr) {
      current = next;
      continue;
    }
    // Shown only when it is close to a command: a word unlike any may be a secret typed in the wrong place.
    const std::string suggestion = LooksLikeAWord(arg) ? NearestName(arg, names) : "";
    return StrCat("unknown command ", suggestion.empty() ? std::string("(not shown)") : StrCat("'", arg, "'"), " for '",
                  CommandPath(current), "'; ",
                  suggestion.empty() ? StrCat("the commands are: ", StrJoin(names, ", "))
                                     : StrCat("did you mean '", suggestion, "'?"));
  }
  return std::nullopt;
}

}  // namespace trousseau::support
