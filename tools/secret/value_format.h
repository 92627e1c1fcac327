// The shapes a generated value takes (`secret generate --format/--length/--charset`):
//   hex      --length random bytes, as lowercase hex (2 characters each); default 32 bytes
//   base64   --length random bytes, as standard base64; default 32 bytes
//   alnum    --length characters drawn uniformly from A-Z a-z 0-9; default 32 characters
//   charset  --length characters drawn uniformly from --charset (implies this format); default 32
//   pem-ec-p256  a P-256 private key (PKCS#8 PEM) whose scalar is drawn from the stream (no --length)
// Characters are drawn by rejection sampling: a byte b is used only below the largest multiple of the
// alphabet's size that fits in 256, so every character is exactly equally likely (no modulo bias).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tools/secret/mixed_random.h"

namespace trousseau::secret {

enum class ValueFormat { kHex, kBase64, kAlnum, kCharset, kPemEcP256 };

struct ValueSpec {
  ValueFormat format = ValueFormat::kAlnum;
  size_t length = 32;
  std::string charset;  // kCharset: distinct bytes, at least 2
};

// From the command line's words. `format` empty: alnum, or charset when `charset` is given.
// INVALID_ARGUMENT with the reason for an unknown format, a length out of 1..4096 (or given with
// pem-ec-p256), a charset with fewer than 2 distinct characters or given with another format.
StatusOr<ValueSpec> ParseValueSpec(const std::string& format, std::optional<size_t> length,
                                   const std::optional<std::string>& charset);

// An index uniform in [0, n) (2 <= n <= 256), by rejection sampling.
size_t UniformIndex(MixedRandom& random, size_t n);

// The value, in wiped memory.
StatusOr<SecureBytes> GenerateValue(const ValueSpec& spec, MixedRandom& random);

// "alnum, 32 characters" etc., for messages (never the value).
std::string Describe(const ValueSpec& spec);

}  // namespace trousseau::secret
