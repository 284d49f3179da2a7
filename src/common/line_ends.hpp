// Counting the line ends a stored message needs on the wire: POP3 sends CRLF (RFC 1939
// section 3), a stored message may end its lines in a bare LF. One count for the sizes of every
// store (Maildir's read fallback, the engine's tests); I/O-free and thread-safe.
#pragma once

#include <cstdint>
#include <string_view>

namespace postern {

// The number of bare LFs (LF not preceded by CR) in `chunk`; `after_cr` says whether the
// byte before the chunk (the end of the previous chunk of the same file) was a CR. A file's
// wire size is its length plus its bare LFs. SSE2 on x86-64, a byte loop elsewhere.
std::uint64_t count_bare_lfs(std::string_view chunk, bool after_cr) noexcept;

// Octets a stored message takes on the wire before byte-stuffing: every LF not preceded by
// CR counts as two. `prev_cr` carries across chunks (start with false).
inline std::uint64_t count_wire_octets(std::string_view chunk, bool& prev_cr) noexcept {
  const std::uint64_t octets = chunk.size() + count_bare_lfs(chunk, prev_cr);
  if (!chunk.empty()) {
    prev_cr = chunk.back() == '\r';
  }
  return octets;
}

// The size a whole stored message has on the wire (RFC 1939 section 11, as mature servers
// count): its bytes, a CR for every bare LF, and the line end pop3::dot_encoder adds to an
// unterminated last line (CRLF, or only the LF after a final CR); no byte-stuffing, no ".CRLF".
// The contract between the stores' listed sizes and the encoder, pinned by tests of both.
inline std::uint64_t message_wire_octets(std::string_view stored) noexcept {
  std::uint64_t octets = stored.size() + count_bare_lfs(stored, false);
  if (!stored.empty() && stored.back() != '\n') {
    octets += stored.back() == '\r' ? 1 : 2;
  }
  return octets;
}

}  // namespace postern
