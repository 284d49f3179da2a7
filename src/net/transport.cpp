#include "net/transport.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

namespace postern::net {
namespace {
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);
}

asio::awaitable<std::size_t> tcp_transport::read_some(asio::mutable_buffer buf, std::error_code& ec) {
  auto [e, n] = co_await socket_.async_read_some(buf, use_tuple);
  ec = e;
  co_return n;
}

asio::awaitable<void> tcp_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  auto [e, n] = co_await asio::async_write(socket_, buf, use_tuple);
  (void)n;
  ec = e;
}

void tcp_transport::close() noexcept {
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

asio::awaitable<std::size_t> stdio_transport::read_some(asio::mutable_buffer buf, std::error_code& ec) {
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
