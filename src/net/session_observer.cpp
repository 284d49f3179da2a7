#include "net/session_observer.hpp"

#include "common/log.hpp"
#include "net/session_driver.hpp"

namespace postern::net {

traced_transport* session_observer::attach_trace(session_control&, std::string_view, bool) {
  return nullptr;
}

traced_transport* log_observer::attach_trace(session_control& ctl, std::string_view id,
                                             bool resumed) {
  if (!trace_enabled(trace)) {
    return nullptr;
  }
  trace_settings ts = trace;
  ts.session_id = std::string(id);
  ts.expect_greeting = !resumed;
  auto wrapped = std::make_unique<traced_transport>(std::move(ctl.stream), std::move(ts));
  traced_transport* traced = wrapped.get();
  ctl.stream = std::move(wrapped);
  return traced;
}

void log_observer::tls_established(const session_facts& s, bool stls,
                                   std::string_view description) {
  log::debug("{} established: rip={}, session=<{}>, {}", stls ? "STLS" : "TLS", s.remote, s.id,
             description);
}

void log_observer::tls_failed(const session_facts& s, std::string_view why) {
  log::notice("TLS handshake failed: rip={}, session=<{}>, error={}", s.remote, s.id, why);
}

void log_observer::auth_failed(const session_facts& s, std::string_view method,
                               std::string_view user, std::string_view reason) {
  log::notice("auth failed: rip={}, session=<{}>, method={}, user=<{}>, reason={}", s.remote, s.id,
              log::client(method), log::client(user), reason);
}

void log_observer::too_many_failed_logins(const session_facts& s) {
  log::notice("too many failed logins: rip={}, session=<{}>", s.remote, s.id);
}

void log_observer::auth_penalised(const session_facts& s, std::chrono::milliseconds delay) {
  log::debug("auth penalty: rip={}, session=<{}>, delay={}ms", s.remote, s.id, delay.count());
}

void log_observer::auth_check_slow(const session_facts& s, std::chrono::milliseconds overrun) {
  log::debug(
      "auth check outlasted failure_delay by {}ms, answered at once (its time shows): "
      "rip={}, session=<{}>",
      overrun.count(), s.remote, s.id);
}

void log_observer::logged_in(const session_facts& s, std::string_view method,
                             std::size_t messages) {
  log::info("login: user=<{}>, method={}, rip={}, session=<{}>, messages={}", log::client(s.user),
            method, s.remote, s.id, messages);
}

void log_observer::login_refused(const session_facts& s, login_refusal why, std::string_view user,
                                 std::string_view detail) {
  switch (why) {
    case login_refusal::login_delay:
      log::notice("login refused, login delay: user=<{}>, rip={}, session=<{}>", log::client(user),
                  s.remote, s.id);
      break;
    case login_refusal::mail_owner:
      log::error(
          "login refused, mail owner not allowed: user=<{}>, rip={}, session=<{}>, reason={}",
          log::client(user), s.remote, s.id, detail);
      break;
    case login_refusal::in_use:
      log::notice("login refused, mailbox in use: user=<{}>, rip={}, session=<{}>",
                  log::client(user), s.remote, s.id);
      break;
    case login_refusal::open_failed:
      log::error("cannot open mailbox: user=<{}>, rip={}, session=<{}>, error={}",
                 log::client(user), s.remote, s.id, detail);
      break;
  }
}

void log_observer::mail_failed(const session_facts& s, mail_failure what, std::size_t msg,
                               std::string_view detail) {
  switch (what) {
    case mail_failure::open_message:
      log::error("cannot read message: user=<{}>, session=<{}>, msg={}, error={}",
                 log::client(s.user), s.id, msg, detail);
      break;
    case mail_failure::read_message:
      log::error("read failed mid-message: user=<{}>, session=<{}>, msg={}, error={}",
                 log::client(s.user), s.id, msg, detail);
      break;
    case mail_failure::commit:
      log::error("commit failed: user=<{}>, session=<{}>, error={}", log::client(s.user), s.id,
                 detail);
      break;
    case mail_failure::expire_stamps:
      log::error("expire stamps not saved: user=<{}>, session=<{}>, error={}", log::client(s.user),
                 s.id, detail);
      break;
    case mail_failure::xmit:
      log::error("xmit failed: user=<{}>, session=<{}>, error={}", log::client(s.user), s.id,
                 detail);
      break;
  }
}

void log_observer::expired(const session_facts& s, std::uint64_t messages) {
  log::info("expired: user=<{}>, session=<{}>, messages={}", log::client(s.user), s.id, messages);
}

void log_observer::xmit_sent(const session_facts& s, std::size_t size) {
  log::info("xmit: user=<{}>, session=<{}>, size={}", log::client(s.user), s.id, size);
}

void log_observer::logged_out(const session_facts& s, const logout_facts& f) {
  log::info(
      "logout: user=<{}>, session=<{}>, reason={}, retr={}/{}, top={}/{}, del={}/{}, left={}/{}",
      log::client(s.user), s.id, f.reason, f.stats.retr_count, f.stats.retr_bytes,
      f.stats.top_count, f.stats.top_bytes, f.deleted, f.deleted_bytes, f.left, f.left_bytes);
}

void log_observer::disconnected(const session_facts& s, std::string_view reason) {
  log::debug("disconnect: rip={}, session=<{}>, reason={}", s.remote, s.id, reason);
}

}  // namespace postern::net
