#include "server/setup.hpp"

#include "auth/pam.hpp"
#include "auth/passdb_spec.hpp"
#include "auth/passwd_file.hpp"
#include "auth/system_users.hpp"
#include "common/log.hpp"
#include "server/systemd.hpp"
#include "store/expire.hpp"

#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <thread>

namespace postern::server {
namespace {

log::level to_log_level(log_level l) {
  switch (l) {
    case log_level::debug:
      return log::level::debug;
    case log_level::info:
      return log::level::info;
    case log_level::notice:
      return log::level::notice;
    case log_level::warning:
      return log::level::warning;
    case log_level::error:
      return log::level::error;
  }
  return log::level::info;
}

}  // namespace

void init_logging(const config& cfg) {
  log::init(cfg.target == log_target::syslog, to_log_level(cfg.level), cfg.syslog_ident);
}

std::string local_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') {
    return "localhost";
  }
  return name;
}

result<std::shared_ptr<net::tls_server_context>> make_tls(const config& cfg) {
  if (cfg.tls_cert.empty()) {
    return std::shared_ptr<net::tls_server_context>();
  }
  net::tls_settings ts;
  ts.cert = cfg.tls_cert;
  ts.key = cfg.tls_key;
  ts.chain = cfg.tls_chain;
  ts.min_version = cfg.tls_min_version;
  ts.ciphers = cfg.tls_ciphers;
  ts.ciphersuites = cfg.tls_ciphersuites;
  ts.groups = cfg.tls_groups;
  ts.client_ca = cfg.tls_client_ca;
  return net::tls_server_context::create(std::move(ts));
}

result<std::unique_ptr<auth::passdb>> open_passdb(const config& cfg, const unix_settings& us) {
  const auto parsed = auth::parse_passdb_spec(cfg.passdb);
  const auto* spec = std::get_if<auth::passdb_spec>(&parsed);
  if (spec == nullptr) {
    return error(errc::invalid, "auth.passdb: unsupported passdb '" + cfg.passdb + "'");
  }
  if (spec->kind == auth::passdb_kind::pam) {
    auth::pam_settings ps;
    ps.service = us.pam_service;
    ps.account_check = us.pam_account_check;
    return auth::open_pam_passdb(std::move(ps));
  }
  auto owner = passdb_trusted_owner(cfg, us);
  if (!owner) {
    return std::move(owner).err();
  }
  return auth::open_passwd_file(spec->path, *owner);
}

result<uid_t> passdb_trusted_owner(const config& cfg, const unix_settings& us) {
  if (::geteuid() != 0 || cfg.user.empty() || us.model == process_model::fork) {
    return ::geteuid();
  }
  auto account = auth::find_system_user(cfg.user);
  if (!account) {
    return error(errc::invalid, "server.user: unknown user '" + cfg.user + "'");
  }
  return account->uid;
}

result<void> check_passdb_file(const config& cfg, const unix_settings& us) {
  const auto parsed = auth::parse_passdb_spec(cfg.passdb);
  const auto* spec = std::get_if<auth::passdb_spec>(&parsed);
  if (spec == nullptr || spec->kind != auth::passdb_kind::passwd_file) {
    return {};
  }
  auto owner = passdb_trusted_owner(cfg, us);
  if (!owner) {
    return std::move(owner).err();
  }
  const std::string& path = spec->path;
  POSTERN_TRY(auth::check_passwd_file_path(path, *owner));
  if (auto warning = auth::passwd_file_directory_warning(path, *owner); !warning.empty()) {
    log::warning("{}", warning);
  }
  return {};
}

result<std::string> make_salt_key() {
  std::string key(32, '\0');
  std::size_t got = 0;
  while (got < key.size()) {
    ssize_t n = ::getrandom(key.data() + got, key.size() - got, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return error::from_errno(errno, "getrandom");
    }
    got += static_cast<std::size_t>(n);
  }
  return key;
}

result<void> reopen_after_fork(const config& cfg, shared_state& st) {
  (void)st.stats.release();  // abandoned on purpose: see the header
  (void)st.bulletins.release();
  return prepare_seed_features(cfg, st);
}

void close_before_fork(shared_state& st) {
  st.mail.login_allowed = nullptr;
  st.mail.before_open = nullptr;
  st.stats.reset();
  st.bulletins.reset();
}

// LOGIN-DELAY, EXPIRE, bulletins, uidl_format, acl, trace file and telemetry.
result<void> prepare_seed_features(const config& cfg, shared_state& st) {
  if (cfg.login_delay.count() > 0) {
    st.stats = login_stats::open_or_warn(cfg.stat_file);
    if (st.stats) {
      st.env.engine.login_delay_capability = login_delay_capability(cfg.login_delay);
      auto* stats = st.stats.get();
      auto delay = cfg.login_delay;
      st.mail.login_allowed = [stats, delay](std::string_view user) {
        auto r = stats->check_and_record(user, std::chrono::system_clock::now(), delay);
        if (!r) {
          log::error("login statistics: user=<{}>, error={}", log::client(user), r.err().message());
          return true;  // the delay limits load; it never keeps a user out by error
        }
        return *r;
      };
    }
  }
  store::expire_policy ex{cfg.expire_days, cfg.delete_expired};
  st.env.engine.expire_capability = store::expire_capability(ex);
  st.mail.decoration.expire = ex;
  st.mail.decoration.uidl_format = cfg.uidl_format;
  st.mail.decoration.dovecot_lock_session = cfg.dovecot_lock_session;
  if (!cfg.bulletin_source.empty()) {
    auto loc = store::parse_location(cfg.bulletin_source);
    if (!loc) {
      return error(errc::invalid, "pop3.bulletin_source: " + loc.err().message());
    }
    if (!cfg.bulletin_db.empty()) {
      auto db = bulletin_db::open(cfg.bulletin_db);
      if (!db) {
        log::warning("Unable to open bulletin db: {}; bulletins are off", db.err().message());
      } else {
        st.bulletins = std::move(db).value();
      }
    }
    if (cfg.bulletin_db.empty() || st.bulletins) {
      auto source = std::move(loc).value();
      auto* db = st.bulletins.get();
      auto locking = st.mail.mbox.locking;
      auto quoting = st.mail.mbox.from_quoting;
      st.mail.before_open = [source, db, locking, quoting](
                                const auth::user_record& account, store::store_kind kind,
                                const std::string& path, std::string_view id) {
        auto src = store::expand_location(source, {account.name, account.home});
        if (!src) {
          log::error("bulletins: user=<{}>, session=<{}>, error={}", log::client(account.name), id,
                     src.err().message());
          return;
        }
        bulletin_settings bs;
        bs.source_kind = source.kind;
        bs.source_path = *src;
        bs.db = db;
        bs.locking = locking;
        bs.quoting = quoting;
        auto n = deliver_bulletins(bs, bulletin_target{kind, path, account.name, account.home});
        if (!n) {
          log::error("bulletins: user=<{}>, session=<{}>, error={}", log::client(account.name), id,
                     n.err().message());
        } else if (*n > 0) {
          log::info("bulletins: user=<{}>, session=<{}>, delivered={}", log::client(account.name),
                    id, *n);
        }
      };
    }
  }
  if (!cfg.acl.empty()) {
    auto a = net::acl::parse(cfg.acl);
    if (!a) {
      return error(errc::invalid, "pop3.acl: " + a.err().message());
    }
    st.access_list = std::make_unique<net::acl>(std::move(a).value());
    st.env.access_list = st.access_list.get();
  }
  if (!cfg.trace_file.empty()) {
    auto sink = net::trace_sink::open(cfg.trace_file);
    if (!sink) {
      log::warning("{}; running without the trace file", sink.err().message());
    } else {
      st.observer.trace.shared = std::move(sink).value();
    }
  }
  st.observer.trace.telemetry_dir = cfg.telemetry_dir;
  return ok_result();
}

store::lock::lock_options mbox_locking_of(const config& cfg) {
  store::lock::lock_options o;
  o.methods = {false, false, false};  // only the configured ones
  for (const auto& m : cfg.mbox_locking) {
    o.methods.dotlock = o.methods.dotlock || m == "dotlock";
    o.methods.fcntl = o.methods.fcntl || m == "fcntl";
    o.methods.flock = o.methods.flock || m == "flock";
  }
  o.timeout = cfg.mbox_lock_timeout;
  o.dotlock_stale_age = cfg.mbox_dotlock_stale_age;
  return o;
}

result<void> prepare_env(const config& cfg, const unix_settings& us, shared_state& st,
                         std::shared_ptr<net::tls_server_context> tls) {
  auto loc = store::parse_location(cfg.mail_location);
  if (!loc) {
    return error(errc::invalid, "mail.location: " + loc.err().message());
  }
  st.mail.location = std::move(loc).value();
  st.mail.owner_rules = mail_owner_rules_of(cfg);
  auto& mb = st.mail.mbox;
  mb.locking = mbox_locking_of(cfg);
  mb.faults = cfg.mbox_faults;
  st.mail.mbox_state_dir.reset();
  if (!cfg.mbox_state_dir.empty()) {
    auto state = store::parse_location("mbox:" + cfg.mbox_state_dir);
    if (!state) {
      return error(errc::invalid, "mail.mbox_state_dir: " + state.err().message());
    }
    st.mail.mbox_state_dir = std::move(state).value();
  }
  mb.from_quoting = cfg.mbox_quoting == "mboxrd" ? store::mbox::quoting::mboxrd
                    : cfg.mbox_quoting == "none" ? store::mbox::quoting::none
                                                 : store::mbox::quoting::mboxo;
  mb.honour_content_length = cfg.mbox_content_length;
  mb.use_x_uidl = cfg.mbox_x_uidl;
  st.env.engine.greeting = cfg.greeting;
  st.env.engine.implementation =
      cfg.implementation_capability ? std::string("Postern ") + POSTERN_VERSION : std::string();
  st.env.engine.max_bad_commands = cfg.max_bad_commands;
  st.env.failure_delay = cfg.failure_delay;
  st.env.idle_timeout = cfg.idle_timeout;
  st.env.login_timeout = cfg.login_timeout;
  st.login.hostname = cfg.gssapi_hostname.empty() ? local_hostname() : cfg.gssapi_hostname;
  st.env.tls = std::move(tls);
  st.env.stls = st.env.tls != nullptr && cfg.tls != tls_mode::none;
  st.env.tls_required = st.env.tls != nullptr && cfg.tls == tls_mode::required;
  st.env.disable_plaintext_auth = cfg.disable_plaintext_auth;
  st.env.loopback_is_secure = cfg.loopback_is_secure;
  for (const auto& n : cfg.trusted_networks) {
    if (auto parsed = net::parse_network(n)) {
      st.env.trusted_networks.push_back(*parsed);
    }
  }
  st.login.apop = cfg.apop;
  st.env.xmit_command = cfg.xmit_command;
  st.env.engine.xtnd_xlist = cfg.xtnd_xlist;
  st.env.engine.xtnd_xmit = cfg.xtnd_xmit;
  st.env.engine.xmit_max_size = cfg.xmit_max_size;
  st.env.external_user = cfg.external_user;
  st.env.services = {&st.authenticator, &st.maildrops, nullptr, &st.observer};
  POSTERN_TRY(prepare_seed_features(cfg, st));
  if (us.tcp_wrappers) {
    net::access_settings as;
    as.daemon = us.tcp_wrappers_daemon;
    as.allow_table = us.hosts_allow;
    as.deny_table = us.hosts_deny;
    st.access = std::make_unique<net::tcp_wrappers>(std::move(as));
    st.env.access = st.access.get();
  }
  return {};
}

result<std::unique_ptr<net::auth_penalty>> make_auth_penalty(const config& cfg, bool in_file) {
  if (cfg.penalty_max.count() == 0) {
    return std::unique_ptr<net::auth_penalty>();
  }
  net::penalty_policy policy;
  policy.initial = cfg.penalty_initial;
  policy.max = cfg.penalty_max;
  for (const auto& n : cfg.penalty_exempt_networks) {
    if (auto parsed = net::parse_network(n)) {
      policy.exempt.push_back(*parsed);
    }
  }
  auto table = in_file ? net::auth_penalty::open_file(cfg.penalty_file, std::move(policy))
                       // cppcheck-suppress accessMoved ; only one branch of ?: runs
                       : net::auth_penalty::create(std::move(policy));
  if (!table) {
    std::string hint =
        in_file ? " (--inetd keeps the penalty in this file: create its directory, owned by the "
                  "user the server runs as, or set auth.penalty_max = 0 to turn the penalty off)"
                : "";
    return error(table.err().code(), table.err().message() + hint);
  }
  return std::make_unique<net::auth_penalty>(std::move(table).value());
}

// One process per connection: the penalty lives in a file between them. A file that cannot
// be used costs this connection the penalty across connections, not its mail: logged.
std::unique_ptr<net::auth_penalty> inetd_penalty(const config& cfg) {
  auto penalty = make_auth_penalty(cfg, true);
  if (!penalty) {
    log::warning("auth penalty across connections off for this connection: {}",
                 penalty.err().message());
    return nullptr;
  }
  return std::move(penalty).value();
}

result<void> prepare_auth(const config& cfg, const unix_settings& us, shared_state& st) {
  auto pdb = open_passdb(cfg, us);
  if (!pdb) {
    return std::move(pdb).err();
  }
  st.passdb = std::move(pdb).value();
  st.login.passdb = st.passdb.get();
  if (!cfg.mechanisms.empty()) {
    auth::sasl_settings ss;
    ss.mechanisms = cfg.mechanisms;
    ss.service = cfg.gssapi_service;
    ss.hostname = st.login.hostname;
    ss.gssapi_keytab = cfg.gssapi_keytab;
    ss.external_user = cfg.external_user;
    ss.salt_key = st.scram_salt_key;
    auto sasl = auth::sasl_server::create(*st.passdb, std::move(ss));
    if (!sasl) {
      return error(errc::invalid, "auth.mechanisms: " + sasl.err().message());
    }
    st.sasl = std::move(sasl).value();
    st.login.sasl = st.sasl.get();
  }
  return {};
}

result<void> prepare_shared(const config& cfg, shared_state& st,
                            std::shared_ptr<net::tls_server_context> tls) {
  auto us = unix_settings_from(cfg);
  if (!us) {
    return std::move(us).err();
  }
  POSTERN_TRY(prepare_env(cfg, *us, st, std::move(tls)));
  POSTERN_TRY(prepare_auth(cfg, *us, st));
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  st.workers =
      std::make_unique<asio::thread_pool>(cfg.worker_threads ? cfg.worker_threads : 2 * cores);
  st.env.workers = st.workers.get();
  return {};
}

result<std::vector<std::vector<net::listening_socket>>> open_listeners(const config& cfg,
                                                                       std::size_t copies) {
  auto passed = systemd::take_listen_fds();
  if (!passed) {
    return std::move(passed).err();
  }
  std::vector<net::inherited_listener> inherited;
  for (auto& p : *passed) {
    inherited.push_back({std::move(p.fd), std::move(p.name)});
  }
  return net::open_listeners(listener_specs(cfg), std::move(inherited), plain_listener_options(cfg),
                             copies, static_cast<int>(cfg.unix.listen_backlog));
}

net::listener_options plain_listener_options(const config& cfg) {
  net::listener_options plain;
  plain.implicit_tls = cfg.tls == tls_mode::connection && !cfg.tls_cert.empty();
  return plain;
}

std::optional<stdin_client> admit_stdin(const config& cfg, const net::admission_policy& policy) {
  stdin_client c{net::inspect_stdin(listener_specs(cfg), plain_listener_options(cfg)), {}};
  if (!c.conn.is_tcp) {
    return c;  // a pipe or UNIX socket from a local master: no address to check
  }
  c.origin.address = c.conn.peer;
  if (c.conn.options.proxy_protocol) {
    auto from_header = net::proxy_step(STDIN_FILENO, c.conn.peer, proxy_networks(cfg));
    if (!from_header) {
      return std::nullopt;  // logged; nothing sent
    }
    c.origin = *from_header;
  }
  net::counted_connection none;
  auto refused = net::admit(policy, c.origin.address, none);
  if (!refused) {
    refused = net::admit_wrappers(policy, c.origin.address);
  }
  if (refused) {
    net::log_refusal(c.origin.address, *refused);
    auto reply = net::refusal_reply(*refused);
    (void)!::send(STDIN_FILENO, reply.data(), reply.size(), MSG_NOSIGNAL);
    return std::nullopt;
  }
  return c;
}

void reload_tls(net::tls_server_context* tls) {
  if (tls == nullptr) {
    log::info(
        "SIGHUP: nothing to reload (no TLS certificate; the passwd-file is re-read when it changes)");
    return;
  }
  if (auto r = tls->reload(); r) {
    log::info("SIGHUP: TLS certificate and key reloaded: {}", tls->certificate_info());
  } else {
    log::error("SIGHUP: TLS reload failed, keeping the old certificate: {}", r.err().message());
  }
}

net::admission_policy admission_policy_of(const net::admission_policy& counting,
                                          const shared_state& st) {
  net::admission_policy p = counting;
  p.access_list = st.access_list.get();
  p.wrappers = st.access.get();
  return p;
}

std::vector<net::network> proxy_networks(const config& cfg) {
  std::vector<net::network> out;
  for (const auto& n : cfg.proxy_trusted_networks) {
    if (auto parsed = net::parse_network(n)) {
      out.push_back(*parsed);
    }
  }
  return out;
}

asio::awaitable<void> guarded_session(std::shared_ptr<net::session_control> ctl,
                                      const net::session_env& env, net::connection_info conn,
                                      net::session_registry* registry, std::string id) {
  if (id.empty()) {
    id = net::new_session_id();
  }
  auto handle = registry ? registry->add(ctl) : net::session_registry::handle{};
  try {
    co_await net::run_session(ctl, env, std::move(conn), id);
  } catch (const std::exception& e) {
    log::error("session <{}> failed: {}", id, e.what());
    ctl->done = true;
    if (ctl->stream) {
      ctl->stream->close();
    }
  }
  if (registry) {
    registry->remove(handle);
  }
}

}  // namespace postern::server
