// `postern-bench serve`: a POP3 server that does no work, for "what the machine allows".
//
// Every user and password is accepted, every maildrop holds the same messages, kept in memory
// and already in wire form (CRLF line ends, no line starting with a dot), and RETR sends one
// gathered write of status line, message and terminator. Nothing is read from disk, locked,
// logged or checked. What a real server achieves is then measured against the kernel, the
// loopback and the benchmark client themselves. Loopback only, like the client; it runs until
// SIGINT or SIGTERM. Single thread, one coroutine per connection.
#include "bench.hpp"
#include "system.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <csignal>

namespace postern::bench {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::size_t max_line = 512;  // RFC 2449: commands are at most 255 octets

// The message every maildrop holds `count` copies of: `size` octets of 78-octet lines.
std::string make_message(std::uint64_t size) {
  std::string m;
  m.reserve(size);
  const std::string line = std::string(76, 'x') + "\r\n";
  while (m.size() + line.size() <= size) {
    m += line;
  }
  std::uint64_t rest = size - m.size();
  if (rest > 0 && rest < 3 && m.size() >= line.size()) {
    m.resize(m.size() - line.size());  // too little left for a line: lengthen the last one
    rest += line.size();
  }
  if (rest >= 3) {
    m += std::string(rest - 2, 'y') + "\r\n";
  }
  return m;
}

struct null_content {
  std::string message;
  std::uint64_t count = 0;
  std::string stat_reply;
  std::string list_reply;
  std::string uidl_reply;
  std::string retr_status;
};

bool message_number(std::string_view arg, const null_content& c) {
  std::uint64_t n = 0;
  const auto [ptr, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), n);
  return ec == std::errc() && ptr == arg.data() + arg.size() && n >= 1 && n <= c.count;
}

asio::awaitable<void> serve_one(tcp::socket socket, const null_content& c) {
  std::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  std::string in;
  in.reserve(max_line);
  char buf[1024];
  static constexpr std::string_view ok = "+OK\r\n";
  static constexpr std::string_view err = "-ERR not here\r\n";
  static constexpr std::string_view dot = ".\r\n";
  std::vector<asio::const_buffer> out;  // reused: no allocation per command once warm
  out.reserve(3);
  {
    auto [e, n] = co_await asio::async_write(socket, asio::buffer("+OK no-work POP3\r\n", 18),
                                             use_tuple);
    if (e) {
      co_return;
    }
  }
  for (;;) {
    const auto lf = in.find('\n');
    if (lf == std::string::npos) {
      if (in.size() > max_line) {
        co_return;
      }
      auto [e, n] = co_await socket.async_read_some(asio::buffer(buf), use_tuple);
      if (e) {
        co_return;
      }
      in.append(buf, n);
      continue;
    }
    std::string_view line(in.data(), lf);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    const auto space = line.find(' ');
    std::string verb(line.substr(0, space));
    std::transform(verb.begin(), verb.end(), verb.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::toupper(ch)); });
    const std::string_view arg =
        space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
    out.clear();
    bool quit = false;
    if (verb == "USER" || verb == "PASS" || verb == "NOOP" || verb == "RSET") {
      out.emplace_back(asio::buffer(ok));
    } else if (verb == "QUIT") {
      out.emplace_back(asio::buffer(ok));
      quit = true;
    } else if (verb == "STAT") {
      out.emplace_back(asio::buffer(c.stat_reply));
    } else if ((verb == "LIST" || verb == "UIDL") && arg.empty()) {
      out.emplace_back(asio::buffer(verb == "LIST" ? c.list_reply : c.uidl_reply));
    } else if (verb == "RETR" && message_number(arg, c)) {
      out.emplace_back(asio::buffer(c.retr_status));
      out.emplace_back(asio::buffer(c.message));
      out.emplace_back(asio::buffer(dot));
    } else if (verb == "DELE" && message_number(arg, c)) {
      out.emplace_back(asio::buffer(ok));
    } else {
      out.emplace_back(asio::buffer(err));
    }
    in.erase(0, lf + 1);
    auto [e, n] = co_await asio::async_write(socket, out, use_tuple);
    if (e || quit) {
      co_return;
    }
  }
}

asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, const null_content& c) {
  for (;;) {
    auto [e, socket] = co_await acceptor.async_accept(use_tuple);
    if (e == asio::error::operation_aborted) {
      co_return;
    }
    if (!e) {
      asio::co_spawn(acceptor.get_executor(), serve_one(std::move(socket), c), asio::detached);
    }
  }
}

}  // namespace

int run_null_server(const options& o, std::uint64_t messages, std::uint64_t message_size) {
  std::string error;
  const auto target = parse_target(o, error);
  if (!target) {
    fmt::print(stderr, "postern-bench: {}\n", error);
    return 2;
  }
  null_content c;
  c.message = make_message(message_size);
  c.count = messages;
  c.stat_reply = fmt::format("+OK {} {}\r\n", messages, messages * c.message.size());
  c.list_reply = "+OK\r\n";
  c.uidl_reply = "+OK\r\n";
  for (std::uint64_t i = 1; i <= messages; ++i) {
    c.list_reply += fmt::format("{} {}\r\n", i, c.message.size());
    c.uidl_reply += fmt::format("{} null-{}\r\n", i, i);
  }
  c.list_reply += ".\r\n";
  c.uidl_reply += ".\r\n";
  c.retr_status = fmt::format("+OK {} octets\r\n", c.message.size());

  raise_open_file_limit();
  asio::io_context io{1};
  tcp::acceptor acceptor(io);
  std::error_code ec;
  acceptor.open(target->protocol(), ec);
  if (!ec) {
    acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    acceptor.bind(*target, ec);
  }
  if (!ec) {
    acceptor.listen(4096, ec);
  }
  if (ec) {
    fmt::print(stderr, "postern-bench serve: cannot listen on {}:{}: {}\n",
               target->address().to_string(), target->port(), ec.message());
    return 2;
  }
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const std::error_code&, int) {
    std::error_code ignored;
    acceptor.close(ignored);
    io.stop();
  });
  fmt::print("postern-bench serve: no-work POP3 server on {}:{}, {} messages of {} octets\n",
             target->address().to_string(), target->port(), messages, c.message.size());
  std::fflush(stdout);
  asio::co_spawn(io, accept_loop(acceptor, c), asio::detached);
  io.run();
  return 0;
}

}  // namespace postern::bench
