#include "auth/system_users.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace postern::auth {
namespace {

// getpw*_r / getgr*_r buffers: 16 KiB holds any ordinary entry in one call; on ERANGE the
// buffer doubles up to 1 MiB (a group with very many members), past which the lookup fails.
constexpr std::size_t nss_buffer_initial = 16384;
constexpr std::size_t nss_buffer_max = std::size_t{1} << 20;

// getpw*_r / getgr*_r with a buffer that grows on ERANGE, up to nss_buffer_max.
template <typename Entry, typename Call>
result<bool> nss_call(Call call, Entry& entry, std::vector<char>& buf, std::string_view what) {
  buf.resize(nss_buffer_initial);
  for (;;) {
    Entry* found = nullptr;
    int rc = call(&entry, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < nss_buffer_max) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc == 0 || rc == ENOENT || rc == ESRCH || rc == EBADF || rc == EPERM) {
      if (found == nullptr) {
        return false;
      }
      return true;
    }
    return error::from_errno(rc, std::string(what), errc::temporary);
  }
}

system_account from_passwd(const passwd& pw) {
  system_account a;
  a.name = pw.pw_name != nullptr ? pw.pw_name : "";
  a.uid = pw.pw_uid;
  a.gid = pw.pw_gid;
  a.home = pw.pw_dir != nullptr ? pw.pw_dir : "";
  return a;
}

}  // namespace

bool is_plausible_system_user(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '-' || name.front() == '+') {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u != 0x7F && c != ':' && c != '/';
  });
}

result<system_account> find_system_user(std::string_view name) {
  if (!is_plausible_system_user(name)) {
    return error(errc::not_found, "not a valid user name");
  }
  std::string n(name);
  passwd pw{};
  std::vector<char> buf;
  auto found = nss_call<passwd>([&](passwd* e, char* b, std::size_t len,
                                    passwd** out) { return getpwnam_r(n.c_str(), e, b, len, out); },
                                pw, buf, "getpwnam");
  if (!found) {
    return std::move(found).err();
  }
  if (!*found) {
    return error(errc::not_found, "unknown user");
  }
  return from_passwd(pw);
}

result<system_account> find_system_user(uid_t uid) {
  passwd pw{};
  std::vector<char> buf;
  auto found = nss_call<passwd>([&](passwd* e, char* b, std::size_t len,
                                    passwd** out) { return getpwuid_r(uid, e, b, len, out); },
                                pw, buf, "getpwuid");
  if (!found) {
    return std::move(found).err();
  }
  if (!*found) {
    return error(errc::not_found, "unknown uid " + std::to_string(uid));
  }
  return from_passwd(pw);
}

result<gid_t> find_group(std::string_view name) {
  if (!is_plausible_system_user(name)) {
    return error(errc::not_found, "not a valid group name");
  }
  std::string n(name);
  struct group gr {};
  std::vector<char> buf;
  auto found = nss_call<struct group>(
      [&](struct group* e, char* b, std::size_t len, struct group** out) {
        return getgrnam_r(n.c_str(), e, b, len, out);
      },
      gr, buf, "getgrnam");
  if (!found) {
    return std::move(found).err();
  }
  if (!*found) {
    return error(errc::not_found, "unknown group '" + n + "'");
  }
  return gr.gr_gid;
}

result<std::vector<gid_t>> system_groups(const std::string& user, gid_t gid) {
  int n = 64;
  std::vector<gid_t> groups;
  for (int attempt = 0; attempt < 8; ++attempt) {
    groups.resize(static_cast<std::size_t>(n));
    int count = n;
    if (getgrouplist(user.c_str(), gid, groups.data(), &count) >= 0) {
      groups.resize(static_cast<std::size_t>(count));
      std::vector<gid_t> out{gid};
      for (gid_t g : groups) {
        if (std::find(out.begin(), out.end(), g) == out.end()) {
          out.push_back(g);
        }
      }
      return out;
    }
    n = std::max(count, n * 2);
  }
  return error(errc::temporary, "getgrouplist(" + user + "): too many groups");
}

user_record to_user_record(const system_account& a) {
  user_record r;
  r.name = a.name;
  r.uid = a.uid;
  r.gid = a.gid;
  r.home = a.home;
  return r;
}

lookup_result lookup_system_user(std::string_view name) {
  lookup_result out;
  auto acct = find_system_user(name);
  if (!acct) {
    out.status = acct.err().code() == errc::temporary ? verify_status::temporary
                                                      : verify_status::bad_credentials;
    out.reason = acct.err().message();
    return out;
  }
  if (acct->uid == 0) {
    out.reason = "uid 0 (root) may not log in";
    return out;
  }
  out.status = verify_status::ok;
  out.user = to_user_record(*acct);
  return out;
}

result<void> check_mail_owner(uid_t uid, const mail_owner_rules& rules) {
  auto refuse = [](std::string why) { return error(errc::denied, std::move(why)); };
  const std::string who = "uid " + std::to_string(uid);
  if (uid == 0) {
    return refuse(who + " (root) may never own mail: give the account an unprivileged uid");
  }
  if (rules.preauth_uid && uid == *rules.preauth_uid) {
    return refuse(who +
                  " is the uid of the pre-auth processes (server.login_user): give the "
                  "account a uid of its own, or set server.login_user to another user");
  }
  if (uid == nobody_uid) {
    return refuse(who +
                  " (nobody) is shared by unrelated services: give the account a uid of its own");
  }
  if (uid < rules.first_valid_uid) {
    return refuse(who + " is below auth.first_valid_uid (" + std::to_string(rules.first_valid_uid) +
                  "): lower auth.first_valid_uid if this uid is meant to own mail");
  }
  if (rules.last_valid_uid != 0 && uid > rules.last_valid_uid) {
    return refuse(who + " is above auth.last_valid_uid (" + std::to_string(rules.last_valid_uid) +
                  "): raise auth.last_valid_uid (0 = no limit) if this uid is meant to own mail");
  }
  return {};
}

}  // namespace postern::auth
