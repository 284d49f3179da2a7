// posternd: the Postern POP3 server. Wiring only: parse the command line, load the
// configuration, hand over to a process mode.
#include "server/config.hpp"
#include "server/daemon.hpp"
#include "server/demo.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

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

}  // namespace

int main(int argc, char** argv) {
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
  auto* demo = app.add_option("--demo", demo_dir,
                              "Create a demo setup in DIR (user demo, password demo) and serve it")
                   ->expected(0, 1)
                   ->default_str("postern-demo");
  app.add_option("--demo-port", demo_port, "Port of the demo server on 127.0.0.1")->capture_default_str();
  app.get_formatter()->column_width(36);
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("posternd %s\n", POSTERN_VERSION);
    return 0;
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

  auto cfg = postern::server::load_config(config_path);
  if (!cfg) {
    std::fprintf(stderr, "posternd: %s\n", cfg.err().message().c_str());
    return 1;
  }
  if (check) {
    std::cout << postern::server::format_config(*cfg);
    return 0;
  }
  if (inetd) {
    return postern::server::run_inetd(*cfg);
  }
  if (!foreground && !daemonize()) {
    std::perror("posternd: cannot detach");
    return 1;
  }
  return postern::server::run_daemon(*cfg);
}
