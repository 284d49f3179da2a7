// The PROXY protocol parser and its two readers (see proxy_protocol.hpp).
#include "net/proxy_protocol.hpp"

#include "common/parse.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>

namespace postern::net::proxy {
namespace {

constexpr std::string_view v1_prefix = "PROXY ";
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};
constexpr std::size_t v2_fixed = 16;

// v2 TLV types (proxy-protocol.txt, 2.2).
constexpr std::uint8_t pp2_type_alpn = 0x01;
constexpr std::uint8_t pp2_type_authority = 0x02;
constexpr std::uint8_t pp2_type_crc32c = 0x03;
constexpr std::uint8_t pp2_type_ssl = 0x20;
constexpr std::uint8_t pp2_subtype_ssl_version = 0x21;
constexpr std::uint8_t pp2_client_ssl = 0x01;
// The longest TLV value kept as text (ALPN, AUTHORITY, SSL_VERSION); longer ones are ignored.
constexpr std::size_t max_tlv_text = 255;

parse_result invalid(std::string why) {
  parse_result r;
  r.status = parse_status::invalid;
  r.error = std::move(why);
  return r;
}

parse_result need_more() { return {}; }

bool is_prefix_of(std::string_view data, std::string_view full) {
  return full.substr(0, std::min(data.size(), full.size())) == data.substr(0, full.size());
}

// ---- v1 ----

// Dotted quad, each part 0-255 in decimal without a leading zero (inet_pton's rule, stated
// here so "1.2.3.04" is refused whatever the C library does).
std::optional<asio::ip::address_v4> parse_v4(std::string_view s) {
  asio::ip::address_v4::bytes_type b{};
  for (std::size_t i = 0; i < 4; ++i) {
    const std::size_t dot = i < 3 ? s.find('.') : s.size();
    if (dot == std::string_view::npos) {
      return std::nullopt;
    }
    const std::string_view part = s.substr(0, dot);
    if (part.empty() || part.size() > 3 || (part.size() > 1 && part[0] == '0')) {
      return std::nullopt;
    }
    const auto v = parse_u64(part);
    if (!v || *v > 255) {
      return std::nullopt;
    }
    b[i] = static_cast<unsigned char>(*v);
    s.remove_prefix(i < 3 ? dot + 1 : dot);
  }
  return asio::ip::address_v4(b);
}

std::optional<asio::ip::address_v6> parse_v6(std::string_view s) {
  if (s.empty() || s.size() > 45) {  // INET6_ADDRSTRLEN - 1
    return std::nullopt;
  }
  for (char c : s) {  // hex digits, ':' and the '.' of an embedded IPv4 address only
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                    c == ':' || c == '.';
    if (!ok) {
      return std::nullopt;
    }
  }
  char text[46];
  std::memcpy(text, s.data(), s.size());
  text[s.size()] = '\0';
  asio::ip::address_v6::bytes_type b{};
  if (::inet_pton(AF_INET6, text, b.data()) != 1) {
    return std::nullopt;
  }
  return asio::ip::address_v6(b);
}

// 0-65535 in decimal without a leading zero.
std::optional<unsigned short> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) {
    return std::nullopt;
  }
  const auto v = parse_u64(s);
  if (!v || *v > 65535) {
    return std::nullopt;
  }
  return static_cast<unsigned short>(*v);
}

// Splits "a b c d" into exactly four fields separated by single spaces.
std::optional<std::array<std::string_view, 4>> split4(std::string_view s) {
  std::array<std::string_view, 4> out;
  for (std::size_t i = 0; i < 4; ++i) {
    const std::size_t sp = i < 3 ? s.find(' ') : s.size();
    if (sp == std::string_view::npos || sp == 0 || (i == 3 && s.find(' ') != s.npos)) {
      return std::nullopt;
    }
    out[i] = s.substr(0, sp);
    s.remove_prefix(i < 3 ? sp + 1 : sp);
  }
  return out;
}

// `line` is the header without "PROXY " and without the final CRLF.
parse_result parse_v1_line(std::string_view line, std::size_t consumed) {
  parse_result r;
  r.status = parse_status::done;
  r.consumed = consumed;
  r.value.version = 1;
  if (line == "UNKNOWN" || line.starts_with("UNKNOWN ")) {  // the rest is ignored (spec 2.1)
    r.value.local = true;
    return r;
  }
  const bool tcp4 = line.starts_with("TCP4 ");
  if (!tcp4 && !line.starts_with("TCP6 ")) {
    return invalid("PROXY v1: unknown protocol");
  }
  const auto f = split4(line.substr(5));
  if (!f) {
    return invalid("PROXY v1: malformed address fields");
  }
  const auto sport = parse_port((*f)[2]);
  const auto dport = parse_port((*f)[3]);
  if (!sport || !dport) {
    return invalid("PROXY v1: bad port");
  }
  if (tcp4) {
    const auto src = parse_v4((*f)[0]);
    const auto dst = parse_v4((*f)[1]);
    if (!src || !dst) {
      return invalid("PROXY v1: bad IPv4 address");
    }
    r.value.source = {*src, *sport};
    r.value.destination = {*dst, *dport};
  } else {
    const auto src = parse_v6((*f)[0]);
    const auto dst = parse_v6((*f)[1]);
    if (!src || !dst) {
      return invalid("PROXY v1: bad IPv6 address");
    }
    r.value.source = {*src, *sport};
    r.value.destination = {*dst, *dport};
  }
  return r;
}

parse_result parse_v1(std::string_view data) {
  const std::string_view head = data.substr(0, max_v1_header);
  const std::size_t lf = head.find('\n');
  const std::string_view line = head.substr(0, lf);  // up to, not including, the LF
  // Printable ASCII up to the CR before the LF, so garbage is refused before 107 bytes came.
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if ((c < 0x20 || c > 0x7e) && !(c == '\r' && i + 1 == line.size())) {
      return invalid("PROXY v1: control character in the line");
    }
  }
  if (lf == std::string_view::npos) {
    return data.size() >= max_v1_header ? invalid("PROXY v1: no CRLF within 107 bytes")
                                        : need_more();
  }
  if (line.empty() || line.back() != '\r') {
    return invalid("PROXY v1: line not ended by CRLF");
  }
  return parse_v1_line(line.substr(v1_prefix.size(), line.size() - 1 - v1_prefix.size()), lf + 1);
}

// ---- v2 ----

std::uint16_t be16(const unsigned char* p) { return static_cast<std::uint16_t>(p[0] << 8 | p[1]); }

std::uint32_t be32(const unsigned char* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
}

// Printable ASCII without spaces, as logs may show it; anything else is left unset.
std::string tlv_text(std::string_view v) {
  if (v.empty() || v.size() > max_tlv_text) {
    return {};
  }
  for (char c : v) {
    if (c <= 0x20 || c > 0x7e) {
      return {};
    }
  }
  return std::string(v);
}

// PP2_TYPE_SSL: client bits, verify, then sub-TLVs of which SSL_VERSION is kept.
bool parse_ssl_tlv(std::string_view v, header& h) {
  if (v.size() < 5) {
    return false;
  }
  h.client_tls = (static_cast<unsigned char>(v[0]) & pp2_client_ssl) != 0;
  v.remove_prefix(5);
  while (!v.empty()) {
    if (v.size() < 3) {
      return false;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    const std::size_t len = be16(p + 1);
    if (v.size() - 3 < len) {
      return false;
    }
    if (p[0] == pp2_subtype_ssl_version) {
      h.tls_version = tlv_text(v.substr(3, len));
    }
    v.remove_prefix(3 + len);
  }
  return true;
}

// Walks the TLVs in `tlvs` (which lies at `offset` in `whole`, the complete header).
parse_result parse_tlvs(std::string_view whole, std::size_t offset, parse_result r) {
  std::string_view tlvs = whole.substr(offset);
  bool have_crc = false;
  while (!tlvs.empty()) {
    if (tlvs.size() < 3) {
      return invalid("PROXY v2: truncated TLV");
    }
    const auto* p = reinterpret_cast<const unsigned char*>(tlvs.data());
    const std::size_t len = be16(p + 1);
    if (tlvs.size() - 3 < len) {
      return invalid("PROXY v2: TLV overruns the header");
    }
    const std::string_view value = tlvs.substr(3, len);
    switch (p[0]) {
      case pp2_type_alpn:
        r.value.alpn = tlv_text(value);
        break;
      case pp2_type_authority:
        r.value.authority = tlv_text(value);
        break;
      case pp2_type_ssl:
        if (!parse_ssl_tlv(value, r.value)) {
          return invalid("PROXY v2: malformed SSL TLV");
        }
        break;
      case pp2_type_crc32c: {
        if (len != 4 || have_crc) {
          return invalid("PROXY v2: malformed CRC32C TLV");
        }
        have_crc = true;
        const std::size_t at = whole.size() - tlvs.size() + 3;
        const std::uint32_t sent = be32(p + 3);
        std::uint32_t crc = crc32c(0, whole.substr(0, at));
        crc = crc32c(crc, std::string_view("\0\0\0\0", 4));
        crc = crc32c(crc, whole.substr(at + 4));
        if (crc != sent) {
          return invalid("PROXY v2: CRC32C mismatch");
        }
        break;
      }
      default:
        break;  // NOOP, UNIQUE_ID, NETNS and unknown types are skipped
    }
    tlvs.remove_prefix(3 + len);
  }
  return r;
}

parse_result parse_v2(std::string_view data) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  if (data.size() > 12 && (p[12] >> 4) != 2) {
    return invalid("PROXY v2: unsupported version");
  }
  if (data.size() > 12 && (p[12] & 0x0f) > 1) {
    return invalid("PROXY v2: unknown command");
  }
  if (data.size() < v2_fixed) {
    return need_more();
  }
  const std::size_t total = v2_fixed + be16(p + 14);
  if (total > max_v2_header) {
    return invalid("PROXY v2: header longer than accepted");
  }
  if (data.size() < total) {
    return need_more();
  }
  const std::string_view whole = data.substr(0, total);
  parse_result r;
  r.status = parse_status::done;
  r.consumed = total;
  r.value.version = 2;
  const bool local_cmd = (p[12] & 0x0f) == 0;
  const unsigned family = p[13] >> 4;
  const unsigned proto = p[13] & 0x0f;
  if (family > 3 || proto > 2) {
    return invalid("PROXY v2: unknown address family or protocol");
  }
  if (local_cmd || family == 0) {  // the front end's own connection, or no address given
    r.value.local = true;
    return r;
  }
  const std::size_t addr_len = family == 1 ? 12 : family == 2 ? 36 : 216;
  if (total - v2_fixed < addr_len) {
    return invalid("PROXY v2: address block shorter than its family");
  }
  const unsigned char* a = p + v2_fixed;
  if (family == 3) {
    r.value.local = true;  // AF_UNIX: no IP address to take
  } else if (proto != 1) {
    return invalid("PROXY v2: not a stream connection");
  } else if (family == 1) {
    asio::ip::address_v4::bytes_type s{}, d{};
    std::memcpy(s.data(), a, 4);
    std::memcpy(d.data(), a + 4, 4);
    r.value.source = {asio::ip::address_v4(s), be16(a + 8)};
    r.value.destination = {asio::ip::address_v4(d), be16(a + 10)};
  } else {
    asio::ip::address_v6::bytes_type s{}, d{};
    std::memcpy(s.data(), a, 16);
    std::memcpy(d.data(), a + 16, 16);
    r.value.source = {asio::ip::address_v6(s), be16(a + 32)};
    r.value.destination = {asio::ip::address_v6(d), be16(a + 34)};
  }
  return parse_tlvs(whole, v2_fixed + addr_len, std::move(r));
}

}  // namespace

std::uint32_t crc32c(std::uint32_t crc, std::string_view data) {
  // Bitwise, reflected polynomial 0x82F63B78 (Castagnoli). A header is at most 4 KiB and
  // only headers that carry the TLV are checked, so no table is kept.
  crc = ~crc;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) {
      crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
  }
  return ~crc;
}

parse_result parse(std::string_view data) {
  if (data.empty()) {
    return need_more();
  }
  if (data[0] == 'P') {
    if (!is_prefix_of(data, v1_prefix)) {
      return invalid("not a PROXY header");
    }
    return data.size() < v1_prefix.size() ? need_more() : parse_v1(data);
  }
  if (!is_prefix_of(data, v2_signature)) {
    return invalid("not a PROXY header");
  }
  return data.size() < v2_signature.size() ? need_more() : parse_v2(data);
}

}  // namespace postern::net::proxy

namespace postern::net::proxy {
namespace {

// One round of a reader: `peeked` new bytes were copied (not taken) after the `have` bytes
// already taken off the socket. Says how many of them to take, and whether that ends it.
struct step {
  parse_result parsed;
  std::size_t take = 0;
};

step next_step(std::string_view buf, std::size_t have, std::size_t peeked) {
  step s{parse(buf.substr(0, have + peeked)), 0};
  if (s.parsed.status == parse_status::done) {
    s.take = s.parsed.consumed - have;  // > 0: `have` bytes alone were need_more
  } else if (s.parsed.status == parse_status::need_more) {
    s.take = peeked;  // every byte of a need_more prefix belongs to the header
    if (have + peeked >= buf.size()) {
      s.parsed = parse_result{parse_status::invalid, 0, {}, "PROXY header too long"};
    }
  }
  return s;
}

// Takes `n` bytes that a MSG_PEEK has shown are already queued.
result<void> take(int fd, char* into, std::size_t n) {
  while (n > 0) {
    const ssize_t got = ::recv(fd, into, n, MSG_DONTWAIT);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got <= 0) {
      return error::from_errno(got < 0 ? errno : ECONNRESET, "PROXY header: recv");
    }
    into += got;
    n -= static_cast<std::size_t>(got);
  }
  return {};
}

// Peeks what is queued after `have` bytes: > 0 bytes, 0 nothing yet, or an error.
result<std::size_t> peek(int fd, char* into, std::size_t room) {
  for (;;) {
    const ssize_t n = ::recv(fd, into, room, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
      return static_cast<std::size_t>(n);
    }
    if (n == 0) {
      return error(errc::temporary, "PROXY header: connection closed before the header ended");
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return std::size_t{0};
    }
    if (errno != EINTR) {
      return error::from_errno(errno, "PROXY header: recv");
    }
  }
}

// Peeks, parses and takes once. Returns the header when complete, nullopt when more bytes
// are needed (all queued ones taken, so the next wait blocks until new bytes come).
result<std::optional<header>> advance(int fd, std::array<char, max_v2_header>& buf,
                                      std::size_t& have) {
  auto n = peek(fd, buf.data() + have, buf.size() - have);
  if (!n) {
    return std::move(n).err();
  }
  if (*n == 0) {
    return std::optional<header>{};
  }
  step s = next_step(std::string_view(buf.data(), buf.size()), have, *n);
  if (s.parsed.status == parse_status::invalid) {
    return error(errc::invalid, s.parsed.error);
  }
  if (auto t = take(fd, buf.data() + have, s.take); !t) {
    return std::move(t).err();
  }
  have += s.take;
  if (s.parsed.status == parse_status::done) {
    return std::optional<header>(std::move(s.parsed.value));
  }
  return std::optional<header>{};
}

error timed_out() { return error(errc::temporary, "PROXY header: timed out"); }

}  // namespace

asio::awaitable<result<header>> async_read_header(asio::ip::tcp::socket& socket,
                                                  std::chrono::milliseconds timeout) {
  using namespace asio::experimental::awaitable_operators;
  constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<char, max_v2_header> buf;
  std::size_t have = 0;
  std::optional<asio::steady_timer> timer;  // made on the first wait only
  for (;;) {
    auto got = advance(socket.native_handle(), buf, have);
    if (!got) {
      co_return std::move(got).err();
    }
    if (*got) {
      co_return std::move(**got);
    }
    if (!timer) {
      timer.emplace(socket.get_executor(), deadline);
    }
    auto which = co_await (socket.async_wait(asio::ip::tcp::socket::wait_read, use_tuple) ||
                           timer->async_wait(use_tuple));
    if (which.index() == 1) {
      co_return timed_out();
    }
    if (auto [ec] = std::get<0>(which); ec) {
      co_return error(errc::temporary, "PROXY header: wait", ec);
    }
  }
}

result<header> read_header(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<char, max_v2_header> buf;
  std::size_t have = 0;
  for (;;) {
    auto got = advance(fd, buf, have);
    if (!got) {
      return std::move(got).err();
    }
    if (*got) {
      return std::move(**got);
    }
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return timed_out();
    }
    pollfd pfd{fd, POLLIN, 0};
    const int pr = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
    if (pr == 0) {
      return timed_out();
    }
    if (pr < 0 && errno != EINTR) {
      return error::from_errno(errno, "PROXY header: poll");
    }
  }
}

}  // namespace postern::net::proxy
