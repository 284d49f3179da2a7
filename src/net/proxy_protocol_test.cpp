// The PROXY protocol parser on valid and malformed v1 and v2 headers, every prefix of valid
// ones, seeded random mutations, and both readers over real loopback sockets (a header split
// across writes, the bytes after it left unread, the timeout).
#include "net/proxy_protocol.hpp"

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/write.hpp>

#include <gtest/gtest.h>

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace postern::net::proxy {
namespace {

using namespace std::chrono_literals;

const std::string sig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string be16(std::size_t v) {
  return {static_cast<char>(v >> 8 & 0xff), static_cast<char>(v & 0xff)};
}

std::string tlv(std::uint8_t type, const std::string& value) {
  return std::string(1, static_cast<char>(type)) + be16(value.size()) + value;
}

// A v2 header: version/command byte, family/protocol byte, address block and TLVs.
std::string v2(unsigned char ver_cmd, unsigned char fam, const std::string& body) {
  return sig + std::string{static_cast<char>(ver_cmd), static_cast<char>(fam)} + be16(body.size()) +
         body;
}

std::string inet4_block() {
  // 192.0.2.7:40000 -> 198.51.100.1:110
  return std::string("\xc0\x00\x02\x07\xc6\x33\x64\x01", 8) + be16(40000) + be16(110);
}

std::string inet6_block() {
  std::string src(16, '\0'), dst(16, '\0');
  src[0] = '\x20';
  src[1] = '\x01';
  src[2] = '\x0d';
  src[3] = '\xb8';
  src[15] = '\x05';
  dst[0] = '\x20';
  dst[1] = '\x01';
  dst[2] = '\x0d';
  dst[3] = '\xb8';
  dst[15] = '\x01';
  return src + dst + be16(5555) + be16(995);
}

// Appends a CRC32C TLV whose value makes the header check.
std::string with_crc(unsigned char ver_cmd, unsigned char fam, const std::string& body) {
  std::string h = v2(ver_cmd, fam, body + tlv(0x03, std::string(4, '\0')));
  const std::uint32_t c = crc32c(0, h);
  for (int i = 0; i < 4; ++i) {
    h[h.size() - 4 + i] = static_cast<char>(c >> (24 - 8 * i) & 0xff);
  }
  return h;
}

std::string ssl_tlv(unsigned char client, const std::string& version) {
  return tlv(0x20, std::string{static_cast<char>(client), 0, 0, 0, 0} + tlv(0x21, version) +
                       tlv(0x22, "client-cn"));
}

// `h` followed by `after` (bytes the client sent next) parses as exactly `h`.
parse_result done(const std::string& h, const std::string& after = "") {
  parse_result r = parse(h + after);
  EXPECT_EQ(r.status, parse_status::done) << r.error;
  EXPECT_EQ(r.consumed, h.size());
  return r;
}

void expect_invalid(const std::string& h) {
  const parse_result r = parse(h);
  EXPECT_EQ(r.status, parse_status::invalid) << "accepted: " << testing::PrintToString(h);
  EXPECT_FALSE(r.error.empty());
}

TEST(proxy_protocol, crc32c_check_value) {
  EXPECT_EQ(crc32c(0, "123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(crc32c(0, "1234"), "56789"), 0xE3069283u);
}

TEST(proxy_protocol, v1_tcp4) {
  const std::string h = "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n";
  const parse_result r = done(h, "USER x\r\n");
  EXPECT_EQ(r.value.version, 1);
  EXPECT_FALSE(r.value.local);
  EXPECT_EQ(r.value.source.address().to_string(), "192.0.2.7");
  EXPECT_EQ(r.value.source.port(), 40000);
  EXPECT_EQ(r.value.destination.address().to_string(), "198.51.100.1");
  EXPECT_EQ(r.value.destination.port(), 110);
}

TEST(proxy_protocol, v1_tcp6_and_unknown) {
  parse_result r = done("PROXY TCP6 2001:db8::5 ::ffff:192.0.2.1 0 65535\r\n");
  EXPECT_EQ(r.value.source.address().to_string(), "2001:db8::5");
  EXPECT_EQ(r.value.source.port(), 0);
  EXPECT_EQ(r.value.destination.port(), 65535);
  EXPECT_TRUE(done("PROXY UNKNOWN\r\n").value.local);
  EXPECT_TRUE(done("PROXY UNKNOWN ffff:: 1:: 1 2\r\n").value.local);
}

TEST(proxy_protocol, v1_longest_header_is_107_bytes) {
  const std::string ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const std::string h = "PROXY TCP6 " + ip + " " + ip + " 65535 65535\r\n";
  ASSERT_EQ(h.size(), 104u);
  done(h);
  const std::string unknown = "PROXY UNKNOWN " + std::string(91, 'x') + "\r\n";
  ASSERT_EQ(unknown.size(), 107u);
  done(unknown);
  expect_invalid("PROXY UNKNOWN " + std::string(92, 'x') + "\r\n");
  expect_invalid("PROXY UNKNOWN " + std::string(200, 'x'));
}

TEST(proxy_protocol, v1_malformed) {
  for (const std::string& h : std::vector<std::string>{
           "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
           "PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
           "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
           "PROXY TCP4 ::1 ::1 1 2\r\n",
           "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP6 2001:db8::g ::1 1 2\r\n",
           "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
           "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY \r\n",
           "PROXY TCP4\r\n",
           "PROXY UNKNOWN\t\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + std::string(1, '\0') + "\r\n",
           "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
           "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
           "USER alice\r\n",
           "GET / HTTP/1.0\r\n",
       }) {
    expect_invalid(h);
  }
}

TEST(proxy_protocol, v1_garbage_is_refused_before_the_line_ends) {
  expect_invalid(std::string("PROXY TCP4 \x16\x03", 13));
  expect_invalid("PROXY TCP4 1.2.3.4\r5");
  EXPECT_EQ(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r").status, parse_status::need_more);
}

TEST(proxy_protocol, v2_inet_with_tlvs) {
  const std::string h =
      v2(0x21, 0x11,
         inet4_block() + tlv(0x01, "pop3") + tlv(0x02, "mail.example.org") +
             tlv(0x04, std::string(7, '\0')) + tlv(0xe0, "custom") + ssl_tlv(0x01, "TLSv1.3"));
  const parse_result r = done(h, "\x16\x03\x01");
  EXPECT_EQ(r.value.version, 2);
  EXPECT_FALSE(r.value.local);
  EXPECT_EQ(r.value.source.address().to_string(), "192.0.2.7");
  EXPECT_EQ(r.value.source.port(), 40000);
  EXPECT_EQ(r.value.destination.address().to_string(), "198.51.100.1");
  EXPECT_EQ(r.value.destination.port(), 110);
  EXPECT_EQ(r.value.alpn, "pop3");
  EXPECT_EQ(r.value.authority, "mail.example.org");
  EXPECT_TRUE(r.value.client_tls);
  EXPECT_EQ(r.value.tls_version, "TLSv1.3");
}

TEST(proxy_protocol, v2_ssl_tlv_without_client_bit_is_not_tls) {
  const parse_result r = done(v2(0x21, 0x11, inet4_block() + ssl_tlv(0x06, "TLSv1.2")));
  EXPECT_FALSE(r.value.client_tls);
}

TEST(proxy_protocol, v2_text_tlvs_with_odd_bytes_are_left_unset) {
  const parse_result r = done(v2(0x21, 0x11, inet4_block() + tlv(0x02, "evil host\r\nx")));
  EXPECT_EQ(r.value.authority, "");
}

TEST(proxy_protocol, v2_inet6_and_crc) {
  const parse_result r = done(with_crc(0x21, 0x21, inet6_block() + tlv(0x01, "pop3")));
  EXPECT_EQ(r.value.source.address().to_string(), "2001:db8::5");
  EXPECT_EQ(r.value.source.port(), 5555);
  EXPECT_EQ(r.value.destination.address().to_string(), "2001:db8::1");
  EXPECT_EQ(r.value.destination.port(), 995);
  EXPECT_EQ(r.value.alpn, "pop3");
}

TEST(proxy_protocol, v2_local_unspec_and_unix_are_local) {
  EXPECT_TRUE(done(v2(0x20, 0x00, "")).value.local);
  EXPECT_TRUE(done(v2(0x20, 0x11, inet4_block())).value.local);  // LOCAL ignores the block
  EXPECT_TRUE(done(v2(0x21, 0x00, "")).value.local);
  EXPECT_TRUE(done(v2(0x21, 0x31, std::string(216, 'x'))).value.local);
  EXPECT_TRUE(done(v2(0x21, 0x32, std::string(216, 'x') + ssl_tlv(1, "TLSv1.3"))).value.local);
}

TEST(proxy_protocol, v2_malformed) {
  std::string bad_crc = with_crc(0x21, 0x11, inet4_block());
  bad_crc.back() ^= 1;
  std::string crc_other_byte = with_crc(0x21, 0x11, inet4_block());
  crc_other_byte[17] ^= 1;  // an address byte changed after the CRC was computed
  const std::string big_len = sig + "\x21\x11" + be16(max_v2_header - 16 + 1);
  for (const std::string& h : std::vector<std::string>{
           bad_crc,
           crc_other_byte,
           v2(0x21, 0x11, inet4_block() + tlv(0x03, "abc")),        // CRC of 3 bytes
           v2(0x11, 0x11, inet4_block()),                           // version 1 binary
           v2(0x31, 0x11, inet4_block()),                           // version 3
           v2(0x22, 0x11, inet4_block()),                           // command 2
           v2(0x21, 0x11, inet4_block().substr(0, 11)),             // short block
           v2(0x21, 0x21, inet4_block()),                           // INET6 of 12 bytes
           v2(0x21, 0x31, std::string(100, 'x')),                   // short UNIX block
           v2(0x21, 0x12, inet4_block()),                           // DGRAM
           v2(0x21, 0x10, inet4_block()),                           // protocol UNSPEC
           v2(0x21, 0x41, inet4_block()),                           // family 4
           v2(0x21, 0x13, inet4_block()),                           // protocol 3
           v2(0x21, 0x11, inet4_block() + "\x01\x00"),              // TLV of 2 bytes
           v2(0x21, 0x11, inet4_block() + "\x01\x00\x05" + "pop"),  // TLV overruns
           v2(0x21, 0x11, inet4_block() + tlv(0x20, "\x01\x00")),   // SSL too short
           v2(0x21, 0x11,
              inet4_block() + tlv(0x20, std::string("\x01\0\0\0\0\x21\0\x09"
                                                    "TLS",
                                                    11))),
           big_len,
           sig.substr(0, 11) + "X",
       }) {
    expect_invalid(h);
  }
}

// Bytes HAProxy 2.6 sent with send-proxy-v2-ssl: a TLS client's connection, and the LOCAL
// header of its health check (which still carries an SSL TLV, client bits 0).
TEST(proxy_protocol, v2_as_haproxy_sends_it) {
  const std::string client = sig + std::string(
                                       "\x21\x11\x00\x1e\x7f\x00\x00\x02\x7f\x00\x00\x01"
                                       "\x8d\xa9\xdf\x71\x20\x00\x0f\x01\x00\x00\x00\x00"
                                       "\x21\x00\x07TLSv1.3",
                                       34);
  const parse_result r = done(client, "STAT\r\n");
  EXPECT_EQ(r.value.source.address().to_string(), "127.0.0.2");
  EXPECT_EQ(r.value.source.port(), 0x8da9);
  EXPECT_EQ(r.value.destination.port(), 0xdf71);
  EXPECT_TRUE(r.value.client_tls);
  EXPECT_EQ(r.value.tls_version, "TLSv1.3");
  const std::string check =
      sig + std::string("\x20\x00\x00\x08\x20\x00\x05\x00\x00\x00\x00\x00", 12);
  const parse_result c = done(check, "QUIT\r\n");
  EXPECT_TRUE(c.value.local);
  EXPECT_FALSE(c.value.client_tls);
}

TEST(proxy_protocol, v2_longest_accepted_header) {
  const std::string body = inet4_block() + tlv(0x04, std::string(max_v2_header - 16 - 12 - 3, 0));
  EXPECT_EQ(done(v2(0x21, 0x11, body)).consumed, max_v2_header);
}

TEST(proxy_protocol, every_prefix_of_a_valid_header_needs_more) {
  const std::vector<std::string> valid = {
      "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n",
      "PROXY TCP6 2001:db8::5 2001:db8::1 5555 995\r\n",
      "PROXY UNKNOWN\r\n",
      v2(0x21, 0x11, inet4_block() + ssl_tlv(1, "TLSv1.3")),
      with_crc(0x21, 0x21, inet6_block() + tlv(0x02, "example.org")),
      v2(0x20, 0x00, ""),
  };
  for (const std::string& h : valid) {
    for (std::size_t n = 0; n < h.size(); ++n) {
      const parse_result r = parse(std::string_view(h).substr(0, n));
      EXPECT_EQ(r.status, parse_status::need_more)
          << n << " bytes of " << testing::PrintToString(h);
    }
    done(h);
  }
}

TEST(proxy_protocol, random_mutations_never_overread) {
  const std::vector<std::string> valid = {
      "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n",
      "PROXY TCP6 2001:db8::5 2001:db8::1 5555 995\r\n",
      v2(0x21, 0x11, inet4_block() + tlv(0x01, "pop3") + ssl_tlv(1, "TLSv1.3")),
      with_crc(0x21, 0x21, inet6_block() + tlv(0x02, "example.org")),
  };
  std::mt19937 rng(20261207);
  for (int i = 0; i < 200000; ++i) {
    std::string h = valid[rng() % valid.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % (h.size() + 1);
      switch (rng() % 4) {
        case 0:
          if (at < h.size()) h[at] = static_cast<char>(rng());
          break;
        case 1:
          h.insert(at, 1, static_cast<char>(rng()));
          break;
        case 2:
          if (at < h.size()) h.erase(at, 1);
          break;
        default:
          h.resize(at);
          break;
      }
    }
    const parse_result r = parse(h);
    if (r.status == parse_status::done) {
      ASSERT_LE(r.consumed, h.size());
      ASSERT_GT(r.consumed, 0u);
    } else {
      ASSERT_EQ(r.consumed, 0u);
    }
  }
}

// ---- readers ----

struct socket_pair {
  asio::io_context io;
  asio::ip::tcp::socket client{io};
  asio::ip::tcp::socket server{io};
  socket_pair() {
    asio::ip::tcp::acceptor acc(io, {asio::ip::address_v4::loopback(), 0});
    client.connect(acc.local_endpoint());
    server = acc.accept();
  }
  void send(std::string_view s) { asio::write(client, asio::buffer(s)); }
  std::string rest() {  // what the reader left on the socket
    char buf[64];
    const ssize_t n = ::recv(server.native_handle(), buf, sizeof buf, MSG_DONTWAIT);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }
};

result<header> async_read(
    socket_pair& p, std::chrono::milliseconds timeout,
    const std::vector<std::pair<std::chrono::milliseconds, std::string>>& later = {}) {
  std::optional<result<header>> out;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        out.emplace(co_await async_read_header(p.server, timeout));
      },
      [](std::exception_ptr e) { EXPECT_FALSE(e); });
  std::thread writer([&] {
    for (const auto& [delay, bytes] : later) {
      std::this_thread::sleep_for(delay);
      asio::write(p.client, asio::buffer(bytes));
    }
  });
  p.io.run_for(5s);
  writer.join();
  EXPECT_TRUE(out.has_value());
  return out ? std::move(*out) : result<header>(error(errc::temporary, "no result"));
}

TEST(proxy_reader, async_reads_exactly_the_header) {
  socket_pair p;
  const std::string h = v2(0x21, 0x11, inet4_block() + ssl_tlv(1, "TLSv1.3"));
  p.send(h + "CAPA\r\n");
  auto r = async_read(p, 2s);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_TRUE(r->client_tls);
  EXPECT_EQ(p.rest(), "CAPA\r\n");
}

TEST(proxy_reader, async_header_split_across_segments) {
  socket_pair p;
  const std::string h = "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n";
  auto r = async_read(
      p, 3s,
      {{20ms, h.substr(0, 3)}, {50ms, h.substr(3, 20)}, {50ms, h.substr(23) + "USER a\r\n"}});
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->source.address().to_string(), "192.0.2.7");
  EXPECT_EQ(p.rest(), "USER a\r\n");
}

TEST(proxy_reader, async_times_out_and_refuses_garbage) {
  {
    socket_pair p;
    p.send("PROXY TCP4 1.2");
    const auto start = std::chrono::steady_clock::now();
    auto r = async_read(p, 200ms);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::temporary);
    EXPECT_GE(std::chrono::steady_clock::now() - start, 190ms);
  }
  {
    socket_pair p;
    p.send("USER alice\r\n");
    auto r = async_read(p, 2s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::invalid);
  }
  {
    socket_pair p;
    p.send("PROXY TCP4");
    p.client.shutdown(asio::ip::tcp::socket::shutdown_send);
    auto r = async_read(p, 2s);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::temporary);
  }
}

TEST(proxy_reader, fd_reader_split_header_and_timeout) {
  socket_pair p;
  const std::string h = with_crc(0x21, 0x21, inet6_block() + tlv(0x01, "pop3"));
  std::thread writer([&] {
    p.send(h.substr(0, 5));
    std::this_thread::sleep_for(30ms);
    p.send(h.substr(5, 12));
    std::this_thread::sleep_for(30ms);
    p.send(h.substr(17) + "\x16\x03");
  });
  auto r = read_header(p.server.native_handle(), 3s);
  writer.join();
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->source.address().to_string(), "2001:db8::5");
  EXPECT_EQ(p.rest(), "\x16\x03");

  socket_pair q;
  q.send(h.substr(0, 20));
  const auto start = std::chrono::steady_clock::now();
  auto t = read_header(q.server.native_handle(), 150ms);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.err().code(), errc::temporary);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 140ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

}  // namespace
}  // namespace postern::net::proxy
