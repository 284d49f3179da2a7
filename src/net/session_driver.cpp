#include "net/session_driver.hpp"

#include "auth/apop.hpp"
#include "common/log.hpp"
#include "net/extensions.hpp"
#include "pop3/dot_encoder.hpp"
#include "store/maildir/maildir.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/dispatch.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <random>

namespace postern::net {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// Runs f() on the worker pool and resumes the calling coroutine on its own executor. f lives
// in the caller's frame, which stays alive while the caller is suspended here.
template <typename F>
asio::awaitable<void> run_blocking(asio::thread_pool& pool, F& f) {
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&pool, &f](auto handler) {
        asio::post(pool, [&f, handler = std::move(handler)]() mutable {
          f();
          auto ex = asio::get_associated_executor(handler);
          asio::dispatch(ex, std::move(handler));
        });
      },
      asio::use_awaitable);
}

asio::awaitable<void> watchdog(std::shared_ptr<session_control> ctl) {
  while (!ctl->done) {
    ctl->timer.expires_at(ctl->deadline);
    co_await ctl->timer.async_wait(use_tuple);
    if (ctl->done) {
      break;
    }
    if (std::chrono::steady_clock::now() >= ctl->deadline) {
      ctl->timed_out = true;
      if (ctl->stream) {
        ctl->stream->close();
      }
      break;
    }
  }
}

pop3::open_status open_status_for(errc code) {
  switch (code) {
    case errc::in_use: return pop3::open_status::in_use;
    case errc::temporary:
    case errc::not_found: return pop3::open_status::temporary_failure;
    default: return pop3::open_status::permanent_failure;
  }
}

// The maildrop of an authenticated user: the userdb's own mail location if it has one, else
// the configured one, expanded.
result<std::pair<store::store_kind, std::string>> maildrop_path(const auth::user_record& account,
                                                                const session_env& env) {
  const store::location_template* loc = &env.location;
  store::location_template per_user;
  if (!account.mail.empty()) {
    auto parsed = store::parse_location(account.mail);
    if (!parsed) {
      return error(errc::permanent, "userdb mail location: " + parsed.err().message());
    }
    per_user = std::move(parsed).value();
    loc = &per_user;
  }
  auto path = store::expand_location(*loc, {account.name, account.home});
  if (!path) {
    return std::move(path).err();
  }
  return std::pair{loc->kind, std::move(path).value()};
}

// The security facts of a connection that decide which logins it may offer.
struct connection_security {
  bool tls = false;
  bool secure = false;             // TLS, or a trusted path (loopback, trusted network)
  tls_transport* tls_stream = nullptr;
};

connection_security assess(const session_env& env, const connection_info& conn, transport* stream) {
  connection_security sec;
  sec.tls_stream = dynamic_cast<tls_transport*>(stream);
  sec.tls = sec.tls_stream != nullptr;
  // A session on stdin/stdout that is not an IP socket is a local pipe or UNIX socket from a
  // master process: nobody on the network sees its bytes.
  bool trusted = conn.address.is_unspecified() ||
                 (env.loopback_is_secure && conn.address.is_loopback()) ||
                 std::any_of(env.trusted_networks.begin(), env.trusted_networks.end(),
                             [&](const network& n) { return contains(n, conn.address); });
  sec.secure = sec.tls || trusted;
  return sec;
}

auth::sasl_channel channel_for(const session_env& env, const connection_security& sec) {
  auth::sasl_channel ch;
  ch.secure = sec.secure;
  ch.plaintext_allowed = !env.disable_plaintext_auth || sec.secure;
  if (sec.tls_stream != nullptr) {
    ch.tls_exporter = sec.tls_stream->channel_binding_tls_exporter();
    ch.tls_unique = sec.tls_stream->channel_binding_tls_unique();
    ch.client_cert_verified = sec.tls_stream->has_verified_client_certificate();
    if (ch.client_cert_verified) {
      ch.client_cert_identity = sec.tls_stream->client_certificate_field(env.external_user);
    }
  }
  return ch;
}

pop3::connection_policy policy_for(const session_env& env, const connection_security& sec) {
  pop3::connection_policy p;
  auto ch = channel_for(env, sec);
  p.user_pass_allowed = ch.plaintext_allowed;
  if (env.remote_auth != nullptr) {
    p.sasl_mechanisms = env.remote_auth->mechanisms_for(ch);
  } else if (env.sasl != nullptr) {
    p.sasl_mechanisms = env.sasl->mechanisms_for(ch);
  }
  return p;
}

}  // namespace

void session_control::stop(bool for_shutdown) noexcept {
  if (done || !stream) {
    return;
  }
  shutting_down = shutting_down || for_shutdown;
  stream->close();
}

void session_registry::stop_all() noexcept {
  for (auto& weak : sessions_) {
    if (auto s = weak.lock()) {
      s->stop(true);
    }
  }
}

std::string new_session_id() {
  static std::atomic<std::uint64_t> counter{0};
  static const std::uint64_t seed = [] {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }();
  std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  // A bijective mix so ids look unrelated but never repeat within one process.
  std::uint64_t x = (n + seed) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 31;
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string id;
  for (int i = 0; i < 11; ++i) {
    id.push_back(alphabet[x & 63]);
    x >>= 6;
  }
  return id;
}

asio::awaitable<void> run_session(std::shared_ptr<session_control> ctl, const session_env& env,
                                  connection_info conn, std::string id) {
  auto ex = co_await asio::this_coro::executor;
  const std::string& remote = conn.remote;
  auto touch = [&] { ctl->deadline = std::chrono::steady_clock::now() + env.idle_timeout; };
  touch();
  asio::co_spawn(ex, watchdog(ctl), asio::detached);

  // A handshake gets at most a minute, whatever the idle timeout.
  auto handshake_deadline = [&] {
    ctl->deadline = std::chrono::steady_clock::now() +
                    std::min<std::chrono::milliseconds>(env.idle_timeout, std::chrono::seconds(60));
  };
  if (conn.implicit_tls && !conn.resume) {
    auto* tls = static_cast<tls_transport*>(ctl->stream.get());
    handshake_deadline();
    std::string why = co_await tls->handshake();
    touch();
    if (!why.empty()) {
      log::notice("TLS handshake failed: rip={}, session=<{}>, error={}", remote, id,
                  ctl->timed_out ? std::string("timeout") : why);
      ctl->done = true;
      ctl->timer.cancel();
      ctl->stream->close();
      co_return;
    }
    log::debug("TLS established: rip={}, session=<{}>, {}", remote, id, tls->description());
  }
  traced_transport* traced = nullptr;
  if (trace_enabled(env.trace)) {
    trace_settings ts = env.trace;
    ts.session_id = id;
    ts.expect_greeting = !conn.resume;
    auto wrapped = std::make_unique<traced_transport>(std::move(ctl->stream), std::move(ts));
    traced = wrapped.get();
    ctl->stream = std::move(wrapped);
  }
  connection_security sec = assess(env, conn, traced_transport::unwrap(ctl->stream.get()));
  pop3::session_options opts = env.engine;
  {
    auto policy = policy_for(env, sec);
    opts.user_pass_allowed = policy.user_pass_allowed;
    opts.sasl_mechanisms = std::move(policy.sasl_mechanisms);
    opts.stls_offered = !sec.tls && env.stls && env.tls != nullptr &&
                        dynamic_cast<tcp_transport*>(traced_transport::unwrap(ctl->stream.get())) != nullptr;
    opts.tls_required = !sec.tls && env.tls_required;
    if (env.remote_auth != nullptr) {
      opts.apop_timestamp = conn.resume ? std::string() : env.remote_auth->apop_timestamp();
    } else if (env.apop) {
      opts.apop_timestamp = auth::make_apop_timestamp(env.hostname);
    }
    if (conn.resume) {
      opts.resume_user = conn.resume->account.name;
      opts.resume_method = conn.resume->method;
    }
  }
  pop3::session engine(std::move(opts));
  std::unique_ptr<auth::sasl_exchange> exchange;
  std::unique_ptr<store::maildrop> drop;
  store::decorated_maildrop* decorated = nullptr;  // drop, when decorated (note_top, logs)
  auth::user_record account;  // set by a successful authentication
  std::string user;           // set once the maildrop is open, for logs
  if (conn.resume) {
    account = std::move(conn.resume->account);
    engine.feed(conn.resume->input);
  }
  const char* reason = "disconnected";
  store::commit_stats committed;
  bool committed_ok = false;
  char buf[4096];
  std::error_code ec;

  auto flush = [&]() -> asio::awaitable<bool> {
    if (engine.output().empty()) {
      co_return true;
    }
    touch();
    co_await ctl->stream->write_all(asio::buffer(engine.output()), ec);
    engine.output().clear();
    if (engine.output().capacity() > 256 * 1024) {
      engine.output().shrink_to_fit();
    }
    co_return !ec;
  };

  // Costs a failed client time without blocking anyone else.
  auto failure_delay = [&]() -> asio::awaitable<void> {
    if (env.failure_delay.count() > 0) {
      asio::steady_timer delay(ex, env.failure_delay);
      co_await delay.async_wait(use_tuple);
    }
  };

  // Note: co_await results are bound to a named const before they are tested. GCC 12.2
  // miscompiles `if (!co_await f())` in Asio coroutines (a garbage frame, SIGILL/SIGSEGV).
  bool running = true;
  while (running) {
    pop3::step st = engine.next();
    switch (st) {
      case pop3::step::need_input: {
        if (const bool flushed = co_await flush(); !flushed) {
          running = false;
          break;
        }
        touch();
        std::size_t n = co_await ctl->stream->read_some(asio::buffer(buf), ec);
        if (n > 0) {
          engine.feed(std::string_view(buf, n));
        } else {
          engine.feed_eof();
        }
        break;
      }
      case pop3::step::authenticate: {
        std::string login(engine.login_user());
        secret_string password = engine.take_password();
        auth::verify_result vr;
        if (!store::is_safe_user_name(login)) {
          vr.status = auth::verify_status::bad_credentials;
          vr.reason = "user name not allowed";
        } else if (env.remote_auth != nullptr) {
          std::string digest(engine.apop_digest());
          bool apop = engine.login_method() == "APOP";
          auto verify = [&] {
            vr = apop ? env.remote_auth->verify_apop(login, digest)
                      : env.remote_auth->verify_password(login, password);
          };
          co_await run_blocking(*env.workers, verify);
        } else if (engine.login_method() == "APOP") {
          std::string digest(engine.apop_digest());
          std::string stamp(engine.apop_timestamp());
          auto verify = [&] { vr = auth::verify_apop(*env.passdb, login, stamp, digest); };
          co_await run_blocking(*env.workers, verify);
        } else {
          auto verify = [&] { vr = env.passdb->verify(login, password); };
          co_await run_blocking(*env.workers, verify);
        }
        password.wipe();
        if (vr.status == auth::verify_status::ok) {
          account = std::move(vr.user);
          if (account.name.empty()) {
            account.name = login;
          }
          engine.auth_done(pop3::auth_status::ok);
          break;
        }
        log::notice("auth failed: user=<{}>, method={}, rip={}, session=<{}>, reason={}",
                    log::safe(login), engine.login_method(), remote, id, vr.reason);
        co_await failure_delay();
        engine.auth_done(vr.status == auth::verify_status::temporary
                             ? pop3::auth_status::temporary_failure
                             : pop3::auth_status::bad_credentials);
        break;
      }
      case pop3::step::start_tls: {
        if (const bool flushed = co_await flush(); !flushed) {
          running = false;
          break;
        }
        auto* tcp = dynamic_cast<tcp_transport*>(traced_transport::unwrap(ctl->stream.get()));
        if (tcp == nullptr || env.tls == nullptr) {
          engine.tls_started(false, {});
          break;
        }
        auto tls_owner = std::make_unique<tls_transport>(std::move(tcp->socket()), env.tls->current());
        auto* tls = tls_owner.get();
        if (traced != nullptr) {
          traced->replace_inner(std::move(tls_owner));
        } else {
          ctl->stream = std::move(tls_owner);
        }
        handshake_deadline();
        std::string why = co_await tls->handshake();
        touch();
        if (!why.empty()) {
          log::notice("TLS handshake failed: rip={}, session=<{}>, error={}", remote, id,
                      ctl->timed_out ? std::string("timeout") : why);
          engine.tls_started(false, {});
          break;
        }
        log::debug("STLS established: rip={}, session=<{}>, {}", remote, id, tls->description());
        sec = assess(env, conn, traced_transport::unwrap(ctl->stream.get()));
        engine.tls_started(true, policy_for(env, sec));
        break;
      }
      case pop3::step::sasl: {
        std::string mech(engine.sasl_mechanism());
        if (engine.sasl_is_start()) {
          exchange.reset();
          auto started = env.remote_auth ? env.remote_auth->start_sasl(mech, channel_for(env, sec))
                         : env.sasl ? env.sasl->start(mech, channel_for(env, sec))
                                    : result<std::unique_ptr<auth::sasl_exchange>>(
                                          error(errc::not_found, "no SASL"));
          if (!started) {
            log::notice("auth failed: user=<>, method={}, rip={}, session=<{}>, reason={}", mech,
                        remote, id, started.err().message());
            co_await failure_delay();
            engine.sasl_done(pop3::auth_status::bad_credentials);
            break;
          }
          exchange = std::move(started).value();
        }
        auth::sasl_step r;
        secret_string response(engine.sasl_response());  // PLAIN/LOGIN carry passwords
        auto step_fn = [&] { r = exchange->step(response.view()); };
        co_await run_blocking(*env.workers, step_fn);
        response.wipe();
        switch (r.status) {
          case auth::sasl_status::challenge:
            engine.sasl_challenge(r.server_data_b64);
            break;
          case auth::sasl_status::success:
            account = std::move(r.user);
            if (account.name.empty()) {
              account.name = std::string(exchange->authenticated_user());
            }
            exchange.reset();
            engine.sasl_done(pop3::auth_status::ok, r.server_data_b64);
            break;
          case auth::sasl_status::failure:
          case auth::sasl_status::temporary_failure: {
            std::string who(exchange->authenticated_user());
            exchange.reset();
            log::notice("auth failed: user=<{}>, method={}, rip={}, session=<{}>, reason={}",
                        log::safe(who), mech, remote, id, r.reason);
            co_await failure_delay();
            engine.sasl_done(r.status == auth::sasl_status::temporary_failure
                                 ? pop3::auth_status::temporary_failure
                                 : pop3::auth_status::bad_credentials);
            break;
          }
        }
        break;
      }
      case pop3::step::open_maildrop: {
        if (env.on_authenticated) {
          if (const bool flushed = co_await flush(); !flushed) {
            running = false;
            break;
          }
          handoff h{account, engine.login_method(), engine.take_unprocessed_input(), *ctl, id};
          co_await env.on_authenticated(h);
          reason = "handoff";
          running = false;
          break;
        }
        result<std::unique_ptr<store::maildrop>> opened = error(errc::permanent, "no mail location");
        bool delayed = false;
        auto path = maildrop_path(account, env);
        if (!path) {
          opened = error(path.err());
        } else {
          auto open = [&] {
            if (env.login_allowed && !env.login_allowed(account.name)) {
              delayed = true;
              return;
            }
            if (env.before_open) {
              env.before_open(account, path->first, path->second, id);
            }
            opened = path->first == store::store_kind::mbox ? store::mbox::open(path->second, env.mbox)
                                                           : store::maildir::open(path->second);
            if (opened && store::needs_decoration(env.decoration)) {
              store::decoration_options d = env.decoration;
              d.kind = path->first;
              d.path = path->second;
              d.reuse_x_uidl = env.mbox.use_x_uidl;
              opened = store::decorate(std::move(opened).value(), std::move(d), &decorated);
            }
          };
          co_await run_blocking(*env.workers, open);
        }
        if (delayed) {
          engine.open_done(pop3::open_status::login_delay);
          log::notice("login refused, login delay: user=<{}>, rip={}, session=<{}>",
                      log::safe(account.name), remote, id);
          break;
        }
        if (opened) {
          drop = std::move(opened).value();
          user = account.name;
          if (traced != nullptr) {
            traced->set_user(account.name);
          }
          engine.open_done(pop3::open_status::ok, drop->messages());
          log::info("login: user=<{}>, method={}, rip={}, session=<{}>, messages={}",
                    log::safe(user), engine.login_method(), remote, id, drop->messages().size());
          break;
        }
        const auto& err = opened.err();
        engine.open_done(open_status_for(err.code()));
        if (err.code() == errc::in_use) {
          log::notice("login refused, mailbox in use: user=<{}>, rip={}, session=<{}>",
                      log::safe(account.name), remote, id);
        } else {
          log::error("cannot open mailbox: user=<{}>, rip={}, session=<{}>, error={}",
                     log::safe(account.name), remote, id, err.message());
        }
        break;
      }
      case pop3::step::retrieve: {
        auto reader = drop->open_message(engine.retrieve_index(), !engine.retrieve_is_top());
        if (!reader) {
          log::error("cannot read message: user=<{}>, session=<{}>, msg={}, error={}",
                     log::safe(user), id, engine.retrieve_index() + 1, reader.err().message());
          engine.retrieve_started(false);
          break;
        }
        if (decorated != nullptr && engine.retrieve_is_top()) {
          decorated->note_top(engine.retrieve_index());
        }
        engine.retrieve_started(true);
        pop3::dot_encoder enc(engine.retrieve_top_lines());
        std::string& out = engine.output();
        std::uint64_t sent = 0;
        bool ok = true;
        for (;;) {
          auto n = (*reader)->read(std::span<char>(buf, sizeof buf));
          if (!n) {
            log::error("read failed mid-message: user=<{}>, session=<{}>, msg={}, error={}",
                       log::safe(user), id, engine.retrieve_index() + 1, n.err().message());
            ok = false;
            break;
          }
          if (*n == 0) {
            break;
          }
          std::size_t before = out.size();
          bool more = enc.encode(std::string_view(buf, *n), out);
          sent += out.size() - before;
          if (out.size() < pop3::limits::stream_chunk) {
            // keep filling the buffer
          } else if (const bool flushed = co_await flush(); !flushed) {
            ok = false;
            break;
          }
          if (!more) {
            break;
          }
        }
        if (!ok) {
          running = false;  // a partial reply cannot be taken back: drop the connection
          break;
        }
        enc.finish(out);
        engine.retrieve_done(sent);
        break;
      }
      case pop3::step::commit: {
        result<store::commit_stats> cr = error(errc::temporary, "not committed");
        auto commit = [&] { cr = drop->commit(engine.deletion_marks()); };
        co_await run_blocking(*env.workers, commit);
        if (decorated != nullptr && decorated->stamp_error()) {
          log::error("expire stamps not saved: user=<{}>, session=<{}>, error={}", log::safe(user),
                     id, decorated->stamp_error()->message());
        }
        if (cr) {
          committed = *cr;
          committed_ok = true;
          if (decorated != nullptr && decorated->expired_deleted() > 0) {
            log::info("expired: user=<{}>, session=<{}>, messages={}", log::safe(user), id,
                      decorated->expired_deleted());
          }
        } else {
          log::error("commit failed: user=<{}>, session=<{}>, error={}", log::safe(user), id,
                     cr.err().message());
        }
        // Release the maildrop lock before the client sees the reply, so that it can log in
        // again at once.
        if (!committed_ok) {
          for (const auto& m : drop->messages()) {
            ++committed.left;
            committed.left_bytes += m.size;
          }
        }
        decorated = nullptr;
        drop.reset();
        engine.commit_done(cr.ok());
        reason = "QUIT";
        break;
      }
      case pop3::step::xlist: {
        std::vector<std::string> values;
        bool ok = true;
        std::string header(engine.xlist_header());
        auto collect = [&] {
          for (std::size_t index : engine.xlist_messages()) {
            auto reader = drop->open_message(index, false);
            if (!reader) {
              ok = false;
              return;
            }
            auto field = read_header_field(**reader, header);
            if (!field) {
              ok = false;
              return;
            }
            values.push_back(std::move(field).value());
          }
        };
        co_await run_blocking(*env.workers, collect);
        engine.xlist_done(ok, values);
        break;
      }
      case pop3::step::xmit: {
        result<void> sent = error(errc::temporary, "not sent");
        std::string message(engine.xmit_message());
        auto submit = [&] { sent = submit_message(env.xmit_command, message); };
        co_await run_blocking(*env.workers, submit);
        if (sent) {
          log::info("xmit: user=<{}>, session=<{}>, size={}", log::safe(user), id, message.size());
        } else {
          log::error("xmit failed: user=<{}>, session=<{}>, error={}", log::safe(user), id,
                     sent.err().message());
        }
        engine.xmit_done(sent.ok());
        break;
      }
      case pop3::step::close:
        co_await flush();
        if (engine.quit_received() && engine.state() != pop3::session_state::update) {
          reason = "QUIT";
        }
        running = false;
        break;
    }
  }

  ctl->done = true;
  ctl->timer.cancel();
  if (ctl->timed_out) {
    reason = "timeout";
  } else if (ctl->shutting_down) {
    reason = "shutdown";
  }
  if (ctl->stream) {  // a handoff may have taken the transport
    ctl->stream->close();
  }
  if (!user.empty()) {
    const auto& s = engine.stats();
    std::uint64_t left = 0, left_bytes = 0;
    if (!drop) {
      left = committed.left;
      left_bytes = committed.left_bytes;
    } else {
      for (const auto& m : drop->messages()) {
        ++left;
        left_bytes += m.size;
      }
    }
    log::info("logout: user=<{}>, session=<{}>, reason={}, retr={}/{}, top={}/{}, del={}/{}, left={}/{}",
              log::safe(user), id, reason, s.retr_count, s.retr_bytes, s.top_count, s.top_bytes,
              committed_ok ? committed.deleted : 0, committed_ok ? committed.deleted_bytes : 0, left,
              left_bytes);
  } else {
    log::debug("disconnect: rip={}, session=<{}>, reason={}", remote, id, reason);
  }
  drop.reset();  // releases the maildrop lock
}

}  // namespace postern::net
