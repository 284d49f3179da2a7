#include "net/extensions.hpp"

#include "common/encoding.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

extern char** environ;

namespace postern::net {

result<std::string> read_header_field(store::message_reader& reader, std::string_view name) {
  constexpr std::size_t max_header = 256 * 1024;
  std::string head;
  char buf[8192];
  for (;;) {
    auto n = reader.read(std::span<char>(buf, sizeof buf));
    if (!n) {
      return std::move(n).err();
    }
    if (*n == 0) {
      break;
    }
    head.append(buf, *n);
    if (head.find("\n\n") != std::string::npos || head.find("\n\r\n") != std::string::npos ||
        head.size() >= max_header) {
      break;
    }
  }
  std::string found;
  bool in_field = false;
  std::size_t pos = 0;
  while (pos < head.size()) {
    std::size_t eol = head.find('\n', pos);
    if (eol == std::string::npos) {
      eol = head.size();
    }
    std::string_view line(head.data() + pos, eol - pos);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    pos = eol + 1;
    if (line.empty()) {
      break;  // end of the header section
    }
    if (line[0] == ' ' || line[0] == '\t') {
      if (in_field) {
        found.push_back(' ');
        std::size_t start = line.find_first_not_of(" \t");
        found.append(line.substr(start == std::string_view::npos ? line.size() : start));
      }
      continue;
    }
    if (in_field) {
      break;
    }
    auto colon = line.find(':');
    if (colon != std::string_view::npos && ascii_iequals(line.substr(0, colon), name)) {
      found.assign(line);
      in_field = true;
    }
  }
  // Never let a stored byte end the reply line early.
  for (auto& c : found) {
    if (c == '\r' || c == '\n' || c == '\0') {
      c = ' ';
    }
  }
  return found;
}

result<void> submit_message(const std::vector<std::string>& argv, std::string_view message_crlf) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return error(errc::permanent, "xmit_command must name an absolute program path");
  }
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    return error::from_errno(errno, "pipe");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[0], STDIN_FILENO);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[0]);
  if (rc != 0) {
    close(pipefd[1]);
    return error::from_errno(rc, "cannot start " + argv[0]);
  }
  std::string lf;
  lf.reserve(message_crlf.size());
  for (std::size_t i = 0; i < message_crlf.size(); ++i) {
    if (message_crlf[i] == '\r' && i + 1 < message_crlf.size() && message_crlf[i + 1] == '\n') {
      continue;
    }
    lf.push_back(message_crlf[i]);
  }
  std::string_view rest = lf;
  bool write_failed = false;
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  while (!rest.empty()) {
    ssize_t n = write(pipefd[1], rest.data(), rest.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      write_failed = true;
      break;
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  close(pipefd[1]);
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  int status = 0;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      break;
    }
    if (w < 0 && errno != EINTR) {
      return error::from_errno(errno, "waitpid");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return error(errc::temporary, argv[0] + " did not finish in two minutes");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (write_failed) {
    return error(errc::temporary, argv[0] + " did not read the whole message");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return error(errc::temporary,
                 argv[0] + " failed with status " + std::to_string(WEXITSTATUS(status)));
  }
  return {};
}

}  // namespace postern::net
