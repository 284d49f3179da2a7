// body_scanner: undoes and counts a POP3 multi-line body as it arrives, in chunks of any size.
//
// RFC 1939 section 3: a line starting with "." has it doubled by the server; the body ends
// with a line holding a single ".". The scanner drops the stuffing dot, counts every other
// octet (line ends included), counts lines, notes any line that ends in LF without CR, and
// stops right after the terminator. Work per line is one memchr for the LF, one look at the
// byte before it and one at the byte after it: no copy, no allocation. State that straddles
// a chunk boundary (a dot at the end of a chunk, a CR right before it) is kept between calls,
// so the caller may hand over whatever the socket gave it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace postern::bench {

class body_scanner {
 public:
  std::uint64_t octets() const noexcept { return octets_; }  // CRLFs in, stuffing and end out
  std::uint64_t lines() const noexcept { return lines_; }
  bool bare_lf() const noexcept { return bare_lf_; }
  bool done() const noexcept { return state_ == state::done; }

  // Scans [p, p + n) and returns how many bytes belong to the body: all n, or fewer when the
  // terminator ends inside the chunk (the rest is the server's next reply).
  std::size_t feed(const char* p, std::size_t n) noexcept {
    const char* const end = p + n;
    const char* s = p;  // start of the unscanned part of the current line
    while (s < end) {
      switch (state_) {
        case state::done: return static_cast<std::size_t>(s - p);
        case state::line_start:
          if (*s == '.') {
            state_ = state::dot;
            ++s;
            continue;
          }
          prev_cr_ = false;
          break;
        case state::dot:  // a '.' opened the line: the end, or a stuffing dot
          if (*s == '\n') {
            bare_lf_ = true;
            state_ = state::done;
            return static_cast<std::size_t>(s + 1 - p);
          }
          if (*s == '\r') {
            state_ = state::dot_cr;
            ++s;
            continue;
          }
          prev_cr_ = false;  // the dot was stuffing: the line goes on from here
          break;
        case state::dot_cr:  // ".\r": the end, or a stuffed line starting with CR
          if (*s == '\n') {
            state_ = state::done;
            return static_cast<std::size_t>(s + 1 - p);
          }
          ++octets_;  // the CR is the line's first octet
          prev_cr_ = true;
          break;
        case state::mid_line: break;
      }
      // Inside a line: the hot loop, from line to line within the chunk, with nothing per
      // line but the memchr, the CR before the LF and the byte after it.
      const char* const run = s;  // octets from here on are counted when the run ends
      for (;;) {
        const auto* lf =
            static_cast<const char*>(std::memchr(s, '\n', static_cast<std::size_t>(end - s)));
        if (lf == nullptr) {
          octets_ += static_cast<std::uint64_t>(end - run);
          prev_cr_ = end[-1] == '\r';
          state_ = state::mid_line;
          return n;
        }
        if (!(lf > s ? lf[-1] == '\r' : prev_cr_)) {
          bare_lf_ = true;
        }
        ++lines_;
        s = lf + 1;
        if (s == end || *s == '.') {
          break;  // the next line needs a look at its first octets
        }
        prev_cr_ = false;
      }
      octets_ += static_cast<std::uint64_t>(s - run);
      state_ = state::line_start;
    }
    return n;
  }

 private:
  enum class state : std::uint8_t { line_start, mid_line, dot, dot_cr, done };
  state state_ = state::line_start;
  bool prev_cr_ = false;  // the last octet of the line so far was CR (it may be in an old chunk)
  bool bare_lf_ = false;
  std::uint64_t octets_ = 0;
  std::uint64_t lines_ = 0;
};

}  // namespace postern::bench
