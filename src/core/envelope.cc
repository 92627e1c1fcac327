#include "core/envelope.h"

#include <array>
#include <cstdint>

#include "core/big_endian.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau {
namespace {
constexpr char kMagic[2] = {'T', 'H'};
}  // namespace

std::string EncodeEnvelopeHeader(uint64_t key_version, uint8_t format) {
  std::string header(kEnvelopeHeaderSize, '\0');
  header[0] = kMagic[0];
  header[1] = kMagic[1];
  header[2] = static_cast<char>(format);
  std::array<uint8_t, 8> version{};
  StoreBigEndian<8>(key_version, version);
  header.replace(3, version.size(), reinterpret_cast<const char*>(version.data()), version.size());
  return header;
}

StatusOr<ParsedEnvelope> ParseEnvelope(std::string_view ciphertext) {
  if (ciphertext.size() <= kEnvelopeHeaderSize) {
    return InvalidArgumentError(
        StrCat("ciphertext too short to be a trousseau-hsm envelope (", ciphertext.size(), " bytes)"));
  }
  if (ciphertext[0] != kMagic[0] || ciphertext[1] != kMagic[1]) {
    return InvalidArgumentError("ciphertext is not a trousseau-hsm envelope (bad magic)");
  }
  const auto format = static_cast<uint8_t>(ciphertext[2]);
  if (format != kEnvelopeFormatV1 && format != kEnvelopeFormatV2 && format != kEnvelopeFormatV3) {
    return InvalidArgumentError(StrCat("unsupported envelope format version ", format));
  }
  ParsedEnvelope parsed;
  parsed.format = format;
  parsed.key_version = LoadBigEndian({reinterpret_cast<const uint8_t*>(ciphertext.data()) + 3, 8});
  if (parsed.key_version == 0) {
    return InvalidArgumentError("envelope names key version 0, which never exists");
  }
  parsed.header = ciphertext.substr(0, kEnvelopeHeaderSize);
  parsed.sealed = ciphertext.substr(kEnvelopeHeaderSize);
  return parsed;
}

}  // namespace trousseau
