#include "pop3/session.hpp"

#include "common/encoding.hpp"
#include "common/parse.hpp"

#include <fmt/format.h>

#include <iterator>

namespace postern::pop3 {

session::session(session_options opts) : opts_(std::move(opts)) {
  out_.reserve(limits::initial_reply_reserve);
  if (!opts_.resume_user.empty()) {
    user_ = opts_.resume_user;
    method_ = opts_.resume_method;
    pending_ = step::open_maildrop;
    return;
  }
  if (opts_.apop_timestamp.empty()) {
    reply_ok(opts_.greeting);
  } else {
    reply_ok(opts_.greeting + " " + opts_.apop_timestamp);
  }
}

void session::feed(std::string_view bytes) { in_.append(bytes); }

std::string session::take_unprocessed_input() {
  std::string rest = in_.substr(in_pos_);
  in_.clear();
  in_pos_ = 0;
  return rest;
}

void session::reply_ok(std::string_view text) {
  if (text.empty()) {
    out_.append("+OK\r\n");
    return;
  }
  out_.append("+OK ");
  out_.append(text);
  out_.append("\r\n");
}

void session::reply_err(std::string_view text) {
  out_.append("-ERR ");
  out_.append(text);
  out_.append("\r\n");
}

void session::bad_command(std::string_view text) {
  reply_err(text);
  if (opts_.max_bad_commands > 0 && ++bad_commands_ >= opts_.max_bad_commands) {
    reply_err("Too many bad commands, closing connection.");
    close_ = true;
  }
}

step session::next() {
  if (pending_ != step::need_input) {
    return pending_;
  }
  for (;;) {
    if (close_ || state_ == session_state::closed) {
      state_ = session_state::closed;
      return step::close;
    }
    if ((turn_lines_ >= limits::max_lines_per_turn || out_.size() >= limits::max_output_per_turn) &&
        has_buffered_line()) {
      turn_lines_ = 0;
      return step::yield;
    }
    auto r = decoder_.decode(std::string_view(in_).substr(in_pos_), max_line());
    in_pos_ += r.consumed;
    if (r.st != line_decoder::status::need_more) {
      ++turn_lines_;
    }
    switch (r.st) {
      case line_decoder::status::need_more:
        turn_lines_ = 0;
        in_.erase(0, in_pos_);
        in_pos_ = 0;
        if (in_.empty() && in_.capacity() > limits::idle_input_keep) {
          in_.shrink_to_fit();
        }
        if (eof_) {
          close_ = true;
          continue;
        }
        return step::need_input;
      case line_decoder::status::too_long:
      case line_decoder::status::invalid:
        mark({}, line_kind::discarded, 0,
             xmit_receiving_ || sasl_phase_ != sasl_phase::none ? reply_shape::none
                                                                : reply_shape::single);
        if (xmit_receiving_) {
          xmit_too_big_ = true;  // the message is refused when its end arrives
          break;
        }
        if (sasl_phase_ != sasl_phase::none) {
          // An unusable response ends the exchange: the next line is a command again.
          sasl_phase_ = sasl_phase::none;
          sasl_response_.wipe();
          reply_err("[AUTH] Authentication failed: response too long or invalid.");
          break;
        }
        bad_command(r.st == line_decoder::status::too_long ? "Line too long." : "Invalid command.");
        break;
      case line_decoder::status::line:
        handle_line(r.line);
        if (pending_ != step::need_input) {
          return pending_;
        }
        break;
    }
  }
}

std::size_t session::max_line() const noexcept {
  if (xmit_receiving_) {
    return limits::max_message_line;
  }
  return sasl_phase_ == sasl_phase::none ? limits::max_command_line : limits::max_auth_line;
}

void session::mark(std::string_view line, line_kind kind, std::size_t shown, reply_shape reply) {
  if (opts_.lines != nullptr) {
    opts_.lines->client_line(line, line_mark{kind, shown, reply});
  }
}

std::size_t session::shown_of(const command& cmd, std::string_view line) const noexcept {
  const std::size_t verb_only = cmd.verb.size();
  // The end of argument `a` (a view into `line`) within `line`.
  auto end_of = [&](std::string_view a) {
    return static_cast<std::size_t>(a.data() + a.size() - line.data());
  };
  switch (cmd.kind) {
    case command_kind::unknown:
      // A mistyped PASS ("PAS secret", "PASS<TAB>secret"), a password typed as a command, a
      // SASL answer sent after the AUTH was refused.
      return 0;
    case command_kind::pass:
      return verb_only;
    case command_kind::apop: {
      std::string_view args[2];
      return split_args(cmd.args, args, 2) >= 1 ? end_of(args[0]) : verb_only;
    }
    case command_kind::auth: {
      if (cmd.args.empty()) {
        return line.size();
      }
      std::string_view args[2];
      if (split_args(cmd.args, args, 2) == 0) {
        return verb_only;
      }
      // The mechanism only when it is one this server names: anything else may be an
      // initial response typed in its place.
      bool named = ascii_iequals(args[0], "PLAIN") || ascii_iequals(args[0], "LOGIN");
      for (const auto& m : opts_.sasl_mechanisms) {
        named = named || ascii_iequals(args[0], m);
      }
      return named ? end_of(args[0]) : verb_only;
    }
    case command_kind::user:
      return line.size();
    default:
      // Before login the arguments of other commands are not needed to follow the exchange.
      return state_ == session_state::authorization && !cmd.args.empty() ? verb_only : line.size();
  }
}

reply_shape session::reply_of(const command& cmd) const noexcept {
  switch (cmd.kind) {
    case command_kind::retr:
    case command_kind::top:
      return reply_shape::body;
    case command_kind::list:
    case command_kind::uidl:
      return cmd.args.empty() ? reply_shape::multi : reply_shape::single;
    case command_kind::capa:
      return reply_shape::multi;
    case command_kind::auth:
      return cmd.args.empty() ? reply_shape::multi : reply_shape::sasl;
    case command_kind::xtnd: {
      std::string_view args[1];
      return split_args(cmd.args, args, 1) >= 1 && ascii_iequals(args[0], "XLIST")
                 ? reply_shape::multi
                 : reply_shape::single;
    }
    default:
      return reply_shape::single;
  }
}

void session::handle_line(std::string_view line) {
  if (xmit_receiving_) {
    mark(line, line_kind::message, line.size(),
         line == "." ? reply_shape::single : reply_shape::none);
    handle_xmit_line(line);
    return;
  }
  if (sasl_phase_ != sasl_phase::none) {
    mark(line, line_kind::sasl_response, line == "*" ? 1 : 0, reply_shape::none);
    handle_sasl_line(line);
    return;
  }
  command cmd = parse_command(line);
  if (opts_.lines != nullptr) {
    mark(line, line_kind::command, shown_of(cmd, line), reply_of(cmd));
  }
  if (state_ == session_state::authorization) {
    handle_authorization(cmd);
  } else if (state_ == session_state::transaction) {
    handle_transaction(cmd);
  }
}

bool session::expect_no_args(const command& cmd) {
  if (!cmd.args.empty()) {
    bad_command("Too many arguments.");
    return false;
  }
  return true;
}

void session::send_capa() {
  out_.append("+OK Capability list follows\r\n");
  out_.append("CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n");
  if (state_ == session_state::authorization) {
    if (opts_.stls_offered) {
      out_.append("STLS\r\n");
    }
    if (!opts_.sasl_mechanisms.empty() && !opts_.tls_required) {
      out_.append("SASL");
      for (const auto& m : opts_.sasl_mechanisms) {
        out_.push_back(' ');
        out_.append(m);
      }
      out_.append("\r\n");
    }
    if (opts_.user_pass_allowed && !opts_.tls_required) {
      out_.append("USER\r\n");
    }
  }
  for (const std::string* cap : {&opts_.login_delay_capability, &opts_.expire_capability}) {
    if (!cap->empty()) {
      out_.append(*cap);
      out_.append("\r\n");
    }
  }
  if (opts_.xtnd_xlist || opts_.xtnd_xmit) {
    out_.append("XTND");
    out_.append(opts_.xtnd_xlist ? " XLIST" : "");
    out_.append(opts_.xtnd_xmit ? " XMIT" : "");
    out_.append("\r\n");
  }
  if (!opts_.implementation.empty()) {
    out_.append("IMPLEMENTATION ");
    out_.append(opts_.implementation);
    out_.append("\r\n");
  }
  out_.append(".\r\n");
}

void session::handle_authorization(const command& cmd) {
  if (opts_.tls_required && cmd.kind != command_kind::capa && cmd.kind != command_kind::stls &&
      cmd.kind != command_kind::quit) {
    if (cmd.kind == command_kind::unknown) {
      bad_command("Unknown command.");
    } else {
      reply_err("[AUTH] TLS is required: issue STLS first.");
    }
    return;
  }
  switch (cmd.kind) {
    case command_kind::capa:
      if (expect_no_args(cmd)) {
        send_capa();
        bad_commands_ = 0;
      }
      return;
    case command_kind::quit:
      if (expect_no_args(cmd)) {
        quit_received_ = true;
        reply_ok("Logging out.");
        close_ = true;
      }
      return;
    case command_kind::user:
      if (!opts_.user_pass_allowed) {
        reply_err("[AUTH] Plaintext authentication disallowed on non-secure connections.");
        return;
      }
      if (cmd.args.empty()) {
        bad_command("USER needs a user name.");
        return;
      }
      user_.assign(cmd.args);
      reply_ok();
      return;
    case command_kind::pass:
      if (!opts_.user_pass_allowed) {
        user_.clear();
        reply_err("[AUTH] Plaintext authentication disallowed on non-secure connections.");
        return;
      }
      if (user_.empty()) {
        bad_command("No user name given, use USER first.");
        return;
      }
      method_ = "USER";
      password_ = secret_string(cmd.args);
      pending_ = step::authenticate;
      return;
    case command_kind::stls:
      if (!expect_no_args(cmd)) {
        return;
      }
      if (tls_active_) {
        bad_command("TLS is already active.");
        return;
      }
      if (!opts_.stls_offered) {
        bad_command("STLS is not available.");
        return;
      }
      reply_ok("Begin TLS negotiation now.");
      // RFC 2595 section 4 and the CVE-2011-0411 class: nothing the client sent before the
      // handshake may be taken as a command after it.
      in_.erase(in_pos_);
      decoder_ = line_decoder();
      user_.clear();
      pending_ = step::start_tls;
      return;
    case command_kind::auth:
      start_auth(cmd);
      return;
    case command_kind::apop:
      start_apop(cmd);
      return;
    case command_kind::unknown:
      bad_command("Unknown command.");
      return;
    default:
      bad_command("Command not valid before login.");
      return;
  }
}

void session::start_auth(const command& cmd) {
  std::string_view args[2];
  std::size_t n = split_args(cmd.args, args, 2);
  if (cmd.args.empty()) {
    // Not in RFC 5034, but many clients probe with a bare AUTH: list the mechanisms.
    out_.append("+OK Mechanisms follow\r\n");
    for (const auto& m : opts_.sasl_mechanisms) {
      out_.append(m);
      out_.append("\r\n");
    }
    out_.append(".\r\n");
    return;
  }
  if (n == 0 || n > 2) {
    bad_command("Syntax: AUTH mechanism [initial-response]");
    return;
  }
  std::string mech = ascii_to_upper(args[0]);
  bool usable = false;
  for (const auto& m : opts_.sasl_mechanisms) {
    usable = usable || m == mech;
  }
  if (!usable) {
    if (!opts_.user_pass_allowed && (mech == "PLAIN" || mech == "LOGIN")) {
      reply_err("[AUTH] Plaintext authentication disallowed on non-secure connections.");
    } else {
      bad_command("Unsupported authentication mechanism.");
    }
    return;
  }
  method_ = std::move(mech);
  sasl_response_ = secret_string(n == 2 ? args[1] : std::string_view());
  user_.clear();
  sasl_start_ = true;
  pending_ = step::sasl;
}

void session::start_apop(const command& cmd) {
  if (opts_.apop_timestamp.empty()) {
    bad_command("APOP is not available.");
    return;
  }
  std::string_view args[2];
  if (split_args(cmd.args, args, 2) != 2) {
    bad_command("Syntax: APOP name digest");
    return;
  }
  user_.assign(args[0]);
  apop_digest_.assign(args[1]);
  method_ = "APOP";
  pending_ = step::authenticate;
}

void session::handle_sasl_line(std::string_view line) {
  if (line == "*") {
    sasl_phase_ = sasl_phase::none;
    reply_err("[AUTH] Authentication cancelled.");
    return;
  }
  if (sasl_phase_ == sasl_phase::awaiting_final_ack) {
    sasl_phase_ = sasl_phase::none;
    if (!line.empty()) {
      reply_err("[AUTH] Authentication failed.");
      user_.clear();
      return;
    }
    pending_ = step::open_maildrop;
    return;
  }
  sasl_phase_ = sasl_phase::none;
  sasl_response_ = secret_string(line);
  sasl_start_ = false;
  pending_ = step::sasl;
}

void session::sasl_challenge(std::string_view challenge_b64) {
  pending_ = step::need_input;
  sasl_response_.wipe();
  out_.append("+ ");
  out_.append(challenge_b64);
  out_.append("\r\n");
  sasl_phase_ = sasl_phase::awaiting_response;
}

void session::sasl_done(auth_status status, std::string_view final_b64) {
  sasl_response_.wipe();
  if (status == auth_status::ok && !final_b64.empty()) {
    pending_ = step::need_input;
    out_.append("+ ");
    out_.append(final_b64);
    out_.append("\r\n");
    sasl_phase_ = sasl_phase::awaiting_final_ack;
    return;
  }
  auth_done(status);
}

void session::tls_started(bool ok, connection_policy policy) {
  pending_ = step::need_input;
  if (!ok) {
    close_ = true;
    return;
  }
  tls_active_ = true;
  opts_.stls_offered = false;
  opts_.tls_required = false;
  opts_.user_pass_allowed = policy.user_pass_allowed;
  opts_.sasl_mechanisms = std::move(policy.sasl_mechanisms);
}

void session::auth_done(auth_status status) {
  pending_ = step::need_input;
  switch (status) {
    case auth_status::ok:
      pending_ = step::open_maildrop;
      return;
    case auth_status::bad_credentials:
      out_.append("-ERR [AUTH] Authentication failed.");
      break;
    case auth_status::temporary_failure:
      out_.append("-ERR [SYS/TEMP] Authentication temporarily unavailable, try again later.");
      break;
  }
  user_.clear();
  if (++failed_logins_ >= limits::max_failed_logins) {
    out_.append(" Disconnected for too many authentication failures.");
    close_ = true;
  }
  out_.append("\r\n");
}

void session::open_done(open_status status, std::span<const store::message_info> messages) {
  pending_ = step::need_input;
  switch (status) {
    case open_status::ok:
      messages_ = messages;
      deleted_ = std::make_unique<bool[]>(messages.size());
      state_ = session_state::transaction;
      bad_commands_ = 0;
      reply_ok("Logged in.");
      return;
    case open_status::in_use:
      reply_err("[IN-USE] Mailbox is locked by another POP3 session.");
      break;
    case open_status::temporary_failure:
      reply_err("[SYS/TEMP] Unable to open the mailbox, try again later.");
      break;
    case open_status::permanent_failure:
      reply_err("[SYS/PERM] Unable to open the mailbox.");
      break;
    case open_status::login_delay:
      reply_err("[LOGIN-DELAY] Logged in too recently, try again later.");
      break;
  }
  user_.clear();
}

std::optional<std::size_t> session::message_arg(std::string_view arg, bool allow_deleted) {
  auto n = parse_u64(arg);
  if (!n) {
    bad_command("Invalid message number.");
    return std::nullopt;
  }
  if (*n == 0 || *n > messages_.size()) {
    bad_command("No such message.");
    return std::nullopt;
  }
  auto index = static_cast<std::size_t>(*n - 1);
  if (!allow_deleted && deleted_[index]) {
    bad_command("Message is deleted.");
    return std::nullopt;
  }
  return index;
}

std::optional<std::size_t> session::message_arg_only(const command& cmd) {
  std::string_view arg;
  std::size_t n = split_args(cmd.args, &arg, 1);
  if (n == 0) {
    bad_command("Missing or empty argument.");
    return std::nullopt;
  }
  if (n > 1) {
    bad_command("Too many arguments.");
    return std::nullopt;
  }
  return message_arg(arg);
}

void session::handle_transaction(const command& cmd) {
  auto out = std::back_inserter(out_);
  switch (cmd.kind) {
    case command_kind::capa:
      if (expect_no_args(cmd)) {
        send_capa();
        bad_commands_ = 0;
      }
      return;
    case command_kind::noop:
      if (expect_no_args(cmd)) {
        reply_ok();
        bad_commands_ = 0;
      }
      return;
    case command_kind::stat:
      handle_stat(cmd);
      return;
    case command_kind::list:
    case command_kind::uidl:
      handle_listing(cmd);
      return;
    case command_kind::retr: {
      auto index = message_arg_only(cmd);
      if (!index) {
        return;
      }
      retrieve_index_ = *index;
      top_lines_.reset();
      pending_ = step::retrieve;
      return;
    }
    case command_kind::top:
      handle_top(cmd);
      return;
    case command_kind::dele: {
      auto index = message_arg_only(cmd);
      if (!index) {
        return;
      }
      deleted_[*index] = true;
      fmt::format_to(out, "+OK Message {} deleted.\r\n", *index + 1);
      bad_commands_ = 0;
      return;
    }
    case command_kind::rset:
      handle_rset(cmd);
      return;
    case command_kind::last:
      if (expect_no_args(cmd)) {
        fmt::format_to(out, "+OK {}\r\n", last_accessed_);
        bad_commands_ = 0;
      }
      return;
    case command_kind::quit:
      handle_quit(cmd);
      return;
    case command_kind::xtnd:
      handle_xtnd(cmd);
      return;
    case command_kind::user:
    case command_kind::pass:
    case command_kind::apop:
    case command_kind::auth:
      bad_command("Already logged in.");
      return;
    case command_kind::stls:
      bad_command("STLS is not allowed after login.");
      return;
    case command_kind::unknown:
      bad_command("Unknown command.");
      return;
  }
}

void session::handle_stat(const command& cmd) {
  auto out = std::back_inserter(out_);
  if (!expect_no_args(cmd)) {
    return;
  }
  std::uint64_t count = 0, bytes = 0;
  for (std::size_t i = 0; i < messages_.size(); ++i) {
    if (!deleted_[i]) {
      ++count;
      bytes += messages_[i].size;
    }
  }
  fmt::format_to(out, "+OK {} {}\r\n", count, bytes);
  bad_commands_ = 0;
}

void session::handle_listing(const command& cmd) {
  auto out = std::back_inserter(out_);
  const bool is_list = cmd.kind == command_kind::list;
  if (!cmd.args.empty()) {
    auto index = message_arg_only(cmd);
    if (!index) {
      return;
    }
    if (is_list) {
      fmt::format_to(out, "+OK {} {}\r\n", *index + 1, messages_[*index].size);
    } else {
      fmt::format_to(out, "+OK {} {}\r\n", *index + 1, messages_[*index].uidl);
    }
    bad_commands_ = 0;
    return;
  }
  out_.append(is_list ? "+OK scan listing follows\r\n" : "+OK unique-id listing follows\r\n");
  for (std::size_t i = 0; i < messages_.size(); ++i) {
    if (deleted_[i]) {
      continue;
    }
    if (is_list) {
      fmt::format_to(out, "{} {}\r\n", i + 1, messages_[i].size);
    } else {
      fmt::format_to(out, "{} {}\r\n", i + 1, messages_[i].uidl);
    }
  }
  out_.append(".\r\n");
  bad_commands_ = 0;
}

void session::handle_top(const command& cmd) {
  std::string_view args[2];
  std::size_t n = split_args(cmd.args, args, 2);
  if (n != 2) {
    bad_command(n > 2 ? "Too many arguments." : "TOP needs a message number and a line count.");
    return;
  }
  auto lines = parse_u64(args[1]);
  if (!lines) {
    bad_command("Invalid line count.");
    return;
  }
  auto index = message_arg(args[0]);
  if (!index) {
    return;
  }
  retrieve_index_ = *index;
  top_lines_ = *lines;
  pending_ = step::retrieve;
}

void session::handle_rset(const command& cmd) {
  auto out = std::back_inserter(out_);
  if (!expect_no_args(cmd)) {
    return;
  }
  std::uint64_t count = messages_.size(), bytes = 0;
  for (std::size_t i = 0; i < messages_.size(); ++i) {
    deleted_[i] = false;
    bytes += messages_[i].size;
  }
  last_accessed_ = 0;
  fmt::format_to(out, "+OK Maildrop has {} messages ({} octets).\r\n", count, bytes);
  bad_commands_ = 0;
}

void session::handle_quit(const command& cmd) {
  if (!expect_no_args(cmd)) {
    return;
  }
  quit_received_ = true;
  for (std::size_t i = 0; i < messages_.size(); ++i) {
    if (deleted_[i]) {
      ++stats_.marked_count;
      stats_.marked_bytes += messages_[i].size;
    }
  }
  state_ = session_state::update;
  pending_ = step::commit;
}

void session::handle_xtnd(const command& cmd) {
  std::string_view args[3];
  std::size_t n = split_args(cmd.args, args, 3);
  if (n >= 1 && n <= 3 && ascii_iequals(args[0], "XLIST") && opts_.xtnd_xlist) {
    if (n < 2) {
      bad_command("Syntax: XTND XLIST header [message]");
      return;
    }
    for (char c : args[1]) {
      // RFC 5322 field names: printable ASCII except ':'.
      if (c <= 0x20 || c >= 0x7F || c == ':') {
        bad_command("Invalid header name.");
        return;
      }
    }
    xlist_indexes_.clear();
    if (n == 3) {
      auto index = message_arg(args[2]);
      if (!index) {
        return;
      }
      xlist_indexes_.push_back(*index);
    } else {
      for (std::size_t i = 0; i < messages_.size(); ++i) {
        if (!deleted_[i]) {
          xlist_indexes_.push_back(i);
        }
      }
    }
    xlist_header_.assign(args[1]);
    pending_ = step::xlist;
    return;
  }
  if (n == 1 && ascii_iequals(args[0], "XMIT") && opts_.xtnd_xmit) {
    reply_ok("Start sending the message, end with a line holding only \".\".");
    xmit_receiving_ = true;
    xmit_too_big_ = false;
    xmit_buffer_.clear();
    return;
  }
  bad_command("Unknown or disabled XTND command.");
}

void session::handle_xmit_line(std::string_view line) {
  if (line == ".") {
    xmit_receiving_ = false;
    if (xmit_too_big_) {
      xmit_buffer_.clear();
      xmit_buffer_.shrink_to_fit();
      reply_err("Message too large, not sent.");
      return;
    }
    pending_ = step::xmit;
    return;
  }
  if (xmit_too_big_) {
    return;
  }
  if (!line.empty() && line[0] == '.') {
    line.remove_prefix(1);
  }
  if (xmit_buffer_.size() + line.size() + 2 > opts_.xmit_max_size) {
    xmit_too_big_ = true;
    return;
  }
  xmit_buffer_.append(line);
  xmit_buffer_.append("\r\n");
}

void session::xlist_done(bool ok, const std::vector<std::string>& values) {
  pending_ = step::need_input;
  if (!ok || values.size() != xlist_indexes_.size()) {
    reply_err("[SYS/TEMP] Unable to read the messages, try again later.");
    return;
  }
  auto out = std::back_inserter(out_);
  out_.append("+OK Header list follows\r\n");
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (values[i].empty()) {
      continue;
    }
    std::string_view v = values[i];
    fmt::format_to(out, "{} ", xlist_indexes_[i] + 1);
    if (!v.empty() && v[0] == '.') {
      out_.push_back('.');
    }
    out_.append(v);
    out_.append("\r\n");
  }
  out_.append(".\r\n");
  bad_commands_ = 0;
}

void session::xmit_done(bool ok) {
  pending_ = step::need_input;
  xmit_buffer_.clear();
  xmit_buffer_.shrink_to_fit();
  if (ok) {
    reply_ok("Message sent.");
  } else {
    reply_err("[SYS/TEMP] The message could not be submitted.");
  }
}

void session::retrieve_started(bool ok, errc why) {
  if (!ok) {
    pending_ = step::need_input;
    switch (why) {
      case errc::not_found:
        // Gone for good: retrying cannot help, so no [SYS/TEMP] (RFC 3206).
        reply_err("Message was deleted by another program.");
        break;
      case errc::changed:
        reply_err(
            "Message was changed by another program since it was listed; "
            "log in again to read it.");
        break;
      case errc::permanent:
      case errc::denied:
        reply_err("[SYS/PERM] Unable to read the message.");
        break;
      default:
        reply_err("[SYS/TEMP] Unable to read the message, try again later.");
        break;
    }
    return;
  }
  const auto& msg = messages_[retrieve_index_];
  if (top_lines_) {
    ++stats_.top_count;
    reply_ok();
  } else {
    ++stats_.retr_count;
    fmt::format_to(std::back_inserter(out_), "+OK {} octets\r\n", msg.size);
  }
  if (retrieve_index_ + 1 > last_accessed_) {
    last_accessed_ = retrieve_index_ + 1;
  }
}

void session::retrieve_done(std::uint64_t sent) {
  if (top_lines_) {
    stats_.top_bytes += sent;
  } else {
    stats_.retr_bytes += messages_[retrieve_index_].size;
  }
  bad_commands_ = 0;
  pending_ = step::need_input;
}

void session::commit_done(bool ok) {
  pending_ = step::need_input;
  if (ok) {
    reply_ok("Logging out.");
  } else {
    reply_err("[SYS/TEMP] Some deleted messages were not removed.");
  }
  close_ = true;
}

}  // namespace postern::pop3
