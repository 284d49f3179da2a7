// The load scenarios of postern-bench. Each builds one io_context, spawns its clients as
// coroutines, and runs them on the calling thread until the run is over.
#include "bench.hpp"
#include "idle_report.hpp"
#include "system.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstring>
#include <exception>
#include <memory>
#include <system_error>

namespace postern::bench {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::size_t small_buffer = 16 * 1024;    // sessions: replies and small messages
constexpr std::size_t large_buffer = 1024 * 1024;  // RETR throughput and huge listings
constexpr std::size_t idle_buffer = 1024;          // held sessions: status lines only
// Connections per source address. Linux's ephemeral range holds about 28,000 ports, and
// connect() takes the even half of it first, searching port by port: past about half full,
// every new connection scans longer (quadratic setup time). 5,000 keeps the search short.
constexpr std::uint64_t connections_per_source = 5000;
// File descriptors kept for stdio, epoll, timers and the like.
constexpr std::uint64_t reserved_fds = 32;

double ms_between(bench_clock::time_point a, bench_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// What a client needs to run sessions against the target.
struct client_env {
  run_control& run;
  const options& o;
  const user_set& users;
  tcp::endpoint target;
  std::vector<asio::ip::address> sources;  // empty: let the kernel choose
  asio::ssl::context* ssl = nullptr;       // set for pop3s and STLS
  std::size_t buffer_size = small_buffer;
  std::uint64_t clients = 1;

  asio::ip::address source_for(std::uint64_t n) const {
    return sources.empty() ? asio::ip::address() : sources[n % sources.size()];
  }
  octet_sink payload_sink(stats& st) const { return {run.measuring_flag(), &st.payload_octets}; }
};

struct stat_reply {
  std::uint64_t messages = 0;
  std::uint64_t octets = 0;
};

// Where a session is, for error messages.
struct session_trace {
  std::string_view user;  // a name in the run's user_set
  const char* step = "connect";
};

// Commands without arguments, in wire form.
constexpr std::string_view stat_wire = "STAT\r\n";
constexpr std::string_view uidl_wire = "UIDL\r\n";
constexpr std::string_view list_wire = "LIST\r\n";
constexpr std::string_view noop_wire = "NOOP\r\n";
constexpr std::string_view quit_wire = "QUIT\r\n";
constexpr std::string_view stls_wire = "STLS\r\n";

// "VERB n\r\n" in `buf`, formatted without allocating; valid as long as buf.
template <std::size_t N>
std::string_view numbered_command(char (&buf)[N], std::string_view verb, std::uint64_t n) {
  static_assert(N >= 32);
  std::memcpy(buf, verb.data(), verb.size());
  char* p = buf + verb.size();
  *p++ = ' ';
  p = std::to_chars(p, buf + N - 2, n).ptr;
  *p++ = '\r';
  *p++ = '\n';
  return std::string_view(buf, static_cast<std::size_t>(p - buf));
}

// Counts the connection's failure with a message naming the user, the step and, for a reply
// the server gave, the reply itself.
void count_failure(run_control& run, const pop3_connection& c, const session_trace& trace) {
  const fault f = c.failure();
  switch (f) {
    case fault::greeting:
    case fault::in_use:
    case fault::auth:
    case fault::sys_temp:
    case fault::sys_perm:
    case fault::err_reply:
    case fault::protocol:
      run.count_error(f, fmt::format("{} at {}: server said \"{}\"", trace.user, trace.step,
                                     c.status_line().substr(0, 200)));
      break;
    default:
      run.count_error(f, fmt::format("{} at {}", trace.user, trace.step));
  }
}

std::vector<asio::ip::address> source_addresses(const options& o, const tcp::endpoint& target,
                                                std::uint64_t connections, run_control& run) {
  unsigned n = o.source_ips;
  if (n == 0) {
    n = static_cast<unsigned>((connections + connections_per_source - 1) / connections_per_source);
  }
  if (n <= 1) {
    return {};
  }
  if (!target.address().is_v4()) {
    run.warn("several source addresses need an IPv4 loopback target; using one");
    return {};
  }
  n = std::min(n, 250u);
  std::vector<asio::ip::address> out;
  for (unsigned i = 0; i < n; ++i) {
    out.emplace_back(asio::ip::address_v4((127u << 24) | (i + 1)));
  }
  return out;
}

// Connects, reads the greeting (starting TLS as the options say), logs in and runs STAT.
// Records connect, tls, stls, user, pass, stat and login_stat from t, which comes in as the
// session's start and goes out as the time of the STAT reply: one clock read per operation.
asio::awaitable<bool> login(client_env& e, pop3_connection& c, std::uint64_t user,
                            asio::ip::address source, bench_clock::time_point& t, stat_reply& stat,
                            session_trace& trace) {
  run_control& run = e.run;
  const auto t0 = t;
  // Records the operation that just ended and gives the next one its own deadline.
  auto lap = [&](op o) {
    const auto now = bench_clock::now();
    run.record(o, t, now);
    t = now;
    c.arm(now, run.timeout());
  };
  c.arm(t, run.timeout());
  trace.user = e.users.name(user);
  trace.step = "connect";
  const bool tls_first = e.o.tls == tls_mode::pop3s;
  if (const bool ok = co_await c.connect(e.target, source, tls_first); !ok) {
    co_return false;
  }
  if (tls_first) {
    trace.step = "TLS handshake";
    const auto th = bench_clock::now();
    if (const bool ok = co_await c.handshake(*e.ssl); !ok) {
      co_return false;
    }
    run.record(op::tls, th, bench_clock::now());
  }
  trace.step = "greeting";
  if (const bool ok = co_await c.read_status(); !ok) {
    co_return false;
  }
  if (!c.is_ok()) {
    co_return c.fail(fault::greeting);
  }
  lap(op::connect);
  if (e.o.tls == tls_mode::stls) {
    trace.step = "STLS";
    if (const bool ok = co_await c.command(stls_wire, fault::err_reply); !ok) {
      co_return false;
    }
    lap(op::stls);
    trace.step = "TLS handshake";
    if (const bool ok = co_await c.handshake(*e.ssl); !ok) {
      co_return false;
    }
    lap(op::tls);
  }
  trace.step = "USER";
  if (const bool ok = co_await c.command(e.users.user_command(user), fault::auth); !ok) {
    co_return false;
  }
  lap(op::user);
  trace.step = "PASS";
  if (const bool ok = co_await c.command(e.users.pass_command(user), fault::auth); !ok) {
    co_return false;
  }
  lap(op::pass);
  trace.step = "STAT";
  if (const bool ok = co_await c.command(stat_wire, fault::err_reply); !ok) {
    co_return false;
  }
  if (!c.status_number(stat.messages, 0) || !c.status_number(stat.octets, 1)) {
    co_return c.fail(fault::protocol);
  }
  lap(op::stat);
  run.record(op::login_stat, t0, t);
  co_return true;
}

// QUIT, then wait for the server to close. Records quit from t (the end of the previous
// operation, or now when null) and session from t0 when given.
asio::awaitable<bool> quit(client_env& e, pop3_connection& c, session_trace& trace,
                           const bench_clock::time_point* since,
                           const bench_clock::time_point* t0) {
  const auto t = since != nullptr ? *since : bench_clock::now();
  c.arm(t, e.run.timeout());
  trace.step = "QUIT";
  if (const bool ok = co_await c.command(quit_wire, fault::err_reply); !ok) {
    co_return false;
  }
  const auto now = bench_clock::now();
  e.run.record(op::quit, t, now);
  if (t0 != nullptr) {
    e.run.record(op::session, *t0, now);
  }
  trace.step = "close after QUIT";
  const bool ok = co_await c.read_to_eof();
  co_return ok;
}

// Reads the reply to a RETR n already sent, checking the octets against the status line and,
// when known, the LIST size. Records op::retr from `since` and leaves the end in `end`.
// Returns false with a fault on I/O or reply failures; a size disagreement is counted here
// (with details) and sets `clean` to false, and the session goes on.
asio::awaitable<bool> receive_retr(client_env& e, stats& st, pop3_connection& c, std::uint64_t n,
                                   const std::uint64_t* listed, session_trace& trace, bool& clean,
                                   bench_clock::time_point since, bench_clock::time_point& end) {
  if (const bool ok = co_await c.reply(fault::err_reply); !ok) {
    co_return false;
  }
  std::uint64_t declared = 0;
  const bool has_declared = c.status_number(declared, 0);
  body_result body;
  if (const bool ok = co_await c.read_body(body, e.payload_sink(st)); !ok) {
    co_return false;
  }
  end = bench_clock::now();
  e.run.record(op::retr, since, end);
  if (body.bare_lf) {
    clean = false;
    e.run.count_error(fault::bare_lf,
                      fmt::format("{} RETR {}: a line ended in a bare LF", trace.user, n));
  }
  if (has_declared && declared != body.octets) {
    clean = false;
    e.run.count_error(fault::octet_mismatch,
                      fmt::format("{} RETR {}: the server said {} octets and sent {}", trace.user,
                                  n, declared, body.octets));
  }
  if (listed != nullptr && *listed != body.octets) {
    clean = false;
    e.run.count_error(fault::size_mismatch,
                      fmt::format("{} RETR {}: LIST said {} octets, RETR sent {}", trace.user, n,
                                  *listed, body.octets));
  }
  co_return true;
}

// RETR n and its reply, checked as receive_retr() says. t comes in as the start of the RETR
// and goes out as its end.
asio::awaitable<bool> retrieve(client_env& e, stats& st, pop3_connection& c, std::uint64_t n,
                               const std::uint64_t* listed, session_trace& trace, bool& clean,
                               bench_clock::time_point& t) {
  char buf[32];
  const std::string_view command = numbered_command(buf, "RETR", n);
  trace.step = "RETR";
  c.arm(t, e.run.timeout());
  if (const bool ok = co_await c.send(command); !ok) {
    co_return false;
  }
  bench_clock::time_point end;
  if (const bool ok = co_await receive_retr(e, st, c, n, listed, trace, clean, t, end); !ok) {
    co_return false;
  }
  t = end;
  co_return true;
}

// ---------------------------------------------------------------------------------------------
// session and tls: clients loop over full sessions.

asio::awaitable<bool> full_session(client_env& e, stats& st, pop3_connection& c, std::uint64_t user,
                                   asio::ip::address source, listing& uids,
                                   std::vector<std::string_view>& scratch, session_trace& trace) {
  const auto t0 = bench_clock::now();
  auto t = t0;
  stat_reply stat;
  if (const bool ok = co_await login(e, c, user, source, t, stat, trace); !ok) {
    co_return false;
  }
  trace.step = "UIDL";
  c.arm(t, e.run.timeout());
  if (const bool ok = co_await c.listing_command(uidl_wire, uids, true); !ok) {
    co_return false;
  }
  const auto now = bench_clock::now();
  e.run.record(op::uidl, t, now);
  t = now;
  if (uids.size() != stat.messages) {
    e.run.count_error(fault::count_mismatch,
                      fmt::format("{}: STAT said {} messages, UIDL listed {}", trace.user,
                                  stat.messages, uids.size()));
    co_return false;
  }
  if (!uids.has_unique_uids(scratch)) {
    e.run.count_error(fault::bad_uidl, fmt::format("{}: UIDL repeated a unique-id", trace.user));
    co_return false;
  }
  if (stat.messages == 0) {
    co_return c.fail(fault::empty_maildrop);
  }
  bool clean = true;
  if (const bool ok = co_await retrieve(e, st, c, 1, nullptr, trace, clean, t); !ok) {
    co_return false;
  }
  if (const bool ok = co_await quit(e, c, trace, &t, &t0); !ok) {
    co_return false;
  }
  co_return clean;
}

// Sleeps after a failure, longer after each one in a row (1 ms doubling up to 100 ms), so a
// server that refuses connections is not spun against.
asio::awaitable<void> back_off(unsigned failures_in_a_row) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  const unsigned ms = std::min(100u, 1u << std::min(failures_in_a_row, 7u));
  timer.expires_after(std::chrono::milliseconds(ms));
  co_await timer.async_wait(use_tuple);
}

asio::awaitable<void> session_client(client_env& e, stats& st, std::uint64_t index) {
  auto ex = co_await asio::this_coro::executor;
  listing uids;
  std::vector<std::string_view> scratch;
  unsigned failures = 0;
  try {
    // One connection object for every session of this client: its buffer is allocated once.
    pop3_connection c(ex, e.run.connections(), e.buffer_size);
    for (std::uint64_t round = 0; e.run.may_start(); ++round) {
      // Client i takes users i, i + clients, i + 2 * clients, ...: when the user count is a
      // multiple of the client count, no two clients ever share a maildrop.
      const std::uint64_t user = (index + round * e.clients) % e.users.size();
      session_trace trace;
      c.reset();
      const bool ok =
          co_await full_session(e, st, c, user, e.source_for(index + round), uids, scratch, trace);
      if (ok) {
        c.close();
        e.run.complete_unit();
        failures = 0;
      } else {
        count_failure(e.run, c, trace);
        c.close();
        e.run.unit_failed();
        co_await back_off(failures++);
      }
    }
  } catch (const std::exception& x) {
    e.run.count_error(fault::io, fmt::format("client {}: {}", index, x.what()));
  }
  e.run.client_finished();
}

// ---------------------------------------------------------------------------------------------
// retr: clients log in once and RETR one message, or every message in turn, until the end.

// The message a retr client fetches next: --message, or the next in turn when cycling.
const listing::entry& next_message(const options& o, const listing& sizes, std::size_t& next) {
  if (o.message != 0) {
    return sizes[o.message - 1];
  }
  if (next == sizes.size()) {
    next = 0;
  }
  return sizes[next++];
}

// RETRs with up to `depth` outstanding (RFC 2449 section 6.6), until the run stops new work;
// then the replies still due are read. Replies are taken strictly in the order the commands
// went out, each checked like a lone one. Every refill of the window is one send.
// A RETR's latency runs from the later of its sending and the end of the reply before it
// until the end of its own reply: the time the client waited for that reply alone, so at
// depth 1 it is the round trip and with a full pipeline the time between two completions.
// t comes in as the end of the previous operation and goes out as the end of the last reply.
asio::awaitable<bool> retr_pipelined(client_env& e, stats& st, pop3_connection& c,
                                     const listing& sizes, std::size_t& next, std::size_t depth,
                                     session_trace& trace, bool& clean,
                                     bench_clock::time_point& t) {
  struct in_flight {
    const listing::entry* message = nullptr;
    bench_clock::time_point sent;
  };
  std::vector<in_flight> ring(depth);  // oldest at head
  std::size_t head = 0;
  std::size_t outstanding = 0;
  std::string batch;
  batch.reserve(depth * 32);
  for (;;) {
    if (outstanding < depth && e.run.may_start()) {
      batch.clear();
      const auto now = bench_clock::now();
      while (outstanding < depth && e.run.may_start()) {
        const listing::entry& m = next_message(e.o, sizes, next);
        char buf[32];
        batch += numbered_command(buf, "RETR", m.number);
        ring[(head + outstanding) % depth] = {&m, now};
        ++outstanding;
      }
      trace.step = "RETR (pipelined)";
      c.arm(now, e.run.timeout());
      if (const bool ok = co_await c.send(batch); !ok) {
        co_return false;
      }
    }
    if (outstanding == 0) {
      co_return true;
    }
    const in_flight f = ring[head];
    head = (head + 1) % depth;
    --outstanding;
    const auto since = std::max(f.sent, t);
    trace.step = "RETR (pipelined)";
    c.arm(since, e.run.timeout());
    bench_clock::time_point end;
    if (const bool ok = co_await receive_retr(e, st, c, f.message->number, &f.message->size, trace,
                                              clean, since, end);
        !ok) {
      co_return false;
    }
    t = end;
    e.run.complete_unit();
  }
}

// How many RETRs a retr client may keep outstanding: --pipeline when the server's CAPA lists
// PIPELINING, else 1 (said once per run in a warning). Sends CAPA only when --pipeline > 1.
asio::awaitable<bool> pipeline_depth(client_env& e, stats& st, pop3_connection& c,
                                     session_trace& trace, bench_clock::time_point t,
                                     std::size_t& depth) {
  depth = 1;
  if (e.o.pipeline > 1) {
    trace.step = "CAPA";
    c.arm(t, e.run.timeout());
    bool pipelining = false;
    if (const bool ok = co_await c.capa(pipelining); !ok) {
      co_return false;
    }
    if (pipelining) {
      depth = static_cast<std::size_t>(e.o.pipeline);
    } else if (st.pipeline_depth != 1) {
      e.run.warn(
          fmt::format("the server's CAPA does not list PIPELINING: one RETR at a time, "
                      "not {}",
                      e.o.pipeline));
    }
  }
  st.pipeline_depth =
      st.pipeline_depth == 0 ? depth : std::min<std::uint64_t>(st.pipeline_depth, depth);
  co_return true;
}

asio::awaitable<void> retr_client(client_env& e, stats& st, std::uint64_t index) {
  auto ex = co_await asio::this_coro::executor;
  listing sizes;
  unsigned failures = 0;
  try {
    pop3_connection c(ex, e.run.connections(), e.buffer_size);
    while (e.run.may_start()) {
      const std::uint64_t user = index % e.users.size();
      session_trace trace;
      bool finished = false;
      c.reset();
      do {
        stat_reply stat;
        const auto source = e.source_for(index);
        auto t = bench_clock::now();
        if (const bool ok = co_await login(e, c, user, source, t, stat, trace); !ok) {
          break;
        }
        trace.step = "LIST";
        c.arm(t, e.run.timeout());
        if (const bool ok = co_await c.listing_command(list_wire, sizes, false); !ok) {
          break;
        }
        const auto listed = bench_clock::now();
        e.run.record(op::list, t, listed);
        t = listed;
        std::uint64_t sum = 0;
        for (const auto& l : sizes) {
          sum += l.size;
        }
        if (sizes.size() != stat.messages || sum != stat.octets) {
          e.run.count_error(fault::count_mismatch,
                            fmt::format("{}: STAT said {} messages ({} octets), LIST listed {} "
                                        "({} octets)",
                                        trace.user, stat.messages, stat.octets, sizes.size(), sum));
          break;
        }
        if (sizes.empty() || (e.o.message != 0 && e.o.message > sizes.size())) {
          c.fail(fault::empty_maildrop);
          break;
        }
        std::size_t depth = 1;
        if (const bool ok = co_await pipeline_depth(e, st, c, trace, t, depth); !ok) {
          break;
        }
        // Cycling clients start spread over the maildrop.
        std::size_t next =
            e.o.message == 0 ? static_cast<std::size_t>(index * sizes.size() / e.clients) : 0;
        bool clean = true;
        bool broken = false;
        if (depth > 1) {
          if (const bool ok =
                  co_await retr_pipelined(e, st, c, sizes, next, depth, trace, clean, t);
              !ok) {
            broken = true;
          }
        }
        while (!broken && e.run.may_start()) {
          const listing::entry& m = next_message(e.o, sizes, next);
          if (const bool ok = co_await retrieve(e, st, c, m.number, &m.size, trace, clean, t);
              !ok) {
            broken = true;
            break;
          }
          e.run.complete_unit();
        }
        if (broken) {
          break;
        }
        if (const bool ok = co_await quit(e, c, trace, nullptr, nullptr); !ok) {
          break;
        }
        finished = clean;
      } while (false);
      if (!finished) {
        count_failure(e.run, c, trace);
        c.close();
        e.run.unit_failed();
        co_await back_off(failures++);
      } else {
        failures = 0;
      }
    }
  } catch (const std::exception& x) {
    e.run.count_error(fault::io, fmt::format("client {}: {}", index, x.what()));
  }
  e.run.client_finished();
}

// ---------------------------------------------------------------------------------------------
// idle: open many authenticated sessions, hold them, measure the server, let them go.

// Counts down outstanding coroutines; wait() returns when the count reaches zero.
class wait_group {
 public:
  explicit wait_group(const asio::any_io_executor& ex) : timer_(ex) {
    timer_.expires_at(bench_clock::time_point::max());
  }
  void add(std::size_t n) noexcept { pending_ += n; }
  // May throw what Asio's timer cancel() throws (asio::system_error).
  void done() {
    if (--pending_ == 0) {
      timer_.cancel();
    }
  }
  asio::awaitable<void> wait() {
    while (pending_ > 0) {
      co_await timer_.async_wait(use_tuple);
    }
  }

 private:
  asio::steady_timer timer_;
  std::size_t pending_ = 0;
};

// A child process of a forked `idle` run: where it reports and waits for its parent.
struct child_link {
  int report_fd = -1;   // frames up to the parent
  int control_fd = -1;  // end of file (or a byte) from the parent: release the sessions
};

struct idle_state {
  client_env& env;
  stats& st;
  std::vector<std::unique_ptr<pop3_connection>> held;
  std::uint64_t next = 0;
  std::uint64_t first = 0;  // session i of this process is session first + i of the run
  const child_link* link = nullptr;
  // Failures since the last success: when every opener has failed in a row the server is
  // full (out of descriptors, at its connection limit), and waiting out more timeouts
  // would only make the run longer.
  std::uint64_t failures_in_a_row = 0;
  std::uint64_t give_up_after = 64;
  bool gave_up = false;
};

asio::awaitable<void> idle_opener(idle_state& s, wait_group& wg) {
  auto ex = co_await asio::this_coro::executor;
  client_env& e = s.env;
  try {
    while (s.next < s.held.size() && !s.gave_up && !e.run.interrupted()) {
      const std::uint64_t i = s.next++;
      auto c = std::make_unique<pop3_connection>(ex, e.run.connections(), idle_buffer);
      session_trace trace;
      stat_reply stat;
      const auto source = e.source_for(i);
      const std::uint64_t user = (s.first + i) % e.users.size();
      auto t = bench_clock::now();
      if (const bool ok = co_await login(e, *c, user, source, t, stat, trace); ok) {
        c->disarm();
        s.held[i] = std::move(c);
        e.run.complete_unit();
        s.failures_in_a_row = 0;
      } else {
        count_failure(e.run, *c, trace);
        if (++s.failures_in_a_row >= s.give_up_after && !s.gave_up) {
          s.gave_up = true;
          e.run.warn(
              fmt::format("stopped opening sessions after {} failures in a row, with "
                          "{} sessions open",
                          s.failures_in_a_row, e.run.connections().size()));
        }
      }
    }
  } catch (const std::exception& x) {
    e.run.count_error(fault::io, x.what());
  }
  wg.done();
}

// NOOP (probe) or QUIT (release) every held session, `concurrency` at a time.
asio::awaitable<void> idle_sweeper(idle_state& s, std::uint64_t& cursor, bool release,
                                   std::uint64_t& alive, wait_group& wg) {
  client_env& e = s.env;
  try {
    while (cursor < s.held.size()) {
      auto& c = s.held[cursor];
      const std::uint64_t i = cursor++;
      if (!c) {
        continue;
      }
      session_trace trace{e.users.name((s.first + i) % e.users.size()), release ? "QUIT" : "NOOP"};
      bool ok = false;
      if (release) {
        ok = co_await quit(e, *c, trace, nullptr, nullptr);
      } else {
        const auto t = bench_clock::now();
        c->arm(t, e.run.timeout());
        ok = co_await c->command(noop_wire, fault::err_reply);
        e.run.record(op::noop, t, bench_clock::now());
        c->disarm();
      }
      if (ok) {
        ++alive;
      } else {
        count_failure(e.run, *c, trace);
      }
      if (release || !ok) {
        c.reset();
      }
    }
  } catch (const std::exception& x) {
    e.run.count_error(fault::io, x.what());
  }
  wg.done();
}

asio::awaitable<void> idle_main(idle_state& s, idle_result& r) {
  auto ex = co_await asio::this_coro::executor;
  client_env& e = s.env;
  const options& o = e.o;
  const std::uint64_t workers =
      std::max<std::uint64_t>(1, std::min<std::uint64_t>(o.concurrency, s.held.size()));

  const auto t0 = bench_clock::now();
  {
    wait_group wg(ex);
    wg.add(workers);
    for (std::uint64_t w = 0; w < workers; ++w) {
      asio::co_spawn(ex, idle_opener(s, wg), asio::detached);
    }
    co_await wg.wait();
  }
  const auto t1 = bench_clock::now();
  r.setup_s = std::chrono::duration<double>(t1 - t0).count();
  r.established = static_cast<std::uint64_t>(
      std::count_if(s.held.begin(), s.held.end(), [](const auto& c) { return c != nullptr; }));

  if (s.link != nullptr) {
    // A child: tell the parent, which holds every child's sessions at once and measures the
    // server, then wait for its word (or its end) to let them go.
    report_writer w;
    w.u64(r.established);
    w.f64(r.setup_s);
    if (!write_frame(s.link->report_fd, frame_established, w.bytes())) {
      e.run.warn("cannot report to the parent process");
    }
    asio::posix::stream_descriptor control(ex, ::dup(s.link->control_fd));
    char byte = 0;
    const auto word = co_await control.async_read_some(asio::buffer(&byte, 1), use_tuple);
    static_cast<void>(word);
    r.hold_s = std::chrono::duration<double>(bench_clock::now() - t1).count();
  } else {
    asio::steady_timer hold(ex);
    hold.expires_after(std::chrono::duration_cast<bench_clock::duration>(
        std::chrono::duration<double>(o.duration_s)));
    e.run.on_interrupt([&hold] { hold.cancel(); });
    if (!e.run.interrupted()) {
      co_await hold.async_wait(use_tuple);
    }
    e.run.on_interrupt(nullptr);
    r.hold_s = std::chrono::duration<double>(bench_clock::now() - t1).count();
  }
  if (o.server_pid && s.link == nullptr) {
    if (auto pss = read_pss(*o.server_pid, o.server_children)) {
      r.pss_after_kib = pss->kib;
      r.processes_after = pss->processes;
    } else {
      e.run.warn(fmt::format("cannot read the PSS of pid {} after the hold", *o.server_pid));
    }
  }

  for (bool release : {false, true}) {
    std::uint64_t cursor = 0;
    std::uint64_t alive = 0;
    wait_group wg(ex);
    wg.add(workers);
    for (std::uint64_t w = 0; w < workers; ++w) {
      asio::co_spawn(ex, idle_sweeper(s, cursor, release, alive, wg), asio::detached);
    }
    co_await wg.wait();
    if (!release) {
      r.alive = alive;
    }
  }
  e.run.finish();
}

asio::ssl::context make_tls_context() {
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  // Loopback benchmarking only: the server's certificate is not verified.
  ctx.set_verify_mode(asio::ssl::verify_none);
  return ctx;
}

struct prepared {
  asio::io_context io{ASIO_CONCURRENCY_HINT_UNSAFE};
  stats& st;
  run_control run;
  user_set users;
  asio::ssl::context ssl;
  client_env env;

  prepared(const options& o, result& out, std::uint64_t clients, std::size_t buffer)
      : st(out.st),
        run(io, o, out.st),
        users(o),
        ssl(make_tls_context()),
        env{run, o, users, target_endpoint(o), {}, nullptr, buffer, clients} {
    if (o.tls != tls_mode::none) {
      env.ssl = &ssl;
    }
    env.sources = source_addresses(o, env.target, clients, run);
    out.clients = clients;
    out.users = users.size();
  }

  void finish(result& out) {
    out.window_s = run.window_s();
    out.cpu_user_s = run.cpu_user_s();
    out.cpu_sys_s = run.cpu_sys_s();
  }
};

std::uint64_t clients_or(const options& o, std::uint64_t fallback) {
  return o.clients > 0 ? o.clients : fallback;
}

}  // namespace

std::optional<tcp::endpoint> parse_target(const options& o, std::string& error) {
  std::error_code ec;
  // Numeric only: make_address never consults DNS.
  const auto addr = asio::ip::make_address(o.host, ec);
  if (ec) {
    error = fmt::format("--host {}: not a numeric IPv4 or IPv6 address", o.host);
    return std::nullopt;
  }
  if (!addr.is_loopback()) {
    error = fmt::format("--host {}: only loopback targets (127.0.0.0/8, ::1) are allowed", o.host);
    return std::nullopt;
  }
  std::uint16_t port = o.port;
  if (port == 0) {
    port = o.tls == tls_mode::pop3s ? 995 : 110;
  }
  return tcp::endpoint(addr, port);
}

tcp::endpoint target_endpoint(const options& o) {
  std::string error;
  auto ep = parse_target(o, error);
  if (!ep) {
    throw std::invalid_argument(error);
  }
  return *ep;
}

void run_session(const options& o, result& out) {
  const std::uint64_t clients = clients_or(o, 32);
  prepared p(o, out, clients, small_buffer);
  if (p.users.size() < clients || p.users.size() % clients != 0) {
    p.run.warn(
        fmt::format("{} users for {} clients: clients may share a maildrop and get "
                    "[IN-USE]; use a multiple of the client count",
                    p.users.size(), clients));
  }
  for (std::uint64_t i = 0; i < clients; ++i) {
    p.run.client_started();
    asio::co_spawn(p.io, session_client(p.env, p.st, i), asio::detached);
  }
  p.run.start();
  p.io.run();
  p.finish(out);
}

void run_retr(const options& o, result& out) {
  const std::uint64_t clients = clients_or(o, 1);
  prepared p(o, out, clients, large_buffer);
  if (p.users.size() < clients) {
    p.run.warn("fewer users than clients: clients share a maildrop");
  }
  for (std::uint64_t i = 0; i < clients; ++i) {
    p.run.client_started();
    asio::co_spawn(p.io, retr_client(p.env, p.st, i), asio::detached);
  }
  p.run.start();
  p.io.run();
  p.finish(out);
}

namespace {

// Holds sessions [first, first + count) of the run in this process. With a link, this is a
// child of a forked run: it reports to its parent instead of measuring the server itself.
void run_idle_share(const options& o, result& out, idle_result& r, std::uint64_t first,
                    std::uint64_t count, const std::vector<asio::ip::address>* sources,
                    const child_link* link) {
  prepared p(o, out, count, idle_buffer);
  if (sources != nullptr) {
    p.env.sources = *sources;
  }
  if (r.limit_by_fds != 0) {
    p.run.warn(
        fmt::format("RLIMIT_NOFILE allows {} sessions per process: holding {}, not {} "
                    "(--processes spreads them over more)",
                    r.limit_by_fds, count, r.requested));
  }
  if (link == nullptr && p.users.size() < count) {
    p.run.warn(
        fmt::format("{} users for {} sessions: servers that lock maildrops answer "
                    "[IN-USE] to the extra ones",
                    p.users.size(), count));
  }
  if (o.server_pid && link == nullptr) {
    if (auto pss = read_pss(*o.server_pid, o.server_children)) {
      r.pss_before_kib = pss->kib;
      r.processes_before = pss->processes;
    } else {
      throw std::runtime_error(fmt::format("--server-pid {}: cannot read /proc/{}/smaps_rollup",
                                           *o.server_pid, *o.server_pid));
    }
  }
  idle_state s{p.env, p.st, {}, 0, first, link};
  s.held.resize(count);
  s.give_up_after = std::max<std::uint64_t>(16, std::min<std::uint64_t>(o.concurrency, count));
  p.run.begin_unwindowed();
  asio::co_spawn(p.io, idle_main(s, r), asio::detached);
  p.io.run();
  p.finish(out);
}

volatile std::sig_atomic_t parent_signal = 0;
extern "C" void note_parent_signal(int sig) { parent_signal = sig; }

// The sessions of process k of n: as even as it gets.
std::uint64_t share_of(std::uint64_t sessions, std::uint64_t n, std::uint64_t k) {
  return sessions / n + (k < sessions % n ? 1 : 0);
}

// `idle` over several client processes: each holds its share of the sessions from its own
// source addresses, so neither descriptors nor ephemeral ports run out. The parent forks them
// before it touches Asio, waits until every one has its sessions open, holds, reads the
// server's PSS, tells them to let go and adds up their reports.
void run_idle_forked(const options& o, result& out, idle_result& r, std::uint64_t sessions,
                     std::uint64_t processes, std::uint64_t per_process) {
  struct child {
    pid_t pid = -1;
    int report_fd = -1;   // parent's read end
    int control_fd = -1;  // parent's write end
    bool established = false;
    bool reported = false;
  };
  std::string error;
  const auto target = parse_target(o, error);
  if (!target) {
    throw std::invalid_argument(error);
  }
  if (o.server_pid) {
    if (auto pss = read_pss(*o.server_pid, o.server_children)) {
      r.pss_before_kib = pss->kib;
      r.processes_before = pss->processes;
    } else {
      throw std::runtime_error(fmt::format("--server-pid {}: cannot read /proc/{}/smaps_rollup",
                                           *o.server_pid, *o.server_pid));
    }
  }
  std::vector<child> children(processes);
  std::uint64_t first = 0;
  unsigned next_address = 1;  // 127.0.0.next_address
  const auto start = bench_clock::now();
  const auto cpu_start = children_cpu_time();
  struct sigaction sa {};
  sa.sa_handler = note_parent_signal;  // no SA_RESTART: a signal interrupts the waits below
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  for (std::uint64_t k = 0; k < processes; ++k) {
    const std::uint64_t count = share_of(sessions, processes, k);
    // Own source addresses for every child, one per 25,000 of its sessions.
    std::vector<asio::ip::address> sources;
    if (target->address().is_v4()) {
      const auto n =
          std::max<std::uint64_t>(1, (count + connections_per_source - 1) / connections_per_source);
      for (std::uint64_t i = 0; i < n && next_address < 255; ++i) {
        sources.emplace_back(asio::ip::address_v4((127u << 24) | next_address++));
      }
    }
    int up[2];
    int down[2];
    if (::pipe2(up, O_CLOEXEC) != 0 || ::pipe2(down, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe: " + std::generic_category().message(errno));
    }
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      throw std::runtime_error("fork: " + std::generic_category().message(errno));
    }
    if (pid == 0) {
      ::sigaction(SIGINT, &old_int, nullptr);
      ::sigaction(SIGTERM, &old_term, nullptr);
      for (std::uint64_t j = 0; j < k; ++j) {
        ::close(children[j].report_fd);
        ::close(children[j].control_fd);
      }
      ::close(up[0]);
      ::close(down[1]);
      const child_link link{up[1], down[0]};
      int rc = 0;
      try {
        result mine;
        idle_result ri;
        ri.requested = count;
        if (count > per_process) {
          ri.limit_by_fds = per_process;
        }
        run_idle_share(o, mine, ri, first, std::min(count, per_process), &sources, &link);
        child_report report;
        report.st = std::move(mine.st);
        report.established = ri.established;
        report.alive = ri.alive;
        report.setup_s = ri.setup_s;
        report.cpu_user_s = mine.cpu_user_s;
        report.cpu_sys_s = mine.cpu_sys_s;
        rc = write_frame(up[1], frame_report, encode_report(report)) ? 0 : 2;
      } catch (const std::exception& x) {
        fmt::print(stderr, "postern-bench idle (child {}): {}\n", k, x.what());
        rc = 2;
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(rc);
    }
    ::close(up[1]);
    ::close(down[0]);
    children[k] = child{pid, up[0], down[1]};
    first += count;
  }

  auto forward_signal = [&] {
    if (parent_signal != 0) {
      for (const auto& c : children) {
        ::kill(c.pid, parent_signal);
      }
      parent_signal = 0;
      return true;
    }
    return false;
  };
  bool interrupted = false;
  stats& st = out.st;
  auto child_failed = [&](std::uint64_t k, const char* what) {
    ++st.errors[static_cast<std::size_t>(fault::io)];
    if (st.warnings.size() < 20) {
      st.warnings.push_back(
          fmt::format("client process {} (pid {}): {}", k, children[k].pid, what));
    }
  };
  // Setup: every child opens its sessions.
  for (std::uint64_t k = 0; k < processes; ++k) {
    char type = 0;
    std::string payload;
    for (;;) {
      const frame_status got = read_frame(children[k].report_fd, type, payload);
      if (got == frame_status::interrupted) {
        interrupted = forward_signal() || interrupted;
        continue;
      }
      if (got == frame_status::ok && type == frame_established) {
        report_reader in(payload);
        const std::uint64_t established = in.u64();
        in.f64();
        if (in.ok()) {
          r.established += established;
          children[k].established = true;
        }
      } else {
        child_failed(k, "ended before its sessions were open");
      }
      break;
    }
  }
  const auto held = bench_clock::now();
  r.setup_s = std::chrono::duration<double>(held - start).count();
  // Hold: everything is open at once.
  const auto hold_end = held + std::chrono::duration_cast<bench_clock::duration>(
                                   std::chrono::duration<double>(o.duration_s));
  while (!interrupted) {
    const auto now = bench_clock::now();
    if (now >= hold_end) {
      break;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(hold_end - now);
    ::poll(nullptr, 0, static_cast<int>(std::max<std::int64_t>(1, left.count())));
    interrupted = forward_signal() || interrupted;
  }
  r.hold_s = std::chrono::duration<double>(bench_clock::now() - held).count();
  if (o.server_pid) {
    if (auto pss = read_pss(*o.server_pid, o.server_children)) {
      r.pss_after_kib = pss->kib;
      r.processes_after = pss->processes;
    } else {
      st.warnings.push_back(
          fmt::format("cannot read the PSS of pid {} after the hold", *o.server_pid));
    }
  }
  // Release: closing the control pipes is the word.
  for (auto& c : children) {
    ::close(c.control_fd);
    c.control_fd = -1;
  }
  for (std::uint64_t k = 0; k < processes; ++k) {
    char type = 0;
    std::string payload;
    for (;;) {
      const frame_status got = read_frame(children[k].report_fd, type, payload);
      if (got == frame_status::interrupted) {
        forward_signal();
        continue;
      }
      child_report report;
      if (got == frame_status::ok && type == frame_report && decode_report(payload, report)) {
        merge_stats(st, report.st, 20);
        r.alive += report.alive;
        children[k].reported = true;
      } else {
        child_failed(k, "sent no report");
      }
      break;
    }
    ::close(children[k].report_fd);
  }
  for (std::uint64_t k = 0; k < processes; ++k) {
    int status = 0;
    while (::waitpid(children[k].pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (children[k].reported && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      child_failed(k, "did not exit cleanly");
    }
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  const auto cpu_end = children_cpu_time();
  out.cpu_user_s = cpu_end.user_s - cpu_start.user_s;
  out.cpu_sys_s = cpu_end.sys_s - cpu_start.sys_s;
  out.window_s = std::chrono::duration<double>(bench_clock::now() - start).count();
  out.clients = sessions;
  out.users = user_set::count_of(o);
}

}  // namespace

void run_idle(const options& o, result& out) {
  const std::uint64_t sessions = clients_or(o, 1000);
  idle_result r;
  r.requested = sessions;
  const std::uint64_t fds = raise_open_file_limit();
  const std::uint64_t per_process =
      fds == UINT64_MAX ? UINT64_MAX : (fds > reserved_fds ? fds - reserved_fds : 1);
  std::uint64_t processes = o.processes;
  if (processes == 0) {
    processes = per_process == UINT64_MAX ? 1 : (sessions + per_process - 1) / per_process;
  }
  processes = std::clamp<std::uint64_t>(processes, 1, std::max<std::uint64_t>(sessions, 1));
  r.client_processes = processes;
  if (processes == 1) {
    std::uint64_t count = sessions;
    if (count > per_process) {
      count = per_process;
      r.limit_by_fds = count;
    }
    run_idle_share(o, out, r, 0, count, nullptr, nullptr);
  } else {
    if (share_of(sessions, processes, 0) > per_process) {
      r.limit_by_fds = per_process;  // the children hit RLIMIT_NOFILE and say so
    }
    run_idle_forked(o, out, r, sessions, processes, per_process);
  }
  out.idle = r;
}

namespace {

asio::awaitable<void> bigbox_main(client_env& e, std::vector<bigbox_iteration>& out) {
  auto ex = co_await asio::this_coro::executor;
  const std::uint64_t iterations = e.o.count.value_or(3);
  listing uids;
  listing sizes;
  std::vector<std::string_view> scratch;
  try {
    for (std::uint64_t it = 1; it <= iterations && !e.run.interrupted(); ++it) {
      pop3_connection c(ex, e.run.connections(), e.buffer_size);
      session_trace trace;
      bigbox_iteration r;
      bool finished = false;
      do {
        const auto t0 = bench_clock::now();
        auto t = t0;
        stat_reply stat;
        if (const bool ok = co_await login(e, c, 0, e.source_for(0), t, stat, trace); !ok) {
          break;
        }
        r.login_stat_ms = ms_between(t0, t);
        r.messages = stat.messages;
        r.octets = stat.octets;

        trace.step = "UIDL";
        c.arm(e.run.timeout());
        if (const bool ok = co_await c.listing_command(uidl_wire, uids, true); !ok) {
          break;
        }
        auto now = bench_clock::now();
        e.run.record(op::uidl, t, now);
        r.uidl_ms = ms_between(t, now);

        trace.step = "LIST";
        t = bench_clock::now();
        c.arm(e.run.timeout());
        if (const bool ok = co_await c.listing_command(list_wire, sizes, false); !ok) {
          break;
        }
        now = bench_clock::now();
        e.run.record(op::list, t, now);
        r.list_ms = ms_between(t, now);

        // Checked once the clocks are stopped: the server's numbers must agree.
        std::uint64_t sum = 0;
        for (const auto& l : sizes) {
          sum += l.size;
        }
        if (uids.size() != stat.messages || sizes.size() != stat.messages || sum != stat.octets) {
          e.run.count_error(
              fault::count_mismatch,
              fmt::format("STAT said {} messages ({} octets), UIDL listed {}, "
                          "LIST {} ({} octets)",
                          stat.messages, stat.octets, uids.size(), sizes.size(), sum));
        }
        if (!uids.has_unique_uids(scratch)) {
          e.run.count_error(fault::bad_uidl, "UIDL repeated a unique-id");
        }

        if (it == iterations && e.o.delete_last > 0 && !sizes.empty()) {
          trace.step = "DELE";
          t = bench_clock::now();
          const std::size_t k = std::min<std::size_t>(e.o.delete_last, sizes.size());
          bool deleted = true;
          for (std::size_t i = sizes.size() - k; i < sizes.size(); ++i) {
            c.arm(e.run.timeout());
            char buf[32];
            const std::string_view dele = numbered_command(buf, "DELE", sizes[i].number);
            if (const bool ok = co_await c.command(dele, fault::err_reply); !ok) {
              deleted = false;
              break;
            }
          }
          if (!deleted) {
            break;
          }
          now = bench_clock::now();
          e.run.record(op::dele, t, now);
          r.dele_ms = ms_between(t, now);
          r.deleted = k;
        }

        trace.step = "QUIT";
        t = bench_clock::now();
        c.arm(e.run.timeout());
        if (const bool ok = co_await c.command(quit_wire, fault::err_reply); !ok) {
          break;
        }
        now = bench_clock::now();
        e.run.record(op::quit, t, now);
        r.quit_ms = ms_between(t, now);
        trace.step = "close after QUIT";
        if (const bool ok = co_await c.read_to_eof(); !ok) {
          break;
        }
        finished = true;
      } while (false);
      if (finished) {
        out.push_back(r);
        e.run.complete_unit();
      } else {
        count_failure(e.run, c, trace);
      }
    }
  } catch (const std::exception& x) {
    e.run.count_error(fault::io, x.what());
  }
  e.run.finish();
}

}  // namespace

void run_bigbox(const options& o, result& out) {
  prepared p(o, out, 1, large_buffer);
  p.run.begin_unwindowed();
  asio::co_spawn(p.io, bigbox_main(p.env, out.bigbox), asio::detached);
  p.io.run();
  p.finish(out);
}

}  // namespace postern::bench
