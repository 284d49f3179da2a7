// Fuzz target: the PROXY protocol header parser (src/net/proxy_protocol.hpp, parse).
// Properties: no crash or sanitizer report; `done` consumes 1..size bytes and at most the
// header limit of its version; a header is decided by its own bytes (parsing exactly the
// consumed bytes gives the same result) and every shorter prefix of it is need_more.
#include "fuzz/fuzz_check.hpp"
#include "net/proxy_protocol.hpp"

#include <string_view>

namespace proxy = postern::net::proxy;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto r = proxy::parse(in);
  if (r.status != proxy::parse_status::done) {
    FUZZ_CHECK(r.status != proxy::parse_status::invalid || !r.error.empty());
    return 0;
  }
  FUZZ_CHECK(r.consumed > 0 && r.consumed <= size);
  FUZZ_CHECK(r.value.version == 1 || r.value.version == 2);
  FUZZ_CHECK(r.consumed <= (r.value.version == 1 ? proxy::max_v1_header : proxy::max_v2_header));
  const auto exact = proxy::parse(in.substr(0, r.consumed));
  FUZZ_CHECK(exact.status == proxy::parse_status::done && exact.consumed == r.consumed);
  FUZZ_CHECK(exact.value.source == r.value.source && exact.value.local == r.value.local);
  for (const std::size_t n : {std::size_t{0}, r.consumed / 2, r.consumed - 1}) {
    FUZZ_CHECK(proxy::parse(in.substr(0, n)).status == proxy::parse_status::need_more);
  }
  return 0;
}
