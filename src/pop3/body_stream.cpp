#include "pop3/body_stream.hpp"

#include "common/mapped_access.hpp"

#include <algorithm>
#include <cstring>

namespace postern::pop3 {

stream_buffer::stream_buffer(std::size_t read_size, std::size_t batch_size)
    : read_size_(std::max<std::size_t>(read_size, 16)),
      batch_size_(std::max(batch_size, read_size_)),
      out_cap_(batch_size_ - read_size_ + dot_encoder::max_encoded_size(read_size_) +
               dot_encoder::max_finish_size),
      storage_(new char[read_size_ + out_cap_]),  // uninitialized: every byte is written first
      in_(storage_.get()),
      out_(storage_.get() + read_size_) {}

bool stream_buffer::append(std::string_view bytes) noexcept {
  // Keep room for a read of half the read size, as fill() needs.
  const std::size_t room_after =
      dot_encoder::max_encoded_size(read_size_ / 2) + dot_encoder::max_finish_size;
  if (bytes.size() > out_cap_ - out_len_ || out_cap_ - out_len_ - bytes.size() < room_after) {
    return false;
  }
  std::memcpy(out_ + out_len_, bytes.data(), bytes.size());
  out_len_ += bytes.size();
  return true;
}

stream_buffer_pool::stream_buffer_pool(std::size_t large_read_size, std::size_t small_read_size,
                                       std::size_t max_large, std::size_t kept,
                                       std::size_t large_batch_size)
    : large_read_size_(large_read_size),
      large_batch_size_(large_batch_size),
      small_read_size_(small_read_size),
      max_large_(max_large),
      kept_(kept) {
  free_.reserve(kept_);
}

stream_buffer_pool::lease::~lease() {
  if (pool_ != nullptr && buffer_) {
    pool_->give_back(std::move(buffer_));
  }
}

stream_buffer_pool::lease stream_buffer_pool::acquire() {
  std::unique_ptr<stream_buffer> b;
  if (!free_.empty()) {
    b = std::move(free_.back());
    free_.pop_back();
  } else if (large_in_use_ < max_large_) {
    b = std::make_unique<stream_buffer>(large_read_size_, large_batch_size_);
  } else {
    b = std::make_unique<stream_buffer>(small_read_size_);
  }
  if (b->read_size() == large_read_size_) {
    ++large_in_use_;
  }
  return lease(this, std::move(b));
}

void stream_buffer_pool::give_back(std::unique_ptr<stream_buffer> b) noexcept {
  b->clear_output();
  if (b->read_size() != large_read_size_) {
    return;  // a small one, made because too many large ones were out: freed
  }
  --large_in_use_;
  if (free_.size() < kept_) {
    free_.push_back(std::move(b));  // cannot throw: kept_ slots were reserved
  }
}

body_stream::body_stream(store::message_reader& reader, stream_buffer& buffer,
                         std::optional<std::uint64_t> body_lines) noexcept
    : reader_(reader), buffer_(buffer), encoder_(body_lines) {}

result<body_stream::status> body_stream::fill() {
  stream_buffer& b = buffer_;
  if (finished_) {
    return status::finished;
  }
  while (b.out_len_ < b.batch_size_) {
    // The largest read whose encoding (and the terminator) surely fits the output area.
    const std::size_t room = b.out_cap_ - b.out_len_ - dot_encoder::max_finish_size;
    const std::size_t want = std::min(b.read_size_, room / 2);
    if (want == 0) {
      break;
    }
    std::size_t written = 0;
    if (source_ == source::maybe_mapped || source_ == source::mapped) {
      auto view = reader_.map_next(want);
      if (!view) {
        return std::move(view).err();
      }
      if (!*view) {
        source_ = source::reads;  // no mapping: read as before
        continue;
      }
      source_ = source::mapped;
      const std::span<const char> bytes = **view;
      if (bytes.empty()) {
        finished_ = true;
        break;
      }
      const mapped_access guard(bytes.data(), bytes.size());
      written = encoder_.encode_to(std::string_view(bytes.data(), std::min(bytes.size(), want)),
                                   b.out_ + b.out_len_);
      if (guard.faulted()) {
        return error(errc::temporary, "message file shrank while it was being sent");
      }
    } else {
      auto n = reader_.read(std::span<char>(b.in_, want));
      if (!n) {
        return std::move(n).err();
      }
      if (*n == 0) {
        finished_ = true;
        break;
      }
      if (source_ == source::first_read) {
        source_ = *n >= want ? source::maybe_mapped : source::reads;
      }
      written =
          encoder_.encode_to(std::string_view(b.in_, std::min(*n, want)), b.out_ + b.out_len_);
    }
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
