// Fuzz target: the command line decoder and the dot encoder (src/pop3/line_decoder.hpp,
// src/pop3/dot_encoder.hpp). The first bytes choose the line limit and the chunk sizes.
// Line decoder: the input fed in chunks yields exactly the lines a one-line-at-a-time reference
// split gives, never consumes more than it holds, and a line holds no LF or NUL and fits the
// limit. Dot encoder (RETR): the output of encode_to() over any chunking equals a reference
// encoding byte for byte, stays within max_encoded_size, and un-stuffed gives back the input
// with CRLF line ends (the round trip a client performs). TOP n: chunked equals one shot.
#include "fuzz/fuzz_check.hpp"
#include "pop3/dot_encoder.hpp"
#include "pop3/line_decoder.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

using postern::fuzz::cursor;
using postern::pop3::dot_encoder;
using postern::pop3::line_decoder;

namespace {

struct decoded {
  line_decoder::status st;
  std::string line;
  bool operator==(const decoded&) const = default;
};

// What the decoder must report for `in`, line by line (only complete lines).
std::vector<decoded> reference_lines(std::string_view in, std::size_t max_line) {
  std::vector<decoded> out;
  std::size_t pos = 0;
  for (std::size_t lf; (lf = in.find('\n', pos)) != std::string_view::npos; pos = lf + 1) {
    std::string_view line = in.substr(pos, lf - pos);
    if (lf - pos + 1 > max_line) {
      out.push_back({line_decoder::status::too_long, {}});
      continue;
    }
    if (line.ends_with('\r')) {
      line.remove_suffix(1);
    }
    if (line.find('\0') != std::string_view::npos) {
      out.push_back({line_decoder::status::invalid, {}});
    } else {
      out.push_back({line_decoder::status::line, std::string(line)});
    }
  }
  return out;
}

void check_line_decoder(std::string_view in, std::size_t max_line, cursor& c) {
  line_decoder d;
  std::vector<decoded> got;
  std::string held;  // bytes the decoder has not consumed yet
  std::size_t pos = 0;
  while (pos < in.size() || !held.empty()) {
    const std::size_t chunk = std::min<std::size_t>(in.size() - pos, 1 + c.byte() % 64);
    held.append(in.substr(pos, chunk));
    pos += chunk;
    for (;;) {
      const auto r = d.decode(held, max_line);
      FUZZ_CHECK(r.consumed <= held.size());
      if (r.st == line_decoder::status::need_more) {
        held.erase(0, r.consumed);
        break;
      }
      FUZZ_CHECK(r.consumed > 0);
      if (r.st == line_decoder::status::line) {
        FUZZ_CHECK(r.line.find('\n') == std::string_view::npos);
        FUZZ_CHECK(r.line.find('\0') == std::string_view::npos);
        FUZZ_CHECK(r.line.size() < max_line);
      }
      got.push_back({r.st, std::string(r.st == line_decoder::status::line ? r.line : "")});
      held.erase(0, r.consumed);
    }
    if (chunk == 0) {
      break;  // all input fed; what is held is an incomplete line
    }
  }
  FUZZ_CHECK(got == reference_lines(in, max_line));
}

// RETR's encoding, one byte at a time: CR before a bare LF, '.' before a leading '.', then
// the end of an unterminated line and ".CRLF".
std::string reference_encoding(std::string_view in) {
  std::string out;
  bool line_start = true;
  bool prev_cr = false;
  for (const char ch : in) {
    if (line_start && ch == '.') {
      out += '.';
    }
    if (ch == '\n' && !prev_cr) {
      out += '\r';
    }
    out += ch;
    line_start = ch == '\n';
    prev_cr = ch == '\r';
  }
  if (!line_start) {
    out += prev_cr ? "\n" : "\r\n";
  }
  return out + ".\r\n";
}

// What a client makes of a multi-line reply: lines split at CRLF, one leading '.' removed,
// up to the "." line.
std::optional<std::string> unstuff(std::string_view reply) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t e; (e = reply.find("\r\n", pos)) != std::string_view::npos; pos = e + 2) {
    std::string_view line = reply.substr(pos, e - pos);
    if (line == ".") {
      return e + 2 == reply.size() ? std::optional(out) : std::nullopt;
    }
    if (line.starts_with('.')) {
      line.remove_prefix(1);
    }
    out.append(line).append("\r\n");
  }
  return std::nullopt;
}

// The input with every line ending in CRLF, as the client stores it.
std::string crlf_form(std::string_view in) {
  std::string out;
  bool prev_cr = false;
  for (const char ch : in) {
    if (ch == '\n' && !prev_cr) {
      out += '\r';
    }
    out += ch;
    prev_cr = ch == '\r';
  }
  if (!in.empty() && in.back() != '\n') {
    out += prev_cr ? "\n" : "\r\n";
  }
  return out;
}

std::string encode_chunked(std::string_view in, std::optional<std::uint64_t> top, cursor& c) {
  dot_encoder e(top);
  std::string out;
  std::size_t pos = 0;
  while (pos < in.size()) {
    const std::size_t chunk = std::min<std::size_t>(in.size() - pos, 1 + c.byte() % 80);
    const std::size_t old = out.size();
    out.resize(old + dot_encoder::max_encoded_size(chunk));
    const std::size_t n = e.encode_to(in.substr(pos, chunk), out.data() + old);
    FUZZ_CHECK(n <= dot_encoder::max_encoded_size(chunk));
    out.resize(old + n);
    pos += chunk;
  }
  const std::size_t old = out.size();
  out.resize(old + dot_encoder::max_finish_size);
  const std::size_t n = e.finish_to(out.data() + old);
  FUZZ_CHECK(n <= dot_encoder::max_finish_size);
  out.resize(old + n);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor opts(data, size);
  const std::size_t max_line = 1 + opts.byte() % 100;
  const std::uint8_t top = opts.byte();
  const std::string_view in = opts.rest();
  // The chunk sizes come from the input itself, so they vary with it.
  cursor chunks(reinterpret_cast<const std::uint8_t*>(in.data()), in.size());
  chunks.byte();

  check_line_decoder(in, max_line, chunks);

  const std::string expected = reference_encoding(in);
  const std::string chunked = encode_chunked(in, std::nullopt, chunks);
  FUZZ_CHECK(chunked == expected);
  std::string whole;
  dot_encoder one;
  one.encode(in, whole);
  one.finish(whole);
  FUZZ_CHECK(whole == expected);
  const auto back = unstuff(expected);
  FUZZ_CHECK(back && *back == crlf_form(in));

  if (top < 64) {
    std::string top_whole;
    dot_encoder t(std::uint64_t{top});
    t.encode(in, top_whole);
    t.finish(top_whole);
    FUZZ_CHECK(encode_chunked(in, std::uint64_t{top}, chunks) == top_whole);
    FUZZ_CHECK(top_whole.size() <= expected.size());
  }
  return 0;
}
