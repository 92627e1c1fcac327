// Reading the PostgreSQL admin DSN from a file (trousseauctl's --postgres-dsn-file, or a Secret mounted as a
// volume): the file must be a regular file, not a symbolic link, owned by this process's effective user and
// readable by nobody else (mode 0600 or 0400), since it holds the admin password. The content is read into a
// wiped buffer, without its trailing line ends. Errors name the path and the mode, never the content.
#pragma once

#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::postgres {

// A DSN longer than this is refused (a DSN is a line; a large file is the wrong file).
inline constexpr size_t kMaxDsnFileSize = 64 * 1024;

StatusOr<SecureBytes> ReadAdminDsnFile(const std::string& path);

}  // namespace trousseau::postgres
