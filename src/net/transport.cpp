#include "net/transport.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <sys/socket.h>

#include <cerrno>

namespace postern::net {
namespace {
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// Commands are at most 255 octets and a pipelining client sends a few at a time; a bigger
// burst is simply read in several turns.
constexpr std::size_t shared_input_size = 16 * 1024;
}  // namespace

// Not inlined, so the thread's buffer is looked up after a resumption, never remembered from
// before a suspension.
[[gnu::noinline]] std::span<char> shared_input_buffer() noexcept {
  thread_local char buffer[shared_input_size];
  return {buffer, sizeof buffer};
}

asio::awaitable<std::string_view> transport::read_shared(std::error_code& ec) {
  ec = asio::error::operation_not_supported;
  co_return std::string_view{};
}

asio::awaitable<std::size_t> tcp_transport::read_some(asio::mutable_buffer buf,
                                                      std::error_code& ec) {
  auto [e, n] = co_await socket_.async_read_some(buf, use_tuple);
  ec = e;
  co_return n;
}

asio::awaitable<std::string_view> tcp_transport::read_shared(std::error_code& ec) {
  for (;;) {
    auto [e] = co_await socket_.async_wait(asio::socket_base::wait_read, use_tuple);
    if (e) {
      ec = e;
      co_return std::string_view{};
    }
    const std::span<char> buf = shared_input_buffer();
    const ssize_t n = ::recv(socket_.native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n > 0) {
      ec = {};
      co_return std::string_view(buf.data(), static_cast<std::size_t>(n));
    }
    if (n == 0) {
      ec = asio::error::eof;
      co_return std::string_view{};
    }
    const int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
      continue;  // readiness without data (a spurious wakeup): wait again
    }
    ec = std::error_code(err, std::system_category());
    co_return std::string_view{};
  }
}

asio::awaitable<void> tcp_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  // Most replies fit the socket's send buffer: send at once, and wait for the socket only for
  // what did not fit. (An operation that completes at once would still be queued as a
  // completion by the event loop, costing a pass through it per reply.)
  const char* data = static_cast<const char*>(buf.data());
  std::size_t left = buf.size();
  while (left > 0) {
    const ssize_t n = ::send(socket_.native_handle(), data, left, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      left -= static_cast<std::size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EAGAIN;
    if (err == EINTR) {
      continue;
    }
    if (err == EAGAIN || err == EWOULDBLOCK) {
      break;
    }
    ec = std::error_code(err, std::system_category());
    co_return;
  }
  ec = {};
  if (left > 0) {
    auto [e, n] = co_await asio::async_write(socket_, asio::const_buffer(data, left), use_tuple);
    (void)n;
    ec = e;
  }
}

void tcp_transport::close() noexcept {
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

asio::awaitable<std::size_t> stdio_transport::read_some(asio::mutable_buffer buf,
                                                        std::error_code& ec) {
  auto [e, n] = co_await in_.async_read_some(buf, use_tuple);
  ec = e;
  co_return n;
}

asio::awaitable<void> stdio_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  auto [e, n] = co_await asio::async_write(out_, buf, use_tuple);
  (void)n;
  ec = e;
}

void stdio_transport::close() noexcept {
  std::error_code ignored;
  in_.close(ignored);
  out_.close(ignored);
}

}  // namespace postern::net
