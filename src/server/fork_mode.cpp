#include "server/fork_mode.hpp"

#include "common/log.hpp"
#include "net/source_limits.hpp"
#include "server/privsep.hpp"
#include "server/setup.hpp"
#include "server/startup_recovery.hpp"
#include "server/systemd.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

namespace postern::server {
namespace {

constexpr const char* default_chroot = "/run/postern/empty";

int signal_pipe[2] = {-1, -1};

void on_signal(int signo) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(signo);
  (void)!::write(signal_pipe[1], &b, 1);
  errno = saved;
}

int startup_error(const std::string& msg) {
  log::error("{}", msg);
  std::fprintf(stderr, "posternd: %s\n", msg.c_str());
  return 1;
}

using bound_listener = net::listening_socket;

asio::ip::address address_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    asio::ip::address_v4::bytes_type b;
    std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, b.size());
    return asio::ip::address_v4(b);
  }
  asio::ip::address_v6::bytes_type b;
  std::memcpy(b.data(), &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, b.size());
  return net::canonical_address(asio::ip::address_v6(b));
}

// Per-source accounting of the master (single-threaded).
struct source_state {
  std::uint32_t active = 0;
  std::chrono::steady_clock::time_point last_start{};
};

struct child_info {
  asio::ip::address source;
};

// Everything the startup of both entry points shares: logging, TLS, the environment and the
// pre-auth user and chroot.
result<void> common_startup(const config& cfg, const unix_settings& us, shared_state& st,
                            privsep::supervisor_params& params) {
  if (geteuid() != 0) {
    return error(errc::permanent,
                 "process_model \"fork\" needs root (it switches to each mail owner after login)");
  }
  auto tls = make_tls(cfg);
  if (!tls) {
    return std::move(tls).err();
  }
  if (*tls) {
    log::info("TLS certificate: {}", (*tls)->certificate_info());
  }
  POSTERN_TRY(prepare_env(cfg, us, st, std::move(tls).value()));
  if (std::find(cfg.mechanisms.begin(), cfg.mechanisms.end(), "EXTERNAL") != cfg.mechanisms.end()) {
    log::warning("auth.mechanisms: EXTERNAL is not offered in fork mode (the client certificate "
                 "is checked by the unprivileged process, whose word does not count)");
  }
  if (!cfg.user.empty()) {
    log::warning("server.user is ignored in fork mode: the master stays root; sessions run as "
                 "their mail owner and pre-auth processes as server.login_user");
  }
  auto login = privsep::resolve_login_user(us.login_user);
  if (!login) {
    return std::move(login).err();
  }
  std::string chroot_dir = us.login_chroot.empty() ? default_chroot : us.login_chroot;
  POSTERN_TRY(privsep::ensure_empty_root(chroot_dir));
  // The password database is opened per connection, in the supervisor; check the spec now.
  std::string spec = cfg.passdb;
  if (spec != "pam" && spec.rfind("passwd-file:", 0) != 0) {
    return error(errc::invalid, "auth.passdb: unsupported passdb '" + spec + "'");
  }
  if (spec.rfind("passwd-file:", 0) == 0 && ::access(spec.c_str() + 12, R_OK) != 0) {
    return error::from_errno(errno, "auth.passdb: " + spec.substr(12), errc::invalid);
  }
  POSTERN_TRY(check_passdb_file(cfg, us));
  params.cfg = &cfg;
  params.us = &us;
  params.st = &st;
  params.login = std::move(login).value();
  params.login_chroot = chroot_dir;
  return {};
}

void send_refusal(int fd, std::string_view line) {
  (void)!::send(fd, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

// The supervisor process for one accepted connection. Never returns.
[[noreturn]] void child_main(const privsep::supervisor_params& params, std::vector<bound_listener>& listeners,
                             int fd, const sockaddr_storage& peer, bool implicit_tls) {
  ::setpgid(0, 0);
  listeners.clear();
  ::close(signal_pipe[0]);
  ::close(signal_pipe[1]);
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGHUP, SIG_DFL);
  std::signal(SIGCHLD, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);

  privsep::client c;
  c.in.reset(fd);
  c.is_tcp = true;
  c.implicit_tls = implicit_tls;
  c.address = address_of(peer);
  c.remote = c.address.to_string();
  if (params.st->access_list != nullptr && !params.st->access_list->allows(c.address)) {
    log::warning("connection refused: rip={}, reason=acl", c.remote);
    send_refusal(fd, "-ERR [SYS/PERM] Access denied.\r\n");
    _exit(0);
  }
  if (auto r = reopen_after_fork(*params.cfg, *params.st); !r) {
    log::error("connection supervisor: {}", r.err().message());
    send_refusal(fd, "-ERR [SYS/TEMP] Server error, try again later.\r\n");
    _exit(1);
  }
  if (params.st->access != nullptr && !params.st->access->allowed(c.address)) {
    log::warning("connection refused: rip={}, reason=tcp_wrappers", c.remote);
    send_refusal(fd, "-ERR [SYS/PERM] Access denied.\r\n");
    _exit(0);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  _exit(privsep::run_supervisor(params, std::move(c)));
}

}  // namespace

int run_fork_daemon(const config& cfg, const unix_settings& us) {
  init_logging(cfg);
  std::signal(SIGPIPE, SIG_IGN);
  shared_state st;
  privsep::supervisor_params params;
  if (auto r = common_startup(cfg, us, st, params); !r) {
    return startup_error(r.err().message());
  }
  // Shared by every connection's supervisor, which checks the passwords.
  if (auto penalty = make_auth_penalty(cfg, false); !penalty) {
    return startup_error(penalty.err().message());
  } else {
    st.penalty = std::move(penalty).value();
  }
  close_before_fork(st);  // each connection's supervisor opens its own (reopen_after_fork)
  auto opened = open_listeners(cfg, 1);
  if (!opened) {
    return startup_error(opened.err().message());
  }
  std::vector<bound_listener> listeners = std::move(opened->front());
  // Bound but not accepting yet: connections wait in the backlog until it is done.
  run_startup_recovery(cfg, us);
  if (::pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    return startup_error("pipe failed");
  }
  // Orphaned pre-auth processes (a supervisor killed mid-relay) are reaped here, not by init.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
    sigaction(s, &sa, nullptr);
  }

  const std::uint32_t max_total = std::min(us.max_children, cfg.max_connections);
  const std::uint32_t max_per_source = cfg.max_connections_per_ip;
  log::info("fork mode: max_children={}, max_connections_per_ip={}, min_connection_interval={}ms, "
            "login_user={}, login_chroot={}",
            max_total, max_per_source, us.min_connection_interval.count(), params.login.name,
            params.login_chroot);
  std::map<pid_t, child_info> children;
  std::map<asio::ip::address, source_state> sources;
  bool stopping = false;
  std::chrono::steady_clock::time_point stop_deadline{};

  auto reap_children = [&] {
    for (;;) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) {
        break;
      }
      auto it = children.find(pid);
      if (it == children.end()) {
        continue;  // an orphaned grandchild
      }
      auto src = sources.find(it->second.source);
      if (src != sources.end() && src->second.active > 0) {
        --src->second.active;
      }
      if (WIFSIGNALED(status)) {
        log::notice("session process {} ended by signal {}", pid, WTERMSIG(status));
      } else {
        log::debug("session process {} exited with status {}", pid, WEXITSTATUS(status));
      }
      children.erase(it);
    }
  };

  auto prune_sources = [&](std::chrono::steady_clock::time_point now) {
    if (sources.size() < 1024) {
      return;
    }
    for (auto it = sources.begin(); it != sources.end();) {
      if (it->second.active == 0 && now - it->second.last_start >= us.min_connection_interval) {
        it = sources.erase(it);
      } else {
        ++it;
      }
    }
  };

  auto handle_accept = [&](const bound_listener& l) {
    for (int burst = 0; burst < 64; ++burst) {
      sockaddr_storage peer{};
      socklen_t plen = sizeof peer;
      int fd = ::accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
          log::warning("accept failed: {}", std::strerror(errno));
        }
        return;
      }
      unique_fd conn(fd);
      auto addr = address_of(peer);
      auto now = std::chrono::steady_clock::now();
      prune_sources(now);
      auto& src = sources[addr];
      const char* why = nullptr;
      if (children.size() >= max_total) {
        why = "max_children";
      } else if (src.active >= max_per_source) {
        why = "max_connections_per_ip";
      } else if (us.min_connection_interval.count() > 0 && src.last_start != std::chrono::steady_clock::time_point{} &&
                 now - src.last_start < us.min_connection_interval) {
        why = "min_connection_interval";
      }
      if (why != nullptr) {
        log::warning("connection refused: rip={}, reason={}", addr.to_string(), why);
        send_refusal(fd, "-ERR [SYS/TEMP] Too many connections, try again later.\r\n");
        continue;
      }
      pid_t pid = ::fork();
      if (pid < 0) {
        log::error("fork failed: {}", std::strerror(errno));
        send_refusal(fd, "-ERR [SYS/TEMP] Server busy, try again later.\r\n");
        continue;
      }
      if (pid == 0) {
        child_main(params, listeners, conn.release(), peer, l.options.implicit_tls);
      }
      ::setpgid(pid, pid);  // also done by the child: whoever runs first
      children[pid] = {addr};
      ++src.active;
      src.last_start = now;
      log::debug("connection: rip={}, pid={}, sessions={}", addr.to_string(), pid, children.size());
    }
  };

  systemd::watchdog_clock watchdog;  // pinged from this loop
  systemd::notify_ready("serving POP3, one process per session");
  std::vector<pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({signal_pipe[0], POLLIN, 0});
    if (!stopping) {
      for (auto& l : listeners) {
        fds.push_back({l.fd.get(), POLLIN, 0});
      }
    }
    int timeout = -1;
    if (stopping) {
      if (children.empty()) {
        break;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(stop_deadline -
                                                                        std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        log::warning("{} sessions still running after {}s: killing them", children.size(),
                     us.shutdown_grace.count());
        for (auto& [pid, info] : children) {
          ::kill(-pid, SIGKILL);
          ::kill(pid, SIGKILL);
        }
        stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        left = std::chrono::milliseconds(100);
      }
      timeout = static_cast<int>(std::min<std::int64_t>(left.count(), 100));
    }
    int n = ::poll(fds.data(), fds.size(), watchdog.poll_timeout(timeout));
    watchdog.tick();
    if (n < 0 && errno != EINTR) {
      log::error("poll failed: {}", std::strerror(errno));
      break;
    }
    if (fds[0].revents & POLLIN) {
      unsigned char sigs[64];
      ssize_t got = ::read(signal_pipe[0], sigs, sizeof sigs);
      for (ssize_t i = 0; i < got; ++i) {
        int s = sigs[i];
        if (s == SIGCHLD) {
          reap_children();
        } else if (s == SIGHUP) {
          systemd::notify_reloading();
          if (st.env.tls) {
            if (auto r = st.env.tls->reload(); r) {
              log::info("SIGHUP: TLS certificate and key reloaded: {}", st.env.tls->certificate_info());
            } else {
              log::error("SIGHUP: TLS reload failed, keeping the old certificate: {}", r.err().message());
            }
          } else {
            log::info("SIGHUP: nothing to reload");
          }
          systemd::notify_ready();
        } else if ((s == SIGTERM || s == SIGINT) && !stopping) {
          stopping = true;
          systemd::notify_stopping();
          log::info("signal {} received: shutting down, {} sessions open", s, children.size());
          listeners.clear();
          for (auto& [pid, info] : children) {
            ::kill(-pid, SIGTERM);
          }
          stop_deadline = std::chrono::steady_clock::now() + us.shutdown_grace;
        }
      }
    }
    reap_children();
    if (!stopping) {
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents & POLLIN) {
          handle_accept(listeners[i - 1]);
        }
      }
    }
  }
  log::info("stopped");
  return 0;
}

int run_privsep_inetd(const config& cfg, const unix_settings& us) {
  init_logging(cfg);
  std::signal(SIGPIPE, SIG_IGN);
  shared_state st;
  privsep::supervisor_params params;
  if (auto r = common_startup(cfg, us, st, params); !r) {
    log::error("{}", r.err().message());
    return 1;
  }
  privsep::client c;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  c.remote = "local";
  if (::getpeername(STDIN_FILENO, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
      (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
    c.address = address_of(ss);
    c.remote = c.address.to_string();
    c.is_tcp = true;
    c.in.reset(::dup(STDIN_FILENO));
    c.implicit_tls = st.env.tls != nullptr && cfg.tls == tls_mode::connection;
  } else {
    c.in.reset(::dup(STDIN_FILENO));
    c.out.reset(::dup(STDOUT_FILENO));
  }
  if (!c.in || (!c.is_tcp && !c.out)) {
    log::error("inetd mode: cannot use stdin/stdout");
    return 1;
  }
  // One process per connection: the penalty lives in a file between them (none for a
  // non-IP stdin, which has no address to penalise).
  if (c.is_tcp) {
    auto penalty = make_auth_penalty(cfg, true);
    if (!penalty) {
      log::error("{}", penalty.err().message());
      return 1;
    }
    st.penalty = std::move(penalty).value();
  }
  // The session uses its own descriptors; stdin/stdout go to /dev/null so that nothing else
  // (a library writing to stdout) reaches the client.
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(devnull, STDOUT_FILENO);
    ::close(devnull);
  }
  if (c.is_tcp && st.access_list != nullptr && !st.access_list->allows(c.address)) {
    log::warning("connection refused: rip={}, reason=acl", c.remote);
    send_refusal(c.in.get(), "-ERR [SYS/PERM] Access denied.\r\n");
    return 0;
  }
  if (c.is_tcp && st.access != nullptr && !st.access->allowed(c.address)) {
    log::warning("connection refused: rip={}, reason=tcp_wrappers", c.remote);
    send_refusal(c.in.get(), "-ERR [SYS/PERM] Access denied.\r\n");
    return 0;
  }
  return privsep::run_supervisor(params, std::move(c));
}

}  // namespace postern::server
