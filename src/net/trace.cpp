#include "net/trace.hpp"

#include "common/log.hpp"
#include "store/location.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

namespace postern::net {
namespace {

constexpr mode_t trace_mode = 0600;

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
    errc code = (err == EACCES || err == EPERM || err == ENOENT || err == ENOTDIR || err == ELOOP ||
                 err == EISDIR || err == EROFS)
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
      log::warning("trace file {}: {}; tracing stopped", path_,
                   std::generic_category().message(err));
    } catch (...) {
    }
  }
}

// ---------------------------------------------------------------------------------------
// protocol_redactor

protocol_redactor::protocol_redactor(bool expect_greeting) {
  if (expect_greeting) {
    expected_.push_back(expect::single);
  }
}

void protocol_redactor::server_bytes(std::string_view data, std::vector<std::string>& out) {
  while (!data.empty()) {
    auto nl = data.find('\n');
    std::string_view part = data.substr(0, nl);
    if (server_.text.size() < trace_max_line + 1) {
      server_.text.append(part.substr(0, trace_max_line + 1 - server_.text.size()));
    }
    server_.length += part.size();
    if (!part.empty()) {
      server_.last_cr = part.back() == '\r';
    }
    if (nl == std::string_view::npos) {
      return;
    }
    data.remove_prefix(nl + 1);
    // The line is complete: drop its CR (kept while the line was open: it may be data).
    if (server_.last_cr) {
      --server_.length;
      if (server_.text.size() > server_.length) {
        server_.text.resize(server_.length);
      }
    }
    if (server_.text.size() > trace_max_line) {
      server_.text.resize(trace_max_line);
    }
    server_line(server_, out);
    server_.clear();
  }
}

void protocol_redactor::finish(std::vector<std::string>& out) {
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

void protocol_redactor::client_line(std::string_view line, const pop3::line_mark& mark,
                                    std::vector<std::string>& out) {
  expect_reply(mark.reply);
  if (mark.kind == pop3::line_kind::message) {
    if (line == ".") {
      out.push_back("C: " + octets(xmit_octets_, "message: "));
      out.push_back("C: .");
      xmit_data_ = false;
      xmit_octets_ = 0;
    } else {
      xmit_data_ = true;
      xmit_octets_ += line.size() + 2;
    }
    return;
  }
  if (mark.kind == pop3::line_kind::discarded) {
    out.push_back("C: [discarded]");
    return;
  }
  const std::size_t shown = std::min(mark.shown, line.size());
  std::string s = "C: ";
  escape_into(line.substr(0, std::min(shown, trace_max_line)), s);
  if (shown < line.size()) {
    s += shown == 0 ? "[redacted]" : " [redacted]";
  } else if (shown > trace_max_line) {
    s += " [+" + std::to_string(shown - trace_max_line) + " octets]";
  }
  out.push_back(std::move(s));
}

void protocol_redactor::expect_reply(pop3::reply_shape shape) {
  switch (shape) {
    case pop3::reply_shape::single:
      expected_.push_back(expect::single);
      break;
    case pop3::reply_shape::multi:
      expected_.push_back(expect::multi);
      break;
    case pop3::reply_shape::body:
      expected_.push_back(expect::body);
      break;
    case pop3::reply_shape::sasl:
      expected_.push_back(expect::sasl);
      break;
    case pop3::reply_shape::none:
      break;
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
    case expect::multi:
      multi_ = ok ? multi::full : multi::none;
      break;
    case expect::body:
      multi_ = ok ? multi::summary : multi::none;
      body_octets_ = 0;
      break;
    case expect::sasl:
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
  co_return co_await inner_->read_some(buf, ec);
}

asio::awaitable<std::string_view> traced_transport::read_shared(std::error_code& ec) {
  co_return co_await inner_->read_shared(ec);
}

asio::awaitable<void> traced_transport::write_all(asio::const_buffer buf, std::error_code& ec) {
  co_await inner_->write_all(buf, ec);
  if (!ec) {
    record(std::string_view(static_cast<const char*>(buf.data()), buf.size()));
  }
}

void traced_transport::close() noexcept { inner_->close(); }

std::unique_ptr<transport> traced_transport::replace_inner(std::unique_ptr<transport> t) noexcept {
  std::swap(inner_, t);
  return t;
}

std::string traced_transport::stamp() const {
  auto now = settings_.clock ? settings_.clock() : std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[80];
  (void)std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      static_cast<int>(ms % 1000));
  return buf;
}

void traced_transport::record(std::string_view data) noexcept {
  if (disabled_) {
    return;
  }
  try {
    std::vector<std::string> lines;
    redactor_.server_bytes(data, lines);
    emit(lines);
  } catch (...) {
    disabled_ = true;  // out of memory or similar: the session goes on untraced
  }
}

void traced_transport::client_line(std::string_view line, const pop3::line_mark& mark) {
  if (disabled_) {
    return;
  }
  try {
    std::vector<std::string> lines;
    redactor_.client_line(line, mark, lines);
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
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return;  // telemetry only for users whose directory exists
    }
    const std::string path = dir + "/" + file_name_for(settings_.session_id);
    int fd =
        ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, trace_mode);
    if (fd < 0) {
      log::warning("telemetry file {}: {}", path, std::generic_category().message(errno));
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
