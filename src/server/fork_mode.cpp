#include "server/fork_mode.hpp"

#include "auth/passdb_spec.hpp"
#include "common/log.hpp"
#include "net/admission.hpp"
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
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <system_error>
#include <thread>
#include <vector>

namespace postern::server {
namespace {

constexpr const char* default_chroot = "/run/postern/empty";

int startup_error(const std::string& msg) {
  log::error("{}", msg);
  std::fprintf(stderr, "posternd: %s\n", msg.c_str());
  return 1;
}

using bound_listener = net::listening_socket;

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
    log::warning(
        "auth.mechanisms: EXTERNAL is not offered in fork mode (the client certificate "
        "is checked by the unprivileged process, whose word does not count)");
  }
  if (!cfg.user.empty()) {
    log::warning(
        "server.user is ignored in fork mode: the master stays root; sessions run as "
        "their mail owner and pre-auth processes as server.login_user");
  }
  auto login = privsep::resolve_login_user(us.login_user);
  if (!login) {
    return std::move(login).err();
  }
  std::string chroot_dir = us.login_chroot.empty() ? default_chroot : us.login_chroot;
  POSTERN_TRY(privsep::ensure_empty_root(chroot_dir));
  // The password database is opened per connection, in the supervisor; check the spec now.
  const auto parsed = auth::parse_passdb_spec(cfg.passdb);
  const auto* spec = std::get_if<auth::passdb_spec>(&parsed);
  if (spec == nullptr) {
    return error(errc::invalid, "auth.passdb: unsupported passdb '" + cfg.passdb + "'");
  }
  if (spec->kind == auth::passdb_kind::passwd_file && ::access(spec->path.c_str(), R_OK) != 0) {
    return error::from_errno(errno, "auth.passdb: " + spec->path, errc::invalid);
  }
  POSTERN_TRY(check_passdb_file(cfg, us));
  params.cfg = &cfg;
  params.us = &us;
  params.st = &st;
  params.login = std::move(login).value();
  params.login_chroot = chroot_dir;
  return {};
}

using steady = std::chrono::steady_clock;

// The termination, reload and child signals of the master, blocked and read from a signalfd
// in its poll() loop (no handler, no global pipe). Children get them back unblocked.
class signal_reader {
 public:
  result<void> open() {
    sigemptyset(&set_);
    for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) {
      sigaddset(&set_, s);
    }
    // pthread_sigmask: sigprocmask is unspecified in a process with threads. It returns the
    // error instead of setting errno.
    if (const int rc = ::pthread_sigmask(SIG_BLOCK, &set_, nullptr); rc != 0) {
      return error::from_errno(rc, "pthread_sigmask", errc::permanent);
    }
    fd_.reset(::signalfd(-1, &set_, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd_) {
      return error::from_errno(errno, "signalfd", errc::permanent);
    }
    return {};
  }
  int fd() const { return fd_.get(); }
  // The next pending signal, 0 when none.
  int next() {
    signalfd_siginfo info{};
    return ::read(fd_.get(), &info, sizeof info) == sizeof info ? static_cast<int>(info.ssi_signo)
                                                                : 0;
  }
  // In a child: closes the descriptor and unblocks every signal.
  void release_in_child() {
    fd_.reset();
    sigset_t none;
    sigemptyset(&none);
    ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
  }

 private:
  sigset_t set_{};
  unique_fd fd_;
};

// One connection's process, as the master knows it.
struct child_info {
  net::counted_connection counted;  // held until the session frees it (slot) or the child is reaped
  unique_fd admission;              // PROXY listeners: the child asks here for admission of
                                    // the header's address; closed once answered
  // The read end of a pipe whose write end only the child's supervisor holds
  // (privsep::client::slot). It closes that end when its session ends, before the client's
  // socket: a client that reconnects as soon as it sees the close finds the place free.
  unique_fd slot;
};

// The master of fork mode: accepts, admits and forks one supervisor per connection.
class fork_master {
 public:
  fork_master(const config& cfg, const unix_settings& us, const privsep::supervisor_params& params,
              std::vector<bound_listener> listeners)
      : cfg_(cfg),
        us_(us),
        params_(params),
        listeners_(std::move(listeners)),
        counter_(std::min(us.max_children, cfg.max_connections), cfg.max_connections_per_ip),
        pacer_(us.min_connection_interval),
        proxy_trusted_(proxy_networks(cfg)) {
    policy_ = admission_policy_of({&counter_, true, &pacer_}, *params.st);
    policy_.wrappers = nullptr;  // TCP wrappers read files: each child checks them
  }

  result<void> start() { return signals_.open(); }
  int run();

 private:
  void on_signal(int signo);
  void reap();
  // Children whose session has not freed its place yet (child_info::slot).
  std::size_t live_children() const {
    return static_cast<std::size_t>(std::count_if(
        children_.begin(), children_.end(), [](const auto& c) { return c.second.slot.valid(); }));
  }
  void accept_from(const bound_listener& l);
  void start_child(unique_fd conn, const sockaddr_storage& peer, const bound_listener& l,
                   net::counted_connection counted);
  void answer_admission(pid_t pid, child_info& child);
  void begin_stop(int signo);
  int poll_timeout();
  [[noreturn]] void child_main(unique_fd conn, const sockaddr_storage& peer,
                               net::listener_options options, unique_fd admission, unique_fd slot);

  const config& cfg_;
  const unix_settings& us_;
  const privsep::supervisor_params& params_;
  std::vector<bound_listener> listeners_;
  signal_reader signals_;
  net::source_limits counter_;
  net::connection_pacer pacer_;
  net::admission_policy policy_;
  std::vector<net::network> proxy_trusted_;
  std::map<pid_t, child_info> children_;
  systemd::watchdog_clock watchdog_;  // pinged from run()'s loop
  bool stopping_ = false;
  steady::time_point stop_deadline_{};
};

void send_refusal(int fd, std::string_view line) {
  if (!line.empty()) {
    (void)!::send(fd, line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
}

int fork_master::run() {
  std::vector<pollfd> fds;
  // The child of each child descriptor in `fds`, and whether it is the slot (else admission).
  std::vector<std::pair<pid_t, bool>> asking;
  systemd::notify_ready("serving POP3, one process per session");
  while (!(stopping_ && children_.empty())) {
    fds.clear();
    asking.clear();
    fds.push_back({signals_.fd(), POLLIN, 0});
    for (const auto& [pid, child] : children_) {
      if (child.admission) {
        fds.push_back({child.admission.get(), POLLIN, 0});
        asking.emplace_back(pid, false);
      }
      if (child.slot) {
        fds.push_back({child.slot.get(), 0, 0});  // POLLHUP once the session freed its place
        asking.emplace_back(pid, true);
      }
    }
    const std::size_t first_listener = fds.size();
    for (const auto& l : listeners_) {
      fds.push_back({l.fd.get(), POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), watchdog_.poll_timeout(poll_timeout())) < 0 &&
        errno != EINTR) {
      log::error("poll failed: {}", std::generic_category().message(errno));
      break;
    }
    watchdog_.tick();
    if (fds[0].revents & POLLIN) {
      while (int signo = signals_.next()) {
        on_signal(signo);
      }
    }
    // Ended sessions free their places before new connections are admitted.
    for (std::size_t i = 1; i < first_listener; ++i) {
      auto it = children_.find(asking[i - 1].first);
      if (fds[i].revents == 0 || it == children_.end()) {
        continue;
      }
      if (asking[i - 1].second) {
        it->second.counted.reset();
        it->second.slot.reset();
      } else {
        answer_admission(it->first, it->second);
      }
    }
    for (std::size_t i = first_listener; i < fds.size() && !stopping_; ++i) {
      if (fds[i].revents & POLLIN) {
        accept_from(listeners_[i - first_listener]);
      }
    }
  }
  log::info("stopped");
  return 0;
}

void fork_master::on_signal(int signo) {
  if (signo == SIGCHLD) {
    reap();
  } else if (signo == SIGHUP) {
    systemd::notify_reloading();
    reload_tls(params_.st->env.tls.get());
    systemd::notify_ready();
  } else if (!stopping_) {
    begin_stop(signo);
  }
}

void fork_master::begin_stop(int signo) {
  stopping_ = true;
  systemd::notify_stopping();
  log::info("signal {} received: shutting down, {} sessions open", signo, children_.size());
  listeners_.clear();
  for (auto& [pid, child] : children_) {
    ::kill(-pid, SIGTERM);
  }
  stop_deadline_ = steady::now() + us_.shutdown_grace;
}

// -1 (no timeout) while serving; while stopping, at most 100 ms, and past the grace period
// every remaining session is killed.
int fork_master::poll_timeout() {
  if (!stopping_) {
    return -1;
  }
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(stop_deadline_ - steady::now());
  if (left.count() <= 0) {
    log::warning("{} sessions still running after {}s: killing them", children_.size(),
                 us_.shutdown_grace.count());
    for (auto& [pid, child] : children_) {
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
    }
    stop_deadline_ = steady::now() + std::chrono::seconds(5);
    return 100;
  }
  return static_cast<int>(std::min<std::int64_t>(left.count(), 100));
}

void fork_master::reap() {
  int status = 0;
  pid_t pid;
  while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
    if (children_.erase(pid) == 0) {
      continue;  // an orphaned grandchild
    }
    if (WIFSIGNALED(status)) {
      log::notice("session process {} ended by signal {}", pid, WTERMSIG(status));
    } else {
      log::debug("session process {} exited with status {}", pid, WEXITSTATUS(status));
    }
  }
}

void fork_master::accept_from(const bound_listener& l) {
  for (int burst = 0; burst < 64; ++burst) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    unique_fd conn(::accept4(l.fd.get(), reinterpret_cast<sockaddr*>(&peer), &plen,
                             SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        log::warning("accept failed: {}", std::generic_category().message(errno));
      }
      return;
    }
    auto addr = net::address_of(peer);
    net::counted_connection counted;
    std::optional<net::refusal_reason> refused;
    if (!l.options.proxy_protocol) {
      refused = net::admit(policy_, addr, counted);
    } else if (live_children() >= std::min(us_.max_children, cfg_.max_connections)) {
      refused = net::refusal_reason::max_children;  // the header's address is admitted later
    }
    if (refused) {
      net::log_refusal(addr, *refused);
      send_refusal(conn.get(), net::refusal_reply(*refused));
      continue;
    }
    start_child(std::move(conn), peer, l, std::move(counted));
  }
}

void fork_master::start_child(unique_fd conn, const sockaddr_storage& peer, const bound_listener& l,
                              net::counted_connection counted) {
  int pair[2] = {-1, -1};
  if (l.options.proxy_protocol && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    log::error("socketpair failed: {}", std::generic_category().message(errno));
    send_refusal(conn.get(), "-ERR [SYS/TEMP] Server busy, try again later.\r\n");
    return;
  }
  unique_fd mine(pair[0]), theirs(pair[1]);
  int slot_pipe[2] = {-1, -1};
  if (::pipe2(slot_pipe, O_CLOEXEC) != 0) {
    log::error("pipe failed: {}", std::generic_category().message(errno));
    send_refusal(conn.get(), "-ERR [SYS/TEMP] Server busy, try again later.\r\n");
    return;
  }
  unique_fd slot_mine(slot_pipe[0]), slot_theirs(slot_pipe[1]);
  pid_t pid = ::fork();
  if (pid < 0) {
    log::error("fork failed: {}", std::generic_category().message(errno));
    send_refusal(conn.get(), "-ERR [SYS/TEMP] Server busy, try again later.\r\n");
    return;
  }
  if (pid == 0) {
    mine.reset();
    slot_mine.reset();
    child_main(std::move(conn), peer, l.options, std::move(theirs), std::move(slot_theirs));
  }
  ::setpgid(pid, pid);  // also done by the child: whoever runs first
  children_[pid] = {std::move(counted), std::move(mine), std::move(slot_mine)};
  // On a PROXY listener the client's address is known once the child has read the header.
  log::debug("connection: {}={}, pid={}, sessions={}", l.options.proxy_protocol ? "proxy" : "rip",
             net::address_of(peer).to_string(), pid, children_.size());
}

// A child of a PROXY listener names the header's address ("ADDRESS\n"); the answer is one
// byte: 0 admitted, else 1 + the refusal_reason (logged here, answered by the child).
void fork_master::answer_admission(pid_t pid, child_info& child) {
  char line[64] = {};
  ssize_t n = ::read(child.admission.get(), line, sizeof line - 1);
  std::error_code ec;
  auto addr = n > 1 && line[n - 1] == '\n'
                  ? asio::ip::make_address(std::string_view(line, n - 1), ec)
                  : asio::ip::address();
  if (n <= 1 || ec) {
    child.admission.reset();  // ended, or not a request: no admission, no count
    return;
  }
  auto refused = net::admit(policy_, addr, child.counted);
  unsigned char answer = refused ? static_cast<unsigned char>(1 + static_cast<int>(*refused)) : 0;
  if (refused) {
    net::log_refusal(addr, *refused);
  } else {
    log::debug("connection admitted: rip={}, pid={}", addr.to_string(), pid);
  }
  (void)!::send(child.admission.get(), &answer, 1, MSG_NOSIGNAL);
  child.admission.reset();
}

// The PROXY step in a child: reads the header, and asks the master to admit its address.
std::optional<net::client_origin> proxy_admission(int conn, const asio::ip::address& peer,
                                                  const std::vector<net::network>& trusted,
                                                  int admission) {
  auto origin = net::proxy_step(conn, peer, trusted);
  if (!origin) {
    return std::nullopt;
  }
  std::string request = origin->address.to_string() + "\n";
  unsigned char answer = 0xFF;
  if (::write(admission, request.data(), request.size()) != static_cast<ssize_t>(request.size()) ||
      ::read(admission, &answer, 1) != 1) {
    return std::nullopt;  // the master is gone
  }
  if (answer != 0) {
    send_refusal(conn, net::refusal_reply(static_cast<net::refusal_reason>(answer - 1)));
    return std::nullopt;
  }
  return origin;
}

// The supervisor process for one accepted connection. Never returns.
[[noreturn]] void fork_master::child_main(unique_fd conn, const sockaddr_storage& peer,
                                          net::listener_options options, unique_fd admission,
                                          unique_fd slot) {
  ::setpgid(0, 0);
  listeners_.clear();
  children_.clear();  // the master's ends for the other children
  signals_.release_in_child();
  ::fcntl(conn.get(), F_SETFL, ::fcntl(conn.get(), F_GETFL) & ~O_NONBLOCK);

  privsep::client c;
  c.is_tcp = true;
  c.v6 = peer.ss_family == AF_INET6;
  c.implicit_tls = options.implicit_tls;
  c.address = net::address_of(peer);
  if (options.proxy_protocol) {
    auto origin = proxy_admission(conn.get(), c.address, proxy_trusted_, admission.get());
    if (!origin) {
      _exit(0);
    }
    c.address = origin->address;
    c.client_tls = origin->client_tls;
  }
  admission.reset();
  c.remote = c.address.to_string();
  if (auto r = reopen_after_fork(*params_.cfg, *params_.st); !r) {
    log::error("connection supervisor: {}", r.err().message());
    send_refusal(conn.get(), "-ERR [SYS/TEMP] Server error, try again later.\r\n");
    _exit(1);
  }
  net::admission_policy wrappers_only;
  wrappers_only.wrappers = params_.st->access.get();
  if (auto refused = net::admit_wrappers(wrappers_only, c.address)) {
    net::log_refusal(c.address, *refused);
    send_refusal(conn.get(), net::refusal_reply(*refused));
    _exit(0);
  }
  int one = 1;
  ::setsockopt(conn.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c.in = std::move(conn);
  c.slot = std::move(slot);
  _exit(privsep::run_supervisor(params_, std::move(c)));
}

}  // namespace

int run_fork_daemon(const config& cfg, const unix_settings& us) {
  init_logging(cfg);
  (void)std::signal(SIGPIPE, SIG_IGN);
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
  // Bound but not accepting yet: connections wait in the backlog until it is done.
  run_startup_recovery(cfg, us);
  // Orphaned pre-auth processes (a supervisor killed mid-relay) are reaped here, not by init.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  fork_master master(cfg, us, params, std::move(opened->front()));
  if (auto r = master.start(); !r) {
    return startup_error(r.err().message());
  }
  log::info(
      "fork mode: max_children={}, max_connections_per_ip={}, min_connection_interval={}ms, "
      "login_user={}, login_chroot={}",
      std::min(us.max_children, cfg.max_connections), cfg.max_connections_per_ip,
      us.min_connection_interval.count(), params.login.name, params.login_chroot);
  return master.run();
}

int run_privsep_inetd(const config& cfg, const unix_settings& us) {
  init_logging(cfg);
  (void)std::signal(SIGPIPE, SIG_IGN);
  shared_state st;
  privsep::supervisor_params params;
  if (auto r = common_startup(cfg, us, st, params); !r) {
    log::error("{}", r.err().message());
    return 1;
  }
  auto admitted = admit_stdin(cfg, admission_policy_of({}, st));
  if (!admitted) {
    return 0;
  }
  privsep::client c;
  c.remote = "local";
  c.in.reset(::dup(STDIN_FILENO));
  if (admitted->conn.is_tcp) {
    c.is_tcp = true;
    c.v6 = admitted->conn.v6;
    c.address = admitted->origin.address;
    c.client_tls = admitted->origin.client_tls;
    c.remote = c.address.to_string();
    c.implicit_tls = st.env.tls != nullptr && admitted->conn.options.implicit_tls;
  } else {
    c.out.reset(::dup(STDOUT_FILENO));
  }
  if (!c.in || (!c.is_tcp && !c.out)) {
    log::error("inetd mode: cannot use stdin/stdout");
    return 1;
  }
  // One process per connection: the penalty lives in a file between them (none for a
  // non-IP stdin, which has no address to penalise).
  if (c.is_tcp) {
    st.penalty = inetd_penalty(cfg);
  }
  // The session uses its own descriptors; stdin/stdout go to /dev/null so that nothing else
  // (a library writing to stdout) reaches the client.
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, STDIN_FILENO);
    ::dup2(devnull, STDOUT_FILENO);
    ::close(devnull);
  }
  return privsep::run_supervisor(params, std::move(c));
}

}  // namespace postern::server
