// Where `secret inject` reads a value from, never argv:
//   a terminal: one line, read with echo off (termios), the terminal's settings restored on every path,
//     including SIGINT, SIGTERM, SIGHUP and SIGQUIT (restored in the handler, then the signal is raised again);
//   stdin (--from-stdin) or a file descriptor (--from-fd N): every byte up to EOF, as is (a trailing newline
//     is part of the value: use printf '%s', not echo).
// Everything lands in wiped memory, at most 1 MiB (a Secret's limit).
#pragma once

#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::secret {

inline constexpr size_t kMaxValueBytes = 1 << 20;

// One line from the terminal `fd` with echo off; `prompt` goes to `prompt_fd` first. The line's
// newline is not part of the value. An empty line is INVALID_ARGUMENT; a non-terminal FAILED_PRECONDITION.
StatusOr<SecureBytes> ReadFromTerminal(int fd, std::string_view prompt, int prompt_fd);

// Everything from `fd` up to EOF. Empty input is INVALID_ARGUMENT.
StatusOr<SecureBytes> ReadToEnd(int fd);

}  // namespace trousseau::secret
