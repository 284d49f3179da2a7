// line_decoder: splits client bytes into command lines. Sans-I/O and resumable at any byte.
//
// Lines end in CRLF or a bare LF (the CR is stripped). A line holding a NUL is invalid. A line
// longer than the limit is discarded up to and including its LF without buffering it, and
// reported once as too_long when its end arrives, so replies keep their order.
// Not thread-safe; one per session.
#pragma once

#include <cstddef>
#include <string_view>

namespace postern::pop3 {

class line_decoder {
 public:
  enum class status {
    need_more,  // no complete line yet; `consumed` bytes may be dropped (discarding)
    line,       // `line` is a complete line without its line end
    too_long,   // an over-long line ended; it was dropped
    invalid,    // a line with a NUL byte ended; it was dropped
  };
  struct result {
    status st = status::need_more;
    std::string_view line;     // valid while the caller's buffer is unchanged
    std::size_t consumed = 0;  // bytes of the input the caller must drop
  };

  // Decodes the next line from `input` (the unconsumed bytes the caller holds), allowing
  // lines of at most `max_line` bytes including the line end.
  result decode(std::string_view input, std::size_t max_line) noexcept;

 private:
  bool discarding_ = false;
};

}  // namespace postern::pop3
