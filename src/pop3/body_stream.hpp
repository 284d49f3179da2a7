// body_stream: fills large write blocks with a multi-line reply (RETR, TOP) read from a
// message_reader.
//
// A stream_buffer has an input area, where stored bytes are read in big chunks, and an output
// area, where the dot_encoder writes the wire form after whatever replies were already pending
// (the "+OK n octets" line). The driver writes output() whenever fill() returns, so a small
// message goes out as one write (status line, body and terminator) and a large one in blocks
// of about batch_size() bytes: several reads' worth, since fewer, larger socket writes cost
// markedly less per byte. The buffer holds no per-message state and is reused from reply
// to reply (the driver keeps a few per I/O thread). Not thread-safe.
#pragma once

#include "common/result.hpp"
#include "pop3/dot_encoder.hpp"
#include "store/maildrop.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace postern::pop3 {

class stream_buffer {
 public:
  static constexpr std::size_t default_read_size = 128 * 1024;
  static constexpr std::size_t default_batch_size = 512 * 1024;

  // read_size: the largest single read (at least 16). batch_size: fill() returns once the
  // output holds that much (0 or less than read_size: read_size). The output area holds
  // batch_size plus twice read_size, the worst-case growth of encoding one read, so a read of
  // at least half of read_size always fits after less than batch_size bytes of pending
  // output.
  explicit stream_buffer(std::size_t read_size = default_read_size, std::size_t batch_size = 0);

  std::size_t read_size() const noexcept { return read_size_; }
  std::size_t batch_size() const noexcept { return batch_size_; }
  std::size_t output_capacity() const noexcept { return out_cap_; }

  // The bytes ready to send. Valid until the next call of a non-const member.
  std::string_view output() const noexcept { return {out_, out_len_}; }
  void clear_output() noexcept { out_len_ = 0; }

  // Appends bytes that must precede the body (pending replies). Returns false, appending
  // nothing, when they do not fit with room left for a read: send them on their own first.
  bool append(std::string_view bytes) noexcept;

 private:
  friend class body_stream;

  std::size_t read_size_;
  std::size_t batch_size_;
  std::size_t out_cap_;
  std::unique_ptr<char[]> storage_;
  char* in_;
  char* out_;
  std::size_t out_len_ = 0;
};

// Stream buffers for reuse, owned by one thread. A reply borrows one and gives it back, and a
// few are kept for the next replies, so streaming costs no allocation. Replies stalled on slow
// clients hold theirs, so once max_large are out the next leases get small buffers: memory
// stays bounded however many large transfers are in progress. Not thread-safe.
class stream_buffer_pool {
 public:
  static constexpr std::size_t default_max_large = 8;
  static constexpr std::size_t default_kept = 2;
  static constexpr std::size_t default_small_read_size = 16 * 1024;

  // small_read_size must differ from large_read_size. Large buffers write in batches of
  // large_batch_size, small ones of their read size.
  explicit stream_buffer_pool(std::size_t large_read_size = stream_buffer::default_read_size,
                              std::size_t small_read_size = default_small_read_size,
                              std::size_t max_large = default_max_large,
                              std::size_t kept = default_kept,
                              std::size_t large_batch_size = stream_buffer::default_batch_size);

  class lease {
   public:
    lease(lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), buffer_(std::move(other.buffer_)) {}
    lease& operator=(lease&&) = delete;
    ~lease();
    stream_buffer& get() noexcept { return *buffer_; }

   private:
    friend class stream_buffer_pool;
    lease(stream_buffer_pool* pool, std::unique_ptr<stream_buffer> b) noexcept
        : pool_(pool), buffer_(std::move(b)) {}
    stream_buffer_pool* pool_;
    std::unique_ptr<stream_buffer> buffer_;
  };

  // The lease must be given back (destroyed) on the pool's thread, before the pool ends.
  lease acquire();

  std::size_t large_in_use() const noexcept { return large_in_use_; }
  std::size_t kept() const noexcept { return free_.size(); }

 private:
  void give_back(std::unique_ptr<stream_buffer> b) noexcept;

  std::size_t large_read_size_;
  std::size_t large_batch_size_;
  std::size_t small_read_size_;
  std::size_t max_large_;
  std::size_t kept_;
  std::size_t large_in_use_ = 0;
  std::vector<std::unique_ptr<stream_buffer>> free_;
};

// One multi-line reply being streamed. `reader` and `buffer` must outlive it.
class body_stream {
 public:
  enum class status {
    write_more,  // output() is full enough: send it, clear_output(), call fill() again
    finished,    // output() holds the rest of the reply, terminator included: send it
  };

  // body_lines: empty for RETR; n for TOP n.
  body_stream(store::message_reader& reader, stream_buffer& buffer,
              std::optional<std::uint64_t> body_lines = std::nullopt) noexcept;

  // Reads and encodes until the output holds at least batch_size() bytes, the message ends or
  // TOP has its lines; at the end it appends the terminator. A read error means the reply
  // cannot be completed: the caller must drop the connection.
  [[nodiscard]] result<status> fill();

  // Body octets written so far (byte-stuffing included, the terminator excluded).
  std::uint64_t body_octets() const noexcept { return body_octets_; }

 private:
  store::message_reader& reader_;
  stream_buffer& buffer_;
  dot_encoder encoder_;
  std::uint64_t body_octets_ = 0;
  bool finished_ = false;
  // How the stored bytes come: decided after the first read, which, when it fills a whole
  // read, asks the reader for a mapping (message_reader::map_next).
  enum class source { first_read, maybe_mapped, mapped, reads } source_ = source::first_read;
};

}  // namespace postern::pop3
