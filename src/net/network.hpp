// Numeric networks (CIDR) for trusted_networks and access lists. No DNS, ever.
#pragma once

#include <asio/ip/address.hpp>

#include <optional>
#include <string_view>

namespace postern::net {

struct network {
  asio::ip::address base;
  unsigned prefix = 0;
};

// Parses "192.0.2.0/24", "2001:db8::/32" or a bare address (a /32 or /128). Host bits must be
// zero. Returns nullopt for anything else.
std::optional<network> parse_network(std::string_view text);

// True if `addr` (IPv4-mapped IPv6 counts as IPv4) lies in `net`.
bool contains(const network& net, const asio::ip::address& addr);

}  // namespace postern::net
