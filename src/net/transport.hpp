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

#include <span>
#include <string>
#include <string_view>
#include <system_error>

namespace postern::net {

class tls_transport;

class transport {
 public:
  virtual ~transport() = default;
  // Reads at least one byte; returns 0 with `ec` set on EOF or error.
  virtual asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) = 0;
  // Writes all of `buf`; `ec` set on error.
  virtual asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) = 0;
  // Shuts the stream down and cancels pending operations. Idempotent.
  virtual void close() noexcept = 0;

  // True when read_shared() works: the transport can wait for input holding no buffer, so an
  // idle session costs no read buffer of its own.
  virtual bool reads_shared() const noexcept { return false; }
  // Waits until the peer has sent bytes or closed, then reads what is there into the calling
  // thread's shared input buffer (shared_input_buffer()) with no suspension between the read
  // and the return. The view is valid until the caller next suspends or reads. Returns an empty
  // view with `ec` set on EOF or error. Only when reads_shared().
  virtual asio::awaitable<std::string_view> read_shared(std::error_code& ec);

  // What the connection is, asked of the transport instead of found by casting (a wrapper
  // such as traced_transport answers for the transport inside it):
  // the TLS session this transport runs over (channel bindings, client certificate), or null;
  virtual tls_transport* tls() noexcept { return nullptr; }
  bool is_tls() noexcept { return tls() != nullptr; }
  // the socket of a plain TCP connection, which STLS may upgrade, or null.
  virtual asio::ip::tcp::socket* tcp_socket() noexcept { return nullptr; }
};

// The calling thread's input buffer for read_shared(). Every session on the thread uses it in
// turn: it holds bytes only between a read and the caller's next suspension.
std::span<char> shared_input_buffer() noexcept;

class tcp_transport final : public transport {
 public:
  explicit tcp_transport(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override;
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override;
  void close() noexcept override;
  bool reads_shared() const noexcept override { return true; }
  asio::awaitable<std::string_view> read_shared(std::error_code& ec) override;
  asio::ip::tcp::socket& socket() noexcept { return socket_; }
  asio::ip::tcp::socket* tcp_socket() noexcept override { return &socket_; }

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
