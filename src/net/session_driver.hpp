// The session driver: runs one POP3 session, moving bytes between a transport and the
// sans-I/O engine and completing the engine's requests through the services the process mode
// handed it (session_services: an authenticator, a maildrop_opener or a login_handoff, a
// session_observer). It knows no concrete password database, store or process layout, asks
// the transport what it is (tls(), tcp_socket()) instead of casting, and reports events to the
// observer instead of logging. RETR and TOP stream through a byte_pump.
//
// Blocking work (password hashing, opening and committing a maildrop, slow message reads: see
// byte_pump) runs on the worker pool; everything else runs on the session's I/O executor. A watchdog closes the transport
// when the idle deadline passes. A session deletes mail only after QUIT in the TRANSACTION
// state; a timeout, a dropped connection or a shutdown deletes nothing.
#pragma once

#include "net/acl.hpp"
#include "net/auth_penalty.hpp"
#include "net/network.hpp"
#include "net/services.hpp"
#include "net/session_observer.hpp"
#include "net/source_limits.hpp"
#include "net/tls.hpp"
#include "net/transport.hpp"
#include "pop3/session.hpp"

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>

#include <chrono>
#include <list>
#include <memory>
#include <optional>
#include <string>

namespace postern::net {

struct session_control;
class tcp_wrappers;

// The services of the mode that runs the session (net/services.hpp, net/session_observer.hpp).
// Non-owning; they outlive every session.
struct session_services {
  authenticator* auth = nullptr;         // required
  maildrop_opener* maildrops = nullptr;  // required unless handoff is set
  // Fork mode's pre-auth process: a login is handed off instead of opening the maildrop.
  login_handoff* handoff = nullptr;
  session_observer* observer = nullptr;  // null: nothing is logged or traced
};

// Shared, read-only for the life of the server (tls_server_context is itself thread-safe):
// the services, and the session policy.
struct session_env {
  session_services services;
  asio::thread_pool* workers = nullptr;
  pop3::session_options engine;  // the per-connection fields are filled per session
  // A failed login is answered this long after its command arrived (plus the penalty).
  std::chrono::milliseconds failure_delay{2000};
  auth_penalty* penalty = nullptr;  // null: no per-address penalty
  std::chrono::milliseconds idle_timeout{600000};
  // A client not logged in this long after connecting is answered login_timeout_reply and
  // disconnected, whatever it sends meanwhile; 0 = off. Not applied to a resumed session.
  std::chrono::milliseconds login_timeout{60000};

  std::shared_ptr<tls_server_context> tls;  // null: no TLS configured
  bool stls = false;                        // STLS offered on plain connections
  bool tls_required = false;                // tls mode "required"
  bool disable_plaintext_auth = true;
  bool loopback_is_secure = true;
  std::vector<network> trusted_networks;  // count as secure (TLS-terminating front ends)
  std::string external_user = "subject:CN";
  std::vector<std::string> xmit_command;  // XTND XMIT submission program and arguments
  // Checked by the listeners before a session starts; the driver does not look at them.
  const acl* access_list = nullptr;      // [pop3] acl
  const tcp_wrappers* access = nullptr;  // hosts.allow/deny
};

// A session process taking over after a privilege-separated login.
struct resume_state {
  auth::user_record account;
  std::string method;
  std::string input;  // unprocessed client bytes from the pre-auth process
};

// How the client reached us.
struct connection_info {
  std::string remote;                  // as logged
  asio::ip::address address;           // unspecified for a non-IP stdin
  bool implicit_tls = false;           // the transport is a tls_transport awaiting its handshake
  bool client_tls = false;             // a PROXY v2 SSL TLV: the client spoke TLS to the front end
  std::optional<resume_state> resume;  // set: the login already happened in another process
};

// One session's control block, shared by its driver, its watchdog and the registry.
struct session_control {
  session_control(std::unique_ptr<transport> s, const asio::any_io_executor& ex)
      : stream(std::move(s)), timer(ex) {}
  // Closes the transport so the driver ends without committing.
  void stop(bool for_shutdown) noexcept;

  std::unique_ptr<transport> stream;
  // The connection's place in max_connections / max_connections_per_ip (event mode), freed
  // when the session ends, before the stream closes.
  counted_connection counted;
  asio::steady_timer timer;
  std::chrono::steady_clock::time_point deadline;
  // Until the login: no deadline (touch or handshake) goes past this one.
  std::chrono::steady_clock::time_point login_deadline =
      std::chrono::steady_clock::time_point::max();
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
  handle add(const std::shared_ptr<session_control>& s) {
    return sessions_.insert(sessions_.end(), s);
  }
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
