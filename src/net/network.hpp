// Numeric networks (CIDR) for trusted_networks and access lists. No DNS, ever.
#pragma once

#include <asio/ip/address.hpp>

#include <sys/socket.h>

#include <cstdint>
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

// The address as a client is known in logs: IPv4-mapped IPv6 addresses shown as IPv4.
asio::ip::address canonical_address(const asio::ip::address& a);

// The client address accept() or getpeername() filled in, canonical (IPv4-mapped IPv6 as IPv4).
asio::ip::address address_of(const sockaddr_storage& ss);

// The 16-byte key of an address in the process-shared tables (connection counts, auth
// penalty): IPv6, IPv4 as v4-mapped; with `v6_per_48`, other IPv6 cut to its /48 (one site).
void address_key(const asio::ip::address& a, bool v6_per_48, unsigned char* key);

// A hash of such a key under two random seed words, so that a client cannot aim its
// addresses at one bucket of a table.
std::uint64_t keyed_hash(const unsigned char* key, const std::uint64_t* seed);

}  // namespace postern::net
