#include "net/session_driver.hpp"

#include "common/log.hpp"
#include "pop3/dot_encoder.hpp"
#include "store/maildir/maildir.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/dispatch.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

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
      ctl->stream->close();
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

// The maildrop path of an authenticated user: the userdb's own mail location if it has one,
// else the configured one, expanded.
result<std::string> maildrop_path(const auth::user_record& account, const session_env& env) {
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
  if (loc->kind != store::store_kind::maildir) {
    return error(errc::permanent, "mbox storage is not available yet");
  }
  return store::expand_location(*loc, {account.name, account.home});
}

}  // namespace

void session_control::stop(bool for_shutdown) noexcept {
  if (done) {
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
                                  std::string remote, std::string id) {
  auto ex = co_await asio::this_coro::executor;
  auto touch = [&] { ctl->deadline = std::chrono::steady_clock::now() + env.idle_timeout; };
  touch();
  asio::co_spawn(ex, watchdog(ctl), asio::detached);

  pop3::session engine(env.engine);
  std::unique_ptr<store::maildrop> drop;
  auth::user_record account;  // set by a successful authentication
  std::string user;           // set once the maildrop is open, for logs
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

  bool running = true;
  while (running) {
    pop3::step st = engine.next();
    switch (st) {
      case pop3::step::need_input: {
        if (!co_await flush()) {
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
        if (env.failure_delay.count() > 0) {
          // Costs the client time without blocking anyone else.
          asio::steady_timer delay(ex, env.failure_delay);
          co_await delay.async_wait(use_tuple);
        }
        engine.auth_done(vr.status == auth::verify_status::temporary
                             ? pop3::auth_status::temporary_failure
                             : pop3::auth_status::bad_credentials);
        break;
      }
      case pop3::step::open_maildrop: {
        result<std::unique_ptr<store::maildrop>> opened = error(errc::permanent, "no mail location");
        auto path = maildrop_path(account, env);
        if (!path) {
          opened = error(path.err());
        } else {
          auto open = [&] { opened = store::maildir::open(*path); };
          co_await run_blocking(*env.workers, open);
        }
        if (opened) {
          drop = std::move(opened).value();
          user = account.name;
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
          if (out.size() >= pop3::limits::stream_chunk && !co_await flush()) {
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
        if (cr) {
          committed = *cr;
          committed_ok = true;
        } else {
          log::error("commit failed: user=<{}>, session=<{}>, error={}", log::safe(user), id,
                     cr.err().message());
        }
        engine.commit_done(cr.ok());
        reason = "QUIT";
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
  ctl->stream->close();
  if (!user.empty()) {
    const auto& s = engine.stats();
    std::uint64_t left = 0, left_bytes = 0;
    if (committed_ok) {
      left = committed.left;
      left_bytes = committed.left_bytes;
    } else if (drop) {
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
