#include "server/privsep.hpp"

#include "auth/apop.hpp"
#include "auth/system_users.hpp"
#include "common/log.hpp"
#include "net/tls.hpp"
#include "net/transports.hpp"
#include "store/location.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/signal_set.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <openssl/crypto.h>

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

namespace postern::server::privsep {
namespace {

constexpr std::uint8_t wire_version = 1;
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::size_t max_exporter = 64;
constexpr std::size_t max_unique = 64;
constexpr std::size_t max_mech = 32;
constexpr std::size_t max_timestamp = 300;
constexpr std::size_t max_apop_digest = 32;

const std::array<message_spec, 10> specs{{
    {msg_type::welcome, 1, {max_timestamp}},
    {msg_type::mechanisms, 4, {1, 1, max_exporter, max_unique}},
    {msg_type::password, 2, {max_user, max_password}},
    {msg_type::apop, 2, {max_user, max_apop_digest}},
    {msg_type::sasl_start, 6, {max_mech, 1, 1, max_exporter, max_unique, auth::max_sasl_response}},
    {msg_type::sasl_step, 1, {auth::max_sasl_response}},
    {msg_type::handoff, 2, {1, max_input}},
    {msg_type::mechanisms_reply, 1, {1024}},
    {msg_type::auth_reply, 2, {1, max_user}},
    {msg_type::sasl_reply, 3, {1, max_sasl_data, max_user}},
}};

void put_u32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

std::uint32_t get_u32(std::string_view s, std::size_t at) {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + i]));
  };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

void wipe(std::string& s) {
  if (!s.empty()) {
    OPENSSL_cleanse(s.data(), s.size());
  }
  s.clear();
}

bool is_flag(std::string_view f) { return f == "0" || f == "1"; }

// The channel fields of mechanisms / sasl_start, validated. EXTERNAL is never possible.
std::optional<auth::sasl_channel> channel_from(const std::vector<std::string>& f, std::size_t at) {
  if (!is_flag(f[at]) || !is_flag(f[at + 1])) {
    return std::nullopt;
  }
  const std::string& exporter = f[at + 2];
  if (!exporter.empty() && exporter.size() != 32) {
    return std::nullopt;
  }
  auth::sasl_channel ch;
  ch.secure = f[at] == "1";
  ch.plaintext_allowed = f[at + 1] == "1";
  ch.tls_exporter = exporter;
  ch.tls_unique = f[at + 3];
  ch.client_cert_verified = false;
  return ch;
}

void channel_fields(const auth::sasl_channel& ch, std::vector<std::string>& out) {
  out.push_back(ch.secure ? "1" : "0");
  out.push_back(ch.plaintext_allowed ? "1" : "0");
  out.push_back(ch.tls_exporter.size() == 32 ? ch.tls_exporter : std::string());
  out.push_back(ch.tls_unique.size() <= max_unique ? ch.tls_unique : std::string());
}

char status_char(auth::verify_status s) {
  switch (s) {
    case auth::verify_status::ok:
      return 'O';
    case auth::verify_status::temporary:
      return 'T';
    case auth::verify_status::bad_credentials:
      break;
  }
  return 'B';
}

// ---------------------------------------------------------------------------------------------
// P's side: the authenticator the session driver calls (net::authenticator)

class privileged_link;

class proxy_exchange final : public auth::sasl_exchange {
 public:
  proxy_exchange(privileged_link& link, std::string mech, auth::sasl_channel ch)
      : link_(link), mech_(std::move(mech)), ch_(std::move(ch)) {}
  auth::sasl_step step(std::string_view client_b64) override;
  std::string_view authenticated_user() const override { return user_; }

 private:
  privileged_link& link_;
  std::string mech_;
  auth::sasl_channel ch_;
  bool started_ = false;
  bool finished_ = false;
  std::string user_;
};

class privileged_link final : public net::authenticator {
 public:
  explicit privileged_link(int fd) : fd_(fd) {}

  // Waits for S's welcome. False if S is gone.
  bool read_welcome() {
    auto m = recv_message(fd_, -1);
    if (!m || m->type != msg_type::welcome) {
      broken_ = true;
      return false;
    }
    timestamp_ = m->fields[0];
    return true;
  }

  std::string apop_timestamp() override { return timestamp_; }

  std::vector<std::string> mechanisms_for(const auth::sasl_channel& ch) override {
    std::vector<std::string> f;
    channel_fields(ch, f);
    auto r = call(message(msg_type::mechanisms, std::move(f)), msg_type::mechanisms_reply);
    std::vector<std::string> out;
    if (!r) {
      return out;
    }
    std::string_view list = r->fields[0];
    while (!list.empty()) {
      auto sp = list.find(' ');
      auto word = list.substr(0, sp);
      if (!word.empty()) {
        out.emplace_back(word);
      }
      list = sp == std::string_view::npos ? std::string_view() : list.substr(sp + 1);
    }
    return out;
  }

  // Every attempt goes to S, which checks the name, logs the failure and delays it. A name too
  // long for the wire is sent empty: S refuses it like any other name not allowed (and an
  // overlong APOP digest as malformed).
  auth::verify_result verify_password(std::string_view user,
                                      const secret_string& password) override {
    return auth_call(message(msg_type::password, {wire_user(user), std::string(password.view())}),
                     user);
  }

  // S chose the timestamp of P's greeting and checks against its own copy.
  auth::verify_result verify_apop(std::string_view user, std::string_view /*timestamp*/,
                                  std::string_view digest) override {
    std::string wire_digest(digest.size() <= max_apop_digest ? digest : std::string_view());
    return auth_call(message(msg_type::apop, {wire_user(user), std::move(wire_digest)}), user);
  }

  result<std::unique_ptr<auth::sasl_exchange>> start_sasl(std::string_view mechanism,
                                                          const auth::sasl_channel& ch) override {
    return std::unique_ptr<auth::sasl_exchange>(
        std::make_unique<proxy_exchange>(*this, std::string(mechanism), ch));
  }

  // S logs every failure (once, on the privileged side).
  bool logs_failures() const noexcept override { return true; }

  // One request and its reply of type `expected`. Thread-safe; blocks.
  result<message> call(const message& req, msg_type expected) {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) {
      return error(errc::temporary, "privileged process gone");
    }
    if (auto r = send_message(fd_, req); !r) {
      broken_ = true;
      return std::move(r).err();
    }
    auto rep = recv_message(fd_, -1);
    if (!rep || rep->type != expected) {
      broken_ = true;
      return error(errc::temporary, "privileged process gone");
    }
    return rep;
  }

  result<void> send_handoff(std::string_view mode, std::string input) {
    std::lock_guard<std::mutex> lock(mu_);
    return send_message(fd_, message(msg_type::handoff, {std::string(mode), std::move(input)}));
  }

 private:
  auth::verify_result auth_call(const message& req, std::string_view user) {
    auth::verify_result vr;
    auto rep = call(req, msg_type::auth_reply);
    if (!rep) {
      vr.status = auth::verify_status::temporary;
      vr.reason = rep.err().message();
      return vr;
    }
    const std::string& st = rep->fields[0];
    vr.status = st == "O"   ? auth::verify_status::ok
                : st == "T" ? auth::verify_status::temporary
                            : auth::verify_status::bad_credentials;
    vr.reason = "refused by the privileged process";
    if (vr.status == auth::verify_status::ok) {
      vr.user.name = rep->fields[1].empty() ? std::string(user) : rep->fields[1];
    }
    return vr;
  }

  static std::string wire_user(std::string_view user) {
    return user.size() <= max_user ? std::string(user) : std::string();
  }

  int fd_;
  std::mutex mu_;
  bool broken_ = false;
  std::string timestamp_;
};

auth::sasl_step proxy_exchange::step(std::string_view client_b64) {
  auth::sasl_step out;
  if (finished_) {
    out.reason = "exchange already finished";
    return out;
  }
  result<message> rep = error(errc::temporary, "");
  if (!started_) {
    started_ = true;
    std::vector<std::string> f{mech_};
    channel_fields(ch_, f);
    f.emplace_back(client_b64);
    rep = link_.call(message(msg_type::sasl_start, std::move(f)), msg_type::sasl_reply);
  } else {
    rep = link_.call(message(msg_type::sasl_step, {std::string(client_b64)}), msg_type::sasl_reply);
  }
  if (!rep) {
    finished_ = true;
    out.status = auth::sasl_status::temporary_failure;
    out.reason = rep.err().message();
    return out;
  }
  const std::string& st = rep->fields[0];
  user_ = rep->fields[2];
  out.server_data_b64 = rep->fields[1];
  if (st == "C") {
    out.status = auth::sasl_status::challenge;
    return out;
  }
  finished_ = true;
  if (st == "O") {
    out.status = auth::sasl_status::success;
    out.user.name = user_;
  } else {
    out.status = st == "T" ? auth::sasl_status::temporary_failure : auth::sasl_status::failure;
    out.reason = "refused by the privileged process";
  }
  return out;
}

// Moves bytes both ways between the client's TLS transport and S's plaintext socket until
// either side ends, then closes both.
asio::awaitable<void> relay(std::unique_ptr<net::transport> client, int fd) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = co_await asio::this_coro::executor;
  asio::posix::stream_descriptor peer(ex, fd);
  auto up = [&]() -> asio::awaitable<void> {
    std::vector<char> buf(16384);
    for (;;) {
      std::error_code ec;
      std::size_t n = co_await client->read_some(asio::buffer(buf), ec);
      if (n == 0) {
        break;
      }
      auto [wec, wn] = co_await asio::async_write(peer, asio::buffer(buf.data(), n), use_tuple);
      (void)wn;
      if (wec) {
        break;
      }
    }
    ::shutdown(fd, SHUT_WR);  // S's session sees the end of input
  };
  auto down = [&]() -> asio::awaitable<void> {
    std::vector<char> buf(16384);
    for (;;) {
      auto [ec, n] = co_await peer.async_read_some(asio::buffer(buf), use_tuple);
      if (n == 0) {
        break;
      }
      std::error_code wec;
      co_await client->write_all(asio::buffer(buf.data(), n), wec);
      if (wec) {
        break;
      }
      if (ec) {
        break;
      }
    }
    client->close();  // close_notify; the read in `up` ends
  };
  co_await (up() && down());
  std::error_code ignored;
  peer.close(ignored);
}

// ---------------------------------------------------------------------------------------------
// P: the pre-auth process

// A login ends P's session: the client goes to the session process, through S's relay (TLS:
// P keeps the TLS state and relays) or directly (plain: S takes the socket once P is gone).
class preauth_handoff final : public net::login_handoff {
 public:
  preauth_handoff(privileged_link& link, int relay_fd) : link_(link), relay_fd_(relay_fd) {}
  asio::awaitable<void> take_over(net::handoff& h) override {
    auto stream = std::move(h.control.stream);
    if (stream->is_tls()) {
      if (!link_.send_handoff("R", std::move(h.input))) {
        co_return;
      }
      co_await relay(std::move(stream), relay_fd_);
      co_return;
    }
    // Plain: the transport is destroyed without close(), so the socket is closed here but
    // never shut down.
    (void)link_.send_handoff("P", std::move(h.input));
    stream.reset();
  }

 private:
  privileged_link& link_;
  int relay_fd_;
};

[[noreturn]] void run_pre_auth(const supervisor_params& p, client& c, int ctl_fd, int relay_fd,
                               const std::string& id) {
  // Nothing of S's past may be inherited: signals back to their defaults, and the master's
  // count is S's to free (client::slot).
  c.slot.reset();
  (void)std::signal(SIGTERM, SIG_DFL);
  (void)std::signal(SIGINT, SIG_DFL);
  (void)std::signal(SIGHUP, SIG_DFL);
  (void)std::signal(SIGPIPE, SIG_IGN);
  // The penalty table is S's to keep: this process must not be able to clear it.
  if (p.st->penalty != nullptr) {
    p.st->penalty->detach();
  }
  if (auto r = become(p.login, p.login_chroot); !r) {
    log::error("pre-auth process: cannot drop privileges: {}", r.err().message());
    _exit(1);
  }
  // No RLIMIT_FSIZE: stderr may be a log file. The chroot leaves no file to open anyway.
  rlimit zero{0, 0};
  log::info("pre-auth process: pid={}, user=<{}>, uid={}, chroot={}, rip={}, session=<{}>",
            getpid(), p.login.name, p.login.uid, p.login_chroot, c.remote, id);

  privileged_link link(ctl_fd);
  if (!link.read_welcome()) {
    _exit(1);
  }
  asio::thread_pool workers(1);
  setrlimit(RLIMIT_NPROC, &zero);  // the worker thread exists; no more processes or threads

  preauth_handoff handoff(link, relay_fd);
  net::session_env env = p.st->env;
  env.services.auth = &link;
  env.services.maildrops = nullptr;
  env.services.handoff = &handoff;
  env.failure_delay = std::chrono::milliseconds(0);  // S delays failures (P could skip it)
  env.penalty = nullptr;                             // and applies the penalty
  env.workers = &workers;

  asio::io_context ctx{1};
  auto stream =
      c.is_tcp ? net::make_transport(ctx.get_executor(), std::move(c.in), c.v6, c.implicit_tls,
                                     env.tls.get())
               : net::make_stdio_transport(ctx.get_executor(), std::move(c.in), std::move(c.out));
  if (!stream) {
    _exit(1);
  }
  auto ctl = std::make_shared<net::session_control>(std::move(stream).value(), ctx.get_executor());
  net::connection_info info{c.remote, c.address, c.implicit_tls, c.client_tls};
  asio::co_spawn(ctx, guarded_session(ctl, env, std::move(info), nullptr, id), asio::detached);
  ctx.run();
  workers.join();
  _exit(0);
}

// ---------------------------------------------------------------------------------------------
// S: answering P

struct pending_login {
  auth::user_record account;
  std::string method;
};

class supervisor {
 public:
  supervisor(const supervisor_params& p, const client& c, int ctl, std::string id)
      : p_(p), c_(c), ctl_(ctl), id_(std::move(id)) {}

  // Serves P until it hands the session over (returns the login) or goes away (nullopt).
  std::optional<std::pair<pending_login, message>> serve() {
    const auto& cfg = *p_.cfg;
    std::string timestamp =
        cfg.apop ? auth::make_apop_timestamp(p_.st->login.hostname) : std::string();
    timestamp_ = timestamp;
    if (!send_message(ctl_, message(msg_type::welcome, {timestamp}))) {
      return std::nullopt;
    }
    // Secrets are loaded only now, after P was forked.
    if (auto r = prepare_auth(cfg, *p_.us, *p_.st); !r) {
      log::error("privileged process: password database: {}", r.err().message());
      auth_broken_ = true;
    }
    // P enforces the idle timeout towards the client; this bounds a P that stops talking.
    int timeout_ms = static_cast<int>(std::min<std::int64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(cfg.idle_timeout).count() + 60'000,
        24 * 3600 * 1000));
    for (std::size_t n = 0; n < max_requests; ++n) {
      auto req = recv_message(ctl_, timeout_ms);
      if (!req) {
        if (req.err().code() != errc::not_found) {
          log::warning(
              "privileged process: pre-auth process sent {}: session=<{}>",
              req.err().code() == errc::temporary ? "nothing in time" : "a malformed message", id_);
        }
        return std::nullopt;
      }
      if (req->type == msg_type::handoff) {
        if (!login_) {
          log::warning("privileged process: handoff without a login, session=<{}>", id_);
          return std::nullopt;
        }
        return std::pair{std::move(*login_), std::move(*req)};
      }
      login_.reset();
      std::optional<message> reply = answer(*req);
      if (!reply) {
        log::warning(
            "privileged process: unexpected request {} from the pre-auth process, session=<{}>",
            static_cast<int>(req->type), id_);
        return std::nullopt;
      }
      if (!send_message(ctl_, *reply)) {
        return std::nullopt;
      }
      if (failures_ >= max_failed_logins) {
        log::notice("too many failed logins: rip={}, session=<{}>", c_.remote, id_);
        return std::nullopt;
      }
    }
    log::warning("privileged process: too many requests, session=<{}>", id_);
    return std::nullopt;
  }

 private:
  std::optional<message> answer(const message& req) {
    switch (req.type) {
      case msg_type::mechanisms: {
        auto ch = channel_from(req.fields, 0);
        if (!ch) {
          return std::nullopt;
        }
        std::string list;
        if (p_.st->sasl != nullptr) {
          for (const auto& m : p_.st->sasl->mechanisms_for(*ch)) {
            list += (list.empty() ? "" : " ") + m;
          }
        }
        return message(msg_type::mechanisms_reply, {list});
      }
      case msg_type::password:
      case msg_type::apop: {
        const std::string& user = req.fields[0];
        bool apop = req.type == msg_type::apop;
        auth::verify_result vr;
        begin_attempt(true);
        if (!store::is_safe_user_name(user)) {
          vr.reason = "user name not allowed";
        } else if (auth_broken_) {
          vr.status = auth::verify_status::temporary;
          vr.reason = "password database unavailable";
        } else if (apop) {
          if (timestamp_.empty()) {
            vr.reason = "APOP is off";
          } else {
            vr = auth::verify_apop(*p_.st->passdb, user, timestamp_, req.fields[1]);
          }
        } else {
          secret_string pw(req.fields[1]);
          vr = p_.st->passdb->verify(user, pw);
        }
        return auth_result(std::move(vr), user, apop ? "APOP" : "USER");
      }
      case msg_type::sasl_start:
      case msg_type::sasl_step: {
        std::string response;
        begin_attempt(req.type == msg_type::sasl_start);
        if (req.type == msg_type::sasl_start) {
          exchange_.reset();
          auto ch = channel_from(req.fields, 1);
          if (!ch) {
            return std::nullopt;
          }
          mech_ = req.fields[0];
          if (auth_broken_ || p_.st->sasl == nullptr) {
            return sasl_reply(auth::sasl_status::temporary_failure, "", "",
                              "password database unavailable");
          }
          auto started = p_.st->sasl->start(mech_, *ch);
          if (!started) {  // a refused mechanism: answered late, but no guess to count
            return sasl_reply(auth::sasl_status::failure, "", "", started.err().message(), false);
          }
          exchange_ = std::move(started).value();
          response = req.fields[5];
        } else {
          if (!exchange_) {
            return std::nullopt;
          }
          response = req.fields[0];
        }
        auth::sasl_step r = exchange_->step(response);
        wipe(response);
        std::string who(exchange_->authenticated_user());
        if (r.status == auth::sasl_status::challenge) {
          return message(msg_type::sasl_reply, {"C", r.server_data_b64, ""});
        }
        exchange_.reset();
        if (r.status == auth::sasl_status::success) {
          auth::user_record u = std::move(r.user);
          if (u.name.empty()) {
            u.name = who;
          }
          login_ = pending_login{std::move(u), mech_};
          note_success();
          return message(msg_type::sasl_reply, {"O", r.server_data_b64, login_->account.name});
        }
        return sasl_reply(r.status, who, mech_, r.reason);
      }
      default:
        return std::nullopt;
    }
  }

  message auth_result(auth::verify_result vr, const std::string& user, const char* method) {
    if (vr.status == auth::verify_status::ok) {
      if (vr.user.name.empty()) {
        vr.user.name = user;
      }
      std::string name = vr.user.name;
      login_ = pending_login{std::move(vr.user), method};
      note_success();
      return message(msg_type::auth_reply, {"O", name});
    }
    failed(user, method, vr.reason, vr.status == auth::verify_status::bad_credentials);
    return message(msg_type::auth_reply, {std::string(1, status_char(vr.status)), ""});
  }

  // `guess`: a failure of the client's credentials (not a refused mechanism), which raises the
  // address's penalty.
  message sasl_reply(auth::sasl_status st, const std::string& who, const std::string& mech,
                     const std::string& reason, bool guess = true) {
    failed(who, mech.empty() ? mech_ : mech, reason, guess && st == auth::sasl_status::failure);
    return message(msg_type::sasl_reply,
                   {st == auth::sasl_status::temporary_failure ? "T" : "B", "", ""});
  }

  // As the session driver does (net/session_driver.cpp), here where a compromised P cannot skip
  // it: an attempt from a penalised address first waits its penalty; a failure is answered at
  // received + penalty + failure_delay, however long the check took.
  void begin_attempt(bool pay_penalty) {
    const auto received = std::chrono::steady_clock::now();
    std::chrono::milliseconds penalty{0};
    if (pay_penalty && p_.st->penalty != nullptr) {
      penalty = p_.st->penalty->delay_for(c_.address, received);
    }
    failure_at_ = received + penalty + p_.cfg->failure_delay;
    if (penalty.count() > 0) {
      penalised_ = true;
      log::debug("auth penalty: rip={}, session=<{}>, delay={}ms", c_.remote, id_, penalty.count());
      std::this_thread::sleep_until(received + penalty);
    }
  }

  void note_success() {
    if (penalised_ && p_.st->penalty != nullptr) {
      p_.st->penalty->record_success(c_.address);
      penalised_ = false;
    }
  }

  // Logs, counts and delays a failure. `bad_credentials` raises the address's penalty.
  void failed(const std::string& user, const std::string& method, const std::string& reason,
              bool bad_credentials) {
    ++failures_;
    log::notice("auth failed: rip={}, session=<{}>, method={}, user=<{}>, reason={}", c_.remote,
                id_, log::client(method), log::client(user), reason);
    const auto now = std::chrono::steady_clock::now();
    if (bad_credentials && p_.st->penalty != nullptr) {
      p_.st->penalty->record_failure(c_.address, now);
      penalised_ = true;
    }
    if (now < failure_at_) {
      std::this_thread::sleep_until(failure_at_);
    } else if (p_.cfg->failure_delay.count() > 0) {
      log::debug(
          "auth check outlasted failure_delay by {}ms, answered at once (its time shows): rip={}, session=<{}>",
          std::chrono::duration_cast<std::chrono::milliseconds>(now - failure_at_).count(),
          c_.remote, id_);
    }
  }

  const supervisor_params& p_;
  const client& c_;
  int ctl_;
  std::string id_;
  std::string timestamp_;
  bool auth_broken_ = false;
  std::unique_ptr<auth::sasl_exchange> exchange_;
  std::string mech_;
  std::optional<pending_login> login_;
  std::size_t failures_ = 0;
  std::chrono::steady_clock::time_point failure_at_{};  // see begin_attempt
  bool penalised_ = false;
};

// Waits for `pid` up to `limit`, then kills it. Returns once it is reaped.
void reap(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) {
      return;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void write_line(int fd, std::string_view line) {
  while (!line.empty()) {
    ssize_t n = ::write(fd, line.data(), line.size());
    if (n <= 0) {
      return;
    }
    line.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::string join_groups(const std::vector<gid_t>& g) {
  std::string out;
  for (gid_t x : g) {
    out += (out.empty() ? "" : ",") + std::to_string(x);
  }
  return out;
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// Messages

const message_spec* spec_for(msg_type t) noexcept {
  for (const auto& s : specs) {
    if (s.type == t) {
      return &s;
    }
  }
  return nullptr;
}

message::~message() {
  for (auto& f : fields) {
    wipe(f);
  }
}

result<std::string> encode(const message& m) {
  const message_spec* spec = spec_for(m.type);
  if (spec == nullptr || m.fields.size() != spec->count) {
    return error(errc::invalid, "privsep: bad message layout");
  }
  std::string out;
  out.push_back(static_cast<char>(wire_version));
  out.push_back(static_cast<char>(m.type));
  out.push_back(static_cast<char>(spec->count >> 8));
  out.push_back(static_cast<char>(spec->count));
  for (std::size_t i = 0; i < spec->count; ++i) {
    if (m.fields[i].size() > spec->max[i]) {
      wipe(out);
      return error(errc::invalid, "privsep: field " + std::to_string(i) + " too long");
    }
    put_u32(out, static_cast<std::uint32_t>(m.fields[i].size()));
    out += m.fields[i];
  }
  if (out.size() > max_message) {
    wipe(out);
    return error(errc::invalid, "privsep: message too long");
  }
  return out;
}

result<message> decode(std::string_view b) {
  auto bad = [](const char* why) { return error(errc::invalid, std::string("privsep: ") + why); };
  if (b.size() < 4 || b.size() > max_message) {
    return bad("bad message size");
  }
  if (static_cast<std::uint8_t>(b[0]) != wire_version) {
    return bad("bad version");
  }
  const message_spec* spec = spec_for(static_cast<msg_type>(static_cast<std::uint8_t>(b[1])));
  if (spec == nullptr) {
    return bad("unknown message type");
  }
  std::size_t count = static_cast<std::size_t>(static_cast<unsigned char>(b[2])) << 8 |
                      static_cast<unsigned char>(b[3]);
  if (count != spec->count) {
    return bad("wrong field count");
  }
  message m;
  m.type = spec->type;
  std::size_t at = 4;
  for (std::size_t i = 0; i < count; ++i) {
    if (b.size() - at < 4) {
      return bad("truncated field length");
    }
    std::uint32_t len = get_u32(b, at);
    at += 4;
    if (len > spec->max[i]) {
      return bad("field too long");
    }
    if (b.size() - at < len) {
      return bad("truncated field");
    }
    m.fields.emplace_back(b.substr(at, len));
    at += len;
  }
  if (at != b.size()) {
    return bad("trailing bytes");
  }
  return m;
}

result<void> send_message(int fd, const message& m) {
  auto bytes = encode(m);
  if (!bytes) {
    return std::move(bytes).err();
  }
  ssize_t n;
  do {
    n = ::send(fd, bytes->data(), bytes->size(), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  wipe(*bytes);
  if (n < 0) {
    return error::from_errno(err, "privsep send");
  }
  if (static_cast<std::size_t>(n) != bytes->size() && n >= 0) {
    // SEQPACKET sends whole datagrams; a short send means the peer is broken.
  }
  return {};
}

result<message> recv_message(int fd, int timeout_ms) {
  pollfd pfd{fd, POLLIN, 0};
  for (;;) {
    int r = ::poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      return error::from_errno(errno, "privsep poll");
    }
    if (r == 0) {
      return error(errc::temporary, "privsep: timeout");
    }
    break;
  }
  std::string buf(max_message + 1, '\0');
  ssize_t n;
  do {
    n = ::recv(fd, buf.data(), buf.size(), MSG_TRUNC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return error::from_errno(errno, "privsep recv", errc::not_found);
  }
  if (n == 0) {
    return error(errc::not_found, "privsep: peer closed");
  }
  if (static_cast<std::size_t>(n) > max_message) {
    wipe(buf);
    return error(errc::invalid, "privsep: oversized datagram");
  }
  auto m = decode(std::string_view(buf.data(), static_cast<std::size_t>(n)));
  OPENSSL_cleanse(buf.data(), buf.size());
  return m;
}

// -------------------------------------------------------------------------------------------------
// Identities

result<identity> resolve_mail_owner(const auth::user_record& r,
                                    const std::string& privileged_group) {
  identity id;
  id.name = r.name;
  std::optional<auth::system_account> sys;
  if (r.uid) {
    id.uid = *r.uid;
    auto by_uid = auth::find_system_user(*r.uid);
    if (by_uid) {
      sys = std::move(by_uid).value();
    } else if (by_uid.err().code() == errc::temporary) {
      return std::move(by_uid).err();
    }
  } else {
    auto by_name = auth::find_system_user(r.name);
    if (!by_name) {
      return std::move(by_name).err();
    }
    sys = std::move(by_name).value();
    id.uid = sys->uid;
  }
  if (r.gid) {
    id.gid = *r.gid;
  } else if (sys) {
    id.gid = sys->gid;
  } else {
    return error(errc::not_found, "no gid for uid " + std::to_string(id.uid));
  }
  id.home = !r.home.empty() ? r.home : sys ? sys->home : std::string();
  if (id.uid == 0) {
    return error(errc::denied, "uid 0 (root) may not log in");
  }
  if (id.gid == 0) {
    return error(errc::denied, "gid 0 (root) may not be a mail owner's group");
  }
  std::vector<gid_t> groups{id.gid};
  if (sys) {
    auto g = auth::system_groups(sys->name, id.gid);
    if (!g) {
      return std::move(g).err();
    }
    groups = std::move(g).value();
  }
  if (!privileged_group.empty()) {
    auto pg = auth::find_group(privileged_group);
    if (pg) {
      groups.push_back(*pg);
    } else if (pg.err().code() == errc::temporary) {
      return std::move(pg).err();
    }
  }
  std::vector<gid_t> clean;
  for (gid_t g : groups) {
    if (g != 0 && std::find(clean.begin(), clean.end(), g) == clean.end()) {
      clean.push_back(g);
    }
  }
  id.groups = std::move(clean);
  return id;
}

result<identity> resolve_login_user(const std::string& configured) {
  std::vector<std::string> names;
  if (configured.empty()) {
    names = {"postern", "nobody"};
  } else {
    names = {configured};
  }
  for (const auto& n : names) {
    auto a = auth::find_system_user(n);
    if (!a) {
      if (a.err().code() == errc::temporary) {
        return std::move(a).err();
      }
      continue;
    }
    if (a->uid == 0 || a->gid == 0) {
      return error(errc::invalid, "server.login_user '" + n + "' must not be root or in group 0");
    }
    identity id;
    id.name = a->name;
    id.uid = a->uid;
    id.gid = a->gid;
    id.groups = {a->gid};
    return id;
  }
  return error(errc::invalid, "server.login_user: unknown user '" + names.front() + "'");
}

result<void> become(const identity& id, const std::string& chroot_dir) {
  if (id.uid == 0 || id.gid == 0) {
    return error(errc::denied, "refusing to become uid/gid 0");
  }
  std::vector<gid_t> groups = id.groups;
  if (std::find(groups.begin(), groups.end(), id.gid) == groups.end()) {
    groups.insert(groups.begin(), id.gid);
  }
  if (!chroot_dir.empty()) {
    if (::chroot(chroot_dir.c_str()) != 0) {
      return error::from_errno(errno, "chroot(" + chroot_dir + ")", errc::permanent);
    }
    if (::chdir("/") != 0) {
      return error::from_errno(errno, "chdir(/)", errc::permanent);
    }
  }
  if (::setgroups(groups.size(), groups.data()) != 0) {
    return error::from_errno(errno, "setgroups", errc::permanent);
  }
  if (::setresgid(id.gid, id.gid, id.gid) != 0) {
    return error::from_errno(errno, "setresgid", errc::permanent);
  }
  if (::setresuid(id.uid, id.uid, id.uid) != 0) {
    return error::from_errno(errno, "setresuid", errc::permanent);
  }
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return error::from_errno(errno, "prctl(PR_SET_NO_NEW_PRIVS)", errc::permanent);
  }
  // Verify: every id, the exact group set, and that root cannot be regained.
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || ru != id.uid || eu != id.uid || su != id.uid) {
    return error(errc::permanent, "uid switch not verified");
  }
  if (getresgid(&rg, &eg, &sg) != 0 || rg != id.gid || eg != id.gid || sg != id.gid) {
    return error(errc::permanent, "gid switch not verified");
  }
  int n = getgroups(0, nullptr);
  std::vector<gid_t> now(static_cast<std::size_t>(std::max(n, 0)));
  if (n < 0 || getgroups(n, now.data()) != n) {
    return error(errc::permanent, "getgroups failed");
  }
  std::sort(now.begin(), now.end());
  std::sort(groups.begin(), groups.end());
  if (now != groups) {
    return error(errc::permanent, "group switch not verified");
  }
  if (::setuid(0) == 0 || ::seteuid(0) == 0 || ::setgid(0) == 0 || ::setegid(0) == 0 ||
      geteuid() == 0 || getegid() == 0) {
    return error(errc::permanent, "root could be regained");
  }
  return {};
}

result<void> ensure_empty_root(const std::string& dir) {
  auto parent = dir.substr(0, dir.rfind('/'));
  if (!parent.empty()) {
    ::mkdir(parent.c_str(), 0755);
  }
  if (::mkdir(dir.c_str(), 0555) != 0 && errno != EEXIST) {
    return error::from_errno(errno, "server.login_chroot: mkdir(" + dir + ")", errc::permanent);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return error::from_errno(errno, "server.login_chroot: " + dir, errc::permanent);
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022) != 0) {
    return error(errc::permanent,
                 "server.login_chroot: " + dir +
                     " must be a directory owned by root and writable by nobody else");
  }
  return {};
}

// -------------------------------------------------------------------------------------------------
// The supervisor

namespace {

// The pre-auth process P and S's ends of its two channels: control (SEQPACKET) and relay.
struct pre_auth_process {
  pid_t pid = -1;
  unique_fd ctl;
  unique_fd relay;
};

result<pre_auth_process> start_pre_auth(const supervisor_params& p, client& c,
                                        const std::string& id) {
  int ctl[2];
  int rel[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0 ||
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, rel) != 0) {
    return error::from_errno(errno, "socketpair");
  }
  unique_fd ctl_s(ctl[0]), ctl_p(ctl[1]), rel_s(rel[0]), rel_p(rel[1]);
  pid_t child = ::fork();
  if (child < 0) {
    return error::from_errno(errno, "fork");
  }
  if (child == 0) {
    ctl_s.reset();
    rel_s.reset();
    run_pre_auth(p, c, ctl_p.get(), rel_p.get(), id);
  }
  return pre_auth_process{child, std::move(ctl_s), std::move(rel_s)};
}

// The descriptors the session process talks to the client through after P's handoff: P
// itself in relay mode ("R": P keeps the client and its TLS), else the client's own socket
// once P is gone ("P"). Empty `in`: a handoff that cannot be.
struct session_channel {
  unique_fd in;
  unique_fd out;
  bool relay = false;
};

session_channel take_channel(client& c, pre_auth_process& pa, const std::string& mode,
                             const std::string& id) {
  session_channel ch;
  ch.relay = mode == "R";
  if (mode != "R" && mode != "P") {
    log::warning("privileged process: bad handoff mode, session=<{}>", id);
    return ch;
  }
  if (c.implicit_tls && !ch.relay) {
    log::warning("privileged process: plain handoff on a TLS connection, session=<{}>", id);
    return ch;
  }
  if (ch.relay) {
    c.in.reset();
    c.out.reset();
    ch.in.reset(::dup(pa.relay.get()));
    ch.out = std::move(pa.relay);
    return ch;
  }
  // P must be gone before this process touches the socket: it exits right after the
  // handoff, and is killed if it does not.
  reap(pa.pid, std::chrono::milliseconds(2000));
  pa.pid = -1;
  pa.relay.reset();
  ch.in = std::move(c.in);
  ch.out = std::move(c.out);
  return ch;
}

// Switches to the mail owner of `account`, checked first: never root, the pre-auth uid or a
// uid outside the allowed range. Logs and answers the client itself when it cannot.
result<identity> become_owner(const supervisor_params& p, const client& c,
                              const auth::user_record& account, int reply_fd,
                              const std::string& id) {
  auto owner = resolve_mail_owner(account, p.us->privileged_group);
  if (owner) {
    auth::mail_owner_rules rules = p.st->mail.owner_rules;
    rules.preauth_uid = p.login.uid;
    if (auto allowed = auth::check_mail_owner(owner->uid, rules); !allowed) {
      owner = std::move(allowed).err();
    }
  }
  result<void> switched = owner ? become(*owner, "") : result<void>(owner.err());
  if (!switched) {
    log::error(
        "login refused, cannot become the mail owner: user=<{}>, rip={}, session=<{}>, error={}",
        log::client(account.name), c.remote, id, switched.err().message());
    write_line(reply_fd, switched.err().code() == errc::denied
                             ? "-ERR [SYS/PERM] This account may not read mail here.\r\n"
                             : "-ERR [SYS/TEMP] Unable to open the mailbox, try again later.\r\n");
    return std::move(switched).err();
  }
  log::info("session process: pid={}, user=<{}>, uid={}, gid={}, groups={}, rip={}, session=<{}>",
            getpid(), log::client(account.name), owner->uid, owner->gid, join_groups(owner->groups),
            c.remote, id);
  return owner;
}

// The session after the login, as the mail owner, until it ends.
// Fork mode: frees the master's count of the connection (client::slot) when the session
// releases its session_control::counted, which happens before the client's socket closes.
class slot_counter final : public net::connection_counter {
 public:
  explicit slot_counter(unique_fd& slot) : slot_(slot) {}
  bool acquire(const asio::ip::address&, refusal&) override { return true; }
  void release(const asio::ip::address&) noexcept override { slot_.reset(); }
  std::uint32_t active() const override { return slot_ ? 1 : 0; }

 private:
  unique_fd& slot_;
};

int run_owner_session(const supervisor_params& p, client& c, session_channel ch,
                      net::resume_state resume, const std::string& id) {
  slot_counter slot(c.slot);  // first: outlives every copy of ctl_block (ctx holds some)
  asio::io_context ctx{1};
  asio::thread_pool workers(1);
  net::no_authenticator no_auth;  // the login happened in P; this process only resumes it
  net::session_env env = p.st->env;
  env.services.auth = &no_auth;
  env.tls = nullptr;
  env.stls = false;
  env.workers = &workers;
  auto stream =
      !ch.relay && c.is_tcp
          ? net::make_transport(ctx.get_executor(), std::move(ch.in), c.v6, false, nullptr)
          : net::make_stdio_transport(ctx.get_executor(), std::move(ch.in), std::move(ch.out));
  if (!stream) {
    return 1;
  }
  auto ctl_block =
      std::make_shared<net::session_control>(std::move(stream).value(), ctx.get_executor());
  ctl_block->counted = net::counted_connection(&slot, c.address);
  asio::signal_set signals(ctx, SIGTERM, SIGINT);
  signals.async_wait([&](const std::error_code& ec, int) {
    if (!ec) {
      ctl_block->stop(true);
    }
  });
  net::connection_info info{c.remote, c.address, false, c.client_tls};
  info.resume = std::move(resume);
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        co_await guarded_session(ctl_block, env, std::move(info), nullptr, id);
        signals.cancel();
      },
      asio::detached);
  ctx.run();
  workers.join();
  return 0;
}

}  // namespace

int run_supervisor(const supervisor_params& p, client c) {
  std::string id = net::new_session_id();
  auto pa = start_pre_auth(p, c, id);
  if (!pa) {
    log::error("{}", pa.err().message());
    write_line(c.out ? c.out.get() : c.in.get(),
               "-ERR [SYS/TEMP] Server busy, try again later.\r\n");
    return 1;
  }
  supervisor sup(p, c, pa->ctl.get(), id);
  auto login = sup.serve();
  if (!login) {
    c.slot.reset();   // no session as the user: the place goes before the client's socket
                      // (closed when this returns)
    pa->ctl.reset();  // P's next question fails; it ends its session
    reap(pa->pid, std::chrono::milliseconds(2000));
    return 0;
  }
  // The secrets go before anything runs as the user.
  p.st->login.sasl = nullptr;
  p.st->login.passdb = nullptr;
  p.st->sasl.reset();
  p.st->passdb.reset();

  auto& [pending, handoff] = *login;
  auto ch = take_channel(c, *pa, handoff.fields[0], id);
  if (!ch.in) {
    reap(pa->pid, std::chrono::milliseconds(0));
    return 1;
  }
  pa->ctl.reset();
  auto owner = become_owner(p, c, pending.account, ch.out ? ch.out.get() : ch.in.get(), id);
  int status = 0;
  if (owner) {
    if (p.st->penalty != nullptr) {  // the user's session has no business with it
      p.st->penalty->detach();
    }
    if (pending.account.home.empty()) {
      pending.account.home = owner->home;
    }
    status = run_owner_session(
        p, c, std::move(ch),
        net::resume_state{std::move(pending.account), pending.method, handoff.fields[1]}, id);
  } else {
    ch = {};  // P sees the client gone
  }
  if (pa->pid > 0) {
    reap(pa->pid, std::chrono::milliseconds(2000));
  }
  return status;
}

}  // namespace postern::server::privsep
