// The few string helpers the project needs, on std::string_view.
#pragma once

#include <charconv>
#include <chrono>
#include <concepts>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace trousseau {

namespace strings_internal {
inline void Append(std::string& out, std::string_view piece) { out.append(piece); }
inline void Append(std::string& out, const char* piece) { out.append(piece); }
inline void Append(std::string& out, const std::string& piece) { out.append(piece); }
inline void Append(std::string& out, char c) { out.push_back(c); }
template <typename N>
requires(std::is_arithmetic_v<N> && !std::same_as<N, char> && !std::same_as<N, bool>) void Append(std::string& out,
                                                                                                  N number) {
  out.append(std::to_string(number));
}
}  // namespace strings_internal

template <typename... Pieces>
std::string StrCat(const Pieces&... pieces) {
  std::string out;
  (strings_internal::Append(out, pieces), ...);
  return out;
}

template <typename... Pieces>
void StrAppend(std::string& out, const Pieces&... pieces) {
  (strings_internal::Append(out, pieces), ...);
}

std::string StrJoin(const std::vector<std::string>& parts, std::string_view separator);

// Lowercase hex of arbitrary bytes.
std::string HexEncode(std::string_view bytes);

// RFC 3986 percent-encoding of everything but unreserved characters (and '/' with `keep_slash`, which
// RFC 7512 allows in a query value and keeps paths readable), e.g. for a pkcs11: URI's attributes.
std::string PercentEncode(std::string_view text, bool keep_slash = false);

// Caller-controlled text made safe and short for an error message: printable ASCII kept,
// everything else \xNN, cut at `max` input bytes with "..." appended.
std::string QuoteForMessage(std::string_view text, size_t max = 80);

// A JSON string literal (quotes included): quote and backslash escaped, control characters and DEL
// as \uXXXX. Bytes >= 0x80 pass through unchanged.
std::string JsonQuote(std::string_view text);

// The name among `names` closest to `word` (a typo: at most 2 edits, or `word` a prefix of one name
// only), for "did you mean ...?"; "" when none is close.
std::string NearestName(std::string_view word, const std::vector<std::string>& names);

// "250ms", "5s", "1m", "2h", "0" -> duration; nullopt if malformed or negative.
std::optional<std::chrono::milliseconds> ParseDuration(std::string_view text);

// Base-10 (or given base) unsigned parse of the whole string.
template <typename N>
std::optional<N> ParseUnsigned(std::string_view text, int base = 10) {
  N value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value, base);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

}  // namespace trousseau
