#include "pop3/body_stream.hpp"

#include <algorithm>
#include <cstring>

namespace postern::pop3 {

stream_buffer::stream_buffer(std::size_t read_size)
    : read_size_(std::max<std::size_t>(read_size, 16)),
      out_cap_(dot_encoder::max_encoded_size(read_size_) + dot_encoder::max_finish_size),
      storage_(new char[read_size_ + out_cap_]),  // uninitialized: every byte is written first
      in_(storage_.get()),
      out_(storage_.get() + read_size_) {}

bool stream_buffer::append(std::string_view bytes) noexcept {
  // Keep room for a read of half the read size, as fill() needs.
  const std::size_t room_after = dot_encoder::max_encoded_size(read_size_ / 2) +
                                 dot_encoder::max_finish_size;
  if (bytes.size() > out_cap_ - out_len_ || out_cap_ - out_len_ - bytes.size() < room_after) {
    return false;
  }
  std::memcpy(out_ + out_len_, bytes.data(), bytes.size());
  out_len_ += bytes.size();
  return true;
}

body_stream::body_stream(store::message_reader& reader, stream_buffer& buffer,
                         std::optional<std::uint64_t> body_lines) noexcept
    : reader_(reader), buffer_(buffer), encoder_(body_lines) {}

result<body_stream::status> body_stream::fill() {
  stream_buffer& b = buffer_;
  if (finished_) {
    return status::finished;
  }
  while (b.out_len_ < b.read_size_) {
    // The largest read whose encoding (and the terminator) surely fits the output area.
    const std::size_t room = b.out_cap_ - b.out_len_ - dot_encoder::max_finish_size;
    const std::size_t want = std::min(b.read_size_, room / 2);
    if (want == 0) {
      break;
    }
    auto n = reader_.read(std::span<char>(b.in_, want));
    if (!n) {
      return std::move(n).err();
    }
    if (*n == 0) {
      finished_ = true;
      break;
    }
    const std::size_t written =
        encoder_.encode_to(std::string_view(b.in_, std::min(*n, want)), b.out_ + b.out_len_);
    b.out_len_ += written;
    body_octets_ += written;
    if (encoder_.is_done()) {
      finished_ = true;
      break;
    }
  }
  if (!finished_) {
    return status::write_more;
  }
  b.out_len_ += encoder_.finish_to(b.out_ + b.out_len_);
  return status::finished;
}

}  // namespace postern::pop3
