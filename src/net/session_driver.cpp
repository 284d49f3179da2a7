#include "net/session_driver.hpp"

#include "net/byte_pump.hpp"
#include "net/extensions.hpp"
#include "pop3/body_stream.hpp"

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
#include <vector>

namespace postern::net {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// The observer of the mode, or one that records nothing.
session_observer& observer_of(const session_env& env) {
  static session_observer quiet;
  return env.services.observer != nullptr ? *env.services.observer : quiet;
}

constexpr std::string_view login_timeout_reply = "-ERR Login timeout, disconnecting.\r\n";
// How long the goodbye of a login timeout may take to leave before the connection is closed.
constexpr std::chrono::seconds login_timeout_farewell{2};

// The deadline the driver may set now: `wanted`, but never past the login deadline.
std::chrono::steady_clock::time_point capped(const session_control& ctl,
                                             std::chrono::steady_clock::time_point wanted) {
  return std::min(wanted, ctl.login_deadline);
}

// Writes the login timeout's answer; the watchdog closes the stream when this takes too long.
asio::awaitable<void> say_login_timeout(std::shared_ptr<session_control> ctl) {
  std::error_code ec;
  co_await ctl->stream->write_all(asio::buffer(login_timeout_reply), ec);
  if (ctl->stream) {
    ctl->stream->close();
  }
}

asio::awaitable<void> watchdog(std::shared_ptr<session_control> ctl) {
  while (!ctl->done) {
    ctl->timer.expires_at(ctl->deadline);
    co_await ctl->timer.async_wait(use_tuple);
    if (ctl->done) {
      break;
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= ctl->deadline) {
      ctl->timed_out = true;
      ctl->login_timed_out = now >= ctl->login_deadline;
      if (ctl->login_timed_out && ctl->awaiting_input && ctl->stream) {
        // A read is pending and no write: the answer may go out beside it.
        asio::co_spawn(co_await asio::this_coro::executor, say_login_timeout(ctl), asio::detached);
        ctl->timer.expires_after(login_timeout_farewell);
        co_await ctl->timer.async_wait(use_tuple);
      }
      if (ctl->stream) {
        ctl->stream->close();
      }
      break;
    }
  }
}

// The stream buffers of this I/O thread (see stream_buffer_pool). Not inlined, so the
// thread's pool is looked up where it is used, never remembered from before a suspension.
[[gnu::noinline]] pop3::stream_buffer_pool& thread_stream_buffers() {
  thread_local pop3::stream_buffer_pool pool;
  return pool;
}

// Where this I/O thread's message reads run (see byte_pump). Not inlined, for the same reason
// as thread_stream_buffers(); a reply's byte_pump keeps the reference across its suspensions,
// which resume on the session's own I/O thread.
[[gnu::noinline]] read_placement& thread_read_placement() {
  thread_local read_placement placement;
  return placement;
}

// A session's own input buffer, for transports that cannot read into the shared one (TLS,
// stdin/stdout): made at the first read and kept.
constexpr std::size_t own_input_size = 4096;

pop3::open_status open_status_for(errc code) {
  switch (code) {
    case errc::in_use:
      return pop3::open_status::in_use;
    case errc::temporary:
    case errc::not_found:
      return pop3::open_status::temporary_failure;
    default:
      return pop3::open_status::permanent_failure;
  }
}

// The security facts of a connection that decide which logins it may offer.
struct connection_security {
  bool tls = false;
  bool secure = false;  // TLS, or a trusted path (loopback, trusted network)
  tls_transport* tls_stream = nullptr;
};

connection_security assess(const session_env& env, const connection_info& conn, transport& stream) {
  connection_security sec;
  sec.tls_stream = stream.tls();
  sec.tls = sec.tls_stream != nullptr;
  // A session on stdin/stdout that is not an IP socket is a local pipe or UNIX socket from a
  // master process: nobody on the network sees its bytes.
  bool trusted = conn.address.is_unspecified() ||
                 (env.loopback_is_secure && conn.address.is_loopback()) ||
                 std::any_of(env.trusted_networks.begin(), env.trusted_networks.end(),
                             [&](const network& n) { return contains(n, conn.address); });
  sec.secure = sec.tls || conn.client_tls || trusted;
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
  p.sasl_mechanisms = env.services.auth->mechanisms_for(ch);
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
namespace {

// One session's state, with a member coroutine per engine request. Only what lives for the
// whole session is here; what a request needs while it runs lives in that request's own
// (short-lived) coroutine frame, so an idle session keeps a small footprint.
class session_runner {
 public:
  session_runner(std::shared_ptr<session_control> ctl, const session_env& env, connection_info conn,
                 std::string id, asio::any_io_executor ex, traced_transport* traced);
  session_runner(const session_runner&) = delete;
  session_runner& operator=(const session_runner&) = delete;

  asio::awaitable<void> run();

 private:
  void touch() noexcept {
    ctl_->deadline = capped(*ctl_, std::chrono::steady_clock::now() + env_.idle_timeout);
  }
  // A handshake gets at most a minute, whatever the idle timeout.
  void handshake_deadline() noexcept {
    ctl_->deadline = capped(
        *ctl_, std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(
                                                      env_.idle_timeout, std::chrono::seconds(60)));
  }
  asio::awaitable<bool> flush();
  // Sends the held replies (see held_), if any; false when the write failed.
  asio::awaitable<bool> send_held();
  // Credential checks: an attempt from a penalised address first waits its penalty
  // (net/auth_penalty.hpp); a failure is answered at received + penalty + failure_delay,
  // however long the check took, so that its timing does not tell whether the user exists.
  asio::awaitable<void> begin_attempt(bool pay_penalty);
  asio::awaitable<void> answer_failure(bool count);
  void note_success();

  asio::awaitable<void> read_input();
  asio::awaitable<void> authenticate();
  asio::awaitable<void> start_tls();
  asio::awaitable<void> sasl_step();
  asio::awaitable<void> open_maildrop();
  asio::awaitable<void> retrieve();
  asio::awaitable<void> commit();
  asio::awaitable<void> xlist();
  asio::awaitable<void> xmit();
  // step::yield: lets the other sessions of this thread run before the next batch of
  // pipelined commands, sending the replies first once they are large.
  asio::awaitable<void> yield_turn();
  void finish();
  // For the observer: who this session is (the user once logged in).
  session_facts facts() const noexcept { return {id_, remote_, user_}; }
  // On a worker thread: opens (and decorates) the maildrop of account_.
  void open_blocking(open_outcome& out) { out = services_.maildrops->open(account_, id_); }
  // The authenticator logs its own failures (fork mode's privileged side), or the observer.
  void auth_failed(std::string_view method, std::string_view user, std::string_view reason) {
    if (!services_.auth->logs_failures()) {
      observer_.auth_failed(facts(), method, user, reason);
    }
  }
  // On the worker, after a credential check: adopts the account on success and, when open_now,
  // opens the maildrop into prefetched_ at once.
  void after_verify(auth::verify_result& vr, const std::string& login, bool open_now);

  std::shared_ptr<session_control> ctl_;
  const session_env& env_;
  const session_services& services_;
  session_observer& observer_;
  connection_info conn_;
  const std::string id_;
  const std::string& remote_;
  asio::any_io_executor ex_;
  traced_transport* traced_;
  connection_security sec_;
  pop3::session engine_;
  std::unique_ptr<auth::sasl_exchange> exchange_;
  std::unique_ptr<store::maildrop> drop_;
  store::decorated_maildrop* decorated_ = nullptr;  // drop_, when decorated (note_top, logs)
  auth::user_record account_;                       // set by a successful authentication
  std::string user_;                                // set once the maildrop is open, for logs
  const char* reason_ = "disconnected";
  std::chrono::steady_clock::time_point failure_at_{};  // see begin_attempt
  bool penalised_ = false;  // this address had a penalty or failed here: a success resets it
  store::commit_stats committed_;
  bool committed_ok_ = false;
  std::unique_ptr<char[]> own_input_;  // see own_input_size
  std::error_code ec_;
  bool running_ = true;
  std::unique_ptr<open_outcome> prefetched_;  // set by after_verify, taken by open_maildrop
  // Whole replies of pipelined RETR/TOP not sent yet: while the client's next command is
  // already buffered, small replies gather here and go out in one write. Held only between
  // steps of the engine, never while the session waits for anything.
  std::optional<pop3::stream_buffer_pool::lease> held_;
};

// The engine's options for this connection. Not a coroutine, so its temporaries take no room
// in any session frame.
pop3::session_options options_for(const session_env& env, const connection_info& conn,
                                  const connection_security& sec, transport& stream,
                                  pop3::line_observer* lines) {
  pop3::session_options opts = env.engine;
  auto policy = policy_for(env, sec);
  opts.user_pass_allowed = policy.user_pass_allowed;
  opts.sasl_mechanisms = std::move(policy.sasl_mechanisms);
  opts.lines = lines;
  opts.stls_offered = !sec.tls && env.stls && env.tls != nullptr && stream.tcp_socket() != nullptr;
  opts.tls_required = !sec.tls && !conn.client_tls && env.tls_required;
  if (!conn.resume) {
    opts.apop_timestamp = env.services.auth->apop_timestamp();
  }
  if (conn.resume) {
    opts.resume_user = conn.resume->account.name;
    opts.resume_method = conn.resume->method;
  }
  return opts;
}

session_runner::session_runner(std::shared_ptr<session_control> ctl, const session_env& env,
                               connection_info conn, std::string id, asio::any_io_executor ex,
                               traced_transport* traced)
    : ctl_(std::move(ctl)),
      env_(env),
      services_(env.services),
      observer_(observer_of(env)),
      conn_(std::move(conn)),
      id_(std::move(id)),
      remote_(conn_.remote),
      ex_(std::move(ex)),
      traced_(traced),
      sec_(assess(env_, conn_, *ctl_->stream)),
      engine_(options_for(env_, conn_, sec_, *ctl_->stream, traced)) {
  if (conn_.resume) {
    account_ = std::move(conn_.resume->account);
    engine_.feed(conn_.resume->input);
    conn_.resume->input.clear();
    conn_.resume->input.shrink_to_fit();
  }
}

asio::awaitable<bool> session_runner::send_held() {
  if (!held_) {
    co_return true;
  }
  // Moved out first: the buffer goes back to the pool however the write ends.
  pop3::stream_buffer_pool::lease lease = std::move(*held_);
  held_.reset();
  pop3::stream_buffer& sb = lease.get();
  // The engine's replies follow the held ones; they join the same write when they fit.
  if (!engine_.output().empty() && sb.append(engine_.output())) {
    engine_.output().clear();
  }
  touch();
  co_await ctl_->stream->write_all(asio::buffer(sb.output().data(), sb.output().size()), ec_);
  sb.clear_output();
  co_return !ec_;
}

asio::awaitable<bool> session_runner::flush() {
  if (const bool sent = co_await send_held(); !sent) {
    co_return false;
  }
  if (engine_.output().empty()) {
    co_return true;
  }
  touch();
  co_await ctl_->stream->write_all(asio::buffer(engine_.output()), ec_);
  engine_.output().clear();
  // A long listing leaves a big buffer behind: an idle session keeps only a small one.
  if (engine_.output().capacity() > 4096) {
    engine_.output().shrink_to_fit();
  }
  co_return !ec_;
}

// Called when a credential check starts (the command has just been read). Waiting costs the
// client time without blocking anyone else.
asio::awaitable<void> session_runner::begin_attempt(bool pay_penalty) {
  const auto received = std::chrono::steady_clock::now();
  std::chrono::milliseconds penalty{0};
  if (pay_penalty && env_.penalty != nullptr) {
    penalty = env_.penalty->delay_for(conn_.address, received);
  }
  failure_at_ = received + penalty + env_.failure_delay;
  if (penalty.count() > 0) {
    penalised_ = true;
    observer_.auth_penalised(facts(), penalty);
    asio::steady_timer delay(ex_, received + penalty);
    co_await delay.async_wait(use_tuple);
  }
}

// Sends nothing itself: returns when the failure may be answered. `count`: bad credentials,
// which raise the address's penalty (a temporary failure or a refused mechanism does not).
asio::awaitable<void> session_runner::answer_failure(bool count) {
  const auto now = std::chrono::steady_clock::now();
  if (count && env_.penalty != nullptr) {
    env_.penalty->record_failure(conn_.address, now);
    penalised_ = true;
  }
  if (now < failure_at_) {
    asio::steady_timer delay(ex_, failure_at_);
    co_await delay.async_wait(use_tuple);
  } else if (env_.failure_delay.count() > 0) {
    observer_.auth_check_slow(
        facts(), std::chrono::duration_cast<std::chrono::milliseconds>(now - failure_at_));
  }
}

void session_runner::note_success() {
  if (penalised_ && env_.penalty != nullptr) {
    env_.penalty->record_success(conn_.address);
    penalised_ = false;
  }
}

// Note: co_await results are bound to a named const before they are tested. GCC 12.2
// miscompiles `if (!co_await f())` in Asio coroutines (a garbage frame, SIGILL/SIGSEGV).
asio::awaitable<void> session_runner::run() {
  while (running_) {
    const pop3::step next = engine_.next();
    // Held replies wait only for the next RETR/TOP; every other request, which may take a
    // while or need the client's answer, sends them first (need_input and close flush), and
    // so does a yield: the buffer is never held while other sessions run.
    if (held_ && next != pop3::step::retrieve && next != pop3::step::need_input &&
        next != pop3::step::close) {
      if (const bool sent = co_await send_held(); !sent) {
        running_ = false;
        break;
      }
    }
    switch (next) {
      case pop3::step::need_input:
        co_await read_input();
        break;
      case pop3::step::authenticate:
        co_await authenticate();
        break;
      case pop3::step::start_tls:
        co_await start_tls();
        break;
      case pop3::step::sasl:
        co_await sasl_step();
        break;
      case pop3::step::open_maildrop:
        co_await open_maildrop();
        break;
      case pop3::step::retrieve:
        co_await retrieve();
        break;
      case pop3::step::commit:
        co_await commit();
        break;
      case pop3::step::xlist:
        co_await xlist();
        break;
      case pop3::step::xmit:
        co_await xmit();
        break;
      case pop3::step::yield:
        co_await yield_turn();
        break;
      case pop3::step::close:
        co_await flush();
        if (engine_.quit_received() && engine_.state() != pop3::session_state::update) {
          reason_ = "QUIT";
        } else if (engine_.too_many_failed_logins()) {
          reason_ = "too many failed logins";
          if (!services_.auth->logs_failures()) {
            observer_.too_many_failed_logins(facts());
          }
        }
        running_ = false;
        break;
    }
  }
  finish();
}

asio::awaitable<void> session_runner::read_input() {
  if (const bool flushed = co_await flush(); !flushed) {
    running_ = false;
    co_return;
  }
  touch();
  if (ctl_->stream->reads_shared()) {
    // No buffer is held while the client is idle; the bytes are copied into the engine
    // before the next suspension.
    ctl_->awaiting_input = true;
    const std::string_view got = co_await ctl_->stream->read_shared(ec_);
    ctl_->awaiting_input = false;
    if (ctl_->login_timed_out) {  // the watchdog answers and closes; nothing more is read
      running_ = false;
      co_return;
    }
    if (!got.empty()) {
      engine_.feed(got);
    } else {
      engine_.feed_eof();
    }
    co_return;
  }
  if (!own_input_) {
    own_input_ = std::make_unique<char[]>(own_input_size);
  }
  ctl_->awaiting_input = true;
  const std::size_t n =
      co_await ctl_->stream->read_some(asio::buffer(own_input_.get(), own_input_size), ec_);
  ctl_->awaiting_input = false;
  if (ctl_->login_timed_out) {
    running_ = false;
    co_return;
  }
  if (n > 0) {
    engine_.feed(std::string_view(own_input_.get(), n));
  } else {
    engine_.feed_eof();
  }
}

asio::awaitable<void> session_runner::authenticate() {
  std::string login(engine_.login_user());
  secret_string password = engine_.take_password();
  auth::verify_result vr;
  co_await begin_attempt(true);
  const bool apop = engine_.login_method() == "APOP";
  std::string digest(engine_.apop_digest());
  std::string stamp(engine_.apop_timestamp());
  // The engine asks to open the maildrop right after a successful login: doing it on the
  // same worker saves a second trip through the worker pool.
  const bool open_now = services_.handoff == nullptr;
  auto verify = [&] {
    vr = apop ? services_.auth->verify_apop(login, stamp, digest)
              : services_.auth->verify_password(login, password);
    after_verify(vr, login, open_now);
  };
  co_await run_blocking(*env_.workers, verify);
  password.wipe();
  if (vr.status == auth::verify_status::ok) {  // account_ set by after_verify
    note_success();
    engine_.auth_done(pop3::auth_status::ok);
    co_return;
  }
  auth_failed(engine_.login_method(), login, vr.reason);
  co_await answer_failure(vr.status == auth::verify_status::bad_credentials);
  engine_.auth_done(vr.status == auth::verify_status::temporary
                        ? pop3::auth_status::temporary_failure
                        : pop3::auth_status::bad_credentials);
}

asio::awaitable<void> session_runner::start_tls() {
  if (const bool flushed = co_await flush(); !flushed) {
    running_ = false;
    co_return;
  }
  asio::ip::tcp::socket* tcp = ctl_->stream->tcp_socket();
  if (tcp == nullptr || env_.tls == nullptr) {
    engine_.tls_started(false, {});
    co_return;
  }
  auto tls_owner = std::make_unique<tls_transport>(std::move(*tcp), env_.tls->current());
  auto* tls = tls_owner.get();
  if (traced_ != nullptr) {
    traced_->replace_inner(std::move(tls_owner));
  } else {
    ctl_->stream = std::move(tls_owner);
  }
  handshake_deadline();
  std::string why = co_await tls->handshake();
  touch();
  if (!why.empty()) {
    observer_.tls_failed(facts(), ctl_->timed_out ? std::string("timeout") : why);
    engine_.tls_started(false, {});
    co_return;
  }
  observer_.tls_established(facts(), true, tls->description());
  sec_ = assess(env_, conn_, *ctl_->stream);
  engine_.tls_started(true, policy_for(env_, sec_));
}

asio::awaitable<void> session_runner::sasl_step() {
  std::string mech(engine_.sasl_mechanism());
  co_await begin_attempt(engine_.sasl_is_start());
  if (engine_.sasl_is_start()) {
    exchange_.reset();
    auto started = services_.auth->start_sasl(mech, channel_for(env_, sec_));
    if (!started) {
      observer_.auth_failed(facts(), mech, "", started.err().message());
      co_await answer_failure(false);
      engine_.sasl_done(pop3::auth_status::bad_credentials);
      co_return;
    }
    exchange_ = std::move(started).value();
  }
  auth::sasl_step r;
  secret_string response(engine_.sasl_response());  // PLAIN/LOGIN carry passwords
  auto step_fn = [&] { r = exchange_->step(response.view()); };
  co_await run_blocking(*env_.workers, step_fn);
  response.wipe();
  switch (r.status) {
    case auth::sasl_status::challenge:
      engine_.sasl_challenge(r.server_data_b64);
      break;
    case auth::sasl_status::success:
      account_ = std::move(r.user);
      if (account_.name.empty()) {
        account_.name = std::string(exchange_->authenticated_user());
      }
      exchange_.reset();
      note_success();
      engine_.sasl_done(pop3::auth_status::ok, r.server_data_b64);
      break;
    case auth::sasl_status::failure:
    case auth::sasl_status::temporary_failure: {
      std::string who(exchange_->authenticated_user());
      exchange_.reset();
      auth_failed(mech, who, r.reason);
      co_await answer_failure(r.status == auth::sasl_status::failure);
      engine_.sasl_done(r.status == auth::sasl_status::temporary_failure
                            ? pop3::auth_status::temporary_failure
                            : pop3::auth_status::bad_credentials);
      break;
    }
  }
}

void session_runner::after_verify(auth::verify_result& vr, const std::string& login,
                                  bool open_now) {
  if (vr.status != auth::verify_status::ok) {
    return;
  }
  account_ = std::move(vr.user);
  if (account_.name.empty()) {
    account_.name = login;
  }
  if (open_now) {
    prefetched_ = std::make_unique<open_outcome>();
    open_blocking(*prefetched_);
  }
}

asio::awaitable<void> session_runner::open_maildrop() {
  if (services_.handoff != nullptr) {
    if (const bool flushed = co_await flush(); !flushed) {
      running_ = false;
      co_return;
    }
    ctl_->login_deadline = std::chrono::steady_clock::time_point::max();
    if (traced_ != nullptr) {
      // The process that takes over traces the rest of the session; what this one would
      // relay it cannot follow (it reads no more client lines through the engine).
      std::unique_ptr<transport> inner = traced_->replace_inner(nullptr);
      ctl_->stream = std::move(inner);  // the wrapper goes, writing what it holds
      traced_ = nullptr;
    }
    handoff h{account_, engine_.login_method(), engine_.take_unprocessed_input(), *ctl_, id_};
    co_await services_.handoff->take_over(h);
    reason_ = "handoff";
    running_ = false;
    co_return;
  }
  // Usually opened already, on the worker that checked the password (see after_verify).
  std::unique_ptr<open_outcome> outcome = std::move(prefetched_);
  if (!outcome) {
    outcome = std::make_unique<open_outcome>();
    auto open = [&] { open_blocking(*outcome); };
    co_await run_blocking(*env_.workers, open);
  }
  result<std::unique_ptr<store::maildrop>>& opened = outcome->opened;
  if (outcome->delayed) {
    engine_.open_done(pop3::open_status::login_delay);
    observer_.login_refused(facts(), login_refusal::login_delay, account_.name, {});
    co_return;
  }
  if (opened) {
    ctl_->login_deadline = std::chrono::steady_clock::time_point::max();
    drop_ = std::move(opened).value();
    decorated_ = outcome->decorated;
    user_ = account_.name;
    if (traced_ != nullptr) {
      traced_->set_user(account_.name);
    }
    engine_.open_done(pop3::open_status::ok, drop_->messages());
    observer_.logged_in(facts(), engine_.login_method(), drop_->messages().size());
    co_return;
  }
  const auto& err = opened.err();
  if (outcome->wrong_owner) {
    // RFC 3206: [SYS/PERM], a problem of this server's setup that retrying cannot fix.
    engine_.open_done(pop3::open_status::permanent_failure);
    observer_.login_refused(facts(), login_refusal::mail_owner, account_.name, err.message());
    co_return;
  }
  engine_.open_done(open_status_for(err.code()));
  observer_.login_refused(
      facts(), err.code() == errc::in_use ? login_refusal::in_use : login_refusal::open_failed,
      account_.name, err.code() == errc::in_use ? std::string() : err.message());
}

asio::awaitable<void> session_runner::retrieve() {
  const std::size_t index = engine_.retrieve_index();
  result<std::unique_ptr<store::message_reader>> reader = error(errc::temporary, "not opened");
  auto open = [&] { reader = drop_->open_message(index, !engine_.retrieve_is_top()); };
  if (thread_read_placement().slow) {  // see byte_pump
    co_await run_blocking(*env_.workers, open);
  } else {
    open();
  }
  if (!reader) {
    observer_.mail_failed(facts(), mail_failure::open_message, index + 1, reader.err().message());
    engine_.retrieve_started(false, reader.err().code());
    co_return;
  }
  if (decorated_ != nullptr && engine_.retrieve_is_top()) {
    decorated_->note_top(index);
  }
  engine_.retrieve_started(true);
  // The status line, the body and the terminator of a small message go out in one
  // write, together with the replies held before it (pipelining); a large one streams in
  // blocks of stream_buffer::batch_size().
  pop3::stream_buffer_pool::lease lease =
      held_ ? std::move(*held_) : thread_stream_buffers().acquire();
  held_.reset();
  pop3::stream_buffer& sb = lease.get();
  if (sb.append(engine_.output())) {
    engine_.output().clear();
  } else {
    if (!sb.output().empty()) {  // held replies first: they precede the engine's
      touch();
      co_await ctl_->stream->write_all(asio::buffer(sb.output().data(), sb.output().size()), ec_);
      sb.clear_output();
      if (ec_) {
        running_ = false;
        co_return;
      }
    }
    if (sb.append(engine_.output())) {
      engine_.output().clear();
    } else if (const bool flushed = co_await flush(); !flushed) {
      running_ = false;
      co_return;
    }
  }
  // A whole reply that leaves room in the buffer waits for the next pipelined command's,
  // when that command is already here.
  byte_pump pump(*ctl_->stream, sb, *env_.workers, thread_read_placement());
  const byte_pump::outcome sent = co_await pump.run(
      **reader, engine_.retrieve_top_lines(), engine_.has_buffered_line(), [this] { touch(); });
  switch (sent) {
    case byte_pump::outcome::held:
      held_.emplace(std::move(lease));
      break;
    case byte_pump::outcome::sent:
      break;
    case byte_pump::outcome::read_failed:
      observer_.mail_failed(facts(), mail_failure::read_message, index + 1,
                            pump.read_error()->message());
      [[fallthrough]];
    case byte_pump::outcome::write_failed:
      running_ = false;  // a partial reply cannot be taken back: drop the connection
      co_return;
  }
  engine_.retrieve_done(pump.body_octets());
}

asio::awaitable<void> session_runner::commit() {
  result<store::commit_stats> cr = error(errc::temporary, "not committed");
  auto commit = [&] { cr = drop_->commit(engine_.deletion_marks()); };
  co_await run_blocking(*env_.workers, commit);
  if (decorated_ != nullptr && decorated_->stamp_error()) {
    observer_.mail_failed(facts(), mail_failure::expire_stamps, 0,
                          decorated_->stamp_error()->message());
  }
  if (cr) {
    committed_ = *cr;
    committed_ok_ = true;
    if (decorated_ != nullptr && decorated_->expired_deleted() > 0) {
      observer_.expired(facts(), decorated_->expired_deleted());
    }
  } else {
    observer_.mail_failed(facts(), mail_failure::commit, 0, cr.err().message());
  }
  // Release the maildrop lock before the client sees the reply, so that it can log in
  // again at once.
  if (!committed_ok_) {
    for (const auto& m : drop_->messages()) {
      ++committed_.left;
      committed_.left_bytes += m.size;
    }
  }
  decorated_ = nullptr;
  drop_.reset();
  engine_.commit_done(cr.ok());
  reason_ = "QUIT";
}

asio::awaitable<void> session_runner::xlist() {
  std::vector<std::string> values;
  bool ok = true;
  std::string header(engine_.xlist_header());
  auto collect = [&] {
    for (std::size_t index : engine_.xlist_messages()) {
      auto reader = drop_->open_message(index, false);
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
  co_await run_blocking(*env_.workers, collect);
  engine_.xlist_done(ok, values);
}

asio::awaitable<void> session_runner::xmit() {
  result<void> sent = error(errc::temporary, "not sent");
  std::string message(engine_.xmit_message());
  auto submit = [&] { sent = submit_message(env_.xmit_command, message); };
  co_await run_blocking(*env_.workers, submit);
  if (sent) {
    observer_.xmit_sent(facts(), message.size());
  } else {
    observer_.mail_failed(facts(), mail_failure::xmit, 0, sent.err().message());
  }
  engine_.xmit_done(sent.ok());
}

asio::awaitable<void> session_runner::yield_turn() {
  // Held RETR replies were sent before this step (see run()). Below the bound the replies
  // wait for the next batch's, so that a pipelining client still gets them in few writes; a
  // client that reads nothing then stops the session at the write, not its memory.
  if (engine_.output().size() >= pop3::limits::max_output_per_turn) {
    if (const bool flushed = co_await flush(); !flushed) {
      running_ = false;
      co_return;
    }
  }
  co_await asio::post(ex_, asio::use_awaitable);
}

void session_runner::finish() {
  held_.reset();  // unsent replies of a session that ends on an error
  ctl_->done = true;
  ctl_->timer.cancel();
  if (ctl_->login_timed_out) {
    reason_ = "login timeout";
  } else if (ctl_->timed_out) {
    reason_ = "timeout";
  } else if (ctl_->shutting_down) {
    reason_ = "shutdown";
  }
  std::uint64_t left = 0, left_bytes = 0;
  if (!drop_) {
    left = committed_.left;
    left_bytes = committed_.left_bytes;
  } else {
    for (const auto& m : drop_->messages()) {
      ++left;
      left_bytes += m.size;
    }
  }
  // A client that sees the close may connect and log in again at once: the maildrop lock and
  // the connection's place in the limits go first.
  drop_.reset();
  ctl_->counted.reset();
  if (ctl_->stream) {  // a handoff may have taken the transport
    ctl_->stream->close();
  }
  if (!user_.empty()) {
    observer_.logged_out(
        facts(), logout_facts{reason_, engine_.stats(), committed_ok_ ? committed_.deleted : 0,
                              committed_ok_ ? committed_.deleted_bytes : 0, left, left_bytes});
  } else {
    observer_.disconnected(facts(), reason_);
  }
}

}  // namespace

asio::awaitable<void> run_session(std::shared_ptr<session_control> ctl, const session_env& env,
                                  connection_info conn, std::string id) {
  auto ex = co_await asio::this_coro::executor;
  auto start = std::chrono::steady_clock::now();
  if (!conn.resume && env.login_timeout.count() > 0) {
    ctl->login_deadline = start + env.login_timeout;
  }
  ctl->deadline = capped(*ctl, start + env.idle_timeout);
  asio::co_spawn(ex, watchdog(ctl), asio::detached);

  session_observer& observer = observer_of(env);
  tls_transport* tls = conn.implicit_tls && !conn.resume ? ctl->stream->tls() : nullptr;
  if (tls != nullptr) {
    // A handshake gets at most a minute, whatever the idle timeout.
    ctl->deadline = capped(
        *ctl, std::chrono::steady_clock::now() +
                  std::min<std::chrono::milliseconds>(env.idle_timeout, std::chrono::seconds(60)));
    std::string why = co_await tls->handshake();
    ctl->deadline = capped(*ctl, std::chrono::steady_clock::now() + env.idle_timeout);
    if (!why.empty()) {
      observer.tls_failed({id, conn.remote, {}}, ctl->timed_out ? std::string("timeout") : why);
      ctl->done = true;
      ctl->timer.cancel();
      ctl->stream->close();
      co_return;
    }
    observer.tls_established({id, conn.remote, {}}, false, tls->description());
  }
  traced_transport* traced = observer.attach_trace(*ctl, id, conn.resume.has_value());
  // The runner lives on the heap: this frame stays small however the runner grows.
  auto runner = std::make_unique<session_runner>(std::move(ctl), env, std::move(conn),
                                                 std::move(id), std::move(ex), traced);
  co_await runner->run();
}

}  // namespace postern::net
