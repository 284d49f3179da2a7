// Privilege separation for system users (fork mode and --inetd with process_model = "fork"),
// in the manner of popa3d and Dovecot. This file runs as root.
//
// One connection is served by two processes:
//
//   S, the supervisor (root until login): holds the client socket; forks P; loads the password
//      database only after P is gone from its address space (so P never has a copy of a
//      secret); answers P's credential checks over a socketpair; after a successful login
//      switches to the mail owner (uid, gid, groups, verified) and runs the POP3 session from
//      the TRANSACTION state on (session_options::resume_user).
//   P, the pre-auth process: chroots to an empty directory, becomes the unprivileged login
//      user (no_new_privs, not dumpable, no files, no forks) and runs the POP3 engine, TLS
//      and STLS included, until the client has logged in. Every credential check goes to S.
//      Then, for a plain connection, P hands S the bytes it read but did not process and
//      exits without shutting the socket down; for TLS it hands them over and stays, relaying
//      TLS <-> plaintext between the client and S over a second socketpair (Dovecot's login
//      proxying).
//
// S trusts nothing P says: every message has a fixed layout (message_spec below) with bounded
// fields and is validated; the user name is checked again; the authenticated account is the
// one S's own check produced, never a name P sends; the APOP timestamp is S's; failures are
// delayed by S (P could skip its own delay) and counted; EXTERNAL is never offered (the client
// certificate was checked by P, whose word S cannot take).
//
// Wire format (AF_UNIX SOCK_SEQPACKET: one message per datagram, never split or merged):
//   byte 0      version (1)
//   byte 1      type (msg_type)
//   bytes 2-3   field count, big-endian; must equal the type's count
//   then each field: 4-byte big-endian length, then that many bytes; each length at most the
//   field's maximum; nothing may follow the last field; the datagram is at most max_message.
#pragma once

#include "auth/passdb.hpp"
#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "net/session_driver.hpp"
#include "pop3/limits.hpp"
#include "server/setup.hpp"

#include <asio/ip/address.hpp>

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::server::privsep {

enum class msg_type : std::uint8_t {
  welcome = 1,     // S->P  apop_timestamp
  mechanisms = 2,  // P->S  secure, plaintext_allowed, tls_exporter, tls_unique
  password = 3,    // P->S  user, password
  apop = 4,        // P->S  user, digest
  sasl_start = 5,  // P->S  mechanism, secure, plaintext_allowed, tls_exporter, tls_unique, response
  sasl_step = 6,   // P->S  response
  handoff = 7,     // P->S  mode ("P" plain: P exits; "R" relay: P relays TLS), input
  mechanisms_reply = 8,  // S->P  space-separated mechanism list
  auth_reply = 9,        // S->P  status ("O" ok, "B" bad credentials, "T" temporary), user
  sasl_reply = 10,       // S->P  status ("C" challenge, "O", "B", "T"), data (base64), user
};

inline constexpr std::size_t max_fields = 6;
inline constexpr std::size_t max_message = 96 * 1024;
inline constexpr std::size_t max_user = 255;
inline constexpr std::size_t max_password = 4096;
inline constexpr std::size_t max_input = 64 * 1024;  // unprocessed client bytes at handoff
inline constexpr std::size_t max_sasl_data = 64 * 1024;
// A pre-auth process asking more than this many questions is not a POP3 session.
inline constexpr std::size_t max_requests = 256;
// Failed logins per connection before S ends it: the engine in P closes at the same count;
// S enforces it too, so a compromised P gets no more guesses.
inline constexpr std::size_t max_failed_logins = pop3::limits::max_failed_logins;

struct message_spec {
  msg_type type;
  std::size_t count;
  std::array<std::size_t, max_fields> max;  // per-field maximum length
};

// The layout of `t`, or nullptr for an unknown type.
const message_spec* spec_for(msg_type t) noexcept;

// One message. Field bytes are wiped when the message is destroyed (they may hold a password).
struct message {
  msg_type type{};
  std::vector<std::string> fields;
  message() = default;
  message(msg_type t, std::vector<std::string> f) : type(t), fields(std::move(f)) {}
  message(message&&) noexcept = default;
  message& operator=(message&&) noexcept = default;
  ~message();
};

// Encodes `m`. Errors (errc::invalid): unknown type, wrong field count, a field too long.
result<std::string> encode(const message& m);
// Decodes one datagram. Errors (errc::invalid) for anything but an exact, valid message.
result<message> decode(std::string_view bytes);

// Sends/receives one message on a SEQPACKET socket. recv waits at most timeout_ms (-1: no
// limit); EOF gives errc::not_found, a timeout errc::temporary, a malformed or oversized
// datagram errc::invalid.
result<void> send_message(int fd, const message& m);
result<message> recv_message(int fd, int timeout_ms);

// Who a process becomes.
struct identity {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups, exactly (gid is added when missing)
  std::string home;
};

// The mail owner for an authenticated account: the record's uid/gid when it has them, else
// the system user of that name; home from the record, else from the system. Supplementary
// groups: the system's for that user, plus `privileged_group` when not empty and it exists
// (Dovecot's mail_privileged_group: dotlocks in /var/mail), never group 0. Errors:
// errc::denied for uid 0 or gid 0, errc::not_found for an unknown user, errc::temporary for
// NSS failures.
result<identity> resolve_mail_owner(const auth::user_record& r,
                                    const std::string& privileged_group);

// The unprivileged login user (server.login_user; "" = "postern" if it exists, else "nobody").
result<identity> resolve_login_user(const std::string& configured);

// Switches this process (root) to `id` (setgroups, setresgid, setresuid), makes it
// non-dumpable and sets no_new_privs, then verifies: real, effective and saved ids, the
// exact group list, and that setuid(0) and setgid(0) fail. `chroot_dir` non-empty: chroot
// there first. Any error leaves the process in an unknown state: it must exit.
result<void> become(const identity& id, const std::string& chroot_dir);

// Makes sure `dir` exists as an empty directory owned by root and not writable by anyone
// else (creating it and its parent 0755 when missing). Errors: errc::permanent.
result<void> ensure_empty_root(const std::string& dir);

// The client of one connection as the supervisor gets it.
struct client {
  unique_fd in;               // the socket (or stdin for a non-socket inetd stdin)
  unique_fd out;              // invalid when `in` is a socket (used both ways)
  bool is_tcp = false;        // `in` is a TCP socket
  bool v6 = false;            // `in` is an AF_INET6 socket
  bool implicit_tls = false;  // the listener speaks TLS from the first byte
  bool client_tls = false;    // a PROXY v2 SSL TLV: the client spoke TLS to the front end
  std::string remote;         // as logged
  asio::ip::address
      address;  // the client (the PROXY header's source); unspecified for a non-IP stdin
  // Fork mode: the master counts this connection (max_connections, max_connections_per_ip,
  // max_children) until this descriptor's every copy is closed or the process is reaped. The
  // supervisor closes it when the session ends, before the client's socket. Invalid: --inetd.
  unique_fd slot;
};

struct supervisor_params {
  const config* cfg = nullptr;
  const unix_settings* us = nullptr;
  shared_state* st = nullptr;  // prepare_env() done; no passdb, SASL or workers yet
  identity login;              // resolved at startup
  std::string login_chroot;    // ensured at startup
};

// The supervisor S for one connection (this process becomes it: a fork-mode child, or the
// --inetd process). Forks P, answers it, and after a login runs the session as the mail
// owner. Returns the process exit status. Does not return until the session has ended.
int run_supervisor(const supervisor_params& p, client c);

}  // namespace postern::server::privsep
