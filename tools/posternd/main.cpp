// posternd: the Postern POP3 server. Wiring only: parse the command line, load the
// configuration, hand over to a process mode.
#include "auth/schemes.hpp"
#include "common/parse.hpp"
#include "common/secret_string.hpp"
#include "server/config.hpp"
#include "server/daemon.hpp"
#include "server/demo.hpp"
#include "server/fork_mode.hpp"
#include "server/setup.hpp"
#include "server/startup_recovery.hpp"
#include "server/systemd.hpp"
#include "server/unix_settings.hpp"
#include "store/location.hpp"
#include "store/mbox/journal.hpp"
#include "store/mbox/mbox.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <vector>

namespace {

// Detaches from the terminal: fork, new session, stdio to /dev/null. Returns false on failure.
bool daemonize() {
  pid_t pid = fork();
  if (pid < 0) {
    return false;
  }
  if (pid > 0) {
    _exit(0);
  }
  if (setsid() < 0) {
    return false;
  }
  pid = fork();
  if (pid < 0) {
    return false;
  }
  if (pid > 0) {
    _exit(0);
  }
  if (chdir("/") != 0) {
    return false;
  }
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  dup2(fd, STDIN_FILENO);
  dup2(fd, STDOUT_FILENO);
  dup2(fd, STDERR_FILENO);
  if (fd > STDERR_FILENO) {
    close(fd);
  }
  return true;
}

// Reads one line from stdin without echo when it is a terminal. The line end is not kept.
bool read_password(const char* prompt, std::string& out) {
  bool tty = isatty(STDIN_FILENO) != 0;
  termios saved{};
  if (tty) {
    std::fputs(prompt, stderr);
    tcgetattr(STDIN_FILENO, &saved);
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
  }
  bool ok = static_cast<bool>(std::getline(std::cin, out));
  if (tty) {
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    std::fputs("\n", stderr);
  }
  if (!out.empty() && out.back() == '\r') {
    out.pop_back();
  }
  return ok;
}

// posternd --hash SCHEME: like `doveadm pw -s SCHEME`. Prints "{SCHEME}...".
int hash_command(const std::string& scheme) {
  std::string first, second;
  if (!read_password("Password: ", first)) {
    std::fprintf(stderr, "posternd: no password given\n");
    return 2;
  }
  if (isatty(STDIN_FILENO) != 0) {
    if (!read_password("Retype password: ", second) || first != second) {
      std::fprintf(stderr, "posternd: passwords do not match\n");
      return 2;
    }
  }
  postern::secret_string pw(first);
  std::fill(first.begin(), first.end(), '\0');
  std::fill(second.begin(), second.end(), '\0');
  if (pw.empty()) {
    std::fprintf(stderr, "posternd: empty passwords are refused\n");
    return 2;
  }
  auto hashed = postern::auth::hash_password(scheme, pw);
  if (!hashed) {
    std::fprintf(stderr, "posternd: %s\n", hashed.err().message().c_str());
    return 2;
  }
  std::printf("%s\n", hashed->c_str());
  return 0;
}

// Test hooks for the integration tests of mbox crash recovery: with POSTERN_TEST_MBOX_FAULT=N
// the daemon exits (as if killed) at the N-th fault point of an mbox update, with
// POSTERN_TEST_MBOX_COPY_BUFFER=B its journal copies in B-byte pieces (store/mbox/journal.hpp).
// The countdown goes into the configuration, which hands it to every mbox open. Compiled only
// into test builds (POSTERN_TESTS=ON); a release binary ignores these variables.
void apply_test_hooks([[maybe_unused]] postern::server::config& cfg) {
#ifdef POSTERN_TEST_HOOKS
  const char* step = std::getenv("POSTERN_TEST_MBOX_FAULT");
  const char* bytes = std::getenv("POSTERN_TEST_MBOX_COPY_BUFFER");
  if (step == nullptr && bytes == nullptr) {
    return;
  }
  // Digits only; anything else counts as 0 (off), as before.
  const auto number = [](const char* text) {
    return text != nullptr ? postern::parse_u64(text).value_or(0) : 0;
  };
  static postern::store::mbox::fault_countdown faults(
      static_cast<int>(std::min<std::uint64_t>(number(step), INT_MAX)),
      static_cast<std::size_t>(number(bytes)));
  cfg.mbox_faults = &faults;
#endif
}

// As root, becomes the owner of `path` (its groups, plus the group of its directory, which
// dotlocks need in a root:mail 2775 spool). Fills `user` and `home` from the password file.
bool become_owner_of(const std::string& path, std::string& user, std::string& home) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    std::perror(("posternd: --recover: " + path).c_str());
    return false;
  }
  // cppcheck-suppress getpwuidCalled ; --recover runs in one thread
  const struct passwd* pw = ::getpwuid(st.st_uid);  // NOLINT(concurrency-mt-unsafe): one thread
  if (pw == nullptr) {
    std::fprintf(stderr, "posternd: --recover: uid %u of %s has no password entry\n",
                 static_cast<unsigned>(st.st_uid), path.c_str());
    return false;
  }
  user = pw->pw_name;
  home = pw->pw_dir;
  if (::geteuid() != 0 || st.st_uid == 0) {
    return true;
  }
  struct stat dir {};
  const std::string parent = path.substr(0, path.rfind('/') == 0 ? 1 : path.rfind('/'));
  int n = 64;
  std::vector<gid_t> groups(static_cast<std::size_t>(n));
  if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<std::size_t>(n));
    ::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n);
  }
  groups.resize(static_cast<std::size_t>(n));
  if (::stat(parent.c_str(), &dir) == 0 && dir.st_gid != 0) {
    groups.push_back(dir.st_gid);
  }
  if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(pw->pw_gid) != 0 ||
      ::setuid(st.st_uid) != 0) {
    std::perror("posternd: --recover: cannot become the mailbox's owner");
    return false;
  }
  return true;
}

// posternd --recover PATH: completes (or sets aside) an interrupted update of the mbox PATH
// with the locks a session takes, as PATH's owner. Exit 0: done or nothing to do.
int recover_command(const std::string& path, const postern::server::config& cfg) {
  namespace mbox = postern::store::mbox;
  std::string user;
  std::string home;
  if (!become_owner_of(path, user, home)) {
    return 1;
  }
  mbox::options opts;
  opts.locking = postern::server::mbox_locking_of(cfg);
  opts.faults = cfg.mbox_faults;
  if (!cfg.mbox_state_dir.empty()) {
    auto loc = postern::store::parse_location("mbox:" + cfg.mbox_state_dir);
    if (loc) {
      if (auto dir = postern::store::expand_location(*loc, {user, home})) {
        opts.state_dir = std::move(dir).value();
      }
    }
  }
  auto r = mbox::recover_pending(path, opts);
  if (!r) {
    std::fprintf(stderr, "posternd: --recover %s: %s\n", path.c_str(), r.err().message().c_str());
    return 1;
  }
  const char* what = r->outcome == mbox::recovery_outcome::completed
                         ? "the interrupted update was completed"
                     : r->outcome == mbox::recovery_outcome::obsolete
                         ? "the unfinished update did not match the mailbox: its journal was "
                           "set aside (see the log), the mailbox is as it was"
                         : "no unfinished update";
  std::printf("%s: %s (state directory %s)\n", path.c_str(), what,
              r->state_dir.empty() ? "-" : r->state_dir.c_str());
  return 0;
}

// posternd --recover-all: what posternd does at startup, on demand and without a time
// limit: every user's mbox with an interrupted update, each as its mail owner. Exit 0 when
// every pending journal was completed or set aside.
int recover_all_command(const postern::server::config& cfg, bool fork_model) {
  auto us = postern::server::unix_settings_from(cfg);
  if (!us) {
    std::fprintf(stderr, "posternd: %s\n", us.err().message().c_str());
    return 1;
  }
  if (fork_model) {
    us->model = postern::server::process_model::fork;
  }
  auto t = postern::server::recover_pending_mailboxes(
      cfg, *us, std::chrono::steady_clock::time_point::max(), true);
  if (!t) {
    std::fprintf(stderr, "posternd: --recover-all: %s\n", t.err().message().c_str());
    return 1;
  }
  std::printf(
      "%zu users checked, %zu unfinished updates: %zu completed, %zu set aside, %zu "
      "failed\n",
      t->users, t->pending, t->completed, t->set_aside, t->failed);
  return t->failed == 0 ? 0 : 1;
}

}  // namespace

static int run_main(int argc, char** argv) {
  CLI::App app{"posternd: the Postern POP3 server"};
  std::string config_path = "/etc/postern/postern.toml";
  bool foreground = false, inetd = false, check = false, version = false;
  std::string demo_dir;
  std::uint16_t demo_port = 8110;
  app.add_option("-C,--config", config_path, "Configuration file")->capture_default_str();
  app.add_flag("-f,--foreground", foreground, "Stay in the foreground (systemd, supervisors)");
  app.add_flag("-i,--inetd", inetd, "Serve one session on stdin/stdout (inetd, master process)");
  app.add_flag("--check-config", check, "Validate the configuration, print it and exit");
  app.add_flag("-V,--version", version, "Print the version and exit");
  bool list_keys = false;
  app.add_flag(
      "--list-config-keys", list_keys,
      "Print every configuration key as TABLE.KEY = SAMPLE (a valid non-default value) and exit");
  auto* demo = app.add_option("--demo", demo_dir,
                              "Create a demo setup in DIR (user demo, password demo) and serve it")
                   ->expected(0, 1)
                   ->default_str("postern-demo");
  app.add_option("--demo-port", demo_port, "Port of the demo server on 127.0.0.1")
      ->capture_default_str();
  std::string hash_scheme;
  auto* hash = app.add_option("--hash", hash_scheme,
                              "Hash a password read from stdin for a passwd-file (SHA512-CRYPT, "
                              "BLF-CRYPT, SCRAM-SHA-256, CRAM-MD5, PLAIN, ...) and exit")
                   ->expected(0, 1)
                   ->default_str("SHA512-CRYPT");
  std::uint32_t daemon_children = 0;
  auto* daemon_opt =
      app.add_option("--daemon", daemon_children,
                     "Fork mode (system users, privilege separation), at most N sessions "
                     "at once (like Mailutils' --daemon[=N])")
          ->expected(0, 1);
  std::string recover_path;
  auto* recover_opt = app.add_option("--recover", recover_path,
                                     "Complete an interrupted update of the mbox PATH (as its "
                                     "owner, with the configured locks) and exit");
  bool recover_all = false;
  app.add_flag("--recover-all", recover_all,
               "Complete the interrupted mbox updates of every user of the passdb (each as "
               "its mail owner, as at startup) and exit");
  bool only_v4 = false, only_v6 = false;
  app.add_flag("-4", only_v4, "Listen on the IPv4 addresses of server.listen only");
  app.add_flag("-6", only_v6, "Listen on the IPv6 addresses of server.listen only");
  app.get_formatter()->column_width(36);
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("posternd %s\n", POSTERN_VERSION);
    return 0;
  }
  if (list_keys) {
    for (const auto& k : postern::server::config_keys()) {
      std::printf("%.*s.%.*s = %.*s\n", static_cast<int>(k.table.size()), k.table.data(),
                  static_cast<int>(k.key.size()), k.key.data(), static_cast<int>(k.sample.size()),
                  k.sample.data());
    }
    return 0;
  }
  if (*hash) {
    return hash_command(hash_scheme.empty() ? "SHA512-CRYPT" : hash_scheme);
  }
  if (inetd && (*demo || check)) {
    std::fprintf(stderr, "posternd: --inetd cannot be combined with --demo or --check-config\n");
    return 2;
  }
  if (*demo) {
    if (demo_dir.empty()) {
      demo_dir = "postern-demo";
    }
    auto prepared = postern::server::prepare_demo(demo_dir, demo_port);
    if (!prepared) {
      std::fprintf(stderr, "posternd: demo: %s\n", prepared.err().message().c_str());
      return 1;
    }
    config_path = prepared.value();
    foreground = true;
  }

  if (*recover_opt) {
    // The configuration gives the locks and the state directory; without one (none given
    // and no default file), the defaults.
    postern::server::config defaults;
    apply_test_hooks(defaults);
    if (app.count("--config") == 0 && ::access(config_path.c_str(), F_OK) != 0) {
      return recover_command(recover_path, defaults);
    }
    auto rc = postern::server::load_config(config_path);
    if (!rc) {
      std::fprintf(stderr, "posternd: %s\n", rc.err().message().c_str());
      return 1;
    }
    apply_test_hooks(*rc);
    return recover_command(recover_path, *rc);
  }
  auto cfg = postern::server::load_config(config_path);
  if (!cfg) {
    std::fprintf(stderr, "posternd: %s\n", cfg.err().message().c_str());
    return 1;
  }
  apply_test_hooks(*cfg);
  if (recover_all) {
    return recover_all_command(
        *cfg, *daemon_opt || cfg->unix.model == postern::server::process_model::fork);
  }
  auto unix_settings = postern::server::unix_settings_from(*cfg);
  if (!unix_settings) {
    std::fprintf(stderr, "posternd: %s\n", unix_settings.err().message().c_str());
    return 1;
  }
  auto us = std::move(unix_settings).value();
  if (*daemon_opt) {
    if (cfg->processes != 1) {
      std::fprintf(stderr,
                   "posternd: --daemon selects fork mode, which runs one process per session; "
                   "server.processes (set in %s) applies to event mode only: remove one of them\n",
                   config_path.c_str());
      return 1;
    }
    us.model = postern::server::process_model::fork;
    if (daemon_children > 0) {
      us.max_children = daemon_children;
    }
  }
  if (only_v4 && only_v6) {
    std::fprintf(stderr, "posternd: -4 and -6 exclude each other\n");
    return 2;
  }
  if (only_v4 || only_v6) {
    us.family =
        only_v4 ? postern::server::address_family::ipv4 : postern::server::address_family::ipv6;
  }
  if (auto r = postern::server::apply_address_family(*cfg, us.family); !r) {
    std::fprintf(stderr, "posternd: %s\n", r.err().message().c_str());
    return 1;
  }
  if (auto r = postern::server::check_store_identity(*cfg, us); !r) {
    std::fprintf(stderr, "posternd: %s: %s\n", config_path.c_str(), r.err().message().c_str());
    return 1;
  }
  if (auto r = postern::server::check_passdb_file(*cfg, us); !r) {
    std::fprintf(stderr, "posternd: auth.passdb: %s\n", r.err().message().c_str());
    return 1;
  }
  if (check) {
    std::cout << postern::server::format_config(*cfg);
    return 0;
  }
  if (inetd) {
    return us.model == postern::server::process_model::fork
               ? postern::server::run_privsep_inetd(*cfg, us)
               : postern::server::run_inetd(*cfg);
  }
  // Started by systemd (sockets or a notify socket): the service manager tracks this process,
  // and LISTEN_PID names it, so it must not detach.
  if (postern::server::systemd::under_service_manager()) {
    foreground = true;
  }
  if (!foreground && !daemonize()) {
    std::perror("posternd: cannot detach");
    return 1;
  }
  if (us.model == postern::server::process_model::fork) {
    return postern::server::run_fork_daemon(*cfg, us);
  }
  return postern::server::run_daemon(*cfg);
}

// STYLE: main catches what startup throws, prints one line and exits non-zero.
int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "posternd: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "posternd: unknown exception\n");
  }
  return 1;
}
