// Postern's configuration: parsed once from TOML into this immutable, validated struct and
// handed down. Nothing below server/ reads the config file.
#pragma once

#include "common/result.hpp"
#include "net/listeners.hpp"
#include "pop3/limits.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::mbox {
class journal_faults;
}

namespace postern::server {

enum class log_level { debug, info, notice, warning, error };
enum class log_target { syslog, stderr_ };
// GNU Mailutils' tls-mode: none = no STLS; ondemand = STLS offered; required = only CAPA,
// STLS and QUIT before TLS; connection = the plain listeners speak implicit TLS too.
enum class tls_mode { none, ondemand, required, connection };

enum class process_model { event, fork };
enum class address_family { any, ipv4, ipv6 };

// The classic-Unix settings (fork mode, PAM, TCP wrappers); see docs/unix.md.
struct unix_settings {
  // [server]
  process_model model = process_model::event;            // process_model = "event" | "fork"
  std::uint32_t max_children = 500;                      // fork mode: sessions at once
  std::chrono::milliseconds min_connection_interval{0};  // per source; 0 = off
  std::uint32_t listen_backlog = 128;
  address_family family = address_family::any;  // "any" | "ipv4" | "ipv6"
  std::string login_user;    // pre-auth user; "" = "postern" if it exists, else "nobody"
  std::string login_chroot;  // pre-auth root; "" = /run/postern/empty (created 0555 root)
  std::chrono::seconds shutdown_grace{10};  // SIGTERM: then SIGKILL what is left
  bool tcp_wrappers = false;
  std::string tcp_wrappers_daemon = "posternd";
  std::string hosts_allow;  // "" = /etc/hosts.allow
  std::string hosts_deny;   // "" = /etc/hosts.deny
  // [auth]
  std::string passdb;  // mirrors config::passdb; "pam" selects PAM
  std::string pam_service = "pop3";
  bool pam_account_check = true;
  // [mail]
  std::string privileged_group = "mail";  // fork mode: kept by the session for /var/mail locks
};

struct config;

struct listen_address {
  std::string host;        // numeric IPv4 or IPv6 address, without brackets (never a DNS name)
  std::uint16_t port = 0;  // 0: the kernel picks one (tests); logged after bind
};

// A [[server.listener]] table.
struct listener_config {
  listen_address address;
  bool implicit_tls = false;    // tls = "implicit" (default "none")
  bool proxy_protocol = false;  // a PROXY header precedes the client's bytes
  std::string name;             // the systemd FileDescriptorName this listener stands for
};

struct config {
  std::string source_path;  // the file this came from, for messages

  // [server]
  std::vector<listen_address> listen{{"127.0.0.1", 110}, {"::1", 110}};
  std::string user;   // run as this user after binding (when started as root); "" = stay
  std::string group;  // and this group; "" = the user's primary group
  std::uint32_t max_connections = 10000;
  std::uint32_t max_connections_per_ip = 50;
  std::chrono::seconds idle_timeout{600};  // RFC 1939 section 3: at least 10 minutes
  // A client not logged in this long after connecting is disconnected, however it trickles
  // bytes (the idle timer does not cover that); 0 = off. Dovecot's login processes do the same.
  std::chrono::seconds login_timeout{60};
  std::uint32_t threads = 0;              // I/O threads per process; 0 = the cores shared out
  std::uint32_t processes = 1;            // event mode worker processes; 0 = "auto" (one per core)
  std::uint32_t max_bad_commands = 20;    // then the client is disconnected
  bool implementation_capability = true;  // CAPA IMPLEMENTATION line
  std::string greeting = "Postern ready.";
  std::vector<listen_address> tls_listen;  // implicit TLS (pop3s) listeners
  // [[server.listener]]: listeners with their own settings. When present without `listen`,
  // the default `listen` addresses are not bound.
  std::vector<listener_config> listeners;
  // The front ends allowed to send a PROXY header (CIDRs); a PROXY listener refuses others.
  std::vector<std::string> proxy_trusted_networks;

  // [tls]
  std::string tls_cert;
  std::string tls_key;
  std::string tls_chain;
  tls_mode tls = tls_mode::ondemand;        // only in effect when a certificate is set
  std::string tls_min_version = "TLSv1.2";  // "TLSv1.2" | "TLSv1.3"
  std::string tls_ciphers;                  // TLS 1.2 list; "" = modern default
  std::string tls_ciphersuites;             // TLS 1.3; "" = OpenSSL default
  std::string tls_groups;                   // "" = X25519:P-256:P-384
  std::string tls_client_ca;                // request and verify client certificates

  // [mail]
  std::string mail_location = "maildir:~/Maildir";
  std::vector<std::string> mbox_locking{"dotlock", "fcntl"};  // as Debian's delivery agents
  std::chrono::seconds mbox_lock_timeout{30};
  std::string mbox_quoting = "mboxo";  // "mboxo" | "mboxrd" | "none"
  bool mbox_content_length = false;    // honour Content-Length headers
  bool mbox_x_uidl = false;            // take UIDLs from X-UIDL headers
  // Where an mbox spool in a directory others can write keeps its journal, index and session
  // lock ("~", %u, %n, %d, %h expanded per user); empty: such spools are refused.
  std::string mbox_state_dir = "~/.postern";
  // Crash-test fault injection for mbox updates (store/mbox/journal.hpp): set only by a
  // posternd built with POSTERN_TEST_HOOKS, from its environment; never from the file. Not
  // owned; null in production.
  store::mbox::journal_faults* mbox_faults = nullptr;
  std::chrono::seconds mbox_dotlock_stale_age{600};  // a dotlock older than this is broken
  // At daemon start (not --inetd), time allowed for completing the mbox updates that a crash
  // interrupted (server/startup_recovery.hpp); 0 = not at startup.
  std::chrono::seconds mbox_startup_recovery_timeout{30};

  // [auth]
  std::string passdb = "passwd-file:/etc/postern/users";
  std::chrono::milliseconds failure_delay{
      2000};  // a failed login is answered this long after it arrived
  // The per-address penalty (net/auth_penalty.hpp): after failures, the next attempts wait
  // penalty_initial, doubling up to penalty_max (0 = off), before the check.
  std::chrono::milliseconds penalty_initial{2000};
  std::chrono::milliseconds penalty_max{15000};
  std::vector<std::string> penalty_exempt_networks;        // CIDRs never penalised
  std::string penalty_file = "/run/postern/auth-penalty";  // --inetd: the table between processes
  std::uint32_t worker_threads = 0;                       // hashing / blocking work; 0 = 2 per core
  std::vector<std::string> mechanisms{"PLAIN", "LOGIN"};  // SASL mechanisms (RFC 5034)
  bool disable_plaintext_auth = true;  // Dovecot's meaning: no cleartext passwords unencrypted
  bool loopback_is_secure = true;      // loopback connections count as secure for that policy
  std::vector<std::string> trusted_networks;  // CIDRs that count as secure too (TLS front ends)
  bool apop = false;                          // APOP (RFC 1939 section 7); needs plaintext secrets
  std::string gssapi_keytab;                  // "" = the Kerberos default
  std::string gssapi_service = "pop";
  std::string gssapi_hostname;               // "" = gethostname()
  std::string external_user = "subject:CN";  // client certificate field naming the user
  // Mail owners (every uid a session runs as): Dovecot's first_valid_uid / last_valid_uid.
  // 500 as Dovecot: Debian's users (1000+) and most virtual mail uids; 0 = no upper limit.
  std::uint32_t first_valid_uid = 500;
  std::uint32_t last_valid_uid = 0;

  // [pop3]: the seed manuals' features
  std::chrono::seconds login_delay{0};                            // RFC 2449 LOGIN-DELAY; 0 = off
  std::string stat_file = "/var/lib/postern/login-stats.sqlite";  // last login per user
  std::int32_t expire_days = -1;  // RFC 2449 EXPIRE; -1 = NEVER, 0 = no leaving mail
  bool delete_expired = false;    // remove expired messages at QUIT
  std::string bulletin_source;    // a mail location holding bulletins; "" = off
  std::string bulletin_db;        // SQLite file; "" = ~/.popbull per user
  bool undelete = false;          // clear deletion marks when a maildrop opens
  bool xtnd_xlist = true;
  bool xtnd_xmit = false;
  std::vector<std::string> xmit_command{"/usr/sbin/sendmail", "-t", "-i"};
  std::uint32_t xmit_max_size = pop3::limits::default_xmit_max_size;
  std::string uidl_format;            // Dovecot's pop3_uidl_format; "" = native
  bool dovecot_lock_session = false;  // Dovecot's pop3_lock_session (Maildir)
  std::vector<std::string> acl;       // "allow NET" / "deny NET", first match wins

  // [log]
  log_level level = log_level::info;
  log_target target = log_target::syslog;
  std::string syslog_ident = "posternd";
  unix_settings unix;         // [server], [auth] and [mail] keys of the classic-Unix mode
  std::string trace_file;     // every session's exchange, secrets redacted; "" = off
  std::string telemetry_dir;  // per-user session logs when <dir>/<user> exists; "" = off
};

// Reads and validates `path`. Errors are errc::invalid with a message that names the file,
// the line and the key ("postern.toml:12: server.idle_timeout: must be at least 1 second"),
// or errc::not_found / errc::temporary when the file cannot be read.
result<config> load_config(const std::string& path);

// Same, from text already in memory; `name` is used in messages.
result<config> parse_config(std::string_view text, const std::string& name);

// The effective configuration as TOML, every key shown (posternd --check-config).
std::string format_config(const config& cfg);

// One key the parser accepts, with a sample value for the --check-config round-trip tests.
struct config_key {
  std::string_view table;  // "server"
  std::string_view key;    // "idle_timeout"; "listener" is the [[server.listener]] array
  // A valid value other than the default, as TOML in the form format_config prints it;
  // "@DIR@" stands for a directory the test provides. Empty: the key has no sample (an error
  // the tests report).
  std::string_view sample;
};

// Every key the parser accepts, in its key table's order (posternd --list-config-keys).
std::vector<config_key> config_keys();

// Every configured listener: `listen` (implicit TLS when tls.mode = "connection"), then
// `tls_listen`, then the [[server.listener]] tables.
std::vector<net::listener_spec> listener_specs(const config& cfg);

const char* to_string(log_level l) noexcept;

}  // namespace postern::server
