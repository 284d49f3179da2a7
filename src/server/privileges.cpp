#include "server/privileges.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

namespace postern::server {

result<void> drop_privileges(const std::string& user, const std::string& group) {
  if (user.empty()) {
    return {};
  }
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* pwp = nullptr;
  int rc = getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &pwp);
  if (rc != 0 || pwp == nullptr) {
    return error(errc::invalid, "server.user: unknown user '" + user + "'");
  }
  uid_t uid = pw.pw_uid;
  gid_t gid = pw.pw_gid;
  if (!group.empty()) {
    std::vector<char> gbuf(16384);
    struct group gr {};
    struct group* grp = nullptr;
    rc = getgrnam_r(group.c_str(), &gr, gbuf.data(), gbuf.size(), &grp);
    if (rc != 0 || grp == nullptr) {
      return error(errc::invalid, "server.group: unknown group '" + group + "'");
    }
    gid = gr.gr_gid;
  }
  if (geteuid() != 0) {
    if (geteuid() == uid) {
      return {};
    }
    return error(errc::permanent,
                 "server.user is '" + user + "' but the server is not started as root");
  }
  if (initgroups(user.c_str(), gid) != 0) {
    return error::from_errno(errno, "initgroups(" + user + ")", errc::permanent);
  }
  if (setgid(gid) != 0) {
    return error::from_errno(errno, "setgid", errc::permanent);
  }
  if (setuid(uid) != 0) {
    return error::from_errno(errno, "setuid", errc::permanent);
  }
  if (uid != 0 && (setuid(0) == 0 || geteuid() == 0 || getegid() != gid)) {
    return error(errc::permanent, "privileges were not dropped");
  }
  return {};
}

}  // namespace postern::server
