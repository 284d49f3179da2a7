#include "pop3/dot_encoder.hpp"

#include <cstring>

namespace postern::pop3 {

dot_encoder::dot_encoder(std::optional<std::uint64_t> body_lines) noexcept
    : body_lines_left_(body_lines) {}

void dot_encoder::end_line() {
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

bool dot_encoder::encode(std::string_view in, std::string& out) {
  std::size_t pos = 0;
  while (!done_ && pos < in.size()) {
    if (at_line_start_ && in[pos] == '.') {
      out.push_back('.');
    }
    at_line_start_ = false;
    const void* lf = std::memchr(in.data() + pos, '\n', in.size() - pos);
    std::size_t end = lf ? static_cast<std::size_t>(static_cast<const char*>(lf) - in.data())
                         : in.size();
    if (end > pos) {
      out.append(in.data() + pos, end - pos);
      line_len_ += end - pos;
      prev_cr_ = in[end - 1] == '\r';
    }
    if (lf == nullptr) {
      break;
    }
    if (prev_cr_) {
      out.push_back('\n');
    } else {
      out.append("\r\n", 2);
    }
    pos = end + 1;
    end_line();
  }
  return !done_;
}

void dot_encoder::finish(std::string& out) {
  if (!at_line_start_ && !done_) {
    out.append(prev_cr_ ? "\n" : "\r\n");
  }
  out.append(".\r\n", 3);
  done_ = true;
}

std::uint64_t count_wire_octets(std::string_view chunk, bool& prev_cr) noexcept {
  std::uint64_t bare_lf = 0;
  const char* p = chunk.data();
  const char* end = p + chunk.size();
  while (p < end) {
    const void* lf = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
    if (lf == nullptr) {
      break;
    }
    const char* at = static_cast<const char*>(lf);
    bool cr_before = at > chunk.data() ? at[-1] == '\r' : prev_cr;
    if (!cr_before) {
      ++bare_lf;
    }
    p = at + 1;
  }
  if (!chunk.empty()) {
    prev_cr = chunk.back() == '\r';
  }
  return chunk.size() + bare_lf;
}

}  // namespace postern::pop3
