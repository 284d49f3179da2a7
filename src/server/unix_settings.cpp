#include "server/unix_settings.hpp"

#include "common/parse.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

namespace postern::server {

result<unix_settings> unix_settings_from(const config& cfg) {
  unix_settings us = cfg.unix;
  us.passdb = cfg.passdb;
  return us;
}

auth::mail_owner_rules mail_owner_rules_of(const config& cfg) {
  auth::mail_owner_rules r;
  r.first_valid_uid = cfg.first_valid_uid;
  r.last_valid_uid = cfg.last_valid_uid;
  return r;
}

namespace {

constexpr const char* fork_hint =
    "; to serve system users, each as their own uid, set server.process_model = \"fork\"";

result<void> check_identity(const config& cfg, uid_t uid, gid_t gid) {
  if (uid == 0) {
    return error(
        errc::invalid,
        std::string(cfg.user.empty() ? "server.user is not set and the server is started as root"
                                     : "server.user is root") +
            ": event mode would open, read and change every maildrop as root; set server.user "
            "to the unprivileged user that owns the mail" +
            fork_hint);
  }
  if (gid == 0) {
    return error(errc::invalid,
                 "server.group: the server would run with gid 0 (root); set server.group "
                 "to the group of the mail owner");
  }
  if (auto ok = auth::check_mail_owner(uid, mail_owner_rules_of(cfg)); !ok) {
    return error(errc::invalid, "server.user: event mode runs every session as uid " +
                                    std::to_string(uid) +
                                    ", which may not own mail: " + ok.err().message() + fork_hint);
  }
  return {};
}

}  // namespace

result<void> check_store_identity(const config& cfg, const unix_settings& us) {
  if (us.model == process_model::fork) {
    return {};
  }
  if (::geteuid() != 0) {
    return check_identity(cfg, ::geteuid(), ::getegid());
  }
  if (cfg.user.empty()) {
    return check_identity(cfg, 0, 0);
  }
  auto account = auth::find_system_user(cfg.user);
  if (!account) {
    if (account.err().code() == errc::not_found) {
      return error(errc::invalid, "server.user: unknown user '" + cfg.user + "'");
    }
    return std::move(account).err();
  }
  gid_t gid = account->gid;
  if (!cfg.group.empty()) {
    auto g = auth::find_group(cfg.group);
    if (!g) {
      if (g.err().code() == errc::not_found) {
        return error(errc::invalid, "server.group: unknown group '" + cfg.group + "'");
      }
      return std::move(g).err();
    }
    gid = *g;
  }
  return check_identity(cfg, account->uid, gid);
}

result<void> check_running_identity(const config& cfg) {
  return check_identity(cfg, ::geteuid(), ::getegid());
}

result<void> apply_address_family(config& cfg, address_family family) {
  if (family == address_family::any) {
    return {};
  }
  auto keep = [&](const listen_address& a) {
    bool v6 = a.host.find(':') != std::string::npos;
    return family == address_family::ipv6 ? v6 : !v6;
  };
  auto filter = [&](std::vector<listen_address>& list) {
    list.erase(
        std::remove_if(list.begin(), list.end(), [&](const listen_address& a) { return !keep(a); }),
        list.end());
  };
  filter(cfg.listen);
  filter(cfg.tls_listen);
  std::erase_if(cfg.listeners, [&](const listener_config& l) { return !keep(l.address); });
  if (cfg.listen.empty() && cfg.tls_listen.empty() && cfg.listeners.empty()) {
    return error(errc::invalid,
                 std::string("server.listen, tls_listen and [[server.listener]] have no ") +
                     (family == address_family::ipv6 ? "IPv6" : "IPv4") +
                     " address for the chosen address family");
  }
  return {};
}

}  // namespace postern::server
