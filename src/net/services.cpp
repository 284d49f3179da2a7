#include "net/services.hpp"

#include "auth/apop.hpp"
#include "store/maildir/maildir.hpp"

#include <unistd.h>

namespace postern::net {
namespace {

// The maildrop of an authenticated user: the userdb's own mail location if it has one, else
// the configured one, expanded.
struct maildrop_place {
  store::store_kind kind;
  std::string path;
  bool keep_index;
  std::string root;  // store::location_root: nothing below it is resolved through a symlink
};

result<maildrop_place> maildrop_path(const auth::user_record& account,
                                     const store::location_template& configured) {
  const store::location_template* loc = &configured;
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
  auto root = store::location_root(*loc, {account.name, account.home});
  if (!root) {
    return std::move(root).err();
  }
  return maildrop_place{loc->kind, std::move(path).value(), loc->keep_index,
                        std::move(root).value()};
}

// A maildrop is opened with this process's ids (event mode: server.user; fork mode: the mail
// owner the session process became): an account that names other ids is refused rather than
// served as the wrong user. Errors: errc::denied, the reason for the log.
result<void> check_mail_owner(const auth::user_record& account,
                              const auth::mail_owner_rules& rules) {
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  constexpr const char* hint =
      " (server.user); one process serves only the mail of its own uid: serve system users with "
      "server.process_model = \"fork\", or give the account this process's ids";
  if (account.uid && *account.uid != uid) {
    return error(errc::denied, "the passdb gives uid " + std::to_string(*account.uid) +
                                   ", this process runs as uid " + std::to_string(uid) + hint);
  }
  if (account.gid && *account.gid != gid) {
    return error(errc::denied, "the passdb gives gid " + std::to_string(*account.gid) +
                                   ", this process runs as gid " + std::to_string(gid) + hint);
  }
  if (gid == 0) {
    return error(errc::denied, "this process runs as gid 0 (root): set server.group");
  }
  return auth::check_mail_owner(uid, rules);
}

auth::verify_result refused(const char* reason) {
  auth::verify_result vr;
  vr.status = auth::verify_status::bad_credentials;
  vr.reason = reason;
  return vr;
}

}  // namespace

std::string local_authenticator::apop_timestamp() {
  return s_.apop ? auth::make_apop_timestamp(s_.hostname) : std::string();
}

std::vector<std::string> local_authenticator::mechanisms_for(const auth::sasl_channel& ch) {
  return s_.sasl != nullptr ? s_.sasl->mechanisms_for(ch) : std::vector<std::string>();
}

auth::verify_result local_authenticator::verify_password(std::string_view user,
                                                         const secret_string& password) {
  if (!store::is_safe_user_name(user)) {
    return refused("user name not allowed");
  }
  return s_.passdb->verify(user, password);
}

auth::verify_result local_authenticator::verify_apop(std::string_view user,
                                                     std::string_view timestamp,
                                                     std::string_view digest) {
  if (!store::is_safe_user_name(user)) {
    return refused("user name not allowed");
  }
  return auth::verify_apop(*s_.passdb, user, timestamp, digest);
}

result<std::unique_ptr<auth::sasl_exchange>> local_authenticator::start_sasl(
    std::string_view mechanism, const auth::sasl_channel& ch) {
  if (s_.sasl == nullptr) {
    return error(errc::not_found, "no SASL");
  }
  return s_.sasl->start(mechanism, ch);
}

auth::verify_result no_authenticator::verify_password(std::string_view, const secret_string&) {
  return refused("no authentication in this process");
}

auth::verify_result no_authenticator::verify_apop(std::string_view, std::string_view,
                                                  std::string_view) {
  return refused("no authentication in this process");
}

result<std::unique_ptr<auth::sasl_exchange>> no_authenticator::start_sasl(
    std::string_view, const auth::sasl_channel&) {
  return error(errc::not_found, "no SASL");
}

open_outcome local_maildrops::open(const auth::user_record& account, std::string_view session_id) {
  open_outcome out;
  if (auto owner = check_mail_owner(account, s_.owner_rules); !owner) {
    out.opened = std::move(owner).err();
    out.wrong_owner = true;
    return out;
  }
  auto path = maildrop_path(account, s_.location);
  if (!path) {
    out.opened = error(path.err());
    return out;
  }
  if (s_.login_allowed && !s_.login_allowed(account.name)) {
    out.delayed = true;
    return out;
  }
  if (s_.before_open) {
    s_.before_open(account, path->kind, path->path, session_id);
  }
  if (path->kind == store::store_kind::mbox) {
    store::mbox::options opts = s_.mbox;
    opts.use_index = path->keep_index;
    if (s_.mbox_state_dir) {
      // No home (for "~"): left empty, so that a shared spool is refused with a clear text.
      if (auto state = store::expand_location(*s_.mbox_state_dir, {account.name, account.home})) {
        opts.state_dir = std::move(state).value();
      }
    }
    out.opened = store::mbox::open(path->path, opts);
  } else {
    out.opened =
        store::maildir::open(path->path, {.use_index = path->keep_index, .root = path->root});
  }
  if (out.opened && store::needs_decoration(s_.decoration)) {
    store::decoration_options d = s_.decoration;
    d.kind = path->kind;
    d.path = path->path;
    d.reuse_x_uidl = s_.mbox.use_x_uidl;
    out.opened = store::decorate(std::move(out.opened).value(), std::move(d), &out.decorated);
  }
  return out;
}

}  // namespace postern::net
