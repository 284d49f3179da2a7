// Command lines: the verb table and argument splitting (RFC 1939, 2449, 5034, 2595).
#pragma once

#include <string_view>

namespace postern::pop3 {

enum class command_kind {
  user,
  pass,
  apop,
  auth,
  stls,
  capa,
  quit,
  stat,
  list,
  retr,
  dele,
  noop,
  rset,
  top,
  uidl,
  last,
  xtnd,  // Qualcomm extensions: XTND XLIST, XTND XMIT
  unknown,
};

struct command {
  command_kind kind = command_kind::unknown;
  std::string_view verb;  // as the client wrote it
  // Everything after the single space that follows the verb, or empty. For PASS it is kept
  // verbatim (RFC 1939 section 7 lets a password hold spaces); for the other commands
  // trailing blanks are removed. Views into the caller's line.
  std::string_view args;
};

// Splits a line (without its line end) into verb and arguments; verbs are case-insensitive.
command parse_command(std::string_view line) noexcept;

// Splits `args` at single spaces: up to `max` pieces into `out`. Returns the number of pieces,
// or max + 1 if there are more, or 0 when an argument is empty (two spaces in a row).
std::size_t split_args(std::string_view args, std::string_view* out, std::size_t max) noexcept;

}  // namespace postern::pop3
