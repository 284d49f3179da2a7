#include "server/startup_recovery.hpp"

#include "auth/passdb_spec.hpp"
#include "auth/passwd_file.hpp"
#include "auth/system_users.hpp"
#include "common/log.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"
#include "server/privsep.hpp"
#include "server/setup.hpp"
#include "server/unix_settings.hpp"
#include "store/location.hpp"
#include "store/mbox/mbox.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace postern::server {
namespace {

using clock = std::chrono::steady_clock;

// The maximum passwd-file size open_passwd_file accepts.
constexpr std::size_t max_passwd_file = 64u << 20;

// What the recovery of one mailbox needs: the expanded locations and the options of the store.
struct context {
  const config* cfg = nullptr;
  store::location_template location;
  std::optional<store::location_template> state_dir;
  store::mbox::options opts;
  bool per_user_owner = false;      // fork mode as root: each account's own mail owner
  privsep::identity process_owner;  // otherwise: the uid every session runs as
  bool switch_ids = false;          // children become the owner (this process is root)
  std::string privileged_group;
  auth::mail_owner_rules rules;
  clock::time_point deadline;
  bool echo = false;
};

// One mailbox with a journal.
struct candidate {
  std::string user;
  std::string path;
  privsep::identity owner;
  store::mbox::options opts;
};

// One line per mailbox: to the log, or to stdout for posternd --recover-all.
void report(const context& ctx, log::level lvl, const std::string& line) {
  if (ctx.echo) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    return;
  }
  log::write(lvl, line);
}

store::mbox::options mbox_options_of(const config& cfg) {
  store::mbox::options o;
  o.locking = mbox_locking_of(cfg);
  o.faults = cfg.mbox_faults;
  return o;
}

// The identity sessions run with in event mode: server.user (and server.group) when this
// process is root, else this process's own ids.
result<privsep::identity> event_owner(const config& cfg) {
  privsep::identity id;
  if (::geteuid() != 0) {
    id.uid = ::geteuid();
    id.gid = ::getegid();
    return id;
  }
  if (cfg.user.empty()) {
    return error(errc::invalid,
                 "server.user is not set: event mode has no mail owner to "
                 "recover mailboxes as");
  }
  auto account = auth::find_system_user(cfg.user);
  if (!account) {
    return error(errc::invalid, "server.user: " + account.err().message());
  }
  id.name = account->name;
  id.uid = account->uid;
  id.gid = account->gid;
  id.home = account->home;
  if (!cfg.group.empty()) {
    auto g = auth::find_group(cfg.group);
    if (!g) {
      return error(errc::invalid, "server.group: " + g.err().message());
    }
    id.gid = *g;
  }
  auto groups = auth::system_groups(id.name, id.gid);  // what initgroups() gives
  if (!groups) {
    return std::move(groups).err();
  }
  id.groups = std::move(groups).value();
  return id;
}

result<context> make_context(const config& cfg, const unix_settings& us) {
  context ctx;
  ctx.cfg = &cfg;
  auto loc = store::parse_location(cfg.mail_location);
  if (!loc) {
    return error(errc::invalid, "mail.location: " + loc.err().message());
  }
  ctx.location = std::move(loc).value();
  if (!cfg.mbox_state_dir.empty()) {
    auto state = store::parse_location("mbox:" + cfg.mbox_state_dir);
    if (!state) {
      return error(errc::invalid, "mail.mbox_state_dir: " + state.err().message());
    }
    ctx.state_dir = std::move(state).value();
  }
  ctx.opts = mbox_options_of(cfg);
  ctx.rules = mail_owner_rules_of(cfg);
  ctx.privileged_group = us.privileged_group;
  const bool root = ::geteuid() == 0;
  ctx.switch_ids = root;
  ctx.per_user_owner = root && us.model == process_model::fork;
  if (ctx.per_user_owner) {
    auto login = privsep::resolve_login_user(us.login_user);
    if (!login) {
      return std::move(login).err();
    }
    ctx.rules.preauth_uid = login->uid;
    return ctx;
  }
  auto owner = event_owner(cfg);
  if (!owner) {
    return std::move(owner).err();
  }
  ctx.process_owner = std::move(owner).value();
  return ctx;
}

// Every passwd-file entry (the secrets are wiped before returning).
result<std::vector<auth::user_record>> passwd_file_users(const std::string& path) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    return error::from_errno(errno, "auth.passdb: " + path, errc::invalid);
  }
  read_outcome in = read_to_end(fd.get(), max_passwd_file);
  if (in.err != 0 || in.too_large) {
    std::fill(in.data.begin(), in.data.end(), '\0');
    return error(errc::invalid, "auth.passdb: " + path + ": cannot be read whole");
  }
  auto table = auth::parse_passwd_file(in.data, path);
  std::fill(in.data.begin(), in.data.end(), '\0');
  if (!table) {
    return std::move(table).err();
  }
  std::vector<auth::user_record> out;
  table->for_each([&](const auth::passwd_entry& e) { out.push_back(e.user); });
  std::sort(out.begin(), out.end(),
            [](const auth::user_record& a, const auth::user_record& b) { return a.name < b.name; });
  return out;
}

// Every system user (getpwent) but uid 0, until `deadline` (`cut` then set). The password
// database's enumeration is process-wide state: startup recovery runs in a process without
// other threads (startup_recovery.hpp), so nothing else enumerates it meanwhile.
// NOLINTBEGIN(concurrency-mt-unsafe): one thread, see above
std::vector<auth::user_record> system_users(clock::time_point deadline, bool& cut) {
  std::vector<auth::user_record> out;
  ::setpwent();
  // cppcheck-suppress getpwentCalled ; startup recovery runs in a process without other threads
  while (const struct passwd* pw = ::getpwent()) {
    if (clock::now() >= deadline) {
      cut = true;
      break;
    }
    if (pw->pw_uid == 0 || !auth::is_plausible_system_user(pw->pw_name)) {
      continue;
    }
    auth::user_record r;
    r.name = pw->pw_name;
    r.uid = pw->pw_uid;
    r.gid = pw->pw_gid;
    r.home = pw->pw_dir != nullptr ? pw->pw_dir : "";
    out.push_back(std::move(r));
  }
  ::endpwent();
  return out;
}
// NOLINTEND(concurrency-mt-unsafe)

// The mail owner of `r`, or an error saying why its mailbox is not recovered here.
result<privsep::identity> owner_of(const context& ctx, const auth::user_record& r) {
  privsep::identity id;
  if (ctx.per_user_owner) {
    auto owner = privsep::resolve_mail_owner(r, ctx.privileged_group);
    if (!owner) {
      return std::move(owner).err();
    }
    id = std::move(owner).value();
  } else {
    id = ctx.process_owner;
    id.name = r.name;
    id.home = r.home;
    if ((r.uid && *r.uid != id.uid) || (r.gid && *r.gid != id.gid)) {
      return error(errc::denied, "the passdb names other ids than this process's");
    }
  }
  POSTERN_TRY(auth::check_mail_owner(id.uid, ctx.rules));
  return id;
}

// Where the journal of the mbox `path` would be, as store::mbox finds it: the spool's
// directory when it belongs to `uid` and nobody else can write it, else `state_dir`. Only
// stat(2)/lstat(2): nothing is opened, no symbolic link at the journal's name is followed.
bool journal_pending(const std::string& path, uid_t uid, const std::string& state_dir) {
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == 0 ? "/" : path.substr(0, slash);
  const std::string name = "." + path.substr(slash + 1) + ".postern-journal";
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return false;
  }
  const bool shared = st.st_uid != uid || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (shared && state_dir.empty()) {
    return false;
  }
  return ::lstat(((shared ? state_dir : dir) + "/" + name).c_str(), &st) == 0;
}

// The uid and home a login of `r` would have, for finding its journal: from the record, or
// from the system user (fork mode) when the record lacks them. No group lookups.
struct owner_sketch {
  uid_t uid = 0;
  std::string home;
};

std::optional<owner_sketch> sketch_owner(const context& ctx, const auth::user_record& r) {
  if (!ctx.per_user_owner) {
    return owner_sketch{ctx.process_owner.uid, r.home};
  }
  if (r.uid && !r.home.empty()) {
    return owner_sketch{*r.uid, r.home};
  }
  auto sys = r.uid ? auth::find_system_user(*r.uid) : auth::find_system_user(r.name);
  if (!sys) {
    return r.uid ? std::optional<owner_sketch>(owner_sketch{*r.uid, r.home}) : std::nullopt;
  }
  return owner_sketch{r.uid ? *r.uid : sys->uid, r.home.empty() ? sys->home : r.home};
}

// The mailbox of `r` when it is an mbox with a pending journal.
std::optional<candidate> candidate_for(const context& ctx, const auth::user_record& r) {
  const store::location_template* loc = &ctx.location;
  store::location_template own;
  if (!r.mail.empty()) {
    auto parsed = store::parse_location(r.mail);
    if (!parsed) {
      return std::nullopt;  // the login refuses it and says so
    }
    own = std::move(parsed).value();
    loc = &own;
  }
  if (loc->kind != store::store_kind::mbox || !store::is_safe_user_name(r.name)) {
    return std::nullopt;
  }
  auto sketch = sketch_owner(ctx, r);
  if (!sketch) {
    return std::nullopt;
  }
  auto path = store::expand_location(*loc, {r.name, sketch->home});
  if (!path) {
    return std::nullopt;
  }
  store::mbox::options opts = ctx.opts;
  if (ctx.state_dir) {
    if (auto state = store::expand_location(*ctx.state_dir, {r.name, sketch->home})) {
      opts.state_dir = std::move(state).value();
    }
  }
  if (!journal_pending(*path, sketch->uid, opts.state_dir)) {
    return std::nullopt;
  }
  auto owner = owner_of(ctx, r);
  if (!owner) {
    log::warning("mbox recovery: {} (user {}) has an unfinished update, left alone: {}", *path,
                 log::safe(r.name), owner.err().message());
    return std::nullopt;
  }
  return candidate{r.name, std::move(path).value(), std::move(owner).value(), std::move(opts)};
}

enum class child_outcome { completed, set_aside, nothing, failed, timed_out };

// The child: becomes the owner, recovers, writes one letter (and an error text) to `out`.
[[noreturn]] void recovery_child(const context& ctx, const candidate& c, int out) {
  std::string answer;
  auto switched = ctx.switch_ids ? privsep::become(c.owner, "") : ok_result();
  if (!switched) {
    answer = "Ecannot become the mail owner (uid " + std::to_string(c.owner.uid) +
             "): " + switched.err().message();
  } else if (auto r = store::mbox::recover_pending(c.path, c.opts); !r) {
    answer = "E" + r.err().message();
  } else {
    answer = r->outcome == store::mbox::recovery_outcome::completed  ? "C"
             : r->outcome == store::mbox::recovery_outcome::obsolete ? "O"
                                                                     : "N";
  }
  (void)!::write(out, answer.data(), answer.size());
  _exit(0);
}

// Reads the child's answer until it closes the pipe or `deadline` passes.
bool read_answer(int fd, clock::time_point deadline, std::string& out) {
  char buf[1024];
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) {
      return false;
    }
    if (n <= 0) {
      continue;
    }
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got == 0) {
      return true;
    }
    if (got < 0 && errno != EINTR) {
      return false;
    }
    if (got > 0 && out.size() < 4096) {
      out.append(buf, static_cast<std::size_t>(got));
    }
  }
}

child_outcome run_child(const context& ctx, const candidate& c, std::string& why) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    why = "pipe failed";
    return child_outcome::failed;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    why = "fork failed";
    ::close(fds[0]);
    ::close(fds[1]);
    return child_outcome::failed;
  }
  if (pid == 0) {
    ::close(fds[0]);
    recovery_child(ctx, c, fds[1]);
  }
  ::close(fds[1]);
  unique_fd in(fds[0]);
  std::string answer;
  const bool done = read_answer(in.get(), ctx.deadline, answer);
  if (!done) {
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!done) {
    return child_outcome::timed_out;
  }
  if (answer.empty()) {
    why = "the recovery process ended without an answer (status " + std::to_string(status) + ")";
    return child_outcome::failed;
  }
  switch (answer[0]) {
    case 'C':
      return child_outcome::completed;
    case 'O':
      return child_outcome::set_aside;
    case 'N':
      return child_outcome::nothing;
    default:
      why = answer.substr(1);
      return child_outcome::failed;
  }
}

void recover_one(const context& ctx, const candidate& c, recovery_tally& t) {
  const std::string who =
      c.path + " (user " + log::safe(c.user) + ", uid " + std::to_string(c.owner.uid) + ")";
  const auto started = clock::now();
  std::string why;
  const child_outcome o = run_child(ctx, c, why);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started).count();
  switch (o) {
    case child_outcome::completed:
      ++t.completed;
      report(ctx, log::level::notice,
             "mbox recovery: " + who +
                 ": completed the update a crash "
                 "interrupted (" +
                 std::to_string(ms) + " ms)");
      break;
    case child_outcome::set_aside:
      ++t.set_aside;
      report(ctx, log::level::warning,
             "mbox recovery: " + who +
                 ": the unfinished update did "
                 "not match the mailbox: its journal was set aside, the "
                 "mailbox is as it was");
      break;
    case child_outcome::nothing:
      report(ctx, log::level::info, "mbox recovery: " + who + ": no unfinished update any more");
      break;
    case child_outcome::failed:
      ++t.failed;
      report(ctx, log::level::warning,
             "mbox recovery: " + who +
                 ": failed, left for the next "
                 "login: " +
                 why);
      break;
    case child_outcome::timed_out:
      ++t.left;
      report(ctx, log::level::warning,
             "mbox recovery: " + who +
                 ": stopped at the time limit, "
                 "left for the next login");
      break;
  }
}

result<std::vector<auth::user_record>> all_users(const config& cfg, bool& cut,
                                                 clock::time_point deadline) {
  const auto parsed = auth::parse_passdb_spec(cfg.passdb);
  const auto* spec = std::get_if<auth::passdb_spec>(&parsed);
  if (spec == nullptr) {
    return error(errc::invalid, "auth.passdb: unsupported passdb '" + cfg.passdb + "'");
  }
  if (spec->kind == auth::passdb_kind::passwd_file) {
    return passwd_file_users(spec->path);
  }
  return system_users(deadline, cut);
}

}  // namespace

result<recovery_tally> recover_pending_mailboxes(const config& cfg, const unix_settings& us,
                                                 clock::time_point deadline, bool echo) {
  auto ctx = make_context(cfg, us);
  if (!ctx) {
    return std::move(ctx).err();
  }
  ctx->deadline = deadline;
  ctx->echo = echo;
  recovery_tally t;
  auto users = all_users(cfg, t.enumeration_cut, deadline);
  if (!users) {
    return std::move(users).err();
  }
  std::vector<candidate> found;
  std::set<std::string> paths;
  for (const auto& u : *users) {
    if (clock::now() >= deadline) {
      t.enumeration_cut = true;
      break;
    }
    ++t.users;
    if (auto c = candidate_for(*ctx, u); c && paths.insert(c->path).second) {
      found.push_back(std::move(*c));
    }
  }
  t.pending = found.size();
  for (const auto& c : found) {
    if (clock::now() >= deadline) {
      ++t.left;
      report(*ctx, log::level::warning,
             "mbox recovery: " + c.path + " (user " + log::safe(c.user) +
                 "): not reached within the time limit, left for the "
                 "next login");
      continue;
    }
    recover_one(*ctx, c, t);
  }
  return t;
}

namespace {

void log_summary(const recovery_tally& t, long long ms) {
  if (t.pending == 0 && !t.enumeration_cut) {
    log::info("mbox recovery at startup: no unfinished update ({} users checked in {} ms)", t.users,
              ms);
    return;
  }
  log::notice(
      "mbox recovery at startup: {} unfinished updates found among {} users{}: {} "
      "completed, {} set aside, {} failed, {} left for the next login ({} ms)",
      t.pending, t.users, t.enumeration_cut ? " (the time limit ended the search)" : "",
      t.completed, t.set_aside, t.failed, t.left, ms);
}

// True when some user may have an mbox: the location is one, or the passdb can give
// per-user locations (passwd-file's userdb_mail).
bool mbox_possible(const config& cfg) {
  return cfg.mail_location.rfind("mbox:", 0) == 0 ||
         cfg.passdb.rfind(auth::passwd_file_prefix, 0) == 0;
}

[[noreturn]] void startup_child(const config& cfg, const unix_settings& us,
                                clock::time_point deadline) {
  const auto started = clock::now();
  auto t = recover_pending_mailboxes(cfg, us, deadline, false);
  if (!t) {
    log::error("mbox recovery at startup: {}", t.err().message());
    _exit(1);
  }
  log_summary(
      *t, std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started).count());
  _exit(0);
}

}  // namespace

void run_startup_recovery(const config& cfg, const unix_settings& us) {
  if (cfg.mbox_startup_recovery_timeout.count() == 0 || !mbox_possible(cfg)) {
    return;
  }
  const auto deadline = clock::now() + cfg.mbox_startup_recovery_timeout;
  const pid_t pid = ::fork();
  if (pid < 0) {
    log::warning(
        "mbox recovery at startup: fork failed; pending journals are completed at "
        "the next login");
    return;
  }
  if (pid == 0) {
    startup_child(cfg, us, deadline);
  }
  // The child stops its own work at the deadline; this bounds a child stuck elsewhere (NSS).
  const auto hard = deadline + std::chrono::seconds(5);
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) {
      return;
    }
    if (clock::now() >= hard) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      log::warning(
          "mbox recovery at startup: stopped after the time limit; what is left is "
          "completed at the next login");
      return;
    }
    ::usleep(5000);
  }
}

}  // namespace postern::server
