// postern-bench: shared types of the load generator (options, statistics, run phases).
//
// One process, one thread, one io_context: every client is a C++20 coroutine, so the numbers
// measure the server, not the benchmark's locking. The run goes through phases (warm-up,
// measurement window, drain) driven by one controller coroutine that also enforces timeouts.
// Latencies are recorded for operations that complete inside the window; errors are counted
// over the whole run, warm-up included, because a wrong reply is wrong whenever it comes.
#pragma once

#include "histogram.hpp"
#include "pop3_connection.hpp"

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace postern::bench {

// The operations whose latency is measured; each has a stable name used as a JSON key.
enum class op : std::uint8_t {
  connect,  // TCP connect until the greeting (pop3s: until the handshake starts)
  tls,      // TLS handshake (pop3s right after connect, STLS after the STLS reply)
  stls,     // the STLS command
  user,
  pass,
  login_stat,  // connect until the STAT reply: what a user waits before mail can flow
  stat,
  uidl,
  list,
  retr,
  dele,  // all DELE commands of a session together
  noop,
  quit,     // QUIT until its +OK (the server commits deletions before answering)
  session,  // a whole session: connect until the QUIT reply
  count_
};
inline constexpr std::size_t op_count = static_cast<std::size_t>(op::count_);
std::string_view op_name(op o) noexcept;

enum class scenario { session, retr, idle, bigbox, tls };
enum class tls_mode { none, pop3s, stls };
enum class output_format { text, json, both };

struct options {
  scenario kind = scenario::session;
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0: 110, or 995 for pop3s
  std::string user_pattern = "user%d";
  std::uint64_t users = 0;  // 0: as many as clients
  std::uint64_t first_user = 1;
  std::string password = "password";
  std::uint64_t clients = 0;  // 0: the scenario's default
  double duration_s = 5;
  std::optional<std::uint64_t> count;
  double warmup_s = 1;
  double timeout_s = 10;
  std::uint64_t message = 1;   // retr: 0 cycles through every message
  std::uint64_t pipeline = 1;  // retr: RETRs outstanding at once (above 1 only with PIPELINING)
  std::optional<int> cpu;
  unsigned source_ips = 0;  // 0: automatic (idle with many sessions)
  output_format format = output_format::text;
  std::string label;
  bool quiet = false;
  tls_mode tls = tls_mode::none;
  std::optional<int> server_pid;   // idle
  bool server_children = true;     // idle: add the PSS of the server's descendants
  std::uint64_t concurrency = 64;  // idle: sessions being set up at once
  std::uint64_t delete_last = 0;   // bigbox: DELE the last k messages in the last iteration
  std::uint64_t processes = 0;     // idle: client processes (0: as many as RLIMIT_NOFILE needs)
};

// The user names and passwords clients log in with: pattern "user%d" and a count, %d running
// from first_user. A pattern without %d names one user. The names and the USER and PASS
// commands are built once, up front, so a session formats nothing.
class user_set {
 public:
  explicit user_set(const options& o);
  std::uint64_t size() const noexcept { return names_.size(); }
  // Of user i, 0 <= i < size(); valid as long as the set.
  std::string_view name(std::uint64_t i) const noexcept { return names_[i]; }
  const command_line& user_command(std::uint64_t i) const noexcept { return user_[i]; }
  const command_line& pass_command(std::uint64_t i) const noexcept { return pass_[i]; }

  static std::string expand(const std::string& pattern, std::uint64_t n);
  // How many users the options name, without building them.
  static std::uint64_t count_of(const options& o) noexcept;

 private:
  std::vector<std::string> names_;
  std::vector<command_line> user_;
  std::vector<command_line> pass_;
};

// Everything a run measured.
struct stats {
  std::array<histogram, op_count> latency;
  std::array<std::uint64_t, fault_count> errors{};
  std::uint64_t completed = 0;        // units of work done in the window (sessions, RETRs, ...)
  std::uint64_t payload_octets = 0;   // RETR octets received in the window (unstuffed, CRLF)
  std::vector<std::string> warnings;  // the first few, with details
  std::uint64_t warnings_dropped = 0;
  // retr: the most RETRs any client kept outstanding at once: --pipeline, or 1 when the server
  // did not advertise PIPELINING to some client (0 until a client has logged in).
  std::uint64_t pipeline_depth = 0;
  std::uint64_t error_total() const noexcept;
};

// Scenario-specific results, printed after the common ones.
struct idle_result {
  std::uint64_t requested = 0;
  std::uint64_t limit_by_fds = 0;  // requested was lowered to this by RLIMIT_NOFILE (0: not)
  std::uint64_t established = 0;   // authenticated sessions opened
  std::uint64_t alive = 0;         // of those, still answering NOOP after the hold
  double setup_s = 0;
  double hold_s = 0;
  std::optional<std::uint64_t> pss_before_kib;
  std::optional<std::uint64_t> pss_after_kib;
  std::uint64_t processes_before = 0;
  std::uint64_t processes_after = 0;
  std::uint64_t client_processes = 1;  // postern-bench processes that held the sessions
};

struct bigbox_iteration {
  std::uint64_t messages = 0;
  std::uint64_t octets = 0;
  double login_stat_ms = 0;
  double uidl_ms = 0;
  double list_ms = 0;
  double dele_ms = 0;  // 0 when nothing was deleted
  std::uint64_t deleted = 0;
  double quit_ms = 0;
};

struct result {
  stats st;
  double window_s = 0;  // length of the measurement window
  double cpu_user_s = 0;
  double cpu_sys_s = 0;
  std::uint64_t clients = 0;
  std::uint64_t users = 0;
  std::optional<idle_result> idle;
  std::vector<bigbox_iteration> bigbox;
};

// Which part of the run the clock is in.
enum class phase { warmup, measure, drain, done };

// The clock of one run: phases, the window, the CPU use inside it, and the list of live
// connections whose deadlines it enforces.
class run_control {
 public:
  run_control(asio::io_context& io, const options& o, stats& st);

  bool measuring() const noexcept { return phase_ == phase::measure; }
  const bool* measuring_flag() const noexcept { return &measuring_; }
  // Whether a client may start another unit of work.
  bool may_start() const noexcept { return phase_ == phase::warmup || phase_ == phase::measure; }
  bool is_done() const noexcept { return phase_ == phase::done; }
  // SIGINT or SIGTERM arrived: a windowed run closes its window and drains; unwindowed
  // scenarios check this and wind down. A second signal exits at once.
  bool interrupted() const noexcept { return interrupted_; }
  // Called once when the first signal arrives (after the window closed, if one was open).
  void on_interrupt(std::function<void()> f) { on_interrupt_ = std::move(f); }

  // Records one operation that ran from `start` until now, if the window is open.
  void record(op o, bench_clock::time_point start, bench_clock::time_point end) noexcept;
  // One unit of work (a session, a RETR) finished now, well or not. In --count mode the window
  // closes after that many attempts, so a server that fails every time cannot keep a
  // counted run going forever. These and client_finished() may throw what Asio's timer
  // cancel() throws (asio::system_error).
  void complete_unit();
  void unit_failed();
  // Counts a failure (in any phase) and keeps a detailed warning for the first few.
  void count_error(fault f, std::string_view detail = {});
  void warn(std::string message);

  // Clients call these as they start and finish; the run ends when the last has finished.
  void client_started() noexcept { ++active_clients_; }
  void client_finished();

  // Starts the phase clock and the sweeper. Scenarios without a window (idle, bigbox) call
  // begin_unwindowed() instead and finish() when they are done.
  void start();
  void begin_unwindowed();
  void finish();

  connection_registry& connections() noexcept { return registry_; }
  asio::io_context& io() noexcept { return io_; }
  const options& opts() const noexcept { return opts_; }
  bench_clock::duration timeout() const noexcept { return timeout_; }

  double window_s() const noexcept;
  double cpu_user_s() const noexcept { return cpu_user_s_; }
  double cpu_sys_s() const noexcept { return cpu_sys_s_; }

 private:
  asio::awaitable<void> controller();
  void watch_signals();
  void open_window();
  void close_window();
  void wake();  // lets the controller see a phase change at once

  asio::io_context& io_;
  const options& opts_;
  stats& st_;
  connection_registry registry_;
  bench_clock::duration timeout_;
  phase phase_ = phase::warmup;
  bool measuring_ = false;
  std::uint64_t active_clients_ = 0;
  bench_clock::time_point warmup_end_{};
  bench_clock::time_point window_start_{};
  bench_clock::time_point window_end_{};
  bench_clock::time_point drain_deadline_{};
  bool forced_close_ = false;  // the drain deadline closed what was left
  std::optional<asio::steady_timer> timer_;
  std::optional<asio::signal_set> signals_;
  bool interrupted_ = false;
  std::function<void()> on_interrupt_;
  double rusage_start_user_ = 0;
  double rusage_start_sys_ = 0;
  double cpu_user_s_ = 0;
  double cpu_sys_s_ = 0;
  bool unwindowed_ = false;
  std::uint64_t attempts_ = 0;  // units finished in the window, failed ones included
};

// The target address from --host and --port: numeric and loopback only; nullopt and a
// message otherwise. target_endpoint() throws std::invalid_argument instead.
std::optional<tcp::endpoint> parse_target(const options& o, std::string& error);
tcp::endpoint target_endpoint(const options& o);

// The scenarios; each fills `out` and returns when its run is over.
void run_session(const options& o, result& out);  // also tls
void run_retr(const options& o, result& out);
void run_idle(const options& o, result& out);
void run_bigbox(const options& o, result& out);

// `serve`: a POP3 server that does no work (null_server.cpp), `messages` messages of
// `message_size` octets in every maildrop, in `processes` worker processes (1: no fork).
// Returns the process exit status.
int run_null_server(const options& o, std::uint64_t messages, std::uint64_t message_size,
                    std::uint64_t processes);

// Output: human-readable text or one JSON line.
void print_text(const options& o, const result& r);
void print_json(const options& o, const result& r);

}  // namespace postern::bench
