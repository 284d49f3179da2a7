// services: what a session needs from the process mode that runs it, as interfaces the mode
// implements and hands to the driver (session_env::services). The driver knows none of the
// concrete password databases, stores or process layouts behind them.
//
//  - authenticator: checks credentials. local_authenticator (event, worker and inetd modes,
//    fork mode's privileged side) asks the passdb and SASL server of this process; fork mode's
//    pre-auth process forwards every check to the privileged process (server/privsep.cpp).
//  - maildrop_opener: turns an authenticated account into an open maildrop: the mail owner
//    rules, LOGIN-DELAY, bulletins, the store chosen by the location template, and the
//    UIDL/EXPIRE decoration. local_maildrops implements it from maildrop_settings.
//  - login_handoff: fork mode's pre-auth process, where a login ends the session in this
//    process and another process serves the mailbox.
//
// Threading: authenticator and maildrop_opener calls marked "blocking" run on the worker pool,
// several at a time for different sessions: implementations are thread-safe for concurrent
// calls. The objects live as long as the server (or the process) and are never owned by a
// session.
#pragma once

#include "auth/passdb.hpp"
#include "auth/sasl.hpp"
#include "auth/system_users.hpp"
#include "common/result.hpp"
#include "common/secret_string.hpp"
#include "store/decorated_maildrop.hpp"
#include "store/location.hpp"
#include "store/mbox/mbox.hpp"

#include <asio/awaitable.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::net {

struct session_control;

class authenticator {
 public:
  virtual ~authenticator() = default;
  // The APOP timestamp for a new session's greeting; "" = no APOP.
  virtual std::string apop_timestamp() = 0;
  // The SASL mechanisms usable on a connection with these security facts, in CAPA order.
  virtual std::vector<std::string> mechanisms_for(const auth::sasl_channel& ch) = 0;
  // Blocking. `timestamp` is the one this session's greeting carried.
  virtual auth::verify_result verify_password(std::string_view user,
                                              const secret_string& password) = 0;
  virtual auth::verify_result verify_apop(std::string_view user, std::string_view timestamp,
                                          std::string_view digest) = 0;
  // Errors: the mechanism is not usable here (the reason is logged).
  virtual result<std::unique_ptr<auth::sasl_exchange>> start_sasl(std::string_view mechanism,
                                                                  const auth::sasl_channel& ch) = 0;
  // True when failures are logged where the check is made (the privileged process of fork
  // mode): the session then reports none itself, so that each failure is logged once.
  virtual bool logs_failures() const noexcept { return false; }
};

// The passdb and SASL server of this process.
struct local_auth_settings {
  auth::passdb* passdb = nullptr;
  auth::sasl_server* sasl = nullptr;  // null: no SASL mechanisms
  bool apop = false;
  std::string hostname;  // for APOP timestamps
};

class local_authenticator final : public authenticator {
 public:
  // `s` is read at each call (setup fills it after construction) and must outlive this.
  explicit local_authenticator(const local_auth_settings& s) : s_(s) {}
  std::string apop_timestamp() override;
  std::vector<std::string> mechanisms_for(const auth::sasl_channel& ch) override;
  // A user name the stores cannot use safely (store::is_safe_user_name) fails as bad
  // credentials without asking the passdb.
  auth::verify_result verify_password(std::string_view user,
                                      const secret_string& password) override;
  auth::verify_result verify_apop(std::string_view user, std::string_view timestamp,
                                  std::string_view digest) override;
  result<std::unique_ptr<auth::sasl_exchange>> start_sasl(std::string_view mechanism,
                                                          const auth::sasl_channel& ch) override;

 private:
  const local_auth_settings& s_;
};

// Refuses every credential: a session process that only resumes logins made elsewhere.
class no_authenticator final : public authenticator {
 public:
  std::string apop_timestamp() override { return {}; }
  std::vector<std::string> mechanisms_for(const auth::sasl_channel&) override { return {}; }
  auth::verify_result verify_password(std::string_view, const secret_string&) override;
  auth::verify_result verify_apop(std::string_view, std::string_view, std::string_view) override;
  result<std::unique_ptr<auth::sasl_exchange>> start_sasl(std::string_view,
                                                          const auth::sasl_channel&) override;
};

// What opening a maildrop gave.
struct open_outcome {
  result<std::unique_ptr<store::maildrop>> opened = error(errc::permanent, "no mail location");
  bool delayed = false;      // LOGIN-DELAY refused the login
  bool wrong_owner = false;  // refused by the mail owner rules: opened holds the reason
  // The decoration wrapper when there is one (the same object as opened's): TOP notes,
  // expire statistics and stamp errors.
  store::decorated_maildrop* decorated = nullptr;
};

class maildrop_opener {
 public:
  virtual ~maildrop_opener() = default;
  // Blocking. Opens (and locks) the maildrop of an authenticated account.
  virtual open_outcome open(const auth::user_record& account, std::string_view session_id) = 0;
};

struct maildrop_settings {
  store::location_template location;
  // Every maildrop is opened with this process's uid and gids: a login is refused when the
  // passdb names another uid or gid, or when this process's uid may not own mail.
  auth::mail_owner_rules owner_rules;
  store::mbox::options mbox;
  // [mail] mbox_state_dir, expanded per user into mbox.state_dir (none: not configured).
  std::optional<store::location_template> mbox_state_dir;
  // LOGIN-DELAY: false refuses the login. Null: no delay. Runs on a worker thread.
  std::function<bool(std::string_view user)> login_allowed;
  // Bulletins: deliver into the maildrop about to be opened. Null: none. Worker thread.
  std::function<void(const auth::user_record& account, store::store_kind kind,
                     const std::string& path, std::string_view session_id)>
      before_open;
  // uidl_format and expire; kind and path are filled per maildrop.
  store::decoration_options decoration;
};

class local_maildrops final : public maildrop_opener {
 public:
  // `s` is read at each call and must outlive this.
  explicit local_maildrops(const maildrop_settings& s) : s_(s) {}
  open_outcome open(const auth::user_record& account, std::string_view session_id) override;

 private:
  const maildrop_settings& s_;
};

// Privilege separation: what the unprivileged pre-authentication process hands to the session
// process once the credentials are accepted.
struct handoff {
  const auth::user_record& account;
  std::string_view method;   // USER, APOP or the SASL mechanism, for the login log line
  std::string input;         // client bytes received but not yet processed (pipelining)
  session_control& control;  // the client transport (plain or TLS); the hand-off may take
                             // control.stream (leave it null) so the driver does not
                             // shut the connection down
  std::string_view session_id;
};

class login_handoff {
 public:
  virtual ~login_handoff() = default;
  // Called instead of opening the maildrop; the session ends here when it returns.
  virtual asio::awaitable<void> take_over(handoff& h) = 0;
};

}  // namespace postern::net
