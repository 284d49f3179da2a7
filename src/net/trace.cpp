#include "net/trace.hpp"

#include "common/log.hpp"
#include "store/location.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace postern::net {
namespace {

constexpr mode_t trace_mode = 0600;

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) {
    if (c >= 'a' && c <= 'z') {
      c = static_cast<char>(c - 'a' + 'A');
    }
  }
  return out;
}

void escape_into(std::string_view s, std::string& out) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '\\') {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xF]);
    }
  }
}

// Splits "VERB rest" at the first space.
std::pair<std::string_view, std::string_view> split_verb(std::string_view line) {
  auto sp = line.find(' ');
  if (sp == std::string_view::npos) {
    return {line, {}};
  }
  return {line.substr(0, sp), line.substr(sp + 1)};
}

// The verbs the POP3 engine knows (pop3/command.cpp); the line of any other verb is not
// written before login.
bool known_verb(std::string_view verb) {
  static constexpr std::string_view verbs[] = {"USER", "PASS", "APOP", "AUTH", "STLS", "CAPA",
                                               "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP",
                                               "RSET", "TOP",  "UIDL", "LAST", "XTND"};
  for (auto v : verbs) {
    if (v == verb) {
      return true;
    }
  }
  return false;
}

// A SASL mechanism name (RFC 4422: upper-case letters, digits, '-', '_', at most 20), in
// either case but not mixed, so that base64 typed in its place is not taken for one.
bool mechanism_like(std::string_view s) {
  if (s.empty() || s.size() > 20) {
    return false;
  }
  bool lower = false;
  bool upper_seen = false;
  for (char c : s) {
    if (c >= 'a' && c <= 'z') {
      lower = true;
    } else if (c >= 'A' && c <= 'Z') {
      upper_seen = true;
    } else if (!((c >= '0' && c <= '9') || c == '-' || c == '_')) {
      return false;
    }
  }
  return !(lower && upper_seen);
}

std::string octets(std::uint64_t n, std::string_view what) {
  return "[" + std::string(what) + std::to_string(n) + " octets]";
}

bool write_fully(int fd, std::string_view data) noexcept {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

std::string file_name_for(std::string_view session_id) {
  std::string out;
  for (char c : session_id) {
    if (c == '/') {
      out.push_back('_');
    } else if (c == '+') {
      out.push_back('-');
    } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_' || c == '.') {
      out.push_back(c);
    }
  }
  if (out.empty() || out.front() == '.') {
    out.insert(out.begin(), 's');
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// trace_sink

result<std::shared_ptr<trace_sink>> trace_sink::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, trace_mode);
  if (fd < 0) {
    int err = errno;
    errc code = (err == EACCES || err == EPERM || err == ENOENT || err == ENOTDIR ||
                 err == ELOOP || err == EISDIR || err == EROFS)
                    ? errc::permanent
                    : errc::temporary;
    return error::from_errno(err, "trace file " + path, code);
  }
  return std::shared_ptr<trace_sink>(new trace_sink(fd, path));
}

trace_sink::~trace_sink() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

void trace_sink::write(std::string_view text) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_ || text.empty()) {
    return;
  }
  if (!write_fully(fd_, text)) {
    int err = errno;
    failed_ = true;
    try {
      log::warning("trace file {}: {}; tracing stopped", path_, std::strerror(err));
    } catch (...) {
    }
  }
}

// ---------------------------------------------------------------------------------------
// protocol_redactor

protocol_redactor::protocol_redactor(bool expect_greeting) : logged_in_(!expect_greeting) {
  if (expect_greeting) {
    expected_.push_back(expect::single);
  }
}

void protocol_redactor::client_bytes(std::string_view data, std::vector<std::string>& out) {
  feed(data, client_, true, out);
}

void protocol_redactor::server_bytes(std::string_view data, std::vector<std::string>& out) {
  feed(data, server_, false, out);
}

void protocol_redactor::finish(std::vector<std::string>& out) {
  if (!client_.empty()) {
    client_line(client_, out);
    client_.clear();
  }
  if (!server_.empty()) {
    server_line(server_, out);
    server_.clear();
  }
  if (xmit_data_ && xmit_octets_ > 0) {
    out.push_back("C: " + octets(xmit_octets_, "message, incomplete: "));
    xmit_data_ = false;
  }
  if (multi_ == multi::summary && body_octets_ > 0) {
    out.push_back("S: " + octets(body_octets_, "message body, incomplete: "));
    multi_ = multi::none;
  }
}

void protocol_redactor::feed(std::string_view data, line_buffer& buf, bool from_client,
                             std::vector<std::string>& out) {
  while (!data.empty()) {
    auto nl = data.find('\n');
    std::string_view part = data.substr(0, nl);
    if (buf.text.size() < trace_max_line + 1) {
      buf.text.append(part.substr(0, trace_max_line + 1 - buf.text.size()));
    }
    buf.length += part.size();
    if (!part.empty()) {
      buf.last_cr = part.back() == '\r';
    }
    if (nl == std::string_view::npos) {
      return;
    }
    data.remove_prefix(nl + 1);
    // The line is complete: drop its CR (kept while the line was open: it may be data).
    if (buf.last_cr) {
      --buf.length;
      if (buf.text.size() > buf.length) {
        buf.text.resize(buf.length);
      }
    }
    if (buf.text.size() > trace_max_line) {
      buf.text.resize(trace_max_line);
    }
    if (from_client) {
      client_line(buf, out);
    } else {
      server_line(buf, out);
    }
    buf.clear();
  }
}

void protocol_redactor::client_line(const line_buffer& line, std::vector<std::string>& out) {
  const std::string_view text = line.text;
  const bool cut = line.length > text.size();
  auto plain = [&](std::string_view shown) {
    std::string s = "C: ";
    escape_into(shown, s);
    if (cut) {
      s += " [+" + std::to_string(line.length - text.size()) + " octets]";
    }
    out.push_back(std::move(s));
  };
  if (xmit_data_) {
    if (text == "." && !cut) {
      out.push_back("C: " + octets(xmit_octets_, "message: "));
      out.push_back("C: .");
      xmit_data_ = false;
      xmit_octets_ = 0;
    } else {
      xmit_octets_ += line.length + 2;
    }
    return;
  }
  if (sasl_) {
    if (text == "*" && !cut) {
      out.push_back("C: *");
    } else {
      out.push_back("C: [redacted]");
    }
    return;
  }
  auto [verb_text, args] = split_verb(text);
  const std::string verb = upper(verb_text);
  if (verb == "PASS") {
    out.push_back(args.empty() && text.size() == 4 ? "C: PASS" : "C: PASS [redacted]");
    expected_.push_back(expect::single);
    return;
  }
  if (verb == "APOP") {
    auto [user, digest] = split_verb(args);
    std::string s = "C: APOP ";
    escape_into(user, s);
    if (!digest.empty() || cut) {
      s += " [redacted]";
    }
    out.push_back(std::move(s));
    expected_.push_back(expect::single);
    return;
  }
  if (verb == "AUTH") {
    if (args.empty()) {
      out.push_back("C: AUTH");
      expected_.push_back(expect::multi);
      return;
    }
    auto [mech, initial] = split_verb(args);
    std::string s = "C: AUTH ";
    if (mechanism_like(mech)) {
      escape_into(mech, s);
    } else {
      s += "[redacted]";
    }
    if (!initial.empty() || cut) {
      s += " [redacted]";
    }
    out.push_back(std::move(s));
    sasl_ = true;
    expected_.push_back(expect::sasl);
    return;
  }
  if (!known_verb(verb)) {
    out.push_back("C: [redacted]");  // even after login: a SASL answer to a refused AUTH
  } else if (logged_in_ || verb == "USER") {
    plain(text);
  } else {
    out.push_back("C: " + verb + (args.empty() && !cut ? "" : " [redacted]"));
  }
  expect_reply_to(verb, args);
}

void protocol_redactor::expect_reply_to(std::string_view verb, std::string_view args) {
  if (verb == "RETR" || verb == "TOP") {
    expected_.push_back(expect::body);
  } else if (verb == "LIST" || verb == "UIDL") {
    expected_.push_back(args.empty() ? expect::multi : expect::single);
  } else if (verb == "CAPA") {
    expected_.push_back(expect::multi);
  } else if (verb == "STLS") {
    expected_.push_back(expect::stls);
  } else if (verb == "XTND") {
    auto [sub, rest] = split_verb(args);
    (void)rest;
    std::string s = upper(sub);
    expected_.push_back(s == "XMIT" ? expect::xmit : s == "XLIST" ? expect::multi : expect::single);
  } else {
    expected_.push_back(expect::single);
  }
}

void protocol_redactor::server_line(const line_buffer& line, std::vector<std::string>& out) {
  const std::string_view text = line.text;
  const bool cut = line.length > text.size();
  auto plain = [&](std::string_view shown) {
    std::string s = "S: ";
    escape_into(shown, s);
    if (cut) {
      s += " [+" + std::to_string(line.length - text.size()) + " octets]";
    }
    out.push_back(std::move(s));
  };
  if (multi_ != multi::none) {
    if (text == "." && !cut) {
      if (multi_ == multi::summary) {
        out.push_back("S: " + octets(body_octets_, "message body: "));
      }
      out.push_back("S: .");
      multi_ = multi::none;
      body_octets_ = 0;
    } else if (multi_ == multi::summary) {
      body_octets_ += line.length + 2;
    } else {
      plain(text);
    }
    return;
  }
  const bool ok = text.starts_with("+OK");
  expect e = expected_.empty() ? expect::single : expected_.front();
  if (e == expect::sasl && (text.starts_with("+ ") || text == "+")) {
    out.push_back("S: + " + octets(line.length > 2 ? line.length - 2 : 0, "challenge: "));
    return;  // the exchange goes on
  }
  if (!expected_.empty()) {
    expected_.pop_front();
  }
  plain(text);
  switch (e) {
    case expect::sasl:
      sasl_ = false;
      break;
    case expect::multi:
      multi_ = ok ? multi::full : multi::none;
      break;
    case expect::body:
      multi_ = ok ? multi::summary : multi::none;
      body_octets_ = 0;
      break;
    case expect::xmit:
      if (ok) {
        xmit_data_ = true;
        xmit_octets_ = 0;
        expected_.push_front(expect::single);  // the reply once the message is in
      }
      break;
    case expect::stls:
      if (ok) {
        expected_.clear();  // pipelined input before the handshake was discarded
        sasl_ = false;
      }
      break;
    case expect::single:
      break;
  }
}

// ---------------------------------------------------------------------------------------
// traced_transport

bool trace_enabled(const trace_settings& s) noexcept {
  return s.shared != nullptr || !s.telemetry_dir.empty();
}

traced_transport::traced_transport(std::unique_ptr<transport> inner, trace_settings settings)
    : inner_(std::move(inner)),
      settings_(std::move(settings)),
      redactor_(settings_.expect_greeting) {}

traced_transport::~traced_transport() {
  if (!disabled_) {
    try {
      std::vector<std::string> lines;
      redactor_.finish(lines);
      emit(lines);
    } catch (...) {
    }
  }
  if (telemetry_fd_ >= 0) {
    ::close(telemetry_fd_);
  }
}

asio::awaitable<std::size_t> traced_transport::read_some(asio::mutable_buffer buf,
                                                         std::error_code& ec) {
  std::size_t n = co_await inner_->read_some(buf, ec);
  if (n > 0) {
    record(std::string_view(static_cast<const char*>(buf.data()), n), true);
  }
  co_return n;
}

asio::awaitable<std::string_view> traced_transport::read_shared(std::error_code& ec) {
  std::string_view data = co_await inner_->read_shared(ec);
  if (!data.empty()) {
    record(data, true);
  }
  co_return data;
}

asio::awaitable<void> traced_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  co_await inner_->write_all(buf, ec);
  if (!ec) {
    record(std::string_view(static_cast<const char*>(buf.data()), buf.size()), false);
  }
}

void traced_transport::close() noexcept { inner_->close(); }

std::unique_ptr<transport> traced_transport::replace_inner(std::unique_ptr<transport> t) noexcept {
  std::swap(inner_, t);
  return t;
}

transport* traced_transport::unwrap(transport* t) noexcept {
  while (auto* tr = dynamic_cast<traced_transport*>(t)) {
    t = tr->inner_.get();
  }
  return t;
}

std::string traced_transport::stamp() const {
  auto now = settings_.clock ? settings_.clock() : std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  return buf;
}

void traced_transport::record(std::string_view data, bool from_client) noexcept {
  if (disabled_) {
    return;
  }
  try {
    std::vector<std::string> lines;
    if (from_client) {
      redactor_.client_bytes(data, lines);
    } else {
      redactor_.server_bytes(data, lines);
    }
    emit(lines);
  } catch (...) {
    disabled_ = true;  // out of memory or similar: the session goes on untraced
  }
}

void traced_transport::emit(std::vector<std::string>& lines) noexcept {
  if (lines.empty()) {
    return;
  }
  try {
    const std::string prefix = stamp() + " " + settings_.session_id + " ";
    std::string text;
    for (const auto& l : lines) {
      text += prefix;
      text += l;
      text += '\n';
    }
    if (settings_.shared) {
      settings_.shared->write(text);
    }
    if (settings_.telemetry_dir.empty()) {
      return;
    }
    if (telemetry_fd_ >= 0) {
      if (!write_fully(telemetry_fd_, text)) {
        ::close(telemetry_fd_);
        telemetry_fd_ = -1;
      }
    } else if (!user_known_) {
      if (pre_login_.size() + text.size() <= trace_pre_login_buffer) {
        pre_login_ += text;
      } else {
        pre_login_dropped_ += lines.size();
      }
    }
  } catch (...) {
    disabled_ = true;
  }
}

void traced_transport::set_user(std::string_view user) noexcept {
  redactor_.set_logged_in();
  if (user_known_ || disabled_) {
    return;
  }
  user_known_ = true;
  std::string held = std::move(pre_login_);
  pre_login_.clear();
  if (settings_.telemetry_dir.empty() || !store::is_safe_user_name(user)) {
    return;
  }
  try {
    const std::string dir = settings_.telemetry_dir + "/" + std::string(user);
    struct stat st{};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return;  // telemetry only for users whose directory exists
    }
    const std::string path = dir + "/" + file_name_for(settings_.session_id);
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, trace_mode);
    if (fd < 0) {
      log::warning("telemetry file {}: {}", path, std::strerror(errno));
      return;
    }
    telemetry_fd_ = fd;
    telemetry_path_ = path;
    if (pre_login_dropped_ > 0) {
      held += stamp() + " " + settings_.session_id + " [" + std::to_string(pre_login_dropped_) +
              " pre-login lines not kept]\n";
    }
    if (!write_fully(fd, held)) {
      ::close(telemetry_fd_);
      telemetry_fd_ = -1;
    }
  } catch (...) {
    disabled_ = true;
  }
}

}  // namespace postern::net
