#include "net/network.hpp"

#include "common/parse.hpp"

#include <array>
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

}  // namespace postern::net
