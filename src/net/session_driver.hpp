// The session driver: runs one POP3 session, moving bytes between a transport and the
// sans-I/O engine and completing the engine's requests against the password database and
// the mail store.
//
// Blocking work (password hashing, opening and committing a maildrop) runs on the worker
// pool; everything else runs on the session's I/O executor. A watchdog closes the transport
// when the idle deadline passes. A session deletes mail only after QUIT in the TRANSACTION
// state; a timeout, a dropped connection or a shutdown deletes nothing.
#pragma once

#include "auth/passdb.hpp"
#include "auth/sasl.hpp"
#include "auth/system_users.hpp"
#include "net/acl.hpp"
#include "net/network.hpp"
#include "net/tls.hpp"
#include "net/trace.hpp"
#include "net/transport.hpp"
#include "pop3/session.hpp"
#include "store/decorated_maildrop.hpp"
#include "store/location.hpp"
#include "store/mbox/mbox.hpp"

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>

#include <chrono>
#include <functional>
#include <list>
#include <optional>
#include <memory>
#include <string>

namespace postern::net {

struct session_control;
class tcp_wrappers;

// Privilege separation (fork mode's pre-auth process): every credential check is forwarded to
// the privileged process. When session_env::remote_auth is set it replaces passdb, sasl and
// APOP; its calls block (a round trip to the privileged process) and the pre-auth process
// serves one session, so they may run on its I/O thread.
class auth_proxy {
 public:
  virtual ~auth_proxy() = default;
  // The APOP timestamp for the greeting, chosen by the privileged process; "" = no APOP.
  virtual std::string apop_timestamp() = 0;
  virtual std::vector<std::string> mechanisms_for(const auth::sasl_channel& ch) = 0;
  virtual auth::verify_result verify_password(std::string_view user, const secret_string& password) = 0;
  virtual auth::verify_result verify_apop(std::string_view user, std::string_view digest) = 0;
  virtual result<std::unique_ptr<auth::sasl_exchange>> start_sasl(std::string_view mechanism,
                                                                  const auth::sasl_channel& ch) = 0;
};

// Privilege separation: what the unprivileged pre-authentication process hands to the session
// process once the credentials are accepted.
struct handoff {
  const auth::user_record& account;
  std::string_view method;      // USER, APOP or the SASL mechanism, for the login log line
  std::string input;            // client bytes received but not yet processed (pipelining)
  session_control& control;     // the client transport (plain or TLS); the hook may take
                                // control.stream (leave it null) so the driver does not
                                // shut the connection down
  std::string_view session_id;
};

// Shared, read-only for the life of the server (tls_server_context is itself thread-safe).
struct session_env {
  auth::passdb* passdb = nullptr;
  auth::sasl_server* sasl = nullptr;       // null: no SASL mechanisms
  store::location_template location;
  // Every maildrop is opened with this process's uid and gids: a login is refused when the
  // passdb names another uid or gid, or when this process's uid may not own mail.
  auth::mail_owner_rules owner_rules;
  store::mbox::options mbox;
  // [mail] mbox_state_dir, expanded per user into mbox.state_dir (none: not configured).
  std::optional<store::location_template> mbox_state_dir;
  asio::thread_pool* workers = nullptr;
  pop3::session_options engine;            // the per-connection fields are filled per session
  std::chrono::milliseconds failure_delay{2000};
  std::chrono::milliseconds idle_timeout{600000};
  // A client not logged in this long after connecting is answered login_timeout_reply and
  // disconnected, whatever it sends meanwhile; 0 = off. Not applied to a resumed session.
  std::chrono::milliseconds login_timeout{60000};

  std::shared_ptr<tls_server_context> tls;  // null: no TLS configured
  bool stls = false;                       // STLS offered on plain connections
  bool tls_required = false;               // tls mode "required"
  bool disable_plaintext_auth = true;
  bool loopback_is_secure = true;
  std::vector<network> trusted_networks;   // count as secure (TLS-terminating front ends)
  bool apop = false;
  std::string hostname;                    // for APOP timestamps
  std::string external_user = "subject:CN";
  std::vector<std::string> xmit_command;   // XTND XMIT submission program and arguments
  // When set (fork mode, pre-auth process), called instead of opening the maildrop; the session
  // ends here when it returns, and the session process answers the client from then on.
  std::function<asio::awaitable<void>(handoff&)> on_authenticated;
  auth_proxy* remote_auth = nullptr;       // see auth_proxy
  // Seed features (issue 6). Both hooks run on a worker thread after a successful
  // authentication, before the maildrop is opened.
  // LOGIN-DELAY: false refuses the login with -ERR [LOGIN-DELAY]. Null: no delay.
  std::function<bool(std::string_view user)> login_allowed;
  // Bulletins: deliver into the maildrop about to be opened. Null: none.
  std::function<void(const auth::user_record& account, store::store_kind kind,
                     const std::string& path, std::string_view session_id)>
      before_open;
  // uidl_format and expire; kind, path and clock are filled per session.
  store::decoration_options decoration;
  const acl* access_list = nullptr;        // [pop3] acl, checked by the listeners
  trace_settings trace;                    // trace file and telemetry; session_id per session
  const tcp_wrappers* access = nullptr;    // hosts.allow/deny, checked by the listeners
};

// A session process taking over after a privilege-separated login.
struct resume_state {
  auth::user_record account;
  std::string method;
  std::string input;  // unprocessed client bytes from the pre-auth process
};

// How the client reached us.
struct connection_info {
  std::string remote;            // as logged
  asio::ip::address address;     // unspecified for a non-IP stdin
  bool implicit_tls = false;     // the transport is a tls_transport awaiting its handshake
  bool client_tls = false;       // a PROXY v2 SSL TLV: the client spoke TLS to the front end
  std::optional<resume_state> resume;  // set: the login already happened in another process
};

// One session's control block, shared by its driver, its watchdog and the registry.
struct session_control {
  session_control(std::unique_ptr<transport> s, const asio::any_io_executor& ex)
      : stream(std::move(s)), timer(ex) {}
  // Closes the transport so the driver ends without committing.
  void stop(bool for_shutdown) noexcept;

  std::unique_ptr<transport> stream;
  asio::steady_timer timer;
  std::chrono::steady_clock::time_point deadline;
  // Until the login: no deadline (touch or handshake) goes past this one.
  std::chrono::steady_clock::time_point login_deadline = std::chrono::steady_clock::time_point::max();
  bool done = false;
  bool timed_out = false;
  bool login_timed_out = false;  // timed_out at login_deadline
  bool awaiting_input = false;   // the driver waits for client bytes, no write in progress
  bool shutting_down = false;
};

// Sessions living on one I/O thread, so shutdown can reach them. Used only on that thread.
class session_registry {
 public:
  using handle = std::list<std::weak_ptr<session_control>>::iterator;
  handle add(const std::shared_ptr<session_control>& s) { return sessions_.insert(sessions_.end(), s); }
  void remove(handle h) { sessions_.erase(h); }
  void stop_all() noexcept;
  std::size_t size() const noexcept { return sessions_.size(); }

 private:
  std::list<std::weak_ptr<session_control>> sessions_;
};

// A short unique id for log lines.
std::string new_session_id();

// Runs the session to its end. `remote` is the client's address as logged.
asio::awaitable<void> run_session(std::shared_ptr<session_control> ctl, const session_env& env,
                                  connection_info conn, std::string id);

}  // namespace postern::net
