// The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's proxy-protocol.txt
// defines it: the header a trusted front end (HAProxy, nginx) sends before the client's first
// byte, naming the client's real address. Parsing is pure (no sockets) so every malformed
// header is a unit test; the readers below take exactly the header's bytes off the socket and
// never a byte more, so a TLS ClientHello or a pipelined command that follows stays unread.
#pragma once

#include "common/result.hpp"

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace postern::net::proxy {

// v1: "PROXY " ... CRLF is at most 107 bytes. v2: 16 fixed bytes and a length of at most
// 65535, of which Postern accepts a TLV area up to this size (HAProxy sends a few hundred).
inline constexpr std::size_t max_v1_header = 107;
inline constexpr std::size_t max_v2_header = 16 + 4096;

struct header {
  int version = 0;  // 1 or 2
  // v1 "PROXY UNKNOWN" or v2 LOCAL (a front end's own health check) or an address family
  // other than TCP over IPv4/IPv6: no client address; the connection's own addresses stand.
  bool local = false;
  asio::ip::tcp::endpoint source;       // the client, as the front end saw it
  asio::ip::tcp::endpoint destination;  // the address the client connected to
  // v2 TLVs.
  bool client_tls =
      false;  // PP2_TYPE_SSL with PP2_CLIENT_SSL: the client spoke TLS to the front end
  std::string tls_version;  // PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3" ("" if not sent)
  std::string alpn;         // PP2_TYPE_ALPN
  std::string authority;    // PP2_TYPE_AUTHORITY (the SNI host name the client asked for)
};

enum class parse_status { need_more, done, invalid };

struct parse_result {
  parse_status status = parse_status::need_more;
  std::size_t consumed = 0;  // bytes of the header (done only)
  header value;              // done only
  std::string error;         // invalid only: why, for the log (no client bytes copied raw)
};

// Parses the header at the start of `data`. need_more: the bytes so far are a valid prefix
// of a header; read more (never more than max_v2_header in all). invalid: not a PROXY
// header, or a malformed one.
parse_result parse(std::string_view data);

// CRC32C (Castagnoli), as PP2_TYPE_CRC32C uses it; `crc` is the value of the bytes before
// (0 to start). crc32c(0, "123456789") == 0xE3069283.
std::uint32_t crc32c(std::uint32_t crc, std::string_view data);

// Reads one header from a connected socket within `timeout`, consuming exactly its bytes.
// errc::invalid: no header or a malformed one; errc::temporary: timeout or connection error.
asio::awaitable<result<header>> async_read_header(asio::ip::tcp::socket& socket,
                                                  std::chrono::milliseconds timeout);

// The same on a blocking or non-blocking descriptor (fork and inetd modes), with poll().
result<header> read_header(int fd, std::chrono::milliseconds timeout);

}  // namespace postern::net::proxy
