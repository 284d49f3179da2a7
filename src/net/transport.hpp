// transport: the byte stream one session runs over (TCP, stdin/stdout, later TLS).
//
// The session driver reads and writes through this interface only, so every transport drives
// the same engine. Operations complete on the executor the transport was created on.
// close() may be called from that executor at any time (by the idle watchdog or shutdown):
// pending operations then complete with an error. Owned by the session; not thread-safe.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/buffer.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/posix/stream_descriptor.hpp>

#include <string>
#include <system_error>

namespace postern::net {

class transport {
 public:
  virtual ~transport() = default;
  // Reads at least one byte; returns 0 with `ec` set on EOF or error.
  virtual asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) = 0;
  // Writes all of `buf`; `ec` set on error.
  virtual asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) = 0;
  // Shuts the stream down and cancels pending operations. Idempotent.
  virtual void close() noexcept = 0;
};

class tcp_transport final : public transport {
 public:
  explicit tcp_transport(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override;
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override;
  void close() noexcept override;
  asio::ip::tcp::socket& socket() noexcept { return socket_; }

 private:
  asio::ip::tcp::socket socket_;
};

// inetd / master-process mode: reads from one descriptor, writes to another (both may be the
// same socket duplicated).
class stdio_transport final : public transport {
 public:
  stdio_transport(asio::posix::stream_descriptor in, asio::posix::stream_descriptor out)
      : in_(std::move(in)), out_(std::move(out)) {}
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override;
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override;
  void close() noexcept override;

 private:
  asio::posix::stream_descriptor in_;
  asio::posix::stream_descriptor out_;
};

}  // namespace postern::net
