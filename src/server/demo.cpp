// prepare_demo: writes a demo config, password file and maildrop. See demo.hpp.
//
// Messages are generated here (no fixture files to install) and are deterministic apart from
// the password salt, so a refreshed demo always looks the same to a client.
#include "server/demo.hpp"

#include <crypt.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "auth/system_users.hpp"
#include "common/unique_fd.hpp"
#include "server/config.hpp"

namespace postern::server {

namespace {

namespace fs = std::filesystem;

constexpr std::string_view marker_name = ".postern-demo";
constexpr std::string_view demo_user = "demo";
constexpr std::string_view demo_password = "demo";

// ---------------------------------------------------------------------------------------------
// Files

error fs_error(const std::error_code& ec, const std::string& what) {
  return error(errc::temporary, what, ec);
}

result<void> write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return error::from_errno(errno, "write " + path);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return ok_result();
}

// Writes `data` to `tmp_path` (replacing a leftover from an earlier crash), optionally sets
// its modification time, then renames it to `final_path`.
result<void> write_then_rename(const std::string& tmp_path, const std::string& final_path,
                               std::string_view data, mode_t mode, std::time_t mtime = 0) {
  if (::unlink(tmp_path.c_str()) != 0 && errno != ENOENT) {
    return error::from_errno(errno, "unlink " + tmp_path);
  }
  unique_fd fd(
      ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) {
    return error::from_errno(errno, "create " + tmp_path);
  }
  POSTERN_TRY(write_all(fd.get(), data, tmp_path));
  if (mtime != 0) {
    std::array<timespec, 2> times{timespec{mtime, 0}, timespec{mtime, 0}};
    if (::futimens(fd.get(), times.data()) != 0) {
      return error::from_errno(errno, "set times of " + tmp_path);
    }
  }
  if (::close(fd.release()) != 0) {
    return error::from_errno(errno, "close " + tmp_path);
  }
  if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    return error::from_errno(errno, "rename " + tmp_path + " to " + final_path);
  }
  return ok_result();
}

result<void> make_dir(const fs::path& p) {
  if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) {
    return error::from_errno(errno, "mkdir " + p.string());
  }
  return ok_result();
}

// Accepts a missing or empty directory, or one that an earlier call marked; creates it if
// missing.
result<void> claim_directory(const fs::path& dir) {
  std::error_code ec;
  auto st = fs::symlink_status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return fs_error(ec, dir.string());
  }
  if (!fs::exists(st)) {
    fs::create_directories(dir, ec);
    if (ec) {
      return fs_error(ec, "create " + dir.string());
    }
    fs::permissions(dir, fs::perms::owner_all, ec);  // holds a password hash
    if (ec) {
      return fs_error(ec, "chmod " + dir.string());
    }
    return ok_result();
  }
  if (!fs::is_directory(fs::status(dir, ec))) {
    return error(errc::invalid, dir.string() + ": not a directory");
  }
  bool marked = fs::exists(dir / marker_name, ec);
  if (ec) {
    return fs_error(ec, (dir / marker_name).string());
  }
  bool empty = fs::is_empty(dir, ec);
  if (ec) {
    return fs_error(ec, dir.string());
  }
  if (!marked && !empty) {
    return error(errc::invalid, dir.string() + ": not empty and not a Postern demo directory (no " +
                                    std::string(marker_name) +
                                    "); choose a new or empty directory");
  }
  return ok_result();
}

// ---------------------------------------------------------------------------------------------
// Password file

result<std::string> sha512_crypt(std::string_view password) {
  std::array<char, CRYPT_GENSALT_OUTPUT_SIZE> setting{};
  // Null random bytes: libxcrypt reads them from the operating system.
  if (::crypt_gensalt_rn("$6$", 0, nullptr, 0, setting.data(), static_cast<int>(setting.size())) ==
      nullptr) {
    return error::from_errno(errno, "crypt_gensalt_rn");
  }
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  errno = 0;
  const char* hash = ::crypt_rn(pw.c_str(), setting.data(), data.get(), sizeof(crypt_data));
  if (hash == nullptr || hash[0] == '*') {
    return error::from_errno(errno != 0 ? errno : EINVAL, "crypt_rn");
  }
  return std::string(hash);
}

// ---------------------------------------------------------------------------------------------
// Message text

std::string base64(std::string_view in) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    std::uint32_t v = (std::uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                      (std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                      std::uint32_t{static_cast<unsigned char>(in[i + 2])};
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (i < in.size()) {
    std::uint32_t v = std::uint32_t{static_cast<unsigned char>(in[i])} << 16;
    if (i + 1 < in.size()) {
      v |= std::uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
    }
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Base64 body text: 76-character lines (RFC 2045 section 6.8), LF line ends.
std::string base64_lines(std::string_view in) {
  std::string flat = base64(in);
  std::string out;
  out.reserve(flat.size() + flat.size() / 76 + 1);
  for (std::size_t i = 0; i < flat.size(); i += 76) {
    out.append(flat, i, 76);
    out += '\n';
  }
  return out;
}

// An RFC 2047 "B" encoded header value, split into encoded words of at most 75 characters
// on UTF-8 character boundaries and folded onto continuation lines.
std::string encode_header_utf8(std::string_view text) {
  constexpr std::size_t max_chunk = 45;  // 45 bytes -> 60 base64 chars + 12 = 72 <= 75
  std::string out;
  while (!text.empty()) {
    std::size_t n = std::min(max_chunk, text.size());
    while (n < text.size() && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) {
      --n;  // do not split a multi-byte character
    }
    if (!out.empty()) {
      out += "\n ";
    }
    out += "=?UTF-8?B?" + base64(text.substr(0, n)) + "?=";
    text.remove_prefix(n);
  }
  return out;
}

// RFC 5322 date-time, e.g. "Tue, 14 Nov 2023 22:13:20 +0000", in a fixed zone offset.
std::string rfc5322_date(std::time_t t, int offset_minutes) {
  static constexpr std::array<const char*, 7> days{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> months{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::time_t local = t + static_cast<std::time_t>(offset_minutes) * 60;
  std::tm tm{};
  ::gmtime_r(&local, &tm);
  int off = offset_minutes < 0 ? -offset_minutes : offset_minutes;
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%s, %d %s %04d %02d:%02d:%02d %c%02d%02d",
                      days[static_cast<std::size_t>(tm.tm_wday)], tm.tm_mday,
                      months[static_cast<std::size_t>(tm.tm_mon)], tm.tm_year + 1900, tm.tm_hour,
                      tm.tm_min, tm.tm_sec, offset_minutes < 0 ? '-' : '+', off / 60, off % 60);
  return buf;
}

// Deterministic pseudo-random numbers (splitmix64) for the generated attachment.
class splitmix64 {
 public:
  explicit splitmix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform-ish integer in [0, n).
  std::uint64_t below(std::uint64_t n) { return next() % n; }

 private:
  std::uint64_t state_;
};

// About 1.5 MiB of sensor readings as CSV; base64 makes the message just over 2 MiB.
std::string generate_readings_csv() {
  constexpr std::size_t target_bytes = 1536 * 1024;
  constexpr std::time_t start = 1696118400;  // 2023-10-01T00:00:00Z
  splitmix64 rng(20231117);
  std::string csv = "timestamp,sensor,temperature_c,humidity_pct,pressure_hpa\n";
  std::time_t t = start;
  char row[128];
  while (csv.size() < target_bytes) {
    for (int sensor = 1; sensor <= 8 && csv.size() < target_bytes; ++sensor) {
      std::tm tm{};
      ::gmtime_r(&t, &tm);
      auto temp = 1800 + static_cast<int>(rng.below(700));     // 18.00 .. 24.99 C
      auto hum = 350 + static_cast<int>(rng.below(300));       // 35.0 .. 64.9 %
      auto press = 99800 + static_cast<int>(rng.below(3000));  // 998.00 .. 1027.99 hPa
      (void)std::snprintf(
          row, sizeof row, "%04d-%02d-%02dT%02d:%02d:%02dZ,s%02d,%d.%02d,%d.%d,%d.%02d\n",
          tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, sensor,
          temp / 100, temp % 100, hum / 10, hum % 10, press / 100, press % 100);
      csv += row;
    }
    t += 300;
  }
  return csv;
}

struct demo_message {
  std::time_t time;  // delivery time: file name, mtime
  bool seen;         // in cur/ with ":2,S", else in new/
  std::string text;  // the whole message, LF line ends
};

std::string welcome_message() {
  return "Return-Path: <postmaster@example.org>\n"
         "Date: " +
         rfc5322_date(1700000000, 0) +
         "\n"
         "From: Postern Demo <postmaster@example.org>\n"
         "To: Demo User <demo@example.org>\n"
         "Subject: Welcome to the Postern demo\n"
         "Message-ID: <1700000000.welcome@demo.example.org>\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=us-ascii\n"
         "Content-Transfer-Encoding: 7bit\n"
         "\n"
         "Hello,\n"
         "\n"
         "this is the maildrop of the demo user of a Postern POP3 server. Log in\n"
         "with user name \"demo\" and password \"demo\"; the address and port are in\n"
         "postern.toml, next to the mail directory.\n"
         "\n"
         "The maildrop holds five messages, each chosen to exercise a part of POP3:\n"
         "\n"
         "  1. this note, already marked as seen (it lives in cur/)\n"
         "  2. a message with lines that begin with \".\", which the server must\n"
         "     dot-stuff on the wire\n"
         "  3. a multipart/alternative message with a plain-text and an HTML part\n"
         "  4. a message with a UTF-8 subject and sender, MIME-encoded\n"
         "  5. a report of about 2 MiB with a base64 attachment, to watch a large\n"
         "     RETR stream\n"
         "\n"
         "A session by hand looks like this:\n"
         "\n"
         "  USER demo\n"
         "  PASS demo\n"
         "  STAT\n"
         "  LIST\n"
         "  UIDL\n"
         "  TOP 3 5\n"
         "  RETR 2\n"
         "  DELE 1\n"
         "  QUIT\n"
         "\n"
         "Messages marked with DELE are removed only when you QUIT; drop the\n"
         "connection instead and they all stay. Setting up the demo again puts\n"
         "the maildrop back the way it was, so feel free to delete everything.\n"
         "\n"
         "-- \n"
         "Postern\n";
}

std::string dots_message() {
  return "Return-Path: <qa@example.com>\n"
         "Date: " +
         rfc5322_date(1700000300, 0) +
         "\n"
         "From: QA Robot <qa@example.com>\n"
         "To: demo@example.org\n"
         "Subject: Dot-stuffing check: lines that begin with a period\n"
         "Message-ID: <dots-1700000300@qa.example.com>\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=us-ascii\n"
         "Content-Transfer-Encoding: 7bit\n"
         "\n"
         "RFC 1939 section 3: in a multi-line response, a line that begins with\n"
         "the termination octet (\".\") is sent with one more \".\" in front, and\n"
         "the client removes it. A client that gets this wrong shows the lines\n"
         "below with the wrong number of periods, or stops reading early.\n"
         "\n"
         "The next line is a single period:\n"
         ".\n"
         "The next line is two periods:\n"
         "..\n"
         ".This line begins with one period.\n"
         "..This line begins with two periods.\n"
         "...and this one with three.\n"
         " . A space comes before this period, so it is not stuffed.\n"
         ".\n"
         "The line above and the last line of this message are single periods.\n"
         ".\n";
}

std::string alternative_message() {
  return "Return-Path: <ana@example.net>\n"
         "Date: " +
         rfc5322_date(1700086400, -180) +
         "\n"
         "From: Ana Lima <ana@example.net>\n"
         "To: Demo User <demo@example.org>\n"
         "Cc: Ben Okafor <ben@example.net>\n"
         "Subject: Team lunch on Friday?\n"
         "Message-ID: <CAF3k9-lunch-20231115@mail.example.net>\n"
         "MIME-Version: 1.0\n"
         "Content-Type: multipart/alternative; boundary=\"=_alt_7f3a1c\"\n"
         "\n"
         "This is a multi-part message in MIME format.\n"
         "\n"
         "--=_alt_7f3a1c\n"
         "Content-Type: text/plain; charset=us-ascii\n"
         "Content-Transfer-Encoding: 7bit\n"
         "\n"
         "Hi all,\n"
         "\n"
         "shall we have lunch together on Friday? Two options:\n"
         "\n"
         "  * 12:00 at the noodle bar on Harbour Street\n"
         "  * 12:30 at the canteen (cheaper, and it has a terrace)\n"
         "\n"
         "Reply by Thursday noon and I will book a table.\n"
         "\n"
         "Ana\n"
         "\n"
         "--=_alt_7f3a1c\n"
         "Content-Type: text/html; charset=us-ascii\n"
         "Content-Transfer-Encoding: 7bit\n"
         "\n"
         "<!DOCTYPE html>\n"
         "<html>\n"
         "<body>\n"
         "<p>Hi all,</p>\n"
         "<p>shall we have lunch together on <b>Friday</b>? Two options:</p>\n"
         "<ul>\n"
         "<li>12:00 at the noodle bar on Harbour Street</li>\n"
         "<li>12:30 at the canteen (cheaper, and it has a terrace)</li>\n"
         "</ul>\n"
         "<p>Reply by Thursday noon and I will book a table.</p>\n"
         "<p>Ana</p>\n"
         "</body>\n"
         "</html>\n"
         "\n"
         "--=_alt_7f3a1c--\n";
}

std::string utf8_message() {
  return "Return-Path: <juergen@example.de>\n"
         "Date: " +
         rfc5322_date(1700172800, 60) +
         "\n"
         "From: " +
         encode_header_utf8("Jürgen Müller") +
         " <juergen@example.de>\n"
         "To: Demo User <demo@example.org>\n"
         "Subject: " +
         encode_header_utf8("Grüße aus Zürich ☕ – Café am Freitag?") +
         "\n"
         "Message-ID: <20231116231320.4711@mx.example.de>\n"
         "MIME-Version: 1.0\n"
         "Content-Type: text/plain; charset=UTF-8\n"
         "Content-Transfer-Encoding: 8bit\n"
         "\n"
         "Hallo,\n"
         "\n"
         "viele Grüße aus Zürich! Hast du am Freitag Zeit für einen Kaffee? Das\n"
         "Café an der Limmat öffnet um 8 Uhr; Croissants gibt es bis 11 Uhr.\n"
         "\n"
         "Some more text to check that non-ASCII bytes pass through unchanged:\n"
         "  français: déjà vu, naïve, œuvre\n"
         "  español: mañana, señor, ¿qué tal?\n"
         "  ελληνικά: καλημέρα\n"
         "  日本語: こんにちは\n"
         "  emoji: ☕ 🥐 ✉️\n"
         "\n"
         "Bis bald,\n"
         "Jürgen\n";
}

std::string large_message() {
  std::string csv = generate_readings_csv();
  std::string text =
      "Return-Path: <reports@example.com>\n"
      "Date: " +
      rfc5322_date(1700259200, 0) +
      "\n"
      "From: Monitoring <reports@example.com>\n"
      "To: demo@example.org\n"
      "Subject: Sensor readings, Q4 2023 (weekly export)\n"
      "Message-ID: <export-2023w46-readings@monitor.example.com>\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/mixed; boundary=\"=_mixed_c0ffee\"\n"
      "\n"
      "This is a multi-part message in MIME format.\n"
      "\n"
      "--=_mixed_c0ffee\n"
      "Content-Type: text/plain; charset=us-ascii\n"
      "Content-Transfer-Encoding: 7bit\n"
      "\n"
      "Hello,\n"
      "\n"
      "attached is the weekly export of the readings of sensors s01 to s08,\n"
      "one row per sensor every five minutes since 1 October 2023 (UTC):\n"
      "temperature in degrees Celsius, relative humidity in percent and air\n"
      "pressure in hectopascal.\n"
      "\n"
      "The attachment is about 1.5 MiB of CSV, so this message is a little\n"
      "over 2 MiB: a good one to watch stream through RETR.\n"
      "\n"
      "-- \n"
      "Monitoring (automatic message, do not reply)\n"
      "\n"
      "--=_mixed_c0ffee\n"
      "Content-Type: text/csv; charset=us-ascii; name=\"readings-2023-q4.csv\"\n"
      "Content-Disposition: attachment; filename=\"readings-2023-q4.csv\"\n"
      "Content-Transfer-Encoding: base64\n"
      "\n";
  text += base64_lines(csv);
  text += "\n--=_mixed_c0ffee--\n";
  return text;
}

std::vector<demo_message> demo_messages() {
  std::vector<demo_message> m;
  m.push_back({1700000000, true, welcome_message()});
  m.push_back({1700000300, false, dots_message()});
  m.push_back({1700086400, false, alternative_message()});
  m.push_back({1700172800, false, utf8_message()});
  m.push_back({1700259200, false, large_message()});
  return m;
}

// "1700000300.M2P1.demo,S=<file size>,W=<size with CRLF line ends>", Dovecot's convention,
// so a store can learn both sizes from the name.
std::string maildir_name(const demo_message& msg, std::size_t index) {
  std::size_t lf = 0;
  for (char c : msg.text) {
    lf += c == '\n' ? 1 : 0;
  }
  return std::to_string(msg.time) + ".M" + std::to_string(index + 1) +
         "P1.demo,S=" + std::to_string(msg.text.size()) +
         ",W=" + std::to_string(msg.text.size() + lf);
}

result<void> write_maildrop(const fs::path& dir) {
  fs::path user_dir = dir / "mail" / std::string(demo_user);
  std::error_code ec;
  fs::remove_all(user_dir, ec);  // does not follow symlinks
  if (ec) {
    return fs_error(ec, "remove " + user_dir.string());
  }
  fs::path maildir = user_dir / "Maildir";
  for (const fs::path& p :
       {dir / "mail", user_dir, maildir, maildir / "tmp", maildir / "new", maildir / "cur"}) {
    POSTERN_TRY(make_dir(p));
  }
  auto messages = demo_messages();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& msg = messages[i];
    std::string name = maildir_name(msg, i);
    fs::path final_path = msg.seen ? maildir / "cur" / (name + ":2,S") : maildir / "new" / name;
    POSTERN_TRY(write_then_rename((maildir / "tmp" / name).string(), final_path.string(), msg.text,
                                  0600, msg.time));
  }
  return ok_result();
}

// Started as root, the demo server runs as this user when it exists (event mode never opens
// mail as root); scripts/demo.sh creates it. Without it posternd refuses to start and says why.
constexpr std::string_view demo_service_user = "postern";

// chown -R (never following symlinks) to `a`: the demo server reads and changes these as `a`.
result<void> give_to(const fs::path& top, const auth::system_account& a) {
  auto own = [&](const fs::path& p) -> result<void> {
    if (::lchown(p.c_str(), a.uid, a.gid) != 0) {
      return error::from_errno(errno, "chown " + p.string());
    }
    return ok_result();
  };
  POSTERN_TRY(own(top));
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(top, ec))) {
    return ok_result();
  }
  for (fs::recursive_directory_iterator it(top, ec), end; !ec && it != end; it.increment(ec)) {
    POSTERN_TRY(own(it->path()));
  }
  if (ec) {
    return fs_error(ec, "walk " + top.string());
  }
  return ok_result();
}

// Escapes a directory for a mail location: '%' as "%%" (variable expansion) and ':' as "::"
// (the separator of Dovecot-style parameters).
std::string escape_location_path(const std::string& s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '%' || c == ':') {
      out += c;
    }
  }
  return out;
}

}  // namespace

result<std::string> prepare_demo(const std::string& dir, std::uint16_t port) {
  if (dir.empty()) {
    return error(errc::invalid, "demo directory: empty path");
  }
  std::error_code ec;
  fs::path root = fs::absolute(fs::path(dir), ec);
  if (ec) {
    return fs_error(ec, dir);
  }
  root = root.lexically_normal();
  if (!root.has_filename() && root != root.root_path()) {
    root = root.parent_path();  // drop a trailing '/'
  }
  POSTERN_TRY(claim_directory(root));

  std::string config_path = (root / "postern.toml").string();
  std::string users_path = (root / "users").string();

  config cfg;
  cfg.listen = {{"127.0.0.1", port}};
  cfg.target = log_target::stderr_;
  cfg.level = log_level::info;
  cfg.failure_delay = std::chrono::seconds(1);
  cfg.passdb = "passwd-file:" + users_path;
  cfg.mail_location = "maildir:" + escape_location_path((root / "mail").string()) + "/%u/Maildir";
  std::optional<auth::system_account> run_as;
  if (::geteuid() == 0) {
    if (auto a = auth::find_system_user(demo_service_user); a && a->uid != 0) {
      run_as = std::move(a).value();
      cfg.user = run_as->name;
    }
  }
  std::string text =
      "# Postern demo configuration. Setting up the demo again overwrites this file and\n"
      "# resets the demo maildrop. See docs/configuration.md for every key.\n\n" +
      format_config(cfg);
  // Refuse to write a config the server would reject (a directory name with control
  // characters, say).
  auto check = parse_config(text, config_path);
  if (!check) {
    return error(errc::invalid,
                 "cannot write a demo config for this directory: " + check.err().message());
  }

  POSTERN_TRY(write_then_rename((root / marker_name).string() + ".tmp",
                                (root / marker_name).string(),
                                "This directory holds a Postern demo; setting the demo up again "
                                "overwrites postern.toml and users and resets mail/demo.\n",
                                0644));
  auto hash = sha512_crypt(demo_password);
  if (!hash) {
    return std::move(hash).err();
  }
  POSTERN_TRY(write_then_rename(users_path + ".tmp", users_path,
                                std::string(demo_user) + ":{SHA512-CRYPT}" + *hash + "::::::\n",
                                0600));
  POSTERN_TRY(write_maildrop(root));
  if (run_as) {
    POSTERN_TRY(give_to(users_path, *run_as));
    POSTERN_TRY(give_to(root / "mail", *run_as));
    // The server, running as `run_as`, must reach users and mail/ (both its own) inside this
    // root-owned directory: search permission only, so nobody can list it.
    fs::permissions(root, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec,
                    ec);
    if (ec) {
      return fs_error(ec, "chmod " + root.string());
    }
  }
  POSTERN_TRY(write_then_rename(config_path + ".tmp", config_path, text, 0644));
  return config_path;
}

}  // namespace postern::server
