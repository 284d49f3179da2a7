// What every process mode builds at startup: logging, the TLS context, the password database,
// SASL, the worker pool, TCP wrappers and the session environment. Shared by event mode and
// inetd mode (daemon.cpp) and fork mode (fork_mode.cpp), which builds the pieces separately
// so that no secret is loaded before the unprivileged pre-auth process is forked off.
//
// Called at startup only, from one thread; the results are immutable afterwards apart from
// what their own headers say (the TLS context reloads, the passdb re-reads its file).
#pragma once

#include "auth/passdb.hpp"
#include "auth/sasl.hpp"
#include "net/access_control.hpp"
#include "net/admission.hpp"
#include "net/listeners.hpp"
#include "net/session_driver.hpp"
#include "server/bulletins.hpp"
#include "server/config.hpp"
#include "server/login_stats.hpp"
#include "server/unix_settings.hpp"
#include "store/lock/mailbox_lock.hpp"

#include <asio/awaitable.hpp>
#include <asio/thread_pool.hpp>

#include <memory>
#include <string>

namespace postern::server {

// Everything a session needs that lives as long as the server (or the process).
struct shared_state {
  std::unique_ptr<auth::passdb> passdb;
  std::unique_ptr<auth::sasl_server> sasl;
  std::unique_ptr<asio::thread_pool> workers;
  std::unique_ptr<net::tcp_wrappers> access;
  // Seed features (issue 6): owned here, reached through mail's hooks and env's pointers.
  std::unique_ptr<login_stats> stats;      // null: no LOGIN-DELAY
  std::unique_ptr<bulletin_db> bulletins;  // null: ~/.popbull (or no bulletins)
  std::unique_ptr<net::acl> access_list;
  // Made once before the first fork() (make_salt_key) so that every process shows an unknown
  // SCRAM user the same salt; "" = each SASL server makes its own.
  std::string scram_salt_key;
  // The per-address auth penalty when this process owns it (inetd, fork mode); event mode's
  // daemon makes it before forking its workers and points env.penalty at it.
  std::unique_ptr<net::auth_penalty> penalty;
  // The services handed to the sessions (env.services points at these). Never moved: the
  // services refer to the settings beside them.
  net::local_auth_settings login;  // passdb, SASL, APOP of this process
  net::maildrop_settings mail;     // stores, owner rules, LOGIN-DELAY, bulletins, decoration
  net::local_authenticator authenticator{login};
  net::local_maildrops maildrops{mail};
  net::log_observer observer;  // log lines, trace file and telemetry
  net::session_env env;

  shared_state() = default;
  shared_state(const shared_state&) = delete;
  shared_state& operator=(const shared_state&) = delete;
};

// The auth penalty table of the config (null when auth.penalty_max = 0): an anonymous shared
// mapping to be made before fork(), or, `in_file`, auth.penalty_file (--inetd: one process per
// connection). Errors name the key and say how to fix or turn it off.
result<std::unique_ptr<net::auth_penalty>> make_auth_penalty(const config& cfg, bool in_file);
// --inetd's table (auth.penalty_file) for a client with an IP address; null when the penalty
// is off, or when the file cannot be used (logged: the connection is served without it).
std::unique_ptr<net::auth_penalty> inetd_penalty(const config& cfg);

// 32 random bytes for shared_state::scram_salt_key.
result<std::string> make_salt_key();

void init_logging(const config& cfg);
std::string local_hostname();

// TLS is set up before privileges are dropped: keys are often readable by root only. Null
// when no certificate is configured.
result<std::shared_ptr<net::tls_server_context>> make_tls(const config& cfg);

// Event and inetd modes: everything below, plus a worker pool of cfg.worker_threads.
result<void> prepare_shared(const config& cfg, shared_state& st,
                            std::shared_ptr<net::tls_server_context> tls);

// The session environment without passdb, SASL and workers; TCP wrappers when configured.
// The seed-manual features (LOGIN-DELAY, EXPIRE, bulletins, uidl_format, acl, trace). Fork
// mode calls it again in each connection's supervisor, so that no SQLite connection crosses a
// fork(): see reopen_after_fork().
result<void> prepare_seed_features(const config& cfg, shared_state& st);

// Fork mode: in a new connection supervisor (still root), replaces the database connections
// and the trace sink inherited from the master with the process's own. The inherited objects
// are abandoned, never closed: closing a SQLite connection opened by another process would
// touch the master's locks and WAL files.
result<void> reopen_after_fork(const config& cfg, shared_state& st);

// Fork mode: in the master, before any fork(), closes what reopen_after_fork() reopens.
void close_before_fork(shared_state& st);

// The mbox spool locks of the config: exactly the methods in mail.mbox_locking (none that is
// not listed), mail.mbox_lock_timeout and mail.mbox_dotlock_stale_age. Sessions, startup
// recovery and posternd --recover all lock with these.
store::lock::lock_options mbox_locking_of(const config& cfg);

result<void> prepare_env(const config& cfg, const unix_settings& us, shared_state& st,
                         std::shared_ptr<net::tls_server_context> tls);
// The password database (passwd-file or PAM) and the SASL server over it; sets login.passdb
// and login.sasl. Loads secrets: in fork mode only the privileged per-connection process calls it.
result<void> prepare_auth(const config& cfg, const unix_settings& us, shared_state& st);
// Just the password database named by cfg.passdb.
result<std::unique_ptr<auth::passdb>> open_passdb(const config& cfg, const unix_settings& us);
// The uid besides root that may own a passwd-file (auth/passwd_file.hpp): the uid the server
// runs as, i.e. server.user's when started as root in event or inetd mode, else the effective
// uid (fork mode: the root master). errc::invalid when server.user does not resolve.
result<uid_t> passdb_trusted_owner(const config& cfg, const unix_settings& us);
// The passwd-file trust check of posternd --check-config and of fork mode's start; nothing to
// check for pam.
result<void> check_passdb_file(const config& cfg, const unix_settings& us);

// The listening sockets of the config, `copies` sets of them (net::open_listeners): the
// sockets systemd passed (socket activation) when there are any, else the configured
// listeners bound with server.listen_backlog.
result<std::vector<std::vector<net::listening_socket>>> open_listeners(const config& cfg,
                                                                       std::size_t copies);

// The admission policy of a process: `counting`'s counter and pacer, with the ACL and TCP
// wrappers of `st` (prepare_env).
net::admission_policy admission_policy_of(const net::admission_policy& counting,
                                          const shared_state& st);

// server.proxy_trusted_networks, parsed (the config checked them).
std::vector<net::network> proxy_networks(const config& cfg);

// inetd mode's accept pipeline before the transport, for event and fork mode alike: stdin's
// listener (net::inspect_stdin), its PROXY step, and admission by `policy` (ACL, TCP
// wrappers; no counting: one connection per process). nullopt: refused, logged and answered.
struct stdin_client {
  net::stdin_connection conn;
  net::client_origin origin;  // unspecified address when stdin is not TCP
};
std::optional<stdin_client> admit_stdin(const config& cfg, const net::admission_policy& policy);

// The plain listeners' options (`listen`): implicit TLS under tls.mode = "connection".
net::listener_options plain_listener_options(const config& cfg);

// SIGHUP: reloads the TLS certificate and key (new connections get them) and logs the
// outcome; a failed reload keeps the old ones. Null: nothing to reload.
void reload_tls(net::tls_server_context* tls);

// Runs a session and logs anything that escapes it; the session closes only itself.
// `registry` may be null. `id` empty: a new session id is made.
asio::awaitable<void> guarded_session(std::shared_ptr<net::session_control> ctl,
                                      const net::session_env& env, net::connection_info conn,
                                      net::session_registry* registry, std::string id = {});

}  // namespace postern::server
