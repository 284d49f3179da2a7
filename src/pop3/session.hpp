// session: the sans-I/O POP3 protocol engine (RFC 1939, 2449, 3206).
//
// The driver feeds the bytes the client sent (feed, feed_eof), sends whatever output()
// holds, and pulls the next step with next(). A step other than need_input and close is a
// request the driver must complete (auth_done, open_done, retrieve_started/retrieve_done,
// commit_done) before calling next() again; until then next() returns the same step. The
// engine holds no sockets, threads, clocks or files: delays, timeouts and I/O are the
// driver's. Pipelined commands are answered strictly in order, since a pending request stops
// command processing. However many are buffered, next() answers at most
// limits::max_lines_per_turn lines (or limits::max_output_per_turn bytes of replies) before it
// returns step::yield, so that one client's pipelined burst does not hold the driver's thread.
//
// Not thread-safe: one driver owns one session. Views returned by accessors stay valid until
// the next call of a non-const member.
#pragma once

#include "common/secret_string.hpp"
#include "pop3/command.hpp"
#include "pop3/limits.hpp"
#include "pop3/line_decoder.hpp"
#include "store/maildrop.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace postern::pop3 {

enum class session_state { authorization, transaction, update, closed };

enum class step {
  need_input,     // send output(), then read more and feed() it (or feed_eof())
  authenticate,   // check login_user() / take_password(), then auth_done()
  open_maildrop,  // open and lock the maildrop of login_user(), then open_done()
  start_tls,      // send output() (the STLS +OK), run the TLS handshake, then tls_started()
  sasl,           // feed sasl_mechanism() / sasl_response() to the SASL exchange, then
                  // sasl_challenge() or sasl_done()
  retrieve,       // open message retrieve_index(), then retrieve_started(); if it succeeded,
                  // send output(), stream the body through a dot_encoder made with
                  // retrieve_top_lines(), then retrieve_done()
  commit,         // apply deletion_marks() to the maildrop, then commit_done()
  xlist,          // collect header xlist_header() of xlist_messages(), then xlist_done()
  xmit,           // submit xmit_message() through the local mail submission, then xmit_done()
  yield,          // more buffered commands wait, but this turn's share is done: output() so
                  // far is valid; let other sessions run (sending output() when it is large),
                  // then call next() again
  close,          // send output(), then close the connection
};

enum class auth_status { ok, bad_credentials, temporary_failure };
enum class open_status { ok, in_use, temporary_failure, permanent_failure, login_delay };

// What a record of the session (trace, telemetry) may show of one client line. The engine
// reads every line, so it knows which bytes carry a secret; a reader of the raw bytes could
// only guess (a client can mistype a verb or keep sending SASL answers after a refusal).
enum class line_kind {
  command,        // a command line (known or not)
  sasl_response,  // a line read while a SASL exchange is in progress: a secret unless "*"
  message,        // a line of an XTND XMIT message, "." included: mail, not protocol
  discarded,      // too long or invalid, dropped by the line decoder: the text is not given
};
// How the engine answers a line, for a reader that follows the server's lines: `single` one
// status line, `multi` a status line and, after +OK, a dot-terminated list, `body` the same
// with a message (RETR, TOP), `sasl` "+ " challenges then one status line, `none` no reply of
// its own (a SASL answer or a message line: the exchange's or message's reply counts).
enum class reply_shape { single, multi, body, sasl, none };
struct line_mark {
  line_kind kind = line_kind::command;
  // The first `shown` bytes of the line carry no secret; the rest may. 0: the whole line is
  // secret (the line of an unknown verb, every SASL answer but "*", discarded lines).
  std::size_t shown = 0;
  reply_shape reply = reply_shape::single;
};
// Told of every client line the engine consumes, in order, before the engine acts on it. The
// view is valid only during the call. Non-owning; must outlive the session.
class line_observer {
 public:
  virtual void client_line(std::string_view line, const line_mark& mark) = 0;

 protected:
  ~line_observer() = default;
};

struct session_options {
  // Null: lines are not reported (no trace).
  line_observer* lines = nullptr;
  std::string greeting = "Postern ready.";
  std::string implementation = "Postern";  // CAPA IMPLEMENTATION value; empty: not listed
  std::uint32_t max_bad_commands = limits::default_max_bad_commands;
  bool user_pass_allowed = true;  // USER/PASS offered on this connection
  bool stls_offered = false;      // STLS available (a plain connection with TLS configured)
  bool tls_required = false;      // before TLS only CAPA, STLS and QUIT (tls mode "required")
  std::vector<std::string> sasl_mechanisms;  // usable on this connection, in CAPA order
  std::string apop_timestamp;                // non-empty: APOP on, and the greeting carries it
  // Privilege separation: a session process that takes over after another process checked
  // the credentials starts here, with no greeting, at step::open_maildrop for this user; its
  // reply to the maildrop open answers the client's PASS/APOP/AUTH.
  std::string resume_user;
  std::string resume_method;
  // RFC 2449 capabilities with values, e.g. "LOGIN-DELAY 900", "EXPIRE 30", "EXPIRE NEVER";
  // empty: not listed.
  std::string login_delay_capability;
  std::string expire_capability;
  bool xtnd_xlist = true;  // XTND XLIST (read-only, always safe)
  bool xtnd_xmit = false;  // XTND XMIT: submit a message (off by default)
  std::uint64_t xmit_max_size = limits::default_xmit_max_size;
};

// What changes on a connection once TLS is up (STLS): the driver recomputes it.
struct connection_policy {
  bool user_pass_allowed = true;
  std::vector<std::string> sasl_mechanisms;
};

// Counters for the logout line (the Qualcomm pop3d -s statistics and more).
struct session_stats {
  std::uint64_t retr_count = 0, retr_bytes = 0;
  std::uint64_t top_count = 0, top_bytes = 0;
  std::uint64_t marked_count = 0, marked_bytes = 0;  // marked for deletion at QUIT time
};

class session {
 public:
  explicit session(session_options opts);

  // Bytes to send. The driver sends them and then clears the string.
  std::string& output() noexcept { return out_; }

  void feed(std::string_view bytes);
  // Input received but not yet processed (pipelined after the current command); handed to the
  // session process at a privilege-separation handoff. Clears it here.
  std::string take_unprocessed_input();
  void feed_eof() noexcept { eof_ = true; }
  step next();
  // True when the input already holds the end of a line not yet processed: next() will act
  // on it without waiting for the client. The driver uses it to gather the replies of
  // pipelined commands into fewer writes.
  bool has_buffered_line() const noexcept { return in_.find('\n', in_pos_) != std::string::npos; }

  session_state state() const noexcept { return state_; }
  const session_stats& stats() const noexcept { return stats_; }
  bool quit_received() const noexcept { return quit_received_; }
  // The last failed login reached limits::max_failed_logins; the session closes after it.
  bool too_many_failed_logins() const noexcept {
    return failed_logins_ >= limits::max_failed_logins;
  }

  // authenticate / open_maildrop
  std::string_view login_user() const noexcept { return user_; }
  std::string_view login_method() const noexcept { return method_; }
  std::string_view apop_digest() const noexcept { return apop_digest_; }
  std::string_view apop_timestamp() const noexcept { return opts_.apop_timestamp; }
  secret_string take_password() noexcept { return std::move(password_); }
  void auth_done(auth_status status);
  // `messages` must stay valid for the rest of the session (the maildrop owns them).
  void open_done(open_status status, std::span<const store::message_info> messages = {});

  // start_tls: ok false means the handshake failed and the session ends.
  void tls_started(bool ok, connection_policy policy);

  // sasl: the mechanism (upper case) and the client's latest response (base64, "=" for an
  // empty initial response, "" when the client gave no initial response).
  std::string_view sasl_mechanism() const noexcept { return method_; }
  std::string_view sasl_response() const noexcept { return sasl_response_.view(); }
  // True for the first step of an AUTH command: the driver starts a new exchange.
  bool sasl_is_start() const noexcept { return sasl_start_; }
  // Sends "+ challenge" and waits for the client's next line.
  void sasl_challenge(std::string_view challenge_b64);
  // Ends the exchange. With status ok and non-empty `final_b64` (SCRAM's server-final
  // message), the data goes out as one more challenge that the client must answer with an
  // empty line (RFC 5034 section 4) before the login completes.
  void sasl_done(auth_status status, std::string_view final_b64 = {});

  // retrieve
  std::size_t retrieve_index() const noexcept { return retrieve_index_; }
  std::optional<std::uint64_t> retrieve_top_lines() const noexcept { return top_lines_; }
  bool retrieve_is_top() const noexcept { return top_lines_.has_value(); }
  // `why`, when !ok, is the store's error code: errc::not_found (the message was removed by
  // another program: a permanent -ERR), errc::changed (rewritten since it was listed: -ERR,
  // right at the next login), errc::permanent ([SYS/PERM]), anything else [SYS/TEMP].
  void retrieve_started(bool ok, errc why = errc::temporary);
  // `sent` is the number of body octets sent (counted for TOP statistics).
  void retrieve_done(std::uint64_t sent);

  // commit: deletion_marks()[i] is true when message i + 1 is to be removed.
  std::span<const bool> deletion_marks() const noexcept {
    return {deleted_.get(), messages_.size()};
  }
  void commit_done(bool ok);

  // xlist: the header name as the client gave it and the 0-based messages to look at (all
  // undeleted ones, or one). `values[i]` is the header line ("Name: value", unfolded) of
  // xlist_messages()[i], or empty when the message has no such header.
  std::string_view xlist_header() const noexcept { return xlist_header_; }
  const std::vector<std::size_t>& xlist_messages() const noexcept { return xlist_indexes_; }
  void xlist_done(bool ok, const std::vector<std::string>& values);

  // xmit: the message the client sent, dot-unstuffed, with CRLF line ends.
  std::string_view xmit_message() const noexcept { return xmit_buffer_; }
  void xmit_done(bool ok);

 private:
  void handle_line(std::string_view line);
  // Reports `line` to opts_.lines, if any.
  void mark(std::string_view line, line_kind kind, std::size_t shown, reply_shape reply);
  // How much of a command line carries no secret, and how it is answered.
  std::size_t shown_of(const command& cmd, std::string_view line) const noexcept;
  reply_shape reply_of(const command& cmd) const noexcept;
  void handle_authorization(const command& cmd);
  void handle_transaction(const command& cmd);
  // TRANSACTION commands with more than a few lines of their own.
  void handle_stat(const command& cmd);
  void handle_listing(const command& cmd);  // LIST and UIDL
  void handle_top(const command& cmd);
  void handle_rset(const command& cmd);
  void handle_quit(const command& cmd);
  void reply_ok(std::string_view text = {});
  void reply_err(std::string_view text);
  void bad_command(std::string_view text);
  // Parses a message-number argument; replies -ERR and returns nullopt when it is unusable.
  std::optional<std::size_t> message_arg(std::string_view arg, bool allow_deleted = false);
  std::optional<std::size_t> message_arg_only(const command& cmd);
  bool expect_no_args(const command& cmd);
  void send_capa();
  void handle_sasl_line(std::string_view line);
  void handle_xmit_line(std::string_view line);
  void handle_xtnd(const command& cmd);
  void start_auth(const command& cmd);
  void start_apop(const command& cmd);
  std::size_t max_line() const noexcept;

  session_options opts_;
  session_state state_ = session_state::authorization;
  step pending_ = step::need_input;
  line_decoder decoder_;
  std::string in_;
  std::size_t in_pos_ = 0;
  // Lines consumed since next() last returned need_input or yield (see limits::max_lines_per_turn).
  std::size_t turn_lines_ = 0;
  std::string out_;
  bool eof_ = false;
  bool close_ = false;
  bool quit_received_ = false;
  std::uint32_t bad_commands_ = 0;
  std::uint32_t failed_logins_ = 0;

  std::string user_;
  std::string method_;
  secret_string password_;
  std::string apop_digest_;
  enum class sasl_phase {
    none,
    awaiting_response,
    awaiting_final_ack
  } sasl_phase_ = sasl_phase::none;
  secret_string sasl_response_;  // base64 credentials for PLAIN and LOGIN
  bool sasl_start_ = false;
  bool tls_active_ = false;
  std::string xlist_header_;
  std::vector<std::size_t> xlist_indexes_;
  bool xmit_receiving_ = false;
  bool xmit_too_big_ = false;
  std::string xmit_buffer_;

  std::span<const store::message_info> messages_;
  std::unique_ptr<bool[]> deleted_;
  std::size_t last_accessed_ = 0;  // LAST (RFC 1460)
  std::size_t retrieve_index_ = 0;
  std::optional<std::uint64_t> top_lines_;
  session_stats stats_;
};

}  // namespace postern::pop3
