#include "server/daemon.hpp"

#include "common/log.hpp"
#include "net/session_driver.hpp"
#include "net/source_limits.hpp"
#include "server/privileges.hpp"
#include "server/setup.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <functional>
#include <cstdio>
#include <thread>

namespace postern::server {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

std::string format_endpoint(const asio::ip::tcp::endpoint& ep) {
  auto addr = net::canonical_address(ep.address());
  if (addr.is_v6()) {
    return "[" + addr.to_string() + "]:" + std::to_string(ep.port());
  }
  return addr.to_string() + ":" + std::to_string(ep.port());
}

// One I/O thread: its io_context, its acceptors (one per listen address, SO_REUSEPORT) and
// the sessions it runs.
struct listener {
  asio::ip::tcp::acceptor acceptor;
  bool implicit_tls = false;
};

struct io_worker {
  asio::io_context ctx{1};
  std::vector<listener> listeners;
  net::session_registry registry;
};

asio::awaitable<void> refuse(asio::ip::tcp::socket sock, std::string_view line) {
  co_await asio::async_write(sock, asio::buffer(line), use_tuple);
  std::error_code ignored;
  sock.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
}

asio::awaitable<void> serve_connection(asio::ip::tcp::socket sock, io_worker& w, bool implicit_tls,
                                       net::source_limits& limits, const net::session_env& env) {
  std::error_code ec;
  auto peer = sock.remote_endpoint(ec);
  if (ec) {
    co_return;  // already gone
  }
  auto addr = net::canonical_address(peer.address());
  net::source_limits::refusal why{};
  auto slot = limits.try_acquire(addr, why);
  if (!slot) {
    log::warning("connection refused: rip={}, reason={}", addr.to_string(),
                 why == net::source_limits::refusal::total ? "max_connections" : "max_connections_per_ip");
    co_await refuse(std::move(sock), "-ERR [SYS/TEMP] Too many connections, try again later.\r\n");
    co_return;
  }
  if (env.access_list != nullptr && !env.access_list->allows(addr)) {
    log::warning("connection refused: rip={}, reason=acl", addr.to_string());
    co_await refuse(std::move(sock), "-ERR [SYS/PERM] Access denied.\r\n");
    co_return;
  }
  if (env.access != nullptr && !co_await net::async_allowed(*env.access, *env.workers, addr)) {
    log::warning("connection refused: rip={}, reason=tcp_wrappers", addr.to_string());
    co_await refuse(std::move(sock), "-ERR [SYS/PERM] Access denied.\r\n");
    co_return;
  }
  sock.set_option(asio::ip::tcp::no_delay(true), ec);
  std::unique_ptr<net::transport> stream;
  if (implicit_tls) {
    stream = std::make_unique<net::tls_transport>(std::move(sock), env.tls->current());
  } else {
    stream = std::make_unique<net::tcp_transport>(std::move(sock));
  }
  auto ctl = std::make_shared<net::session_control>(std::move(stream), w.ctx.get_executor());
  // A named value, not a braced temporary: GCC 12 destroys braced temporaries inside a
  // co_await expression twice.
  net::connection_info info{addr.to_string(), addr, implicit_tls};
  co_await guarded_session(ctl, env, std::move(info), &w.registry);
}

asio::awaitable<void> accept_loop(listener& l, io_worker& w, net::source_limits& limits,
                                  const net::session_env& env) {
  auto& acc = l.acceptor;
  for (;;) {
    auto [ec, sock] = co_await acc.async_accept(use_tuple);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acc.is_open()) {
        co_return;
      }
      // EMFILE, ENFILE, ENOBUFS: wait a moment instead of spinning.
      log::warning("accept failed: {}", ec.message());
      asio::steady_timer pause(w.ctx, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    asio::co_spawn(w.ctx, serve_connection(std::move(sock), w, l.implicit_tls, limits, env),
                   asio::detached);
  }
}

result<void> bind_list(const std::vector<listen_address>& list, bool implicit_tls,
                       std::vector<std::unique_ptr<io_worker>>& workers) {
  for (const auto& la : list) {
    std::error_code ec;
    auto addr = asio::ip::make_address(la.host, ec);
    if (ec) {
      return error(errc::invalid, "server.listen: bad address '" + la.host + "'");
    }
    std::uint16_t port = la.port;
    for (auto& w : workers) {
      asio::ip::tcp::acceptor acc(w->ctx);
      asio::ip::tcp::endpoint ep(addr, port);
      acc.open(ep.protocol(), ec);
      if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec && addr.is_v6()) acc.set_option(asio::ip::v6_only(true), ec);
      if (!ec) {
        int one = 1;
        if (setsockopt(acc.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
          ec = std::error_code(errno, std::generic_category());
        }
      }
      if (!ec) acc.bind(ep, ec);
      if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        return error(errc::permanent, "cannot listen on " + format_endpoint(ep), ec);
      }
      if (port == 0) {
        port = acc.local_endpoint().port();  // the other threads join the port the kernel chose
      }
      w->listeners.push_back({std::move(acc), implicit_tls});
    }
    log::info("listening on {}{}", format_endpoint({addr, port}), implicit_tls ? " (tls)" : "");
  }
  return {};
}

result<void> bind_listeners(const config& cfg, std::vector<std::unique_ptr<io_worker>>& workers) {
  POSTERN_TRY(bind_list(cfg.listen, cfg.tls == tls_mode::connection && !cfg.tls_cert.empty(), workers));
  return bind_list(cfg.tls_listen, true, workers);
}

}  // namespace

int run_daemon(const config& cfg) {
  init_logging(cfg);
  std::signal(SIGPIPE, SIG_IGN);
  // SIGTERM, SIGINT and SIGHUP wait (blocked, pending) until their handlers exist below: a
  // signal that arrives right after "listening on" must stop or reload, not kill.
  sigset_t deferred;
  sigemptyset(&deferred);
  sigaddset(&deferred, SIGTERM);
  sigaddset(&deferred, SIGINT);
  sigaddset(&deferred, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &deferred, nullptr);
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  unsigned n_threads = cfg.threads ? cfg.threads : cores;

  std::vector<std::unique_ptr<io_worker>> workers;
  for (unsigned i = 0; i < n_threads; ++i) {
    workers.push_back(std::make_unique<io_worker>());
  }
  auto tls = make_tls(cfg);
  if (!tls) {
    log::error("{}", tls.err().message());
    std::fprintf(stderr, "posternd: %s\n", tls.err().message().c_str());
    return 1;
  }
  if (*tls) {
    log::info("TLS certificate: {}", (*tls)->certificate_info());
  }
  if (auto r = bind_listeners(cfg, workers); !r) {
    log::error("{}", r.err().message());
    std::fprintf(stderr, "posternd: %s\n", r.err().message().c_str());
    return 1;
  }
  if (auto r = drop_privileges(cfg.user, cfg.group); !r) {
    log::error("{}", r.err().message());
    std::fprintf(stderr, "posternd: %s\n", r.err().message().c_str());
    return 1;
  }
  if (geteuid() == 0) {
    log::warning("running as root: set server.user to an unprivileged user");
  }
  shared_state st;
  if (auto r = prepare_shared(cfg, st, std::move(tls).value()); !r) {
    log::error("{}", r.err().message());
    std::fprintf(stderr, "posternd: %s\n", r.err().message().c_str());
    return 1;
  }
  net::source_limits limits(cfg.max_connections, cfg.max_connections_per_ip);

  for (auto& w : workers) {
    for (auto& l : w->listeners) {
      asio::co_spawn(w->ctx, accept_loop(l, *w, limits, st.env), asio::detached);
    }
  }

  // Thread 0 owns the signal sets. After SIGTERM every acceptor and session closes and the
  // signal waits are cancelled, so each io_context runs out of work and its thread ends.
  asio::signal_set signals(workers[0]->ctx, SIGTERM, SIGINT);
  asio::signal_set hup(workers[0]->ctx, SIGHUP);
  std::function<void(const std::error_code&, int)> on_hup = [&](const std::error_code& ec, int) {
    if (ec) {
      return;
    }
    if (st.env.tls) {
      if (auto r = st.env.tls->reload(); r) {
        log::info("SIGHUP: TLS certificate and key reloaded: {}", st.env.tls->certificate_info());
      } else {
        log::error("SIGHUP: TLS reload failed, keeping the old certificate: {}", r.err().message());
      }
    } else {
      log::info("SIGHUP: nothing to reload (the passwd-file is re-read when it changes)");
    }
    hup.async_wait(on_hup);
  };
  hup.async_wait(on_hup);
  signals.async_wait([&](const std::error_code& ec, int signo) {
    if (ec) {
      return;
    }
    log::info("signal {} received: shutting down, {} sessions open", signo, limits.active());
    std::error_code ignored;
    hup.cancel(ignored);
    for (auto& w : workers) {
      asio::post(w->ctx, [&w = *w] {
        for (auto& l : w.listeners) {
          std::error_code ignored_close;
          l.acceptor.close(ignored_close);
        }
        w.registry.stop_all();
      });
    }
  });

  pthread_sigmask(SIG_UNBLOCK, &deferred, nullptr);
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < workers.size(); ++i) {
    threads.emplace_back([&w = *workers[i]] { w.ctx.run(); });
  }
  workers[0]->ctx.run();
  for (auto& t : threads) {
    t.join();
  }
  st.workers->join();
  log::info("stopped");
  return 0;
}

int run_inetd(const config& cfg) {
  init_logging(cfg);
  std::signal(SIGPIPE, SIG_IGN);
  auto tls = make_tls(cfg);
  if (!tls) {
    log::error("{}", tls.err().message());
    return 1;
  }
  if (auto r = drop_privileges(cfg.user, cfg.group); !r) {
    log::error("{}", r.err().message());
    return 1;
  }
  config one = cfg;
  one.worker_threads = one.worker_threads ? one.worker_threads : 1;
  shared_state st;
  if (auto r = prepare_shared(one, st, std::move(tls).value()); !r) {
    log::error("{}", r.err().message());
    return 1;
  }
  std::string remote = "local";
  asio::ip::address remote_addr;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(STDIN_FILENO, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    char text[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, text, sizeof text);
      remote = text;
      remote_addr = asio::ip::make_address_v4(text);
    } else if (ss.ss_family == AF_INET6) {
      asio::ip::address_v6::bytes_type b;
      std::memcpy(b.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, b.size());
      remote_addr = net::canonical_address(asio::ip::address_v6(b));
      remote = remote_addr.to_string();
    }
  }
  if (st.env.access_list != nullptr && !remote_addr.is_unspecified() &&
      !st.env.access_list->allows(remote_addr)) {
    log::warning("connection refused: rip={}, reason=acl", remote);
    constexpr std::string_view denied = "-ERR [SYS/PERM] Access denied.\r\n";
    (void)!::write(STDOUT_FILENO, denied.data(), denied.size());
    st.workers->join();
    return 0;
  }
  if (st.env.access != nullptr && !remote_addr.is_unspecified() && !st.env.access->allowed(remote_addr)) {
    log::warning("connection refused: rip={}, reason=tcp_wrappers", remote);
    constexpr std::string_view denied = "-ERR [SYS/PERM] Access denied.\r\n";
    (void)!::write(STDOUT_FILENO, denied.data(), denied.size());
    st.workers->join();
    return 0;
  }
  asio::io_context ctx{1};
  // A TCP socket from inetd is driven as one (so STLS and implicit TLS work); anything else
  // (pipes from a master process or a test) as a pair of descriptors.
  std::unique_ptr<net::transport> stream;
  bool implicit_tls = false;
  if (!remote_addr.is_unspecified()) {
    int fd = dup(STDIN_FILENO);
    if (fd < 0) {
      log::error("inetd mode: cannot use stdin");
      return 1;
    }
    asio::ip::tcp::socket sock(ctx);
    std::error_code ec;
    sock.assign(ss.ss_family == AF_INET ? asio::ip::tcp::v4() : asio::ip::tcp::v6(), fd, ec);
    if (ec) {
      close(fd);
      log::error("inetd mode: cannot use stdin as a socket: {}", ec.message());
      return 1;
    }
    sock.set_option(asio::ip::tcp::no_delay(true), ec);
    implicit_tls = st.env.tls != nullptr && cfg.tls == tls_mode::connection;
    if (implicit_tls) {
      stream = std::make_unique<net::tls_transport>(std::move(sock), st.env.tls->current());
    } else {
      stream = std::make_unique<net::tcp_transport>(std::move(sock));
    }
  } else {
    int in_fd = dup(STDIN_FILENO);
    int out_fd = dup(STDOUT_FILENO);
    if (in_fd < 0 || out_fd < 0) {
      log::error("inetd mode: cannot use stdin/stdout");
      return 1;
    }
    stream = std::make_unique<net::stdio_transport>(asio::posix::stream_descriptor(ctx, in_fd),
                                                    asio::posix::stream_descriptor(ctx, out_fd));
  }
  auto ctl = std::make_shared<net::session_control>(std::move(stream), ctx.get_executor());
  asio::signal_set signals(ctx, SIGTERM, SIGINT);
  signals.async_wait([&](const std::error_code& ec, int) {
    if (!ec) {
      ctl->stop(true);
    }
  });
  asio::co_spawn(ctx,
                 [&]() -> asio::awaitable<void> {
                   net::connection_info info{remote, remote_addr, implicit_tls};
                   co_await guarded_session(ctl, st.env, std::move(info), nullptr);
                   signals.cancel();
                 },
                 asio::detached);
  ctx.run();
  st.workers->join();
  return 0;
}

}  // namespace postern::server
