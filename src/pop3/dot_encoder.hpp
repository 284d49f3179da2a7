// dot_encoder: turns stored message bytes into a POP3 multi-line body (RFC 1939 section 3).
//
// Bare LF becomes CRLF, a line starting with '.' gets one more '.', and finish() ends an
// unterminated last line and adds the ".CRLF" terminator. For TOP it passes the headers, the
// blank line and then only the first n body lines. State carries across chunks, so a message
// of any size streams through bounded buffers. Not thread-safe; one per reply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace postern::pop3 {

class dot_encoder {
 public:
  // body_lines: empty for RETR (whole message); n for TOP n.
  explicit dot_encoder(std::optional<std::uint64_t> body_lines = std::nullopt) noexcept;

  // The most bytes encode_to() writes for `n` input bytes: a '.' starting a line and a bare LF
  // each become two bytes, every other byte stays one.
  static constexpr std::size_t max_encoded_size(std::size_t n) noexcept { return 2 * n; }
  // The most bytes finish_to() writes: CRLF ending an unterminated line, then ".CRLF".
  static constexpr std::size_t max_finish_size = 5;

  // Writes the encoding of `in` to `out`, which must have room for max_encoded_size(in.size())
  // bytes, and returns the number of bytes written. Once is_done() (TOP reached its line
  // count) the rest of `in` is ignored.
  std::size_t encode_to(std::string_view in, char* out) noexcept;
  // Writes the end of the reply to `out` (room for max_finish_size bytes); returns its length.
  std::size_t finish_to(char* out) noexcept;

  // Appends the encoding of `in` to `out`. Returns false once the encoder wants no more input
  // (TOP reached its line count); the rest of `in` is ignored.
  bool encode(std::string_view in, std::string& out);

  // Appends the end of the reply: CRLF if the last line was unterminated, then ".CRLF".
  void finish(std::string& out);

  bool is_done() const noexcept { return done_; }

 private:
  void end_line() noexcept;

  std::optional<std::uint64_t> body_lines_left_;
  bool at_line_start_ = true;
  bool prev_cr_ = false;  // the last byte passed was a CR
  bool in_headers_ = true;
  std::uint64_t line_len_ = 0;  // bytes of the current line so far
  bool done_ = false;
};

}  // namespace postern::pop3
