#include "net/byte_pump.hpp"

namespace postern::net {

asio::awaitable<result<pop3::body_stream::status>> byte_pump::fill(pop3::body_stream& body) {
  if (slow_reads_ || large_) {
    result<pop3::body_stream::status> r = error(errc::temporary, "not read");
    auto read = [&] { r = body.fill(); };
    co_await run_blocking(workers_, read);
    co_return r;
  }
  const auto start = std::chrono::steady_clock::now();
  auto r = body.fill();
  if (std::chrono::steady_clock::now() - start > slow_fill) {
    slow_reads_ = true;
  }
  co_return r;
}

}  // namespace postern::net
