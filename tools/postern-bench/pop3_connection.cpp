#include "pop3_connection.hpp"

#include "body_scanner.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace postern::bench {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);
constexpr std::string_view capa_wire = "CAPA\r\n";

constexpr std::array<std::string_view, fault_count> fault_names = {
    "none",
    "connect_refused",
    "connect",
    "timeout",
    "eof",
    "reset",
    "io",
    "tls",
    "greeting",
    "in_use",
    "auth",
    "sys_temp",
    "sys_perm",
    "err_reply",
    "protocol",
    "line_too_long",
    "bare_lf",
    "octet_mismatch",
    "size_mismatch",
    "count_mismatch",
    "bad_uidl",
    "empty_maildrop",
    "data_after_quit",
    "stls_injection",
};

bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);
         });
}

// The fault a -ERR line names through its RFC 2449/3206 response code, else `fallback`.
fault fault_of_error_reply(std::string_view line, fault fallback) noexcept {
  std::string_view text = line.substr(std::min<std::size_t>(line.size(), 4));  // after "-ERR"
  if (text.empty() || text[0] != ' ') {
    return fallback;
  }
  text.remove_prefix(1);
  if (text.empty() || text[0] != '[') {
    return fallback;
  }
  const auto close = text.find(']');
  if (close == std::string_view::npos) {
    return fallback;
  }
  const std::string_view code = text.substr(1, close - 1);
  if (iequals(code, "IN-USE")) {
    return fault::in_use;
  }
  if (iequals(code, "AUTH")) {
    return fault::auth;
  }
  if (iequals(code, "SYS/TEMP")) {
    return fault::sys_temp;
  }
  if (iequals(code, "SYS/PERM")) {
    return fault::sys_perm;
  }
  return fallback;
}

// Parses a whole decimal number: digits only, no sign, no overflow.
bool parse_number(std::string_view s, std::uint64_t& out) noexcept {
  if (s.empty() || s[0] < '0' || s[0] > '9') {
    return false;
  }
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// RFC 1939 section 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
bool is_valid_uid(std::string_view uid) noexcept {
  return !uid.empty() && uid.size() <= 70 &&
         std::all_of(uid.begin(), uid.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
}

}  // namespace

std::string_view fault_name(fault f) noexcept { return fault_names[static_cast<std::size_t>(f)]; }

std::size_t connection_registry::sweep(bench_clock::time_point now) noexcept {
  std::size_t closed = 0;
  for (pop3_connection* c = head_; c != nullptr; c = c->next_) {
    if (c->deadline_ <= now && c->is_open()) {
      c->timed_out_ = true;
      c->close();
      ++closed;
    }
  }
  return closed;
}

void connection_registry::close_all() noexcept {
  for (pop3_connection* c = head_; c != nullptr; c = c->next_) {
    c->close();
  }
}

bool listing::has_unique_uids(std::vector<std::string_view>& scratch) const {
  scratch.clear();
  for (const auto& e : entries_) {
    scratch.push_back(uid(e));
  }
  std::sort(scratch.begin(), scratch.end());
  return std::adjacent_find(scratch.begin(), scratch.end()) == scratch.end();
}

pop3_connection::pop3_connection(const asio::any_io_executor& ex, connection_registry& registry,
                                 std::size_t buffer_size)
    : socket_(ex),
      buf_(new char[std::max<std::size_t>(buffer_size, 1024)]),
      capacity_(std::max<std::size_t>(buffer_size, 1024)),
      registry_(registry) {
  next_ = registry_.head_;
  if (next_ != nullptr) {
    next_->prev_ = this;
  }
  registry_.head_ = this;
  ++registry_.size_;
}

pop3_connection::~pop3_connection() {
  if (prev_ != nullptr) {
    prev_->next_ = next_;
  } else {
    registry_.head_ = next_;
  }
  if (next_ != nullptr) {
    next_->prev_ = prev_;
  }
  --registry_.size_;
}

void pop3_connection::reset() noexcept {
  close();
  tls_.reset();
  begin_ = end_ = 0;
  status_ = {};
  ok_ = false;
  connecting_ = false;
  fault_ = fault::none;
  timed_out_ = false;
  deadline_ = bench_clock::time_point::max();
}

bool pop3_connection::fail(fault f) noexcept {
  if (fault_ == fault::none) {
    fault_ = f;
  }
  return false;
}

void pop3_connection::close() noexcept {
  std::error_code ignored;
  socket_.close(ignored);
}

fault pop3_connection::classify(const std::error_code& ec, bool in_tls) const noexcept {
  if (timed_out_) {
    return fault::timeout;
  }
  // The first read after connect(wait = false) is where a failed connect shows.
  if (connecting_ && ec == asio::error::connection_refused) {
    return fault::connect_refused;
  }
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated) {
    return fault::eof;
  }
  if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
    return fault::reset;
  }
  if (connecting_) {
    return fault::connect;
  }
  if (in_tls && ec.category() == asio::error::get_ssl_category()) {
    return fault::tls;
  }
  return fault::io;
}

asio::awaitable<bool> pop3_connection::connect(const tcp::endpoint& to,
                                               const asio::ip::address& source, bool wait) {
  // Connected by hand rather than with async_connect: no reactor round trip and no SO_ERROR
  // query. Asio opens the socket (so closing it later needs no epoll_ctl of its own) and
  // marks it non-blocking once (one ioctl, which it would otherwise make at the first read).
  std::error_code ec;
  socket_.open(to.protocol(), ec);
  if (!ec) {
    socket_.non_blocking(true, ec);
  }
  if (ec) {
    close();
    co_return fail(fault::connect);
  }
  const int fd = socket_.native_handle();
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!source.is_unspecified()) {
#ifdef IP_BIND_ADDRESS_NO_PORT
    // Pick the port at connect time, so ports are unique per 4-tuple, not per source address.
    ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
    const tcp::endpoint from(source, 0);
    if (::bind(fd, from.data(), static_cast<socklen_t>(from.size())) != 0) {
      close();
      co_return fail(fault::connect);
    }
  }
  const int rc = ::connect(fd, to.data(), static_cast<socklen_t>(to.size()));
  const int err = rc == 0 ? 0 : errno;
  if (rc != 0 && err != EINPROGRESS) {
    close();
    co_return fail(err == ECONNREFUSED ? fault::connect_refused : fault::connect);
  }
  if (rc == 0 || !wait) {
    connecting_ = true;  // until the first read: where a refused connection shows
    co_return true;
  }
  auto [werr] = co_await socket_.async_wait(tcp::socket::wait_write, use_tuple);
  if (werr) {
    co_return fail(timed_out_ ? fault::timeout : fault::connect);
  }
  int so_error = 0;
  socklen_t len = sizeof so_error;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0 || so_error != 0) {
    co_return fail(timed_out_                 ? fault::timeout
                   : so_error == ECONNREFUSED ? fault::connect_refused
                                              : fault::connect);
  }
  co_return true;
}

asio::awaitable<bool> pop3_connection::handshake(asio::ssl::context& ctx) {
  if (begin_ != end_) {
    // RFC 2595 section 4 / CVE-2011-0411: nothing may follow the STLS reply in clear text.
    co_return fail(fault::stls_injection);
  }
  tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, ctx);
  tls_->set_verify_mode(asio::ssl::verify_none);
  auto [err] = co_await tls_->async_handshake(asio::ssl::stream_base::client, use_tuple);
  if (err) {
    co_return fail(timed_out_ ? fault::timeout : fault::tls);
  }
  co_return true;
}

pop3_connection::send_status pop3_connection::send_now(std::string_view& wire) noexcept {
  if (tls_) {
    return send_status::partial;  // the TLS stream writes through the reactor
  }
  // Commands are short: one send() nearly always takes all of it, and the reactor (and a
  // coroutine frame) is only involved when it does not.
  const ssize_t n = ::send(socket_.native_handle(), wire.data(), wire.size(), MSG_NOSIGNAL);
  if (n == static_cast<ssize_t>(wire.size())) {
    return send_status::sent;
  }
  if (n > 0) {
    wire.remove_prefix(static_cast<std::size_t>(n));
    return send_status::partial;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
    return send_status::partial;
  }
  fail(classify(std::error_code(errno, asio::error::get_system_category()), false));
  return send_status::failed;
}

asio::awaitable<bool> pop3_connection::send_rest(std::string_view wire) {
  if (tls_) {
    auto [err, n] = co_await asio::async_write(*tls_, asio::buffer(wire), use_tuple);
    if (err) {
      co_return fail(classify(err, true));
    }
    co_return true;
  }
  auto [err, n] = co_await asio::async_write(socket_, asio::buffer(wire), use_tuple);
  if (err) {
    co_return fail(classify(err, false));
  }
  co_return true;
}

asio::awaitable<bool> pop3_connection::fill() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (begin_ > 0) {
    std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ == capacity_) {
    co_return fail(fault::line_too_long);
  }
  const auto space = asio::buffer(buf_.get() + end_, capacity_ - end_);
  std::error_code err;
  std::size_t n = 0;
  if (tls_) {
    auto [e, k] = co_await tls_->async_read_some(space, use_tuple);
    err = e;
    n = k;
  } else {
    auto [e, k] = co_await socket_.async_read_some(space, use_tuple);
    err = e;
    n = k;
  }
  end_ += n;
  if (err && n == 0) {
    co_return fail(classify(err, tls_ != nullptr));
  }
  connecting_ = false;
  co_return true;
}

pop3_connection::line_status pop3_connection::take_line(std::string_view& line) noexcept {
  const char* p = buf_.get() + begin_;
  const std::size_t avail = end_ - begin_;
  const auto* lf = static_cast<const char*>(std::memchr(p, '\n', avail));
  if (lf == nullptr) {
    return line_status::need_more;
  }
  const auto n = static_cast<std::size_t>(lf - p);
  begin_ += n + 1;
  if (n == 0 || p[n - 1] != '\r') {
    fail(fault::bare_lf);
    return line_status::bad;
  }
  line = std::string_view(p, n - 1);
  return line_status::line;
}

bool pop3_connection::parse_status(std::string_view line) noexcept {
  status_ = line;
  auto starts = [&](std::string_view word) {
    return line.substr(0, word.size()) == word &&
           (line.size() == word.size() || line[word.size()] == ' ');
  };
  if (starts("+OK")) {
    ok_ = true;
  } else if (starts("-ERR")) {
    ok_ = false;
  } else {
    return fail(fault::protocol);
  }
  return true;
}

asio::awaitable<bool> pop3_connection::read_status() {
  for (;;) {
    std::string_view line;
    switch (take_line(line)) {
      case line_status::line:
        co_return parse_status(line);
      case line_status::bad:
        co_return false;
      case line_status::need_more:
        break;
    }
    if (const bool ok = co_await fill(); !ok) {
      co_return false;
    }
  }
}

asio::awaitable<bool> pop3_connection::send(std::string_view wire) {
  if (const send_status sent = send_now(wire); sent == send_status::failed) {
    co_return false;
  } else if (sent == send_status::partial) {
    const bool ok = co_await send_rest(wire);
    co_return ok;
  }
  co_return true;
}

asio::awaitable<bool> pop3_connection::reply(fault on_err) {
  for (;;) {
    std::string_view line;
    const line_status got = take_line(line);
    if (got == line_status::bad) {
      co_return false;
    }
    if (got == line_status::line) {
      if (!parse_status(line)) {
        co_return false;
      }
      break;
    }
    if (const bool ok = co_await fill(); !ok) {
      co_return false;
    }
  }
  if (!ok_) {
    co_return fail(fault_of_error_reply(status_, on_err));
  }
  co_return true;
}

asio::awaitable<bool> pop3_connection::command(std::string_view wire, fault on_err) {
  if (const bool ok = co_await send(wire); !ok) {
    co_return false;
  }
  const bool ok = co_await reply(on_err);
  co_return ok;
}

asio::awaitable<pop3_connection::line_status> pop3_connection::next_multiline(
    std::string_view& line) {
  for (;;) {
    const line_status got = take_line(line);
    if (got == line_status::bad) {
      co_return line_status::bad;
    }
    if (got == line_status::need_more) {
      if (const bool ok = co_await fill(); !ok) {
        co_return line_status::bad;
      }
      continue;
    }
    if (!line.empty() && line[0] == '.') {
      if (line.size() == 1) {
        co_return line_status::need_more;
      }
      line.remove_prefix(1);
    }
    co_return line_status::line;
  }
}

asio::awaitable<bool> pop3_connection::capa(bool& pipelining) {
  pipelining = false;
  if (const bool ok = co_await send(capa_wire); !ok) {
    co_return false;
  }
  if (const bool ok = co_await read_status(); !ok) {
    co_return false;
  }
  if (!ok_) {
    co_return true;  // no RFC 2449: nothing advertised
  }
  for (;;) {
    std::string_view line;
    const line_status got = co_await next_multiline(line);
    if (got == line_status::bad) {
      co_return false;
    }
    if (got == line_status::need_more) {
      co_return true;
    }
    // RFC 2449 section 6: a capability is a tag, optionally followed by parameters.
    if (iequals(line.substr(0, std::min(line.find(' '), line.size())), "PIPELINING")) {
      pipelining = true;
    }
  }
}

bool pop3_connection::status_number(std::uint64_t& out, std::size_t index) const noexcept {
  std::string_view rest = status_.substr(std::min<std::size_t>(status_.size(), 3));  // "+OK"
  for (std::size_t i = 0;; ++i) {
    if (rest.empty() || rest[0] != ' ') {
      return false;
    }
    rest.remove_prefix(1);
    const auto end = std::min(rest.find(' '), rest.size());
    if (i == index) {
      return parse_number(rest.substr(0, end), out);
    }
    rest.remove_prefix(end);
  }
}

asio::awaitable<bool> pop3_connection::read_body(body_result& out, octet_sink sink) {
  body_scanner scan;
  for (;;) {
    if (begin_ != end_) {
      const std::uint64_t before = scan.octets();
      begin_ += scan.feed(buf_.get() + begin_, end_ - begin_);
      sink.add(scan.octets() - before);
      if (scan.done()) {
        break;
      }
    }
    begin_ = end_ = 0;  // everything in the buffer was body
    if (const bool ok = co_await fill(); !ok) {
      co_return false;
    }
  }
  out.octets += scan.octets();
  out.lines += scan.lines();
  out.bare_lf = out.bare_lf || scan.bare_lf();
  co_return true;
}

asio::awaitable<bool> pop3_connection::read_listing(listing& out, bool with_uid) {
  out.clear();
  std::uint64_t last = 0;
  for (;;) {
    std::string_view line;
    const line_status got = co_await next_multiline(line);
    if (got == line_status::bad) {
      co_return false;
    }
    if (got == line_status::need_more) {
      co_return true;
    }
    const auto space = line.find(' ');
    std::uint64_t number = 0;
    if (space == std::string_view::npos || !parse_number(line.substr(0, space), number) ||
        number <= last) {
      co_return fail(fault::protocol);
    }
    last = number;
    std::string_view rest = line.substr(space + 1);
    if (with_uid) {
      if (!is_valid_uid(rest)) {
        co_return fail(fault::bad_uidl);
      }
      out.add_uid(number, rest);
    } else {
      // RFC 1939 section 5, LIST: whatever follows the size after a space is not ours to judge.
      const auto end = std::min(rest.find(' '), rest.size());
      std::uint64_t size = 0;
      if (!parse_number(rest.substr(0, end), size)) {
        co_return fail(fault::protocol);
      }
      out.add_size(number, size);
    }
  }
}

asio::awaitable<bool> pop3_connection::listing_command(std::string_view wire, listing& out,
                                                       bool with_uid) {
  if (const bool ok = co_await command(wire, fault::err_reply); !ok) {
    co_return false;
  }
  const bool ok = co_await read_listing(out, with_uid);
  co_return ok;
}

asio::awaitable<bool> pop3_connection::read_to_eof() {
  if (begin_ != end_) {
    co_return fail(fault::data_after_quit);
  }
  if (const bool ok = co_await fill(); ok) {
    co_return fail(fault::data_after_quit);
  }
  if (fault_ == fault::eof || fault_ == fault::reset) {
    fault_ = fault::none;
    co_return true;
  }
  co_return false;
}

}  // namespace postern::bench
