// session_observer: what happens in a session, told to whoever records it (the log, the
// trace and telemetry, later metrics). The driver reports events; it writes no log line and
// no trace line itself. log_observer is the server's: today's log lines, and the trace file
// and telemetry of [log] trace_file / telemetry_dir (net/trace.hpp).
//
// Threading: one observer serves every session of the process, on any I/O thread at once:
// implementations are thread-safe. The views passed in are valid only during the call.
// Client-supplied text (user names, mechanism names) arrives as sent: escaping it is the
// observer's job.
#pragma once

#include "net/trace.hpp"
#include "pop3/session.hpp"

#include <chrono>
#include <cstdint>
#include <string_view>

namespace postern::net {

struct session_control;

// Who the event is about.
struct session_facts {
  std::string_view id;      // the session id of the log lines
  std::string_view remote;  // the client's address as logged
  std::string_view user;    // the logged-in user; "" before the login
};

enum class login_refusal { login_delay, mail_owner, in_use, open_failed };
enum class mail_failure { open_message, read_message, commit, expire_stamps, xmit };

struct logout_facts {
  std::string_view reason;  // QUIT, timeout, login timeout, shutdown, disconnected, ...
  const pop3::session_stats& stats;
  std::uint64_t deleted = 0, deleted_bytes = 0;  // 0 unless the QUIT committed
  std::uint64_t left = 0, left_bytes = 0;        // messages left in the maildrop
};

class session_observer {
 public:
  virtual ~session_observer() = default;
  // Tracing: wraps ctl.stream for tracing and returns the wrapper, or null when this
  // observer does not trace. Called once per session, after an implicit TLS handshake.
  virtual traced_transport* attach_trace(session_control& ctl, std::string_view id, bool resumed);
  virtual void tls_established(const session_facts&, bool /*stls*/,
                               std::string_view /*description*/) {}
  virtual void tls_failed(const session_facts&, std::string_view /*why*/) {}
  // A SASL mechanism that could not start, or a refused credential check; the latter is not
  // reported when the authenticator logs its own failures (authenticator::logs_failures()).
  virtual void auth_failed(const session_facts&, std::string_view /*method*/,
                           std::string_view /*user*/, std::string_view /*reason*/) {}
  virtual void too_many_failed_logins(const session_facts&) {}
  // The address's auth penalty delays this attempt (net/auth_penalty.hpp).
  virtual void auth_penalised(const session_facts&, std::chrono::milliseconds /*delay*/) {}
  // A credential check took longer than failure_delay: its failure was answered late.
  virtual void auth_check_slow(const session_facts&, std::chrono::milliseconds /*overrun*/) {}
  virtual void logged_in(const session_facts&, std::string_view /*method*/,
                         std::size_t /*messages*/) {}
  virtual void login_refused(const session_facts&, login_refusal /*why*/, std::string_view /*user*/,
                             std::string_view /*detail*/) {}
  // `msg`: the 1-based message number, 0 when none applies.
  virtual void mail_failed(const session_facts&, mail_failure /*what*/, std::size_t /*msg*/,
                           std::string_view /*detail*/) {}
  virtual void expired(const session_facts&, std::uint64_t /*messages*/) {}
  virtual void xmit_sent(const session_facts&, std::size_t /*size*/) {}
  // The end of a session that logged in / that did not.
  virtual void logged_out(const session_facts&, const logout_facts&) {}
  virtual void disconnected(const session_facts&, std::string_view /*reason*/) {}
};

// The server's observer: log lines, and the trace file and telemetry when `trace` asks.
class log_observer final : public session_observer {
 public:
  traced_transport* attach_trace(session_control& ctl, std::string_view id, bool resumed) override;
  void tls_established(const session_facts& s, bool stls, std::string_view description) override;
  void tls_failed(const session_facts& s, std::string_view why) override;
  void auth_failed(const session_facts& s, std::string_view method, std::string_view user,
                   std::string_view reason) override;
  void too_many_failed_logins(const session_facts& s) override;
  void auth_penalised(const session_facts& s, std::chrono::milliseconds delay) override;
  void auth_check_slow(const session_facts& s, std::chrono::milliseconds overrun) override;
  void logged_in(const session_facts& s, std::string_view method, std::size_t messages) override;
  void login_refused(const session_facts& s, login_refusal why, std::string_view user,
                     std::string_view detail) override;
  void mail_failed(const session_facts& s, mail_failure what, std::size_t msg,
                   std::string_view detail) override;
  void expired(const session_facts& s, std::uint64_t messages) override;
  void xmit_sent(const session_facts& s, std::size_t size) override;
  void logged_out(const session_facts& s, const logout_facts& f) override;
  void disconnected(const session_facts& s, std::string_view reason) override;

  // [log] trace_file and telemetry_dir; session_id and expect_greeting are set per session.
  // Set up at startup, read-only while sessions run.
  trace_settings trace;
};

}  // namespace postern::net
