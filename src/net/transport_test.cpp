// tcp_transport over a real loopback connection: waiting for input without a buffer, reading
// into the thread's shared buffer, and writes larger than the socket buffer. Every run is
// bounded by io_context::run_for.
#include "net/transport.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <utility>

namespace postern::net {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// A connected pair: the server side wrapped in a tcp_transport, the client side a socket.
struct connected_pair {
  asio::ip::tcp::socket client;
  std::unique_ptr<tcp_transport> server;
};

connected_pair connect_pair(asio::io_context& io) {
  asio::ip::tcp::acceptor acc(io, asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  asio::ip::tcp::socket client(io);
  client.connect(acc.local_endpoint());
  asio::ip::tcp::socket accepted = acc.accept();
  return {std::move(client), std::make_unique<tcp_transport>(std::move(accepted))};
}

TEST(tcp_transport, read_shared_waits_then_reads_what_arrived) {
  asio::io_context io;
  auto pair = connect_pair(io);
  std::string got;
  std::error_code end_ec;
  bool done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          std::error_code ec;
          const std::string_view data = co_await pair.server->read_shared(ec);
          if (data.empty()) {
            end_ec = ec;
            break;
          }
          // The view points into this thread's shared buffer.
          const auto shared = shared_input_buffer();
          EXPECT_GE(data.data(), shared.data());
          EXPECT_LE(data.data() + data.size(), shared.data() + shared.size());
          got.append(data);
        }
        done = true;
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer t(io, std::chrono::milliseconds(20));
        co_await t.async_wait(use_tuple);  // the reader is waiting with nothing to read
        co_await asio::async_write(pair.client, asio::buffer(std::string_view("USER a\r\n")),
                                   use_tuple);
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(use_tuple);
        co_await asio::async_write(pair.client, asio::buffer(std::string_view("PASS b\r\n")),
                                   use_tuple);
        pair.client.shutdown(asio::ip::tcp::socket::shutdown_send);
      },
      asio::detached);
  io.run_for(std::chrono::seconds(5));
  EXPECT_TRUE(done);
  EXPECT_EQ(got, "USER a\r\nPASS b\r\n");
  EXPECT_EQ(end_ec, asio::error::eof);
}

TEST(tcp_transport, close_cancels_a_waiting_read) {
  asio::io_context io;
  auto pair = connect_pair(io);
  std::error_code ec;
  bool done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        const std::string_view data = co_await pair.server->read_shared(ec);
        EXPECT_TRUE(data.empty());
        done = true;
      },
      asio::detached);
  asio::steady_timer t(io, std::chrono::milliseconds(20));
  t.async_wait([&](std::error_code) { pair.server->close(); });
  io.run_for(std::chrono::seconds(5));
  EXPECT_TRUE(done);
  EXPECT_TRUE(ec);
}

TEST(tcp_transport, write_all_sends_more_than_the_socket_buffer_holds) {
  asio::io_context io;
  auto pair = connect_pair(io);
  // Far beyond any loopback send and receive buffer: most of it must wait for the reader.
  std::string payload(16 * 1024 * 1024, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) {
    payload[i] = static_cast<char>('a' + i % 23);
  }
  std::error_code write_ec = asio::error::would_block;
  std::string received;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await pair.server->write_all(asio::buffer(payload), write_ec);
        pair.server->close();
      },
      asio::detached);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        std::string buf(64 * 1024, '\0');
        for (;;) {
          auto [ec, n] = co_await pair.client.async_read_some(asio::buffer(buf), use_tuple);
          received.append(buf.data(), n);
          if (ec) {
            break;
          }
        }
      },
      asio::detached);
  io.run_for(std::chrono::seconds(20));
  EXPECT_FALSE(write_ec) << write_ec.message();
  EXPECT_EQ(received.size(), payload.size());
  EXPECT_TRUE(received == payload);
}

TEST(tcp_transport, write_all_reports_a_closed_peer) {
  asio::io_context io;
  auto pair = connect_pair(io);
  pair.client.close();
  std::string payload(8 * 1024 * 1024, 'x');
  std::error_code ec;
  bool done = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        // The first write may still be accepted by the kernel; a later one sees the reset.
        for (int i = 0; i < 10 && !ec; ++i) {
          co_await pair.server->write_all(asio::buffer(payload), ec);
        }
        done = true;
      },
      asio::detached);
  io.run_for(std::chrono::seconds(10));
  EXPECT_TRUE(done);
  EXPECT_TRUE(ec);
}

}  // namespace
}  // namespace postern::net
