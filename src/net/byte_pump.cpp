#include "net/byte_pump.hpp"

namespace postern::net {

asio::awaitable<result<pop3::body_stream::status>> byte_pump::fill(pop3::body_stream& body) {
  using clock = std::chrono::steady_clock;
  if (placement_.slow) {
    result<pop3::body_stream::status> r = error(errc::temporary, "not read");
    clock::duration took{};
    auto read = [&] {  // timed on the worker: the wait for a free worker is not the store's
      const auto start = clock::now();
      r = body.fill();
      took = clock::now() - start;
    };
    co_await run_blocking(workers_, read);
    placement_.observe(took);
    co_return r;
  }
  const auto start = clock::now();
  auto r = body.fill();
  placement_.observe(clock::now() - start);
  co_return r;
}

}  // namespace postern::net
