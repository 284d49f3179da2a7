#include "store/dovecot_uidlist.hpp"

#include "common/encoding.hpp"
#include "common/parse.hpp"
#include "common/unique_fd.hpp"
#include "store/expire.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <ctime>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace postern::store {
namespace {

// Dovecot does not read the pid of a dotlock younger than this (STALE_PID_CHECK_SECS).
constexpr std::time_t stale_pid_check_secs = 2;
constexpr std::size_t max_uidlist_size = 256u << 20;

std::string local_hostname() {
  std::array<char, 256> buf{};  // a host name is at most 255 bytes (POSIX HOST_NAME_MAX >= 255)
  if (::gethostname(buf.data(), buf.size() - 1) != 0) {
    return "localhost";
  }
  return std::string(buf.data());
}

// The pid in a Dovecot dotlock ("<pid>:<host>"), when the host is this one.
std::optional<pid_t> local_pid_of(const std::string& lock_path) {
  unique_fd fd(::open(lock_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) {
    return std::nullopt;
  }
  std::array<char, 512> buf{};  // "<pid>:<host>": a pid and a host name (at most 255) fit
  ssize_t n = ::read(fd.get(), buf.data(), buf.size() - 1);
  if (n <= 0) {
    return std::nullopt;
  }
  std::string_view s(buf.data(), static_cast<std::size_t>(n));
  if (s.back() == '\n') {
    s.remove_suffix(1);
  }
  auto colon = s.find(':');
  if (colon == std::string_view::npos || s.substr(colon + 1) != local_hostname()) {
    return std::nullopt;
  }
  auto pid = parse_u64(s.substr(0, colon));
  if (!pid || *pid == 0 || *pid > 0x7FFFFFFF) {
    return std::nullopt;
  }
  return static_cast<pid_t>(*pid);
}

std::time_t changed_at(const struct stat& st) { return std::max(st.st_mtime, st.st_ctime); }

// Whether the lock `st` describes is stale by Dovecot's rules (see the header).
bool is_stale(const std::string& lock_path, const std::string& protected_path,
              std::chrono::seconds stale_timeout, const struct stat& st) {
  const std::time_t now = std::time(nullptr);
  if (st.st_mtime < now - stale_pid_check_secs) {
    if (auto pid = local_pid_of(lock_path)) {
      return ::kill(*pid, 0) != 0 && errno == ESRCH;
    }
  }
  std::time_t last = changed_at(st);
  struct stat ul {};
  if (::lstat(protected_path.c_str(), &ul) == 0) {
    last = std::max(last, changed_at(ul));
  }
  return now > last + stale_timeout.count();
}

errc classify(int err) {
  return err == EACCES || err == EPERM || err == EROFS || err == ENOENT || err == ELOOP
             ? errc::permanent
             : errc::temporary;
}

std::string random_guid() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    return {};  // Dovecot adds one itself when the header has none
  }
  std::string out;
  append_hex(out, b);
  return out;
}

bool is_guid(std::string_view s) {
  return s.size() == 32 && s.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos;
}

std::optional<std::uint32_t> strict_u32(std::string_view s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  auto v = parse_u64(s);
  if (!v || *v > UINT32_MAX) {
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(*v);
}

error broken(std::size_t line, const std::string& what) {
  return error(errc::permanent, "line " + std::to_string(line) + ": " + what);
}

result<void> parse_header(std::string_view header, uidlist& l) {
  if (header.size() < 2 || header[0] < '0' || header[0] > '9' || header[1] != ' ') {
    return broken(1, "no version number");
  }
  l.version = static_cast<unsigned>(header[0] - '0');
  std::string_view rest = header.substr(2);
  if (l.version == 1) {
    auto sp = rest.find(' ');
    auto v = strict_u32(rest.substr(0, sp));
    auto n = sp == std::string_view::npos ? std::nullopt : strict_u32(rest.substr(sp + 1));
    if (!v || !n) {
      return broken(1, "bad version 1 header");
    }
    l.uidvalidity = *v;
    l.next_uid = *n;
  } else if (l.version == 3) {
    l.uidvalidity = 0;
    l.next_uid = 0;
    while (!rest.empty()) {
      auto end = rest.find(' ');
      std::string_view f = rest.substr(0, end);
      rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
      if (f.empty()) {
        continue;
      }
      std::string_view value = f.substr(1);
      if (f[0] == 'V' || f[0] == 'N') {
        auto v = strict_u32(value);
        if (!v) {
          return broken(1, "bad header field " + std::string(f));
        }
        (f[0] == 'V' ? l.uidvalidity : l.next_uid) = *v;
      } else if (f[0] == 'G') {
        if (!is_guid(value)) {
          return broken(1, "bad mailbox GUID");
        }
        l.mailbox_guid = std::string(value);
      } else {
        l.header_extensions += (l.header_extensions.empty() ? "" : " ") + std::string(f);
      }
    }
  } else {
    return broken(1, "unsupported version " + std::to_string(l.version));
  }
  if (l.uidvalidity == 0 || l.next_uid == 0) {
    return broken(1, "uidvalidity or next uid is 0");
  }
  return ok_result();
}

// One record line (after the header). `prev` is the previous record's UID.
result<uidlist_record> parse_record(std::string_view line, unsigned version, std::size_t no,
                                    std::uint32_t prev, std::uint32_t next_uid) {
  auto sp = line.find(' ');
  auto uid = strict_u32(line.substr(0, sp));
  if (!uid || *uid == 0 || sp == std::string_view::npos) {
    return broken(no, "invalid data");
  }
  if (*uid <= prev) {
    return broken(no, "UIDs not ordered");
  }
  if (*uid == UINT32_MAX || (version == 1 && *uid >= next_uid)) {
    return broken(no, "UID too high");
  }
  uidlist_record r;
  r.uid = *uid;
  std::string_view rest = line.substr(sp + 1);
  while (!rest.empty() && rest.front() == ' ') {
    rest.remove_prefix(1);
  }
  if (version == 3) {
    while (!rest.empty() && rest.front() != ':') {
      auto end = rest.find(' ');
      std::string_view f = rest.substr(0, end);
      rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
      while (!rest.empty() && rest.front() == ' ') {
        rest.remove_prefix(1);
      }
      if (f.front() < 'A' || f.front() > 'Z') {
        return broken(no, "invalid record field " + std::string(f));
      }
      r.extensions += (r.extensions.empty() ? "" : " ") + std::string(f);
      if (f.front() == 'G') {
        r.guid = std::string(f.substr(1));
      } else if (f.front() == 'P') {
        r.pop3_uidl = std::string(f.substr(1));
      }
    }
    if (rest.empty()) {
      return broken(no, "no file name");
    }
    rest.remove_prefix(1);
  }
  if (rest.empty() || rest.find('/') != std::string_view::npos) {
    return broken(no, "bad file name");
  }
  r.filename = std::string(rest);
  r.key = r.filename.substr(0, r.filename.find(':'));
  if (r.key.empty()) {
    return broken(no, "bad file name");
  }
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The lock

dovecot_dotlock::dovecot_dotlock(dovecot_dotlock&& o) noexcept
    : path_(std::exchange(o.path_, {})), dev_(o.dev_), ino_(o.ino_) {}

dovecot_dotlock& dovecot_dotlock::operator=(dovecot_dotlock&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::exchange(o.path_, {});
    dev_ = o.dev_;
    ino_ = o.ino_;
  }
  return *this;
}

dovecot_dotlock::~dovecot_dotlock() { release(); }

void dovecot_dotlock::release() noexcept {
  if (path_.empty()) {
    return;
  }
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlink(path_.c_str());
  }
  path_.clear();
}

result<dovecot_dotlock> dovecot_dotlock::acquire(const std::string& lock_path,
                                                 const std::string& protected_path,
                                                 std::chrono::seconds stale_timeout,
                                                 std::chrono::steady_clock::time_point deadline) {
  const std::string content = std::to_string(::getpid()) + ":" + local_hostname();
  for (;;) {
    // Readable by the mail owner's Dovecot when Postern runs as root: Dovecot judges a lock
    // with a readable live pid as held, one without by its age only.
    unique_fd fd(
        ::open(lock_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (fd) {
      if (::write(fd.get(), content.data(), content.size()) !=
          static_cast<ssize_t>(content.size())) {
        (void)::ftruncate(fd.get(), 0);  // Dovecot: a lock without a pid is judged by age
      }
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0) {
        int err = errno;
        ::unlink(lock_path.c_str());
        return error::from_errno(err, "fstat " + lock_path);
      }
      dovecot_dotlock l;
      l.path_ = lock_path;
      l.dev_ = st.st_dev;
      l.ino_ = st.st_ino;
      return l;
    }
    int err = errno;
    if (err != EEXIST) {
      return error::from_errno(err, "create " + lock_path, classify(err));
    }
    struct stat st {};
    if (::lstat(lock_path.c_str(), &st) != 0) {
      continue;  // released meanwhile
    }
    if (!S_ISREG(st.st_mode)) {
      return error(errc::permanent, lock_path + " is not a regular file");
    }
    if (is_stale(lock_path, protected_path, stale_timeout, st)) {
      struct stat again {};
      if (::lstat(lock_path.c_str(), &again) == 0 && again.st_ino == st.st_ino &&
          again.st_dev == st.st_dev && again.st_mtime == st.st_mtime) {
        ::unlink(lock_path.c_str());
      }
      continue;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return error(errc::in_use, lock_path + " is held by another process");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

result<dovecot_dotlock> lock_dovecot_uidlist(const std::string& maildir,
                                             std::chrono::steady_clock::time_point deadline) {
  return dovecot_dotlock::acquire(maildir + "/" + std::string(dovecot_uidlist_lock_name),
                                  maildir + "/" + std::string(dovecot_uidlist_name),
                                  dovecot_uidlist_stale_timeout, deadline);
}

result<dovecot_dotlock> lock_dovecot_pop3_session(const std::string& maildir,
                                                  std::chrono::steady_clock::time_point deadline) {
  const std::string path = maildir + "/" + std::string(dovecot_pop3_lock_name);
  return dovecot_dotlock::acquire(path, path, dovecot_pop3_stale_timeout, deadline);
}

// ---------------------------------------------------------------------------------------
// The file

result<uidlist> parse_dovecot_uidlist(std::string_view text) {
  if (text.empty()) {
    return broken(1, "empty file");
  }
  if (text.back() != '\n') {
    return error(errc::permanent, "the last line has no newline (a write was cut short)");
  }
  uidlist l;
  std::size_t no = 1;
  auto nl = text.find('\n');
  POSTERN_TRY(parse_header(text.substr(0, nl), l));
  text.remove_prefix(nl + 1);
  std::unordered_set<std::string> keys;
  std::uint32_t prev = 0;
  while (!text.empty()) {
    ++no;
    nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos) {
      return broken(no, "control character");
    }
    auto r = parse_record(line, l.version, no, prev, l.next_uid);
    if (!r) {
      return std::move(r).err();
    }
    if (!keys.insert(r->key).second) {
      return broken(no, "file " + r->key + " listed twice");
    }
    prev = r->uid;
    l.records.push_back(std::move(r).value());
  }
  if (l.next_uid <= prev) {
    l.next_uid = prev + 1;
  }
  return l;
}

result<std::size_t> extend_uidlist(uidlist& l, const std::vector<std::string>& bases,
                                   const uidlist* migrate_from) {
  std::unordered_set<std::string_view> known;
  known.reserve(l.records.size());
  for (const auto& r : l.records) {
    known.insert(r.key);
  }
  std::unordered_map<std::string_view, std::uint32_t> old_uids;
  if (migrate_from != nullptr) {
    for (const auto& r : migrate_from->records) {
      old_uids.emplace(r.key, r.uid);
    }
  }
  std::vector<uidlist_record> added;
  for (const auto& base : bases) {
    if (known.count(base) != 0) {
      continue;
    }
    std::uint32_t uid = l.next_uid;
    if (auto it = old_uids.find(base); it != old_uids.end() && it->second >= uid) {
      uid = it->second;
    }
    if (uid >= UINT32_MAX - 1) {
      return error(errc::permanent,
                   "dovecot-uidlist: the UID space is exhausted (Dovecot "
                   "resets UIDVALIDITY then: let Dovecot open the mailbox)");
    }
    uidlist_record r;
    r.uid = uid;
    r.key = base;
    added.push_back(std::move(r));
    l.next_uid = uid + 1;
  }
  for (auto& r : added) {
    l.records.push_back(std::move(r));
  }
  return added.size();
}

result<uidlist> sync_dovecot_uidlist(const dovecot_dotlock& lock, const std::string& maildir,
                                     const std::vector<std::string>& bases,
                                     const uidlist* migrate_from, std::uint32_t new_uidvalidity) {
  const std::string path = maildir + "/" + std::string(dovecot_uidlist_name);
  if (!lock.held()) {
    return error(errc::invalid, path + ": not locked");
  }
  auto text = read_side_file(path, max_uidlist_size);
  if (!text) {
    return std::move(text).err();
  }
  uidlist l;
  const bool existed = text->has_value();
  if (existed) {
    auto parsed = parse_dovecot_uidlist(**text);
    if (!parsed) {
      return error(errc::permanent,
                   path + " is damaged (" + parsed.err().context() +
                       "); Postern does not renumber: let Dovecot repair it (open the mailbox "
                       "over IMAP or run doveadm force-resync) or remove it");
    }
    l = std::move(parsed).value();
  } else {
    l.uidvalidity = migrate_from != nullptr && migrate_from->uidvalidity != 0
                        ? migrate_from->uidvalidity
                        : (new_uidvalidity != 0 ? new_uidvalidity : 1);
    l.mailbox_guid = random_guid();
  }
  auto added = extend_uidlist(l, bases, migrate_from);
  if (!added) {
    return std::move(added).err();
  }
  if (*added > 0) {
    l.version = 3;
    POSTERN_TRY(replace_side_file(path, format_uidlist(l), maildir));
  }
  return l;
}

}  // namespace postern::store
