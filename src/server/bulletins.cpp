#include "server/bulletins.hpp"

#include "common/parse.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"
#include "store/expire.hpp"
#include "store/maildir/maildir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>  // renameat2, RENAME_NOREPLACE
#include <ctime>
#include <unordered_set>

namespace postern::server {
namespace {

constexpr std::size_t max_source_mbox = std::size_t{64} << 20;
constexpr mode_t maildir_mode = 0700;
constexpr mode_t message_mode = 0600;
constexpr std::string_view name_suffix = ".postern-bulletin";
constexpr std::string_view mbox_marker = "X-Postern-Bulletin: ";

constexpr std::string_view bulletin_schema =
    "CREATE TABLE IF NOT EXISTS bulletins ("
    " user TEXT PRIMARY KEY NOT NULL,"
    " last_bulletin INTEGER NOT NULL) WITHOUT ROWID";

errc classify(int err) noexcept {
  switch (err) {
    case EACCES:
    case EPERM:
    case ENOTDIR:
    case ELOOP:
    case EROFS:
    case EISDIR:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

std::chrono::system_clock::time_point now_of(const bulletin_settings& s) {
  return s.clock ? s.clock() : std::chrono::system_clock::now();
}

std::string key_for(std::string_view identity) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  std::string input = "postern-bulletin\n";
  input.append(identity);
  EVP_Digest(input.data(), input.size(), md.data(), &len, EVP_sha1(), nullptr);
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < 8 && i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 0xF];
  }
  return out;
}

result<std::string> read_file(int dir_fd, const std::string& name, const std::string& display,
                              std::size_t limit) {
  int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    return error::from_errno(err, "bulletins: open " + display,
                             err == ENOENT ? errc::not_found : classify(err));
  }
  unique_fd owner(fd);
  read_outcome got = read_to_end(fd, limit);
  if (got.err != 0) {
    return error::from_errno(got.err, "bulletins: read " + display);
  }
  if (got.too_large) {
    return error(errc::invalid, "bulletins: " + display + " is larger than " +
                                    std::to_string(limit >> 20) + " MiB");
  }
  return std::move(got.data);
}

result<void> write_all_at(int fd, std::string_view data, off_t off, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), off);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, "bulletins: write " + what, classify(err));
    }
    data.remove_prefix(static_cast<std::size_t>(n));
    off += n;
  }
  return ok_result();
}

struct dir_closer {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};

// Regular files (names not starting with '.') of <root>/<sub>.
result<std::vector<std::string>> list_sub(const std::string& root, const char* sub) {
  std::string dir = root + "/" + sub;
  std::unique_ptr<DIR, dir_closer> d(::opendir(dir.c_str()));
  std::vector<std::string> out;
  if (!d) {
    int err = errno;
    if (err == ENOENT) {
      return out;
    }
    return error::from_errno(err, "bulletins: list " + dir, classify(err));
  }
  for (;;) {
    errno = 0;
    const dirent* ent = ::readdir(d.get());
    if (ent == nullptr) {
      if (errno != 0) {
        int err = errno;
        return error::from_errno(err, "bulletins: list " + dir);
      }
      return out;
    }
    if (ent->d_name[0] == '.') {
      continue;
    }
    if (ent->d_type != DT_REG && ent->d_type != DT_UNKNOWN) {
      continue;
    }
    out.emplace_back(ent->d_name);
  }
}

result<std::vector<bulletin>> read_maildir_source(const std::string& path, std::uint64_t after) {
  struct item {
    std::string rel;  // "cur/name"
    std::string base;
    std::optional<std::uint64_t> ts;
  };
  std::vector<item> items;
  for (const char* sub : {"cur", "new"}) {
    auto names = list_sub(path, sub);
    if (!names) {
      return std::move(names).err();
    }
    for (auto& n : *names) {
      auto parts = store::maildir::parse_name(n);
      items.push_back(item{std::string(sub) + "/" + n, std::string(parts.base), parts.timestamp});
    }
  }
  // The Maildir store's order: leading SECONDS, then base name; names without it last.
  std::sort(items.begin(), items.end(), [](const item& a, const item& b) {
    if (a.ts.has_value() != b.ts.has_value()) {
      return a.ts.has_value();
    }
    if (a.ts && *a.ts != *b.ts) {
      return *a.ts < *b.ts;
    }
    return a.base < b.base;
  });
  std::vector<bulletin> out;
  for (std::size_t i = after; i < items.size(); ++i) {
    auto content =
        read_file(AT_FDCWD, path + "/" + items[i].rel, path + "/" + items[i].rel, max_source_mbox);
    if (!content) {
      if (content.err().code() == errc::not_found) {
        // Renamed by a reader (new/ -> cur/) since we listed: the next login sees it.
        break;
      }
      return std::move(content).err();
    }
    out.push_back(
        bulletin{i + 1, key_for("maildir\n" + items[i].base), std::move(content).value()});
  }
  return out;
}

result<std::vector<bulletin>> read_mbox_source(const std::string& path, std::uint64_t after,
                                               store::mbox::quoting q) {
  auto data = read_file(AT_FDCWD, path, path, max_source_mbox);
  if (!data) {
    if (data.err().code() == errc::not_found) {
      return std::vector<bulletin>();
    }
    return std::move(data).err();
  }
  store::mbox::parse_options po;
  po.from_quoting = q;
  // The administrator's file: its X-UIDL headers keep naming bulletins as they always did
  // (the parser's default, off, is for mailboxes that senders write to).
  po.use_x_uidl = true;
  auto scanned = store::mbox::scan(*data, po);
  if (!scanned) {
    return std::move(scanned).err();
  }
  std::vector<bulletin> out;
  const auto& msgs = scanned->messages;
  for (std::size_t i = after; i < msgs.size(); ++i) {
    const auto& m = msgs[i];
    std::string_view raw(data->data() + m.content, m.end - m.content);
    std::string content;
    if (m.unquote) {
      store::mbox::unquoter u(q);
      u.filter(raw, content);
      u.finish(content);
    } else {
      content.assign(raw);
    }
    out.push_back(bulletin{i + 1, key_for("mbox\n" + m.uidl), std::move(content)});
  }
  return out;
}

// mkdir -p of a Maildir and its cur/ new/ tmp/.
result<void> ensure_maildir(const std::string& path) {
  std::vector<std::string> dirs;
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    dirs.push_back(path.substr(0, slash));
  }
  dirs.push_back(path);
  for (const char* sub : {"/cur", "/new", "/tmp"}) {
    dirs.push_back(path + sub);
  }
  for (const auto& d : dirs) {
    if (::mkdir(d.c_str(), maildir_mode) == 0) {
      continue;
    }
    int err = errno;
    struct stat st {};
    if (err == EEXIST || (::stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
      continue;
    }
    return error::from_errno(err, "bulletins: create " + d, classify(err));
  }
  return ok_result();
}

// The keys of bulletins already in a Maildir (new/ and cur/).
result<std::unordered_set<std::string>> delivered_keys(const std::string& path) {
  std::unordered_set<std::string> out;
  for (const char* sub : {"new", "cur"}) {
    auto names = list_sub(path, sub);
    if (!names) {
      return std::move(names).err();
    }
    for (const auto& n : *names) {
      std::string_view base = store::maildir::parse_name(n).base;
      auto dot = base.find('.');
      if (dot == std::string_view::npos || !base.ends_with(name_suffix)) {
        continue;
      }
      // "B<number>_<key>": the key is what identifies the bulletin.
      std::string_view mid = base.substr(dot + 1, base.size() - dot - 1 - name_suffix.size());
      auto underscore = mid.rfind('_');
      if (mid.starts_with('B') && underscore != std::string_view::npos &&
          mid.size() - underscore - 1 == 16) {
        out.emplace(mid.substr(underscore + 1));
      }
    }
  }
  return out;
}

void chown_like(int fd, const std::string& reference) {
  if (::geteuid() != 0) {
    return;
  }
  struct stat st {};
  if (::stat(reference.c_str(), &st) == 0 && (st.st_uid != 0 || st.st_gid != 0)) {
    (void)::fchown(fd, st.st_uid, st.st_gid);  // best effort: root-owned mail still reads
  }
}

result<void> deliver_to_maildir(const bulletin& b, const std::string& path,
                                std::chrono::system_clock::time_point now) {
  // The number (zero-padded) keeps bulletins delivered in the same second in order, since
  // the Maildir store sorts by the leading time and then by name.
  char number[24];
  (void)std::snprintf(number, sizeof number, "%010llu", static_cast<unsigned long long>(b.number));
  const std::string name = std::to_string(store::unix_seconds(now)) + ".B" + number + "_" + b.key +
                           std::string(name_suffix);
  const std::string tmp = path + "/tmp/" + name;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, message_mode);
  if (fd < 0) {
    int err = errno;
    return error::from_errno(err, "bulletins: create " + tmp, classify(err));
  }
  unique_fd owner(fd);
  chown_like(fd, path);
  auto wrote = write_all_at(fd, b.content, 0, tmp);
  if (wrote && ::fsync(fd) != 0) {
    int err = errno;
    wrote = error::from_errno(err, "bulletins: fsync " + tmp, classify(err));
  }
  if (!wrote) {
    ::unlink(tmp.c_str());
    return wrote;
  }
  const std::string target = path + "/new/" + name;
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    if (err == EEXIST) {
      return ok_result();  // the same bulletin delivered in the same second: it is there
    }
    return error::from_errno(err, "bulletins: rename " + tmp, classify(err));
  }
  int dir = ::open((path + "/new").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return ok_result();
}

// True if the mbox already holds the bulletin's marker header.
result<bool> mbox_has_marker(int fd, const std::string& key, const std::string& display) {
  const std::string needle = "\n" + std::string(mbox_marker) + key + "\n";
  std::string window;
  char buf[65536];
  off_t off = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, "bulletins: read " + display);
    }
    if (n == 0) {
      return false;
    }
    off += n;
    window.append(buf, static_cast<std::size_t>(n));
    if (window.find(needle) != std::string::npos) {
      return true;
    }
    if (window.size() > needle.size()) {
      window.erase(0, window.size() - needle.size());
    }
  }
}

// Appends the bulletin; false when the mbox already held it (an interrupted earlier run).
result<bool> deliver_to_mbox(const bulletin& b, const bulletin_settings& s, const std::string& path,
                             std::chrono::system_clock::time_point now) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, message_mode);
  if (fd < 0) {
    int err = errno;
    return error::from_errno(err, "bulletins: open " + path, classify(err));
  }
  unique_fd owner(fd);
  auto lock = store::lock::mailbox_lock::acquire(path, fd, s.locking);
  if (!lock) {
    return std::move(lock).err();
  }
  auto found = mbox_has_marker(fd, b.key, path);
  if (!found) {
    return std::move(found).err();
  }
  if (*found) {
    POSTERN_TRY(lock->release());
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    return error::from_errno(err, "bulletins: stat " + path);
  }
  const off_t size = st.st_size;
  std::string out;
  if (size > 0) {
    char tail[2] = {0, 0};
    off_t from = size >= 2 ? size - 2 : 0;
    ssize_t n = ::pread(fd, tail, static_cast<std::size_t>(size - from), from);
    std::string_view t(tail, n > 0 ? static_cast<std::size_t>(n) : 0);
    if (!t.ends_with('\n')) {
      out += "\n\n";
    } else if (!(t.size() == 2 && t[0] == '\n') && size != 1) {
      out += "\n";  // a blank line before the From_ line
    }
  }
  out += "From MAILER-DAEMON " + asctime_utc(now) + "\n";
  out += std::string(mbox_marker) + b.key + "\n";
  out += quote_for_mbox(b.content, s.quoting);
  out += "\n";
  auto wrote = write_all_at(fd, out, size, path);
  if (wrote && ::fsync(fd) != 0) {
    int err = errno;
    wrote = error::from_errno(err, "bulletins: fsync " + path, classify(err));
  }
  if (!wrote) {
    // Never leave half a message: cut the file back to where it was.
    if (::ftruncate(fd, size) == 0) {
      ::fsync(fd);
    }
    return std::move(wrote).err();
  }
  POSTERN_TRY(lock->release());
  return true;
}

std::string popbull_path(const std::string& home) {
  std::string h = home;
  while (h.size() > 1 && h.back() == '/') {
    h.pop_back();
  }
  return h + "/.popbull";
}

result<std::optional<std::uint64_t>> read_popbull(const std::string& home) {
  auto text = store::read_side_file(popbull_path(home), 4096);
  if (!text) {
    return std::move(text).err();
  }
  if (!text->has_value()) {
    return std::optional<std::uint64_t>();
  }
  std::string_view v = **text;
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ')) {
    v.remove_suffix(1);
  }
  auto n = parse_u64(v);
  if (!n) {
    return error(errc::invalid, "bulletins: " + popbull_path(home) + " does not hold a number");
  }
  return std::optional<std::uint64_t>(*n);
}

// Where the numbers go for one user.
class number_store {
 public:
  number_store(bulletin_db* db, const bulletin_target& t) : db_(db), t_(t) {}

  result<std::uint64_t> last() {
    if (db_ != nullptr) {
      auto v = db_->last(t_.user);
      if (!v) {
        return std::move(v).err();
      }
      if (v->has_value()) {
        return **v;
      }
    }
    if (t_.home.empty()) {
      if (db_ != nullptr) {
        return std::uint64_t{0};
      }
      return error(errc::permanent, "bulletins: no bulletin_db and no home directory for " +
                                        t_.user + " (~/.popbull)");
    }
    auto v = read_popbull(t_.home);
    if (!v) {
      return std::move(v).err();
    }
    return v->value_or(0);
  }

  result<void> record(std::uint64_t n) {
    if (db_ != nullptr) {
      return db_->set_last(t_.user, n);
    }
    return store::replace_side_file(popbull_path(t_.home), std::to_string(n) + "\n", t_.home);
  }

 private:
  bulletin_db* db_;
  const bulletin_target& t_;
};

}  // namespace

// ---------------------------------------------------------------------------------------

result<std::unique_ptr<bulletin_db>> bulletin_db::open(const std::string& path) {
  auto db = state_db::open(path, bulletin_schema);
  if (!db) {
    return std::move(db).err();
  }
  return std::unique_ptr<bulletin_db>(new bulletin_db(std::move(db).value()));
}

result<std::optional<std::uint64_t>> bulletin_db::last(std::string_view user) {
  std::lock_guard<std::mutex> lock(db_->mutex());
  auto sel = prepare_statement(*db_, "SELECT last_bulletin FROM bulletins WHERE user = ?1");
  if (!sel) {
    return std::move(sel).err();
  }
  sqlite3_bind_text(sel->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
  int rc = sqlite3_step(sel->get());
  if (rc == SQLITE_DONE) {
    return std::optional<std::uint64_t>();
  }
  if (rc != SQLITE_ROW) {
    return db_->last_error("read");
  }
  auto v = sqlite3_column_int64(sel->get(), 0);
  return std::optional<std::uint64_t>(v < 0 ? 0 : static_cast<std::uint64_t>(v));
}

result<void> bulletin_db::set_last(std::string_view user, std::uint64_t number) {
  std::lock_guard<std::mutex> lock(db_->mutex());
  auto put =
      prepare_statement(*db_,
                        "INSERT INTO bulletins (user, last_bulletin) VALUES (?1, ?2) "
                        "ON CONFLICT(user) DO UPDATE SET last_bulletin = excluded.last_bulletin");
  if (!put) {
    return std::move(put).err();
  }
  sqlite3_bind_text(put->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
  sqlite3_bind_int64(put->get(), 2, static_cast<sqlite3_int64>(number));
  if (sqlite3_step(put->get()) != SQLITE_DONE) {
    return db_->last_error("write");
  }
  return ok_result();
}

result<std::vector<bulletin>> read_bulletins(store::store_kind kind, const std::string& path,
                                             std::uint64_t after,
                                             store::mbox::quoting source_quoting) {
  if (path.empty() || path.front() != '/') {
    return error(errc::invalid, "bulletins: source path must be absolute");
  }
  if (kind == store::store_kind::maildir) {
    return read_maildir_source(path, after);
  }
  return read_mbox_source(path, after, source_quoting);
}

result<std::size_t> deliver_bulletins(const bulletin_settings& settings,
                                      const bulletin_target& target) {
  number_store numbers(settings.db, target);
  auto last = numbers.last();
  if (!last) {
    return std::move(last).err();
  }
  auto pending =
      read_bulletins(settings.source_kind, settings.source_path, *last, settings.quoting);
  if (!pending) {
    return std::move(pending).err();
  }
  if (pending->empty()) {
    return std::size_t{0};
  }
  const auto now = now_of(settings);
  std::unordered_set<std::string> already;
  if (target.kind == store::store_kind::maildir) {
    POSTERN_TRY(ensure_maildir(target.path));
    auto keys = delivered_keys(target.path);
    if (!keys) {
      return std::move(keys).err();
    }
    already = std::move(keys).value();
  }
  std::size_t delivered = 0;
  for (const auto& b : *pending) {
    if (target.kind == store::store_kind::maildir) {
      if (already.count(b.key) == 0) {
        POSTERN_TRY(deliver_to_maildir(b, target.path, now));
        ++delivered;
      }
    } else {
      auto wrote = deliver_to_mbox(b, settings, target.path, now);
      if (!wrote) {
        return std::move(wrote).err();
      }
      delivered += *wrote ? 1 : 0;
    }
    POSTERN_TRY(numbers.record(b.number));
  }
  return delivered;
}

std::string asctime_utc(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%s %s %2d %02d:%02d:%02d %d", days[tm.tm_wday % 7],
                      months[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      tm.tm_year + 1900);
  return buf;
}

std::string quote_for_mbox(std::string_view content, store::mbox::quoting q) {
  std::string out;
  out.reserve(content.size() + 16);
  std::size_t pos = 0;
  while (pos < content.size()) {
    auto nl = content.find('\n', pos);
    std::string_view line =
        content.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos + 1);
    pos = nl == std::string_view::npos ? content.size() : nl + 1;
    bool quote = false;
    if (q == store::mbox::quoting::mboxo) {
      quote = line.starts_with("From ");
    } else if (q == store::mbox::quoting::mboxrd) {
      std::size_t i = 0;
      while (i < line.size() && line[i] == '>') {
        ++i;
      }
      quote = line.substr(i).starts_with("From ");
    }
    if (quote) {
      out += '>';
    }
    out.append(line);
  }
  if (!out.empty() && out.back() != '\n') {
    out += '\n';
  }
  return out;
}

}  // namespace postern::server
