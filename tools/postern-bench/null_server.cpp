// `postern-bench serve`: a POP3 server that does no work, for "what the machine allows".
//
// Every user and password is accepted, every maildrop holds the same messages, kept in memory
// and already in wire form (CRLF line ends, no line starting with a dot), and the replies to
// every command one read brought in go out in one gathered write (status lines, listings,
// and for RETR status line, message and terminator): pipelined commands (RFC 2449
// section 6.6, advertised in CAPA) cost one read and one write per batch. Nothing is read from disk, locked, logged or checked. What a real
// server achieves is then measured against the kernel, the loopback and the benchmark client
// themselves. Loopback only, like the client; it runs until SIGINT or SIGTERM.
//
// It is the ceiling row of the comparison, so it spends as little as it can: a plain
// level-triggered epoll loop, no coroutine or reactor layer, accept4() with the socket born
// non-blocking, one recv() and one write per command, the connection closed right after the
// QUIT reply, and no per-connection allocation beyond its small fixed state (the reply
// vector grows once to the largest batch). With
// --processes N it forks N workers, each with its own SO_REUSEPORT listener and its own
// descriptor limit, so it can hold more idle sessions than one process has descriptors.
#include "bench.hpp"
#include "system.hpp"

#include <fmt/core.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <memory>
#include <system_error>
#include <vector>

namespace postern::bench {
namespace {

constexpr std::size_t max_line = 512;  // RFC 2449: commands are at most 255 octets
// Pieces of one gathered write: below IOV_MAX (1024), and a RETR reply takes three.
constexpr std::size_t max_pieces = 3 * 128;

volatile std::sig_atomic_t stop_signal = 0;
extern "C" void note_stop(int sig) { stop_signal = sig; }

// The message every maildrop holds `count` copies of: `size` octets of 78-octet lines.
std::string make_message(std::uint64_t size) {
  std::string m;
  m.reserve(size);
  const std::string line = std::string(76, 'x') + "\r\n";
  while (m.size() + line.size() <= size) {
    m += line;
  }
  std::uint64_t rest = size - m.size();
  if (rest > 0 && rest < 3 && m.size() >= line.size()) {
    m.resize(m.size() - line.size());  // too little left for a line: lengthen the last one
    rest += line.size();
  }
  if (rest >= 3) {
    m += std::string(rest - 2, 'y') + "\r\n";
  }
  return m;
}

struct null_content {
  std::string message;
  std::uint64_t count = 0;
  std::string stat_reply;
  std::string list_reply;
  std::string uidl_reply;
  std::string retr_status;
  std::string capa_reply;
};

constexpr std::string_view greeting = "+OK no-work POP3\r\n";
constexpr std::string_view ok_reply = "+OK\r\n";
constexpr std::string_view err_reply = "-ERR not here\r\n";
constexpr std::string_view dot_line = ".\r\n";

bool message_number(std::string_view arg, const null_content& c) {
  std::uint64_t n = 0;
  const auto [ptr, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), n);
  return !arg.empty() && arg[0] != '+' && ec == std::errc() && ptr == arg.data() + arg.size() &&
         n >= 1 && n <= c.count;
}

// The verb of a command line as four upper-case letters in one word ("RETR" -> 'RETR').
std::uint32_t verb_of(std::string_view line) noexcept {
  if (line.size() < 4 || (line.size() > 4 && line[4] != ' ')) {
    return 0;
  }
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const auto ch = static_cast<unsigned char>(line[static_cast<std::size_t>(i)]);
    v = (v << 8) | static_cast<std::uint32_t>(ch >= 'a' && ch <= 'z' ? ch - 0x20 : ch);
  }
  return v;
}
constexpr std::uint32_t verb(const char (&s)[5]) {
  return (static_cast<std::uint32_t>(s[0]) << 24) | (static_cast<std::uint32_t>(s[1]) << 16) |
         (static_cast<std::uint32_t>(s[2]) << 8) | static_cast<std::uint32_t>(s[3]);
}

// One client connection: its unread command bytes and the replies still being written.
struct connection {
  int fd = -1;
  std::size_t in_len = 0;
  std::array<char, max_line> in{};
  std::vector<iovec> out;     // pieces of the replies to one batch of commands
  std::size_t out_first = 0;  // out[out_first, out.size()) is still to be written
  bool quit = false;          // close once the reply is out; QUIT ends the batch
  bool want_out = false;      // EPOLLOUT is registered
  bool pending() const noexcept { return out_first < out.size(); }
};

class null_server {
 public:
  null_server(int listener, const null_content& c) : listener_(listener), c_(c) {}

  int run() {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) {
      fmt::print(stderr, "postern-bench serve: epoll_create1: {}\n",
                 std::generic_category().message(errno));
      return 2;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // the listener
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, listener_, &ev);
    std::array<epoll_event, 256> events{};
    while (stop_signal == 0) {
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        fmt::print(stderr, "postern-bench serve: epoll_wait: {}\n",
                   std::generic_category().message(errno));
        return 2;
      }
      for (int i = 0; i < n; ++i) {
        auto* c = static_cast<connection*>(events[static_cast<std::size_t>(i)].data.ptr);
        if (c == nullptr) {
          accept_some();
        } else {
          serve(*c, events[static_cast<std::size_t>(i)].events);
        }
      }
    }
    return 0;
  }

 private:
  void accept_some() {
    for (int k = 0; k < 64; ++k) {
      // cppcheck-suppress nullPointer ; accept4 takes no address when both pointers are null
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        return;  // EAGAIN, or out of descriptors (the client sees its connection wait)
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto* c = new connection;
      c->fd = fd;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = c;
      if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) != 0) {
        drop(c);
        continue;
      }
      reply(*c, greeting);
      if (!flush(*c)) {
        drop(c);
      }
    }
  }

  void drop(connection* c) {
    ::close(c->fd);  // also leaves the epoll set
    delete c;
  }

  // Adds a reply to the batch being built.
  void reply(connection& c, std::string_view a, std::string_view b = {}, std::string_view d = {}) {
    for (const std::string_view piece : {a, b, d}) {
      if (!piece.empty()) {
        c.out.push_back({const_cast<char*>(piece.data()), piece.size()});
      }
    }
  }

  // Writes what is pending; false when the connection is gone.
  bool flush(connection& c) {
    while (c.pending()) {
      iovec* v = c.out.data() + c.out_first;
      const int count = static_cast<int>(std::min(c.out.size() - c.out_first, max_pieces));
      const ssize_t n = count == 1 ? ::send(c.fd, v->iov_base, v->iov_len, MSG_NOSIGNAL)
                                   : ::writev(c.fd, v, count);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (!c.want_out) {
            epoll_event ev{};
            ev.events = EPOLLIN | EPOLLOUT;
            ev.data.ptr = &c;
            ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
            c.want_out = true;
          }
          return true;
        }
        if (errno == EINTR) {
          continue;
        }
        return false;
      }
      auto left = static_cast<std::size_t>(n);
      while (c.pending() && left >= c.out[c.out_first].iov_len) {
        left -= c.out[c.out_first].iov_len;
        ++c.out_first;
      }
      if (c.pending()) {
        c.out[c.out_first].iov_base = static_cast<char*>(c.out[c.out_first].iov_base) + left;
        c.out[c.out_first].iov_len -= left;
      }
    }
    c.out.clear();
    c.out_first = 0;
    if (c.want_out) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = &c;
      ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
      c.want_out = false;
    }
    return !c.quit;
  }

  void serve(connection& c, std::uint32_t events) {
    if (c.pending()) {
      if (!flush(c)) {
        drop(&c);
        return;
      }
      if (c.pending()) {
        return;  // still writing: new commands wait in the socket
      }
    } else if ((events & EPOLLIN) == 0 && (events & (EPOLLERR | EPOLLHUP)) == 0) {
      return;
    }
    if (c.in_len < c.in.size()) {
      const ssize_t n = ::recv(c.fd, c.in.data() + c.in_len, c.in.size() - c.in_len, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        drop(&c);
        return;
      }
      if (n > 0) {
        c.in_len += static_cast<std::size_t>(n);
      }
    }
    // Answer every complete command read so far, in order, in one gathered write; past
    // max_pieces the rest waits for the next batch, after this one is out.
    std::size_t used = 0;
    while (!c.pending()) {
      while (!c.quit && c.out.size() + 3 <= max_pieces) {
        const auto* lf =
            static_cast<const char*>(std::memchr(c.in.data() + used, '\n', c.in_len - used));
        if (lf == nullptr) {
          break;
        }
        std::string_view line(c.in.data() + used,
                              static_cast<std::size_t>(lf - c.in.data()) - used);
        used = static_cast<std::size_t>(lf - c.in.data()) + 1;
        if (!line.empty() && line.back() == '\r') {
          line.remove_suffix(1);
        }
        answer(c, line);
      }
      if (!c.pending()) {
        if (used == 0 && c.in_len == c.in.size()) {
          drop(&c);  // a line longer than any command
          return;
        }
        break;  // nothing complete left
      }
      if (!flush(c)) {
        drop(&c);
        return;
      }
    }
    if (used > 0) {
      std::memmove(c.in.data(), c.in.data() + used, c.in_len - used);
      c.in_len -= used;
    }
  }

  void answer(connection& c, std::string_view line) {
    const std::string_view arg = line.size() > 5 ? line.substr(5) : std::string_view();
    switch (verb_of(line)) {
      case verb("USER"):
      case verb("PASS"):
      case verb("NOOP"):
      case verb("RSET"):
        reply(c, ok_reply);
        return;
      case verb("QUIT"):
        c.quit = true;
        reply(c, ok_reply);
        return;
      case verb("STAT"):
        reply(c, c_.stat_reply);
        return;
      case verb("LIST"):
        reply(c, line.size() == 4 ? std::string_view(c_.list_reply) : err_reply);
        return;
      case verb("UIDL"):
        reply(c, line.size() == 4 ? std::string_view(c_.uidl_reply) : err_reply);
        return;
      case verb("RETR"):
        if (message_number(arg, c_)) {
          reply(c, c_.retr_status, c_.message, dot_line);
        } else {
          reply(c, err_reply);
        }
        return;
      case verb("DELE"):
        reply(c, message_number(arg, c_) ? ok_reply : err_reply);
        return;
      case verb("CAPA"):
        reply(c, c_.capa_reply);
        return;
      default:
        reply(c, err_reply);
        return;
    }
  }

  int listener_;
  const null_content& c_;
  int epoll_ = -1;
};

int open_listener(const tcp::endpoint& at, bool reuse_port, std::string& error) {
  const int fd = ::socket(at.protocol().family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::generic_category().message(errno);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuse_port) {
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  }
  if (::bind(fd, at.data(), static_cast<socklen_t>(at.size())) != 0 || ::listen(fd, 4096) != 0) {
    error = std::generic_category().message(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

int run_null_server(const options& o, std::uint64_t messages, std::uint64_t message_size,
                    std::uint64_t processes) {
  std::string error;
  const auto target = parse_target(o, error);
  if (!target) {
    fmt::print(stderr, "postern-bench: {}\n", error);
    return 2;
  }
  null_content c;
  c.message = make_message(message_size);
  c.count = messages;
  c.stat_reply = fmt::format("+OK {} {}\r\n", messages, messages * c.message.size());
  c.list_reply = "+OK\r\n";
  c.uidl_reply = "+OK\r\n";
  for (std::uint64_t i = 1; i <= messages; ++i) {
    c.list_reply += fmt::format("{} {}\r\n", i, c.message.size());
    c.uidl_reply += fmt::format("{} null-{}\r\n", i, i);
  }
  c.list_reply += ".\r\n";
  c.uidl_reply += ".\r\n";
  c.retr_status = fmt::format("+OK {} octets\r\n", c.message.size());
  c.capa_reply = "+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n";

  raise_open_file_limit();
  processes = std::max<std::uint64_t>(processes, 1);
  // Every listener is bound before anything is forked, so a busy port fails at once.
  std::vector<int> listeners;
  for (std::uint64_t k = 0; k < processes; ++k) {
    const int fd = open_listener(*target, processes > 1, error);
    if (fd < 0) {
      fmt::print(stderr, "postern-bench serve: cannot listen on {}:{}: {}\n",
                 target->address().to_string(), target->port(), error);
      return 2;
    }
    listeners.push_back(fd);
  }
  struct sigaction sa {};
  sa.sa_handler = note_stop;  // no SA_RESTART: epoll_wait returns and the loop ends
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  (void)::signal(SIGPIPE, SIG_IGN);
  fmt::print("postern-bench serve: no-work POP3 server on {}:{}, {} messages of {} octets{}\n",
             target->address().to_string(), target->port(), messages, c.message.size(),
             processes > 1 ? fmt::format(", {} processes", processes) : std::string());
  std::fflush(stdout);
  if (processes == 1) {
    return null_server(listeners[0], c).run();
  }
  std::vector<pid_t> workers;
  for (std::uint64_t k = 0; k < processes; ++k) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      fmt::print(stderr, "postern-bench serve: fork: {}\n", std::generic_category().message(errno));
      stop_signal = SIGTERM;
      break;
    }
    if (pid == 0) {
      for (std::uint64_t j = 0; j < processes; ++j) {
        if (j != k) {
          ::close(listeners[j]);
        }
      }
      ::_exit(null_server(listeners[k], c).run());
    }
    workers.push_back(pid);
  }
  for (const int fd : listeners) {
    ::close(fd);
  }
  // The parent waits: for a signal to pass on, or for a worker that ended on its own.
  int rc = 0;
  std::size_t running = workers.size();
  bool stopping = stop_signal != 0;
  if (stopping) {
    for (const pid_t p : workers) {
      ::kill(p, SIGTERM);
    }
  }
  while (running > 0) {
    int status = 0;
    const pid_t p = ::waitpid(-1, &status, 0);
    if (p < 0) {
      if (errno == EINTR) {
        if (stop_signal != 0 && !stopping) {
          stopping = true;
          for (const pid_t w : workers) {
            ::kill(w, SIGTERM);
          }
        }
        continue;
      }
      break;
    }
    --running;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      rc = 2;
    }
    if (!stopping) {
      // A worker died: the server is no longer what it says it is.
      stopping = true;
      rc = 2;
      for (const pid_t w : workers) {
        ::kill(w, SIGTERM);
      }
    }
  }
  return rc;
}

}  // namespace postern::bench
