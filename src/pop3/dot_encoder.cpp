#include "pop3/dot_encoder.hpp"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace postern::pop3 {

dot_encoder::dot_encoder(std::optional<std::uint64_t> body_lines) noexcept
    : body_lines_left_(body_lines) {}

void dot_encoder::end_line() noexcept {
  bool empty_line = line_len_ == 0 || (line_len_ == 1 && prev_cr_);
  at_line_start_ = true;
  prev_cr_ = false;
  line_len_ = 0;
  if (!body_lines_left_) {
    return;
  }
  if (in_headers_) {
    if (empty_line) {
      in_headers_ = false;
      if (*body_lines_left_ == 0) {
        done_ = true;
      }
    }
    return;
  }
  if (*body_lines_left_ > 0 && --*body_lines_left_ == 0) {
    done_ = true;
  }
}

// One memchr per line: the run up to each LF is copied as one block, a CR goes in front of a
// bare LF and a '.' in front of a line that starts with one. prev_cr_ and at_line_start_
// carry across calls, so a CR ending one chunk and its LF starting the next stay one CRLF.
std::size_t dot_encoder::encode_to(std::string_view in, char* out) noexcept {
  const char* p = in.data();
  const char* const end = p + in.size();
  char* o = out;
#if defined(__SSE2__)
  // RETR (no line count to keep): 16 bytes at a time. Each block is stored whole, then the
  // output position advances only past the bytes before the first LF, which is written as
  // CRLF (or LF after a stored CR). Storing a whole block is safe: the output has room for
  // twice the unread input, and at least 16 bytes remain to be read.
  if (!body_lines_left_ && p < end) {
    if (at_line_start_) {
      if (*p == '.') {
        *o++ = '.';
      }
      at_line_start_ = false;
    }
    const __m128i lf = _mm_set1_epi8('\n');
    while (end - p >= 16) {
      const __m128i block = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), block);
      const auto mask = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(block, lf)));
      if (mask == 0) {
        p += 16;
        o += 16;
        continue;
      }
      const auto k = static_cast<unsigned>(__builtin_ctz(mask));
      const bool cr_before = k > 0 ? p[k - 1] == '\r' : (o > out ? o[-1] == '\r' : prev_cr_);
      o += k;
      if (!cr_before) {
        *o++ = '\r';
      }
      *o++ = '\n';
      p += k + 1;
      if (p < end && *p == '.') {
        *o++ = '.';
      }
      // The next line has started: its first byte (if any) is past the stuffing check.
      prev_cr_ = false;
      if (p == end) {
        at_line_start_ = true;
        return static_cast<std::size_t>(o - out);
      }
    }
    // Fewer than 16 bytes left, none of them at a line start: finish them one line at a time.
    if (o > out) {
      prev_cr_ = o[-1] == '\r';  // the last byte passed (a stuffed '.' is followed by a '.')
    }
  }
#endif
  while (!done_ && p < end) {
    if (at_line_start_) {
      if (*p == '.') {
        *o++ = '.';
      }
      at_line_start_ = false;
    }
    const auto* lf =
        static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    const char* stop = lf != nullptr ? lf : end;
    if (stop > p) {
      const auto len = static_cast<std::size_t>(stop - p);
      std::memcpy(o, p, len);
      o += len;
      line_len_ += len;
      prev_cr_ = stop[-1] == '\r';
    }
    if (lf == nullptr) {
      break;
    }
    if (!prev_cr_) {
      *o++ = '\r';
    }
    *o++ = '\n';
    p = lf + 1;
    end_line();
  }
  return static_cast<std::size_t>(o - out);
}

std::size_t dot_encoder::finish_to(char* out) noexcept {
  char* o = out;
  if (!at_line_start_ && !done_) {
    if (!prev_cr_) {
      *o++ = '\r';
    }
    *o++ = '\n';
  }
  *o++ = '.';
  *o++ = '\r';
  *o++ = '\n';
  done_ = true;
  at_line_start_ = true;
  return static_cast<std::size_t>(o - out);
}

bool dot_encoder::encode(std::string_view in, std::string& out) {
  const std::size_t old = out.size();
  out.resize(old + max_encoded_size(in.size()));
  out.resize(old + encode_to(in, out.data() + old));
  return !done_;
}

void dot_encoder::finish(std::string& out) {
  const std::size_t old = out.size();
  out.resize(old + max_finish_size);
  out.resize(old + finish_to(out.data() + old));
}

}  // namespace postern::pop3
