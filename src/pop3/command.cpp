#include "pop3/command.hpp"

#include "common/encoding.hpp"

#include <array>
#include <utility>

namespace postern::pop3 {
namespace {

constexpr std::array<std::pair<std::string_view, command_kind>, 17> verbs{{
    {"USER", command_kind::user},
    {"PASS", command_kind::pass},
    {"APOP", command_kind::apop},
    {"AUTH", command_kind::auth},
    {"STLS", command_kind::stls},
    {"CAPA", command_kind::capa},
    {"QUIT", command_kind::quit},
    {"STAT", command_kind::stat},
    {"LIST", command_kind::list},
    {"RETR", command_kind::retr},
    {"DELE", command_kind::dele},
    {"NOOP", command_kind::noop},
    {"RSET", command_kind::rset},
    {"TOP", command_kind::top},
    {"UIDL", command_kind::uidl},
    {"LAST", command_kind::last},
    {"XTND", command_kind::xtnd},
}};

}  // namespace

command parse_command(std::string_view line) noexcept {
  command cmd;
  auto sp = line.find(' ');
  cmd.verb = line.substr(0, sp);
  if (sp != std::string_view::npos) {
    cmd.args = line.substr(sp + 1);
  }
  for (const auto& [name, kind] : verbs) {
    if (ascii_iequals(cmd.verb, name)) {
      cmd.kind = kind;
      break;
    }
  }
  if (cmd.kind != command_kind::pass) {
    while (!cmd.args.empty() && (cmd.args.back() == ' ' || cmd.args.back() == '\t')) {
      cmd.args.remove_suffix(1);
    }
  }
  return cmd;
}

std::size_t split_args(std::string_view args, std::string_view* out, std::size_t max) noexcept {
  std::size_t n = 0;
  while (!args.empty()) {
    auto sp = args.find(' ');
    std::string_view piece = args.substr(0, sp);
    if (piece.empty()) {
      return 0;
    }
    if (n == max) {
      return max + 1;
    }
    out[n++] = piece;
    if (sp == std::string_view::npos) {
      break;
    }
    args.remove_prefix(sp + 1);
    if (args.empty()) {
      return 0;
    }
  }
  return n;
}

}  // namespace postern::pop3
