#include "net/network.hpp"

#include "common/parse.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

namespace postern::net {
namespace {

template <std::size_t N>
bool prefix_matches(const std::array<unsigned char, N>& a, const std::array<unsigned char, N>& b,
                    unsigned prefix) {
  unsigned full = prefix / 8, rest = prefix % 8;
  for (unsigned i = 0; i < full; ++i) {
    if (a[i] != b[i]) {
      return false;
    }
  }
  if (rest == 0) {
    return true;
  }
  auto mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

template <std::size_t N>
bool host_bits_zero(const std::array<unsigned char, N>& a, unsigned prefix) {
  std::array<unsigned char, N> masked = a;
  for (unsigned bit = prefix; bit < N * 8; ++bit) {
    masked[bit / 8] &= static_cast<unsigned char>(~(0x80 >> (bit % 8)));
  }
  return masked == a;
}

asio::ip::address unmap(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}

}  // namespace

std::optional<network> parse_network(std::string_view text) {
  auto slash = text.find('/');
  std::string addr_text(text.substr(0, slash));
  std::error_code ec;
  auto addr = asio::ip::make_address(addr_text, ec);
  if (ec || addr_text.find('%') != std::string::npos) {
    return std::nullopt;
  }
  unsigned max = addr.is_v4() ? 32 : 128;
  unsigned prefix = max;
  if (slash != std::string_view::npos) {
    auto p = parse_u64(text.substr(slash + 1));
    if (!p || *p > max) {
      return std::nullopt;
    }
    prefix = static_cast<unsigned>(*p);
  }
  bool zero = addr.is_v4() ? host_bits_zero(addr.to_v4().to_bytes(), prefix)
                           : host_bits_zero(addr.to_v6().to_bytes(), prefix);
  if (!zero) {
    return std::nullopt;
  }
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
    // ::ffff:a.b.c.d/p is the IPv4 network a.b.c.d/(p - 96).
    if (prefix < 96) {
      return std::nullopt;
    }
    return network{unmap(addr), prefix - 96};
  }
  return network{addr, prefix};
}

bool contains(const network& net, const asio::ip::address& addr) {
  auto a = unmap(addr);
  if (a.is_v4() != net.base.is_v4()) {
    return false;
  }
  if (a.is_v4()) {
    return prefix_matches(a.to_v4().to_bytes(), net.base.to_v4().to_bytes(), net.prefix);
  }
  return prefix_matches(a.to_v6().to_bytes(), net.base.to_v6().to_bytes(), net.prefix);
}

asio::ip::address canonical_address(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}

asio::ip::address address_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    asio::ip::address_v4::bytes_type b;
    std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, b.size());
    return asio::ip::address_v4(b);
  }
  asio::ip::address_v6::bytes_type b;
  std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, b.size());
  return canonical_address(asio::ip::address_v6(b));
}

void address_key(const asio::ip::address& a, bool v6_per_48, unsigned char* key) {
  asio::ip::address_v6::bytes_type b;
  if (a.is_v4()) {
    b = asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()).to_bytes();
  } else {
    b = a.to_v6().to_bytes();
    if (v6_per_48 && !a.to_v6().is_v4_mapped()) {
      std::fill(b.begin() + 6, b.end(), 0);
    }
  }
  std::memcpy(key, b.data(), 16);
}

namespace {
std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
}  // namespace

std::uint64_t keyed_hash(const unsigned char* key, const std::uint64_t* seed) {
  std::uint64_t w0 = 0, w1 = 0;
  std::memcpy(&w0, key, 8);
  std::memcpy(&w1, key + 8, 8);
  return mix(mix(w0 ^ seed[0]) ^ mix(w1 + seed[1] + 0x9e3779b97f4a7c15ULL));
}

}  // namespace postern::net
