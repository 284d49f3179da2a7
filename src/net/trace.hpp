// trace: records the POP3 exchange of a session, secrets redacted, for two seed features:
//  - the Qualcomm pop3d "-t file" trace ([log] trace_file): every session appends to one
//    shared file, one line per protocol line, "<time> <session id> C: <line>" for what the
//    client sent and "... S: <line>" for what the server sent;
//  - Cyrus' per-user telemetry ([log] telemetry_dir): when the directory
//    <telemetry_dir>/<user> exists, the session of that user writes the same lines to
//    <telemetry_dir>/<user>/<session id> (Cyrus names the file after the process id; a
//    Postern process serves many sessions, so the session id stands in for it, with '/' and
//    '+' written '_' and '-'). The user is known only after login, so the lines before it
//    are held in memory (at most pre_login_buffer bytes) and written when the driver calls
//    set_user(); a session that never logs in writes no telemetry.
//
// What is written of a client line is what the POP3 engine marked as free of secrets
// (pop3::line_mark): the engine reads every line, so it knows which bytes carry a secret, and
// a client that mistypes a verb ("PAS secret", "PASS<TAB>secret"), types a password as a
// command, or keeps sending SASL answers after a refused AUTH cannot lead the trace astray.
// The engine marks: the argument of PASS, the digest of APOP, the initial response of AUTH
// (and the mechanism too when it is not one the server names), every line read while a SASL
// exchange is in progress but a cancelling "*", the whole line of a verb it does not know
// (before and after login), and before login the arguments of every command but USER. The
// redacted part is written "[redacted]". The message a client sends after XTND XMIT is
// shown as its size; a line the engine's decoder dropped (too long, NUL) as "[discarded]".
// Client lines are therefore written when the engine reads them, not when they arrive: input
// the engine never reads (bytes pipelined before a STLS handshake, a partial line at EOF) is
// not written. Server lines are written as they are sent; the engine's mark of each command
// tells what its reply looks like: the server's "+ " SASL challenges are shown as their size,
// message bodies the server sends for RETR and TOP are summarized as "[N octets]" rather
// than written (they are the user's mail, and a trace is for debugging the protocol); other
// multi-line replies (CAPA, LIST, UIDL, XTND XLIST, AUTH) are written in full. Bytes outside
// printable ASCII are written as \xNN; a line longer than max_line is cut and its length
// noted.
//
// traced_transport wraps the session's transport (decorator): reads and writes go through
// unchanged, server bytes are recorded as they are written and client lines as the engine
// reports them (it is the engine's pop3::line_observer); a failing trace never fails the
// session (errors are logged once and tracing of that destination stops). It answers tls()
// and tcp_socket() for the transport inside; after STLS the driver puts the new TLS
// transport inside with replace_inner().
//
// Threading: a trace_sink is shared by all sessions and threads (a mutex, and one write(2)
// per batch of lines with O_APPEND, so lines of different sessions and processes never
// interleave within a line). A traced_transport, like any transport, is used on its
// session's executor only. protocol_redactor is I/O-free and single-threaded.
#pragma once

#include "common/result.hpp"
#include "net/transport.hpp"
#include "pop3/session.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace postern::net {

// Longest protocol line written whole; longer ones are cut.
inline constexpr std::size_t trace_max_line = 1024;
// Pre-login lines held for telemetry until the user is known.
inline constexpr std::size_t trace_pre_login_buffer = 64 * 1024;

// An append-only trace file shared by every session (and process: O_APPEND).
class trace_sink {
 public:
  // Opens (creating with mode 0600) `path` for appending. Errors: errc::permanent or
  // errc::temporary with the path; the caller logs it and runs without the trace.
  static result<std::shared_ptr<trace_sink>> open(const std::string& path);
  ~trace_sink();
  trace_sink(const trace_sink&) = delete;
  trace_sink& operator=(const trace_sink&) = delete;

  // Appends `text` (whole lines) with one write(2). Never fails: an error is logged once
  // and later writes are dropped.
  void write(std::string_view text) noexcept;
  const std::string& path() const noexcept { return path_; }

 private:
  trace_sink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
  std::mutex mu_;
  bool failed_ = false;
};

// Turns one session's client lines (as the engine marked them) and server bytes into
// redacted lines: "C: ..." and "S: ...".
class protocol_redactor {
 public:
  // `expect_greeting`: the first server line answers no command (false for a session that
  // resumes after a privilege-separated login).
  explicit protocol_redactor(bool expect_greeting = true);

  // A line the engine read (see pop3::line_observer), without its line end.
  void client_line(std::string_view line, const pop3::line_mark& mark,
                   std::vector<std::string>& out);
  // Feed the server's bytes as they are sent; complete lines are appended to `out`.
  void server_bytes(std::string_view data, std::vector<std::string>& out);
  // The end of the session: a partial server line and an unfinished message are flushed.
  void finish(std::vector<std::string>& out);

 private:
  enum class expect { single, multi, body, sasl };
  struct line_buffer {
    std::string text;          // at most trace_max_line bytes
    std::uint64_t length = 0;  // the whole line's length (without CR LF once complete)
    bool last_cr = false;      // the last byte so far is a CR
    bool empty() const noexcept { return length == 0; }
    void clear() noexcept {
      text.clear();
      length = 0;
      last_cr = false;
    }
  };
  void server_line(const line_buffer& line, std::vector<std::string>& out);
  void expect_reply(pop3::reply_shape shape);

  std::deque<expect> expected_;
  bool xmit_data_ = false;  // client lines are an XTND XMIT message
  std::uint64_t xmit_octets_ = 0;
  enum class multi { none, full, summary } multi_ = multi::none;
  std::uint64_t body_octets_ = 0;
  line_buffer server_;
};

struct trace_settings {
  std::shared_ptr<trace_sink> shared;  // [log] trace_file; null = none
  std::string telemetry_dir;           // [log] telemetry_dir; "" = none
  std::string session_id;
  bool expect_greeting = true;  // see protocol_redactor
  // Clock for the line timestamps; null = system_clock::now.
  std::function<std::chrono::system_clock::time_point()> clock;
};

// True when `s` asks for any tracing (wrap the transport only then).
bool trace_enabled(const trace_settings& s) noexcept;

// The engine reports client lines to the traced_transport itself (pop3::session_options::lines):
// reads pass through unrecorded.
class traced_transport final : public transport, public pop3::line_observer {
 public:
  traced_transport(std::unique_ptr<transport> inner, trace_settings settings);
  ~traced_transport() override;

  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override;
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override;
  void close() noexcept override;
  bool reads_shared() const noexcept override { return inner_->reads_shared(); }
  asio::awaitable<std::string_view> read_shared(std::error_code& ec) override;
  tls_transport* tls() noexcept override { return inner_->tls(); }
  asio::ip::tcp::socket* tcp_socket() noexcept override { return inner_->tcp_socket(); }

  void client_line(std::string_view line, const pop3::line_mark& mark) override;

  // The user logged in: opens the telemetry file when <telemetry_dir>/<user> is a directory
  // and writes the held pre-login lines to it. Without one, the held lines are dropped.
  // Call once, after a successful login, with the name as authenticated.
  void set_user(std::string_view user) noexcept;

  transport& inner() noexcept { return *inner_; }
  // Puts `t` in place of the wrapped transport (after STLS; null when the driver drops the
  // wrapper at a privilege-separation hand-off); the old one is returned.
  std::unique_ptr<transport> replace_inner(std::unique_ptr<transport> t) noexcept;

  // The telemetry file's path once opened ("" if none), for tests and logs.
  const std::string& telemetry_path() const noexcept { return telemetry_path_; }

 private:
  void record(std::string_view data) noexcept;  // server bytes
  void emit(std::vector<std::string>& lines) noexcept;
  std::string stamp() const;

  std::unique_ptr<transport> inner_;
  trace_settings settings_;
  protocol_redactor redactor_;
  int telemetry_fd_ = -1;
  std::string telemetry_path_;
  bool user_known_ = false;
  std::string pre_login_;  // formatted lines held for telemetry
  std::uint64_t pre_login_dropped_ = 0;
  bool disabled_ = false;  // an unexpected failure: stop tracing this session
};

}  // namespace postern::net
