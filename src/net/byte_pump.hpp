// byte_pump: streams one multi-line reply (RETR, TOP) from a stored message to the client:
// reads the message through a pop3::body_stream (which dot-stuffs it into a stream_buffer)
// and writes the buffer to the transport, block by block, until the terminator is out.
//
// Where the reads run (docs/architecture.md, "Where message reads run"): on the session's I/O
// thread while reads are fast, which they are when the message is in the page cache (a block
// is read and encoded in well under a millisecond), so the common case costs no thread hop.
// A block that took longer than slow_fill (the disk or a network file system answered) marks
// the reads of the I/O thread as slow (read_placement, one per I/O thread: the store is slow
// for all its sessions or for none): from then on every block, and the opening of every
// message (the driver asks read_placement), runs on the worker pool, until fast_to_clear
// blocks in a row were fast there.
//
// Not thread-safe; one pump per reply, used on the session's executor. The reader, buffer,
// transport, pool and placement must outlive it.
#pragma once

#include "net/transport.hpp"
#include "pop3/body_stream.hpp"

#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/awaitable.hpp>
#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <system_error>

namespace postern::net {

// Runs f() on the worker pool and resumes the calling coroutine on its own executor. f lives
// in the caller's frame, which stays alive while the caller is suspended here.
template <typename F>
asio::awaitable<void> run_blocking(asio::thread_pool& pool, F& f) {
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&pool, &f](auto handler) {
        asio::post(pool, [&f, handler = std::move(handler)]() mutable {
          f();
          auto ex = asio::get_associated_executor(handler);
          asio::dispatch(ex, std::move(handler));
        });
      },
      asio::use_awaitable);
}

// Where the message reads of one I/O thread run. Used on that thread only.
struct read_placement {
  // A block slower than this sends the reads to the worker pool.
  static constexpr std::chrono::microseconds slow_fill{2000};
  // Blocks in a row read fast on the pool that bring the reads back to the I/O thread.
  static constexpr unsigned fast_to_clear = 8;

  bool slow = false;  // reads run on the worker pool
  unsigned fast_streak = 0;
  std::uint64_t moves = 0;  // times the reads moved to the pool (a slow store, or a stall)

  // How long reading and encoding one block took (wherever it ran).
  void observe(std::chrono::steady_clock::duration took) noexcept {
    if (took > slow_fill) {
      moves += slow ? 0 : 1;
      slow = true;
      fast_streak = 0;
    } else if (slow && ++fast_streak >= fast_to_clear) {
      slow = false;
      fast_streak = 0;
    }
  }
};

class byte_pump {
 public:
  enum class outcome {
    sent,          // the whole reply was written
    held,          // the whole reply is in the buffer, unsent (may_hold, and it fit)
    read_failed,   // the store failed mid-message (read_error()): drop the connection
    write_failed,  // the transport failed (write_error())
  };

  byte_pump(transport& out, pop3::stream_buffer& buffer, asio::thread_pool& workers,
            read_placement& placement) noexcept
      : out_(out), buffer_(buffer), workers_(workers), placement_(placement) {}

  // Streams the reply of `reader` after whatever the buffer's output already holds (the
  // status line, held replies). `top_lines`: nullopt for RETR, n for TOP n. With `may_hold`,
  // a reply that ends below the buffer's batch size stays in the buffer (outcome::held), to
  // go out with the next pipelined reply. `before_write()` is called before every write (the
  // driver moves its idle deadline).
  template <typename BeforeWrite>
  asio::awaitable<outcome> run(store::message_reader& reader,
                               std::optional<std::uint64_t> top_lines, bool may_hold,
                               BeforeWrite before_write);

  std::uint64_t body_octets() const noexcept { return body_octets_; }
  const std::optional<error>& read_error() const noexcept { return read_error_; }
  std::error_code write_error() const noexcept { return write_error_; }

 private:
  // One block: on this thread, or on the pool while reads are slow.
  asio::awaitable<result<pop3::body_stream::status>> fill(pop3::body_stream& body);

  transport& out_;
  pop3::stream_buffer& buffer_;
  asio::thread_pool& workers_;
  read_placement& placement_;
  std::uint64_t body_octets_ = 0;
  std::optional<error> read_error_;
  std::error_code write_error_;
};

template <typename BeforeWrite>
asio::awaitable<byte_pump::outcome> byte_pump::run(store::message_reader& reader,
                                                   std::optional<std::uint64_t> top_lines,
                                                   bool may_hold, BeforeWrite before_write) {
  pop3::body_stream body(reader, buffer_, top_lines);
  for (;;) {
    auto filled = co_await fill(body);
    body_octets_ = body.body_octets();
    if (!filled) {
      read_error_ = std::move(filled).err();
      co_return outcome::read_failed;
    }
    const bool finished = *filled == pop3::body_stream::status::finished;
    if (finished && may_hold && buffer_.output().size() < buffer_.batch_size()) {
      co_return outcome::held;
    }
    before_write();
    co_await out_.write_all(asio::buffer(buffer_.output().data(), buffer_.output().size()),
                            write_error_);
    buffer_.clear_output();
    if (write_error_) {
      co_return outcome::write_failed;
    }
    if (finished) {
      co_return outcome::sent;
    }
  }
}

}  // namespace postern::net
