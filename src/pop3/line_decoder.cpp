#include "pop3/line_decoder.hpp"

#include <cstring>

namespace postern::pop3 {

line_decoder::result line_decoder::decode(std::string_view input, std::size_t max_line) noexcept {
  const void* lf = input.empty() ? nullptr : std::memchr(input.data(), '\n', input.size());
  if (discarding_) {
    if (lf == nullptr) {
      return {status::need_more, {}, input.size()};
    }
    discarding_ = false;
    auto end = static_cast<std::size_t>(static_cast<const char*>(lf) - input.data());
    return {status::too_long, {}, end + 1};
  }
  if (lf == nullptr) {
    if (input.size() >= max_line) {
      discarding_ = true;
      return {status::need_more, {}, input.size()};
    }
    return {status::need_more, {}, 0};
  }
  auto end = static_cast<std::size_t>(static_cast<const char*>(lf) - input.data());
  if (end + 1 > max_line) {
    return {status::too_long, {}, end + 1};
  }
  std::string_view line = input.substr(0, end);
  if (!line.empty() && line.back() == '\r') {
    line.remove_suffix(1);
  }
  if (line.find('\0') != std::string_view::npos) {
    return {status::invalid, {}, end + 1};
  }
  return {status::line, line, end + 1};
}

}  // namespace postern::pop3
