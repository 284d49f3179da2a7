// Digit values for the hex and base64 (RFC 4648 section 4) alphabets. The base64 decoders
// that use them differ on purpose in how strict they are (padding, trailing bits), so only the
// alphabet is shared; hex has one encoder and one fixed-size decoder. Also the ASCII
// case-insensitive comparison and case mapping of protocol and config keywords (no locale).
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace postern {

constexpr char ascii_lower(char c) noexcept {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

constexpr char ascii_upper(char c) noexcept {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

// `s` with its ASCII letters in upper case; other bytes as they are.
inline std::string ascii_to_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = ascii_upper(c);
  }
  return out;
}

// `s` with its ASCII letters in lower case; other bytes as they are.
inline std::string ascii_to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = ascii_lower(c);
  }
  return out;
}

// a and b are equal but for the case of ASCII letters (no locale: bytes >= 0x80 compare as
// they are).
constexpr bool ascii_iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) {
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

inline constexpr std::string_view hex_digits = "0123456789abcdef";

// Appends the lower-case hex of `bytes` (two digits a byte) to `out`.
inline void append_hex(std::string& out, std::span<const unsigned char> bytes) {
  out.reserve(out.size() + 2 * bytes.size());
  for (unsigned char b : bytes) {
    out += hex_digits[b >> 4];
    out += hex_digits[b & 0x0F];
  }
}

// The lower-case hex of `bytes`.
inline std::string hex_encode(std::string_view bytes) {
  std::string out;
  append_hex(out, {reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()});
  return out;
}

// Decodes a hex digest of exactly out.size() bytes (2 * out.size() digits, either case) into
// `out`: the client's answer of APOP and CRAM-MD5. False when the length or a digit is wrong;
// `out` is then all zero, so a caller that compares in constant time before looking at the
// result still compares initialised bytes.
constexpr bool decode_hex_digest(std::string_view hex, std::span<unsigned char> out) noexcept {
  bool well_formed = hex.size() == 2 * out.size();
  for (std::size_t i = 0; well_formed && i < out.size(); ++i) {
    const int hi = hex_value(hex[2 * i]);
    const int lo = hex_value(hex[2 * i + 1]);
    well_formed = hi >= 0 && lo >= 0;
    out[i] = static_cast<unsigned char>(well_formed ? (hi << 4) | lo : 0);
  }
  if (!well_formed) {
    for (unsigned char& b : out) {
      b = 0;
    }
  }
  return well_formed;
}

}  // namespace postern
