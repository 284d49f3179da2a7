#include "server/daemon.hpp"

#include "common/log.hpp"
#include "common/unique_fd.hpp"
#include "net/admission.hpp"
#include "net/session_driver.hpp"
#include "net/source_limits.hpp"
#include "net/transports.hpp"
#include "server/privileges.hpp"
#include "server/setup.hpp"
#include "server/shared_limits.hpp"
#include "server/startup_recovery.hpp"
#include "server/systemd.hpp"
#include "server/unix_settings.hpp"
#include "server/workers.hpp"

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
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>

namespace postern::server {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// One I/O thread: its io_context, its acceptors (one per listener) and the sessions it runs.
struct listener {
  asio::ip::tcp::acceptor acceptor;
  net::listener_options options;
};

struct io_worker {
  asio::io_context ctx{1};
  std::vector<listener> listeners;
  net::session_registry registry;
};

// Listening sockets made before any io_context exists (in the master, before fork()), so
// that each process builds its own epoll set around the sockets it serves.
using thread_sockets = std::vector<net::listening_socket>;  // one per listener
using process_sockets = std::vector<thread_sockets>;        // one per I/O thread
using all_sockets = std::vector<process_sockets>;           // one per process

// What every connection of this process goes through between accept() and its session.
struct front_end {
  net::admission_policy policy;
  std::vector<net::network> proxy_trusted;  // server.proxy_trusted_networks
  const net::session_env* env = nullptr;
};

asio::awaitable<void> refuse(asio::ip::tcp::socket sock, std::string_view line) {
  if (!line.empty()) {
    co_await asio::async_write(sock, asio::buffer(line), use_tuple);
  }
  std::error_code ignored;
  sock.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
}

// The accept pipeline of event mode: [PROXY header] -> admission -> transport -> session.
// `peer` is the address accept() returned (no getpeername() per connection).
asio::awaitable<void> serve_connection(asio::ip::tcp::socket sock, asio::ip::tcp::endpoint peer,
                                       io_worker& w, net::listener_options options,
                                       const front_end& fe) {
  net::client_origin origin{net::canonical_address(peer.address()), false};
  if (options.proxy_protocol) {
    auto from_header = co_await net::async_proxy_step(sock, origin.address, fe.proxy_trusted);
    if (!from_header) {
      co_return;  // logged; closed without a byte
    }
    origin = *from_header;
  }
  net::counted_connection counted;  // the session's control holds it until the session ends
  auto refused = net::admit(fe.policy, origin.address, counted);
  if (!refused && fe.policy.wrappers != nullptr) {
    refused = co_await net::async_admit_wrappers(fe.policy, *fe.env->workers, origin.address);
  }
  if (refused) {
    net::log_refusal(origin.address, *refused);
    co_await refuse(std::move(sock), net::refusal_reply(*refused));
    co_return;
  }
  // cppcheck-suppress accessMoved ; cppcheck 2.10 does not know that co_return leaves
  auto stream = net::make_transport(std::move(sock), options.implicit_tls, fe.env->tls.get());
  auto ctl = std::make_shared<net::session_control>(std::move(stream), w.ctx.get_executor());
  ctl->counted = std::move(counted);
  // A named value, not a braced temporary: GCC 12 destroys braced temporaries inside a
  // co_await expression twice.
  net::connection_info info{origin.address.to_string(), origin.address, options.implicit_tls,
                            origin.client_tls};
  co_await guarded_session(ctl, *fe.env, std::move(info), &w.registry);
  ctl->counted.reset();  // already done unless the session failed with an exception
}

asio::awaitable<void> accept_loop(listener& l, io_worker& w, const front_end& fe) {
  auto& acc = l.acceptor;
  asio::ip::tcp::endpoint peer;
  for (;;) {
    auto [ec, sock] = co_await acc.async_accept(peer, use_tuple);
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
    asio::co_spawn(w.ctx, serve_connection(std::move(sock), peer, w, l.options, fe),
                   asio::detached);
  }
}

result<all_sockets> bind_listeners(const config& cfg, std::uint32_t processes,
                                   std::uint32_t threads) {
  auto sets = open_listeners(cfg, std::size_t{processes} * threads);
  if (!sets) {
    return std::move(sets).err();
  }
  all_sockets out(processes);
  for (std::uint32_t p = 0; p < processes; ++p) {
    for (std::uint32_t t = 0; t < threads; ++t) {
      // cppcheck-suppress ignoredReturnValue ; cppcheck 2.10 misreads this std::move
      out[p].push_back(std::move((*sets)[std::size_t{p} * threads + t]));
    }
  }
  return out;
}

int startup_failure(const error& e) {
  log::error("{}", e.message());
  std::fprintf(stderr, "posternd: %s\n", e.message().c_str());
  return 1;
}

// One io_worker per I/O thread, each with acceptors for its own sockets.
result<std::vector<std::unique_ptr<io_worker>>> make_io_workers(process_sockets sockets) {
  std::vector<std::unique_ptr<io_worker>> workers;
  for (auto& thread : sockets) {
    auto w = std::make_unique<io_worker>();
    for (auto& bs : thread) {
      asio::ip::tcp::acceptor acc(w->ctx);
      std::error_code ec;
      acc.assign(bs.family == AF_INET6 ? asio::ip::tcp::v6() : asio::ip::tcp::v4(), bs.fd.get(),
                 ec);
      if (ec) {
        return error(errc::permanent, "cannot use a listening socket", ec);
      }
      (void)bs.fd.release();  // the acceptor owns it now
      w->listeners.push_back({std::move(acc), bs.options});
    }
    workers.push_back(std::move(w));
  }
  return workers;
}

// The signals of one event-mode process, handled on I/O thread 0: SIGHUP reloads the passwd
// file and the TLS certificate; SIGTERM and SIGINT close every acceptor and session, after
// which each io_context runs out of work and its thread ends.
class event_signals {
 public:
  event_signals(std::vector<std::unique_ptr<io_worker>>& workers, shared_state& st,
                const net::connection_counter& counter, systemd::loop_watchdog& watchdog)
      : workers_(workers),
        st_(st),
        counter_(counter),
        watchdog_(watchdog),
        stop_(workers[0]->ctx, SIGTERM, SIGINT),
        hup_(workers[0]->ctx, SIGHUP) {}

  void arm() {
    hup_.async_wait([this](const std::error_code& ec, int) { on_hup(ec); });
    stop_.async_wait([this](const std::error_code& ec, int signo) { on_stop(ec, signo); });
  }

 private:
  void on_hup(const std::error_code& ec) {
    if (ec) {
      return;
    }
    systemd::notify_reloading();
    if (st_.passdb) {
      st_.passdb->reload();  // an untrusted or malformed file: logged, previous contents kept
    }
    reload_tls(st_.env.tls.get());
    systemd::notify_ready();
    hup_.async_wait([this](const std::error_code& next, int) { on_hup(next); });
  }

  void on_stop(const std::error_code& ec, int signo) {
    if (ec) {
      return;
    }
    systemd::notify_stopping();
    watchdog_.stop();
    log::info("signal {} received: shutting down, {} sessions open", signo, counter_.active());
    std::error_code ignored;
    hup_.cancel(ignored);
    for (auto& w : workers_) {
      asio::post(w->ctx, [&w = *w] {
        for (auto& l : w.listeners) {
          std::error_code ignored_close;
          l.acceptor.close(ignored_close);
        }
        w.registry.stop_all();
      });
    }
  }

  std::vector<std::unique_ptr<io_worker>>& workers_;
  shared_state& st_;
  const net::connection_counter& counter_;
  systemd::loop_watchdog& watchdog_;
  asio::signal_set stop_;
  asio::signal_set hup_;
};

// Runs every I/O thread (thread 0 on the calling thread) until all have run out of work.
void run_io_threads(std::vector<std::unique_ptr<io_worker>>& workers) {
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < workers.size(); ++i) {
    threads.emplace_back([&w = *workers[i]] { w.ctx.run(); });
  }
  workers[0]->ctx.run();
  for (auto& t : threads) {
    t.join();
  }
}

// The event loop of one process: its I/O threads serve `sockets` until SIGTERM or SIGINT.
// Expects SIGTERM, SIGINT and SIGHUP blocked (`deferred`); unblocks them once the handlers
// exist. Runs with privileges already dropped. `counting`: this process's connection counter
// (required) and pacer. Returns `setup_failure` when the shared state cannot be built.
int run_event_loop(const config& cfg, std::shared_ptr<net::tls_server_context> tls,
                   process_sockets sockets, const net::admission_policy& counting,
                   const sigset_t& deferred, int setup_failure, const std::string& scram_salt_key,
                   net::auth_penalty* penalty) {
  shared_state st;
  st.scram_salt_key = scram_salt_key;
  if (auto r = prepare_shared(cfg, st, std::move(tls)); !r) {
    log::error("{}", r.err().message());
    std::fprintf(stderr, "posternd: %s\n", r.err().message().c_str());
    return setup_failure;
  }
  st.env.penalty = penalty;
  auto workers = make_io_workers(std::move(sockets));
  if (!workers) {
    log::error("{}", workers.err().message());
    return setup_failure;
  }
  front_end fe{admission_policy_of(counting, st), proxy_networks(cfg), &st.env};
  for (auto& w : *workers) {
    for (auto& l : w->listeners) {
      asio::co_spawn(w->ctx, accept_loop(l, *w, fe), asio::detached);
    }
  }
  // With one process this is the unit's main process: it pings while every I/O thread runs
  // (in a worker, forked, the watchdog does nothing; the master pings).
  systemd::loop_watchdog watchdog((*workers)[0]->ctx);
  for (auto& w : *workers) {
    watchdog.watch(w->ctx);
  }
  event_signals signals(*workers, st, *counting.counter, watchdog);
  signals.arm();
  pthread_sigmask(SIG_UNBLOCK, &deferred, nullptr);
  watchdog.start();
  systemd::notify_ready("serving POP3");
  run_io_threads(*workers);
  st.workers->join();
  log::info("stopped");
  return 0;
}

// How many processes and I/O threads event mode runs.
struct daemon_shape {
  unsigned cores = 1;
  std::uint32_t processes = 1;
  std::uint32_t threads = 1;
};

// Checks that need the shape: min_connection_interval needs one process; warns when the
// descriptor limit cannot hold max_connections (after raising it as far as allowed).
result<void> check_shape(const config& cfg, const daemon_shape& shape) {
  if (shape.processes > 1 && cfg.unix.min_connection_interval.count() > 0) {
    return error(errc::invalid,
                 "server.min_connection_interval is enforced by one process only: it cannot be "
                 "combined with server.processes = " +
                     std::to_string(shape.processes) +
                     " (set processes = 1, or remove min_connection_interval)");
  }
  // Idle sessions cost descriptors: take every one the hard limit allows, and started as
  // root, raise the hard limit to what max_connections needs.
  if (auto limit = raise_descriptor_limit(descriptors_wanted(cfg.max_connections, shape.processes));
      !limit) {
    log::warning("{}", limit.err().message());
  } else if (auto warning = descriptor_warning(cfg.max_connections, shape.processes, *limit);
             !warning.empty()) {
    log::warning("{}", warning);
  }
  return {};
}

// Several processes: forks the workers, each serving its share of `all`, and supervises them.
// The counts every worker checks live in memory they all share.
int run_workers(const config& cfg, std::shared_ptr<net::tls_server_context> tls, all_sockets& all,
                const daemon_shape& shape, const sigset_t& deferred, net::auth_penalty* penalty) {
  auto shared =
      shared_limits::create(shape.processes, cfg.max_connections, cfg.max_connections_per_ip);
  if (!shared) {
    return startup_failure(shared.err());
  }
  // Every worker must show an unknown SCRAM user the same salt, whichever one answers.
  auto salt_key = make_salt_key();
  if (!salt_key) {
    return startup_failure(salt_key.err());
  }
  sigset_t master_set = deferred;
  sigaddset(&master_set, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &master_set, nullptr);
  log::info("event mode: {} worker processes, {} I/O threads each", shape.processes, shape.threads);
  supervisor_hooks hooks;
  hooks.run_worker = [&](std::uint32_t slot) {
    // Keep only this worker's sockets: the others belong to the other workers.
    process_sockets mine = std::move(all[slot]);
    all.clear();
    config worker_cfg = cfg;
    worker_cfg.threads = shape.threads;
    if (worker_cfg.worker_threads == 0) {
      worker_cfg.worker_threads = std::max(2u, 2 * shape.cores / shape.processes);
    }
    shared_limits::worker_counter counter(*shared, slot);
    net::admission_policy counting{&counter};
    return run_event_loop(worker_cfg, tls, std::move(mine), counting, deferred, worker_setup_failed,
                          *salt_key, penalty);
  };
  hooks.worker_gone = [&](std::uint32_t slot) { shared->release_slot(slot); };
  hooks.close_listeners = [&] { all.clear(); };
  return supervise_workers(shape.processes, cfg.unix.shutdown_grace, hooks);
}

}  // namespace

int run_daemon(const config& cfg) {
  init_logging(cfg);
  (void)std::signal(SIGPIPE, SIG_IGN);  // cannot fail for a valid signal and SIG_IGN
  // SIGTERM, SIGINT and SIGHUP wait (blocked, pending) until their handlers exist: a signal
  // that arrives right after "listening on" must stop or reload, not kill. With several
  // processes the master waits for them (and SIGCHLD) with sigtimedwait.
  sigset_t deferred;
  sigemptyset(&deferred);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) {
    sigaddset(&deferred, s);
  }
  pthread_sigmask(SIG_BLOCK, &deferred, nullptr);

  daemon_shape shape;
  shape.cores = std::max(1u, std::thread::hardware_concurrency());
  shape.processes = effective_processes(cfg.processes, shape.cores);
  shape.threads = threads_per_process(cfg.threads, shape.processes, shape.cores);
  if (auto r = check_shape(cfg, shape); !r) {
    return startup_failure(r.err());
  }
  auto tls = make_tls(cfg);
  if (!tls) {
    return startup_failure(tls.err());
  }
  if (*tls) {
    log::info("TLS certificate: {}", (*tls)->certificate_info());
  }
  auto sockets = bind_listeners(cfg, shape.processes, shape.threads);
  if (!sockets) {
    return startup_failure(sockets.err());
  }
  // Bound but not accepting yet: connections wait in the backlog until it is done.
  unix_settings event_us = cfg.unix;
  event_us.passdb = cfg.passdb;
  event_us.model = process_model::event;
  run_startup_recovery(cfg, event_us);
  if (auto r = drop_privileges(cfg.user, cfg.group); !r) {
    return startup_failure(r.err());
  }
  // Every session of this process opens its maildrop with this process's ids.
  if (auto r = check_running_identity(cfg); !r) {
    return startup_failure(r.err());
  }
  // The auth penalty is shared by every worker process: mapped before they are forked.
  auto penalty = make_auth_penalty(cfg, false);
  if (!penalty) {
    return startup_failure(penalty.err());
  }
  if (shape.processes > 1) {
    return run_workers(cfg, std::move(tls).value(), *sockets, shape, deferred, penalty->get());
  }
  net::source_limits local(cfg.max_connections, cfg.max_connections_per_ip);
  net::connection_pacer pacer(cfg.unix.min_connection_interval);
  return run_event_loop(cfg, std::move(tls).value(), std::move(sockets->front()),
                        {&local, false, &pacer}, deferred, 1, {}, penalty->get());
}

int run_inetd(const config& cfg) {
  init_logging(cfg);
  (void)std::signal(SIGPIPE, SIG_IGN);
  if (cfg.unix.min_connection_interval.count() > 0) {
    log::error(
        "server.min_connection_interval cannot apply to --inetd (one connection per "
        "process; the inetd superserver paces connections): remove it from this config");
    return 1;
  }
  auto tls = make_tls(cfg);
  if (!tls) {
    log::error("{}", tls.err().message());
    return 1;
  }
  if (auto r = drop_privileges(cfg.user, cfg.group); !r) {
    log::error("{}", r.err().message());
    return 1;
  }
  if (auto r = check_running_identity(cfg); !r) {
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
  auto client = admit_stdin(cfg, admission_policy_of({}, st));
  if (!client) {
    st.workers->join();
    return 0;
  }
  if (client->conn.is_tcp) {
    st.penalty = inetd_penalty(cfg);
    st.env.penalty = st.penalty.get();
  }
  asio::io_context ctx{1};
  // A TCP socket from inetd is driven as one (so STLS and implicit TLS work); anything else
  // (pipes from a master process or a test) as a pair of descriptors.
  const bool implicit_tls =
      client->conn.is_tcp && client->conn.options.implicit_tls && st.env.tls != nullptr;
  auto stream = client->conn.is_tcp
                    ? net::make_transport(ctx.get_executor(), unique_fd(::dup(STDIN_FILENO)),
                                          client->conn.v6, implicit_tls, st.env.tls.get())
                    : net::make_stdio_transport(ctx.get_executor(), unique_fd(::dup(STDIN_FILENO)),
                                                unique_fd(::dup(STDOUT_FILENO)));
  if (!stream) {
    log::error("inetd mode: cannot use stdin/stdout: {}", stream.err().message());
    return 1;
  }
  const auto& addr = client->origin.address;
  std::string remote = client->conn.is_tcp ? addr.to_string() : "local";
  auto ctl = std::make_shared<net::session_control>(std::move(stream).value(), ctx.get_executor());
  asio::signal_set signals(ctx, SIGTERM, SIGINT);
  signals.async_wait([&](const std::error_code& ec, int) {
    if (!ec) {
      ctl->stop(true);
    }
  });
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        net::connection_info info{remote, addr, implicit_tls, client->origin.client_tls};
        co_await guarded_session(ctl, st.env, std::move(info), nullptr);
        signals.cancel();
      },
      asio::detached);
  ctx.run();
  st.workers->join();
  return 0;
}

}  // namespace postern::server
