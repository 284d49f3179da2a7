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

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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
        case state::done:
          return static_cast<std::size_t>(s - p);
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
        case state::mid_line:
          break;
      }
      // Inside a line: the hot loop, from line to line within the chunk.
      const char* const run = s;  // octets from here on are counted when the run ends
      const hot_result h = hot_loop_(s, end, prev_cr_, bare_lf_, lines_);
      if (h.mid_line) {
        octets_ += static_cast<std::uint64_t>(end - run);
        state_ = state::mid_line;
        return n;
      }
      s = h.next;
      octets_ += static_cast<std::uint64_t>(s - run);
      state_ = state::line_start;
    }
    return n;
  }

  // Uses the portable hot loop even where the AVX2 one would run (tests cover both).
  static void use_portable_for_test(bool on) noexcept {
    hot_loop_ = on ? &hot_loop_portable : pick_hot_loop();
  }

 private:
  // The hot loop scans lines from s, which is inside a line (prev_cr: whether the line's
  // octets so far end in CR). It stops after an LF followed by '.' or by the end of the
  // chunk (next: the start of that line), or at the end of the chunk in the middle of a line
  // (mid_line; prev_cr updated). Work per line: find the LF, look at the octet before it.
  struct hot_result {
    const char* next;
    bool mid_line;
  };
  using hot_loop_fn = hot_result (*)(const char*, const char*, bool&, bool&, std::uint64_t&);

  static hot_result hot_loop_portable(const char* s, const char* end, bool& prev_cr_io,
                                      bool& bare_lf_io, std::uint64_t& lines_io) noexcept {
    bool prev_cr = prev_cr_io;  // locals: see hot_loop_avx2
    bool bare = false;
    std::uint64_t lines = 0;
    hot_result out{end, true};
    for (;;) {
      const auto* lf =
          static_cast<const char*>(std::memchr(s, '\n', static_cast<std::size_t>(end - s)));
      if (lf == nullptr) {
        prev_cr = end[-1] == '\r';
        break;
      }
      if (!(lf > s ? lf[-1] == '\r' : prev_cr)) {
        bare = true;
      }
      ++lines;
      s = lf + 1;
      prev_cr = false;
      if (s == end || *s == '.') {
        out = {s, false};
        break;
      }
    }
    prev_cr_io = prev_cr;
    bare_lf_io = bare_lf_io || bare;
    lines_io += lines;
    return out;
  }

#if defined(__x86_64__) && defined(__GNUC__)
  // 32 octets per step, and per line only the LF's position and the octet before it: the
  // per-call cost of memchr on 80-octet lines is most of what a large RETR costs the client.
  __attribute__((target("avx2"))) static hot_result hot_loop_avx2(
      const char* s, const char* end, bool& prev_cr_io, bool& bare_lf_io,
      std::uint64_t& lines_io) noexcept {
    // Locals, not the references: the buffer is char, which may alias anything, and the
    // compiler would otherwise store and reload them for every line.
    bool prev_cr = prev_cr_io;
    bool bare = false;
    std::uint64_t lines = 0;
    const __m256i nl = _mm256_set1_epi8('\n');
    const char* line = s;  // start of the current line
    const char* b = s;
    hot_result out{end, true};
    for (;;) {
      if (end - b < 32) {
        if (b == end) {  // the chunk ended mid-line on a block boundary
          prev_cr = end[-1] == '\r';
          break;
        }
        // The last few octets: the portable loop from the current line's unscanned part,
        // with prev_cr standing for the octet before b when b is past the line's start.
        if (b > line) {
          prev_cr = b[-1] == '\r';
        }
        out = hot_loop_portable(b, end, prev_cr, bare, lines);
        break;
      }
      auto m = static_cast<std::uint32_t>(_mm256_movemask_epi8(
          _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), nl)));
      bool stop = false;
      while (m != 0) {
        const char* lf = b + __builtin_ctz(m);
        m &= m - 1;
        if (!(lf > line ? lf[-1] == '\r' : prev_cr)) {
          bare = true;
        }
        ++lines;
        line = lf + 1;
        prev_cr = false;
        if (line == end || *line == '.') {
          stop = true;
          break;
        }
      }
      if (stop) {
        out = {line, false};
        break;
      }
      b += 32;
    }
    prev_cr_io = prev_cr;
    bare_lf_io = bare_lf_io || bare;
    lines_io += lines;
    return out;
  }
#endif

  static hot_loop_fn pick_hot_loop() noexcept {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();  // may run before libgcc's own initialisation
    if (__builtin_cpu_supports("avx2")) {
      return &hot_loop_avx2;
    }
#endif
    return &hot_loop_portable;
  }
  static inline hot_loop_fn hot_loop_ = pick_hot_loop();

  enum class state : std::uint8_t { line_start, mid_line, dot, dot_cr, done };
  state state_ = state::line_start;
  bool prev_cr_ = false;  // the last octet of the line so far was CR (it may be in an old chunk)
  bool bare_lf_ = false;
  std::uint64_t octets_ = 0;
  std::uint64_t lines_ = 0;
};

}  // namespace postern::bench
