// Digit values for the hex and base64 (RFC 4648 section 4) alphabets. The decoders that use
// them differ on purpose in how strict they are (padding, trailing bits), so only the
// alphabets are shared. Also the ASCII case-insensitive comparison of protocol and config
// keywords.
#pragma once

#include <cstddef>
#include <string_view>

namespace postern {

// a and b are equal but for the case of ASCII letters (no locale: bytes >= 0x80 compare as
// they are).
constexpr bool ascii_iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) {
    return false;
  }
  const auto lower = [](char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  };
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

// 0..15 for a hex digit in either case, -1 otherwise.
constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// 0..63 for a standard base64 character, -1 otherwise (including '=').
constexpr int base64_value(char c) noexcept {
  if (c >= 'A' && c <= 'Z') {
    return c - 'A';
  }
  if (c >= 'a' && c <= 'z') {
    return c - 'a' + 26;
  }
  if (c >= '0' && c <= '9') {
    return c - '0' + 52;
  }
  if (c == '+') {
    return 62;
  }
  if (c == '/') {
    return 63;
  }
  return -1;
}

}  // namespace postern
