#include "store/maildir/maildir.hpp"

#include "common/parse.hpp"
#include "common/unique_fd.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>  // renameat2, RENAME_NOREPLACE (glibc >= 2.28)
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace postern::store::maildir {

namespace {

constexpr std::size_t read_buffer_size = std::size_t{64} * 1024;
constexpr std::size_t max_uidl_size = 70;  // RFC 1939 section 7
constexpr mode_t dir_mode = 0700;
constexpr mode_t lock_mode = 0600;
// Message files: never follow a symlink; O_NONBLOCK so that a FIFO swapped in for a message
// cannot block a worker thread in open() (it has no effect on regular files).
constexpr int message_open_flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;

const char* sub_name(bool in_new) noexcept { return in_new ? "new" : "cur"; }

bool is_errno(const error& e, int err) noexcept {
  return e.cause() == std::error_code(err, std::generic_category());
}

// How a failure to open or create the Maildir itself is classified: these will not pass by
// retrying, an administrator must fix the path or its permissions.
errc open_errc(int err) noexcept {
  switch (err) {
    case ENOTDIR:
    case ELOOP:
    case ENAMETOOLONG:
    case EACCES:
    case EPERM:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

struct dir_closer {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};
using unique_dir = std::unique_ptr<DIR, dir_closer>;

// ---------------------------------------------------------------------------------------
// System call wrappers: errno becomes an error right here.

errc always_temporary(int /*err*/) noexcept { return errc::temporary; }

result<unique_fd> open_at(int dir_fd, const char* name, int flags, mode_t mode,
                          std::string_view what, errc (*classify)(int) = always_temporary) {
  for (;;) {
    const int fd = ::openat(dir_fd, name, flags, mode);
    if (fd >= 0) {
      return unique_fd(fd);
    }
    const int err = errno;
    if (err != EINTR) {
      return error::from_errno(err, "maildir: open " + std::string(what), classify(err));
    }
  }
}

result<unique_fd> open_dir(const std::string& path) {
  for (;;) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      return unique_fd(fd);
    }
    const int err = errno;
    if (err != EINTR) {
      return error::from_errno(err, "maildir: open " + path, open_errc(err));
    }
  }
}

// mkdir that accepts an existing directory (also when mkdir reports EACCES for it).
result<void> make_dir_at(int dir_fd, const std::string& path, std::string_view what) {
  if (::mkdirat(dir_fd, path.c_str(), dir_mode) == 0) {
    return ok_result();
  }
  const int err = errno;
  if (err == EEXIST) {
    return ok_result();
  }
  struct stat st{};
  if (::fstatat(dir_fd, path.c_str(), &st, 0) == 0 && S_ISDIR(st.st_mode)) {
    return ok_result();
  }
  return error::from_errno(err, "maildir: create " + std::string(what), open_errc(err));
}

// Opens `path` as a directory, creating it and its missing parents (mode 0700, like Dovecot)
// when it does not exist.
result<unique_fd> open_or_create_dir(const std::string& path) {
  auto fd = open_dir(path);
  if (fd.ok() || !is_errno(fd.err(), ENOENT)) {
    return fd;
  }
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string parent = path.substr(0, slash);
    POSTERN_TRY(make_dir_at(AT_FDCWD, parent, parent));
  }
  POSTERN_TRY(make_dir_at(AT_FDCWD, path, path));
  return open_dir(path);
}

// Opens and locks the session lock file; see the header for why flock.
result<unique_fd> take_lock(int root_fd, const std::string& path) {
  const std::string lock_name(lock_file_name);
  auto fd = open_at(root_fd, lock_name.c_str(),
                    O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, lock_mode,
                    path + "/" + lock_name, open_errc);
  if (!fd.ok()) {
    return fd;
  }
  struct stat st{};
  if (::fstat(fd->get(), &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "maildir: stat " + path + "/" + lock_name);
  }
  if (!S_ISREG(st.st_mode)) {
    return error(errc::permanent, "maildir: " + path + "/" + lock_name + " is not a regular file");
  }
  for (;;) {
    if (::flock(fd->get(), LOCK_EX | LOCK_NB) == 0) {
      return fd;
    }
    const int err = errno;
    if (err == EWOULDBLOCK) {
      return error::from_errno(err, "maildir: " + path + " is in use by another session",
                               errc::in_use);
    }
    if (err != EINTR) {
      return error::from_errno(err, "maildir: lock " + path + '/' + lock_name);
    }
  }
}

// Renames without ever replacing an existing target (a rename over a different message would
// destroy it). File systems without RENAME_NOREPLACE get a check-then-rename whose window is
// a few microseconds; every Linux local file system and NFSv4 support the flag.
result<void> rename_noreplace(int from_dir, const std::string& from, int to_dir,
                              const std::string& to, std::string_view what) {
  if (::renameat2(from_dir, from.c_str(), to_dir, to.c_str(), RENAME_NOREPLACE) == 0) {
    return ok_result();
  }
  int err = errno;
  if (err == EINVAL || err == ENOSYS) {
    struct stat st{};
    if (::fstatat(to_dir, to.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      err = EEXIST;
    } else {
      err = errno;
      if (err == ENOENT) {
        if (::renameat(from_dir, from.c_str(), to_dir, to.c_str()) == 0) {
          return ok_result();
        }
        err = errno;
      }
    }
  }
  return error::from_errno(err, "maildir: rename " + std::string(what));
}

// ---------------------------------------------------------------------------------------
// Names, UIDLs, directory scans.

bool is_legal_uidl(std::string_view s) noexcept {
  if (s.empty() || s.size() > max_uidl_size) {
    return false;
  }
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7E) {
      return false;
    }
  }
  return true;
}

result<std::string> sha1_hex(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha1(), nullptr) != 1) {
    return error(errc::temporary, "maildir: SHA-1 digest unavailable");
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::size_t{2} * len);
  for (unsigned int i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 0x0F];
  }
  return out;
}

struct dir_item {
  std::string name;
  bool in_new = false;
};

std::string relative_path(bool in_new, std::string_view name) {
  std::string out(sub_name(in_new));
  out += '/';
  out.append(name);
  return out;
}

// Appends the regular files of cur/ or new/ (names not starting with '.') to `out`.
result<void> scan_sub(int root_fd, bool in_new, std::vector<dir_item>& out) {
  auto fd = open_at(root_fd, sub_name(in_new), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0,
                    sub_name(in_new));
  if (!fd.ok()) {
    return std::move(fd).err();
  }
  DIR* raw = ::fdopendir(fd->get());
  if (raw == nullptr) {
    const int err = errno;
    return error::from_errno(err, std::string("maildir: list ") + sub_name(in_new));
  }
  fd->release();  // the DIR stream owns it now
  const unique_dir dir(raw);
  for (;;) {
    errno = 0;
    const dirent* ent = ::readdir(dir.get());
    if (ent == nullptr) {
      const int err = errno;
      if (err != 0) {
        return error::from_errno(err, std::string("maildir: list ") + sub_name(in_new));
      }
      return ok_result();
    }
    if (ent->d_name[0] == '.') {
      continue;
    }
    bool regular = ent->d_type == DT_REG;
    if (ent->d_type == DT_UNKNOWN) {
      struct stat st{};
      if (::fstatat(::dirfd(dir.get()), ent->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        const int err = errno;
        if (err == ENOENT) {
          continue;  // renamed or removed by another MUA since readdir
        }
        return error::from_errno(err, "maildir: stat " + relative_path(in_new, ent->d_name));
      }
      regular = S_ISREG(st.st_mode);
    }
    if (regular) {
      out.push_back(dir_item{ent->d_name, in_new});
    }
  }
}

// Every message file now in cur/ and new/, by base name. When one base name appears twice
// the cur/ file wins (it was listed first).
using base_index = std::unordered_map<std::string, dir_item>;

result<base_index> index_by_base(int root_fd) {
  std::vector<dir_item> items;
  POSTERN_TRY(scan_sub(root_fd, false, items));
  POSTERN_TRY(scan_sub(root_fd, true, items));
  base_index index;
  index.reserve(items.size());
  for (auto& item : items) {
    std::string base(parse_name(item.name).base);
    index.emplace(std::move(base), std::move(item));
  }
  return index;
}

// Opens a message file for reading and checks it is (still) a regular file.
result<unique_fd> open_message_file(int dir_fd, const std::string& name, bool in_new) {
  auto fd = open_at(dir_fd, name.c_str(), message_open_flags, 0, relative_path(in_new, name));
  if (!fd.ok()) {
    return fd;
  }
  struct stat st{};
  if (::fstat(fd->get(), &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "maildir: stat " + relative_path(in_new, name));
  }
  if (!S_ISREG(st.st_mode)) {
    return error(errc::temporary,
                 "maildir: " + relative_path(in_new, name) + " is not a regular file");
  }
  return fd;
}

// Counts a message's wire size by reading it once: file bytes plus one CR for every LF not
// preceded by CR. Owns one 64 KiB buffer, reused for every file.
class size_counter {
 public:
  // nullopt: the file is no longer there (renamed or removed since the listing).
  result<std::optional<std::uint64_t>> wire_size(int dir_fd, const std::string& name,
                                                 bool in_new) {
    auto fd = open_message_file(dir_fd, name, in_new);
    if (!fd.ok()) {
      if (is_errno(fd.err(), ENOENT) || is_errno(fd.err(), ELOOP)) {
        return std::optional<std::uint64_t>();
      }
      return std::move(fd).err();
    }
    if (!buf_) {
      buf_ = std::make_unique<char[]>(read_buffer_size);
    }
    std::uint64_t bytes = 0;
    std::uint64_t bare_lfs = 0;
    char prev = '\0';  // the last byte of the previous read
    for (;;) {
      const ssize_t n = ::read(fd->get(), buf_.get(), read_buffer_size);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) {
          continue;
        }
        return error::from_errno(err, "maildir: read " + relative_path(in_new, name));
      }
      if (n == 0) {
        break;
      }
      const char* p = buf_.get();
      for (ssize_t i = 0; i < n; ++i) {
        if (p[i] == '\n' && prev != '\r') {
          ++bare_lfs;
        }
        prev = p[i];
      }
      bytes += static_cast<std::uint64_t>(n);
    }
    return std::optional<std::uint64_t>(bytes + bare_lfs);
  }

 private:
  std::unique_ptr<char[]> buf_;
};

// ,W= is trusted unless ,S= shows it cannot be right: the wire size is at least the file
// size and at most twice it (every byte a bare LF).
std::optional<std::uint64_t> trusted_wire_size(const name_parts& p) noexcept {
  if (!p.wire_size) {
    return std::nullopt;
  }
  if (p.physical_size) {
    const std::uint64_t w = *p.wire_size;
    const std::uint64_t s = *p.physical_size;
    if (w < s || w - s > s) {
      return std::nullopt;
    }
  }
  return p.wire_size;
}

struct entry {
  std::string name;  // file name in cur/ or new/, updated when the file is found renamed
  std::size_t base_len = 0;
  bool in_new = false;
  bool retrieved = false;
  bool shared_base = false;  // another listed file has the same base name (corrupt state)
  std::optional<std::uint64_t> timestamp;
  std::uint64_t size = 0;

  std::string_view base() const noexcept { return std::string_view(name).substr(0, base_len); }
  std::string relative() const { return relative_path(in_new, name); }
};

struct dirs {
  int cur = -1;
  int new_ = -1;
  int of(bool in_new) const noexcept { return in_new ? new_ : cur; }
};

// Builds the entry for one listed file; nullopt when it vanished before it could be sized.
result<std::optional<entry>> make_entry(const dirs& d, const dir_item& item,
                                        size_counter& counter) {
  const name_parts p = parse_name(item.name);
  entry e;
  e.base_len = p.base.size();
  e.in_new = item.in_new;
  e.timestamp = p.timestamp;
  if (auto w = trusted_wire_size(p)) {
    e.size = *w;
  } else {
    auto size = counter.wire_size(d.of(item.in_new), item.name, item.in_new);
    if (!size.ok()) {
      return std::move(size).err();
    }
    if (!*size) {
      return std::optional<entry>();
    }
    e.size = **size;
  }
  e.name = item.name;
  return std::optional<entry>(std::move(e));
}

bool listing_order(const entry& a, const entry& b) {
  if (a.timestamp.has_value() != b.timestamp.has_value()) {
    return a.timestamp.has_value();
  }
  if (a.timestamp && *a.timestamp != *b.timestamp) {
    return *a.timestamp < *b.timestamp;
  }
  if (a.base() != b.base()) {
    return a.base() < b.base();
  }
  if (a.name != b.name) {
    return a.name < b.name;
  }
  return !a.in_new && b.in_new;
}

// A message moved from new/ to cur/ by another MUA while we listed can show up under both
// names. Entries that share a base name are checked once more, and those whose file is gone
// are dropped; true duplicates (two files, corrupt state) stay.
result<void> prune_vanished_duplicates(const dirs& d, std::vector<entry>& entries) {
  std::vector<bool> drop(entries.size(), false);
  bool any = false;
  {
    std::unordered_map<std::string_view, std::size_t> base_count;
    base_count.reserve(entries.size());
    for (const auto& e : entries) {
      ++base_count[e.base()];
    }
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const entry& e = entries[i];
      if (base_count[e.base()] < 2) {
        continue;
      }
      struct stat st{};
      if (::fstatat(d.of(e.in_new), e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        const int err = errno;
        if (err != ENOENT) {
          return error::from_errno(err, "maildir: stat " + e.relative());
        }
        drop[i] = true;
        any = true;
      }
    }
  }  // base_count's views into entries end here, before entries move
  if (any) {
    std::size_t out = 0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (!drop[i]) {
        if (out != i) {
          entries[out] = std::move(entries[i]);
        }
        ++out;
      }
    }
    entries.resize(out);
  }
  return ok_result();
}

// Lists, sizes and orders the messages of cur/ and new/. new/ is read first: a message that
// another MUA moves to cur/ meanwhile is then seen at least once (possibly twice, which
// prune_vanished_duplicates resolves) instead of possibly not at all.
result<std::vector<entry>> build_listing(int root_fd, const dirs& d) {
  std::vector<dir_item> items;
  POSTERN_TRY(scan_sub(root_fd, true, items));
  POSTERN_TRY(scan_sub(root_fd, false, items));

  size_counter counter;
  std::vector<entry> entries;
  entries.reserve(items.size());
  std::vector<dir_item> missing;
  for (auto& item : items) {
    auto e = make_entry(d, item, counter);
    if (!e.ok()) {
      return std::move(e).err();
    }
    if (*e) {
      entries.push_back(std::move(**e));
    } else {
      missing.push_back(std::move(item));
    }
  }

  POSTERN_TRY(prune_vanished_duplicates(d, entries));

  // Files renamed by another MUA while we listed: look each up once more by base name.
  // readdir may have returned the new name as well, so skip files already listed.
  if (!missing.empty()) {
    std::unordered_set<std::string> listed;
    for (const auto& e : entries) {
      listed.insert(e.relative());
    }
    auto index = index_by_base(root_fd);
    if (!index.ok()) {
      return std::move(index).err();
    }
    for (const auto& m : missing) {
      const auto it = index->find(std::string(parse_name(m.name).base));
      if (it == index->end() || listed.count(relative_path(it->second.in_new, it->second.name))) {
        continue;  // gone, or already listed under its new name
      }
      auto e = make_entry(d, it->second, counter);
      if (!e.ok()) {
        return std::move(e).err();
      }
      if (*e) {
        listed.insert((*e)->relative());
        entries.push_back(std::move(**e));
      }
    }
  }

  std::sort(entries.begin(), entries.end(), listing_order);
  return entries;
}

// Assigns UIDLs in listing order and marks entries that share a base name. The first file
// of a base name gets uidl_for_base; a later one (corrupt state) gets the hash of its
// relative path, and any remaining collision is broken with a counter.
result<std::vector<message_info>> make_infos(std::vector<entry>& entries) {
  std::unordered_map<std::string_view, std::size_t> base_count;
  base_count.reserve(entries.size());
  for (const auto& e : entries) {
    ++base_count[e.base()];
  }
  std::vector<message_info> infos;
  infos.reserve(entries.size());
  std::unordered_set<std::string> used;
  used.reserve(entries.size());
  std::unordered_set<std::string_view> seen_base;
  seen_base.reserve(entries.size());
  for (auto& e : entries) {
    e.shared_base = base_count[e.base()] > 1;
    auto uidl = seen_base.insert(e.base()).second ? uidl_for_base(e.base())
                                                  : sha1_hex(e.relative());
    for (std::size_t n = 1; uidl.ok() && used.count(*uidl) != 0; ++n) {
      uidl = sha1_hex(e.relative() + "#" + std::to_string(n));
    }
    if (!uidl.ok()) {
      return std::move(uidl).err();
    }
    used.insert(*uidl);
    infos.push_back(message_info{e.size, std::move(*uidl)});
  }
  return infos;
}

// ---------------------------------------------------------------------------------------

class file_reader final : public message_reader {
 public:
  file_reader(unique_fd fd, std::string name) : fd_(std::move(fd)), name_(std::move(name)) {}

  result<std::size_t> read(std::span<char> buf) override {
    for (;;) {
      const ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
      if (n >= 0) {
        return static_cast<std::size_t>(n);
      }
      const int err = errno;
      if (err != EINTR) {
        return error::from_errno(err, "maildir: read " + name_);
      }
    }
  }

 private:
  unique_fd fd_;
  std::string name_;  // relative path, for error context
};

class maildir_drop final : public maildrop {
 public:
  maildir_drop(std::string path, unique_fd root, unique_fd lock, unique_fd cur, unique_fd new_,
               std::vector<entry> entries, std::vector<message_info> infos)
      : path_(std::move(path)),
        lock_fd_(std::move(lock)),
        root_fd_(std::move(root)),
        cur_fd_(std::move(cur)),
        new_fd_(std::move(new_)),
        entries_(std::move(entries)),
        infos_(std::move(infos)) {}

  std::span<const message_info> messages() const override { return infos_; }

  result<std::unique_ptr<message_reader>> open_message(std::size_t index,
                                                       bool retrieved) override {
    if (index >= entries_.size()) {
      return error(errc::invalid, "maildir: no message " + std::to_string(index + 1));
    }
    entry& e = entries_[index];
    by_base_.reset();  // state may have changed since any earlier scan
    for (int attempt = 0;; ++attempt) {
      auto fd = open_message_file(dir_fds().of(e.in_new), e.name, e.in_new);
      if (fd.ok()) {
        e.retrieved = e.retrieved || retrieved;
        return std::unique_ptr<message_reader>(
            std::make_unique<file_reader>(std::move(*fd), e.relative()));
      }
      if (!is_errno(fd.err(), ENOENT)) {
        return std::move(fd).err();
      }
      if (attempt > 0) {
        return error(errc::not_found, "maildir: " + e.relative() + " vanished",
                     fd.err().cause());
      }
      auto found = relocate(e);
      if (!found.ok()) {
        return std::move(found).err();
      }
      if (!*found) {
        return error(errc::not_found, "maildir: " + e.relative() + " vanished",
                     fd.err().cause());
      }
    }
  }

  result<commit_stats> commit(std::span<const bool> deleted) override {
    if (committed_) {
      return error(errc::invalid, "maildir: commit called twice");
    }
    if (deleted.size() != entries_.size()) {
      return error(errc::invalid, "maildir: commit with " + std::to_string(deleted.size()) +
                                      " marks for " + std::to_string(entries_.size()) +
                                      " messages");
    }
    committed_ = true;
    by_base_.reset();
    commit_stats stats;
    std::optional<error> first_error;
    const auto note = [&first_error](error e) {
      if (!first_error) {
        first_error = std::move(e);
      }
    };
    bool changed = false;
    const auto left = [&stats](const entry& e) {
      ++stats.left;
      stats.left_bytes += e.size;
    };

    // Removals first: they are what the user asked for.
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (!deleted[i]) {
        continue;
      }
      entry& e = entries_[i];
      for (int attempt = 0;; ++attempt) {
        auto r = unlink_entry(e);
        if (r.ok()) {
          changed = true;
          ++stats.deleted;
          stats.deleted_bytes += e.size;
          break;
        }
        if (!is_errno(r.err(), ENOENT)) {
          note(std::move(r).err());
          left(e);
          break;
        }
        if (attempt == 0) {
          auto found = relocate(e);
          if (!found.ok()) {
            note(std::move(found).err());
            left(e);
            break;
          }
          if (*found) {
            continue;
          }
        }
        // Removed by someone else: the message is gone, which is what was asked.
        ++stats.deleted;
        stats.deleted_bytes += e.size;
        break;
      }
    }

    // Kept messages: new/ -> cur/, and S for those retrieved in this session.
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (deleted[i]) {
        continue;
      }
      entry& e = entries_[i];
      for (int attempt = 0;; ++attempt) {
        const std::string target = cur_name(e.name, e.retrieved);
        if (!e.in_new && target == e.name) {
          left(e);
          break;
        }
        auto r = rename_noreplace(dir_fds().of(e.in_new), e.name, cur_fd_.get(), target,
                                  e.relative() + " to cur/" + target);
        if (r.ok()) {
          changed = true;
          e.name = target;
          e.in_new = false;
          left(e);
          break;
        }
        if (is_errno(r.err(), EEXIST)) {
          // A different file already has the target name (duplicate base names): leave this
          // one as it is rather than risk either.
          left(e);
          break;
        }
        if (!is_errno(r.err(), ENOENT)) {
          note(std::move(r).err());
          left(e);
          break;
        }
        if (attempt > 0) {
          break;  // renamed again under our feet, or removed: not ours to count
        }
        auto found = relocate(e);
        if (!found.ok()) {
          note(std::move(found).err());
          left(e);
          break;
        }
        if (!*found) {
          break;  // removed by someone else
        }
      }
    }

    if (changed) {
      for (const bool in_new : {false, true}) {
        if (::fsync(dir_fds().of(in_new)) != 0) {
          const int err = errno;
          if (err != EINVAL) {  // EINVAL: this file system cannot sync directories
            note(error::from_errno(err, std::string("maildir: fsync ") + sub_name(in_new)));
          }
        }
      }
    }

    if (first_error) {
      error e = std::move(*first_error);
      return error(errc::temporary, e.context() + " (commit of " + path_ + ")", e.cause());
    }
    return stats;
  }

 private:
  dirs dir_fds() const noexcept { return dirs{cur_fd_.get(), new_fd_.get()}; }

  result<void> unlink_entry(const entry& e) {
    if (::unlinkat(dir_fds().of(e.in_new), e.name.c_str(), 0) == 0) {
      return ok_result();
    }
    const int err = errno;
    return error::from_errno(err, "maildir: unlink " + e.relative());
  }

  // Looks `e` up again by base name after its file was not found under its listed name, and
  // updates it. Returns false when no other file has its base name (the message is gone) or
  // when its base name is shared (a lookup could pick the other message). Reuses the scan
  // held in by_base_ and rescans once if that scan is out of date.
  result<bool> relocate(entry& e) {
    if (e.shared_base) {
      return false;
    }
    bool fresh = false;  // by_base_ was scanned for this lookup
    if (!by_base_) {
      POSTERN_TRY(rescan());
      fresh = true;
    }
    for (;;) {
      const auto it = by_base_->find(std::string(e.base()));
      if (it != by_base_->end() &&
          (it->second.name != e.name || it->second.in_new != e.in_new)) {
        e.name = it->second.name;
        e.in_new = it->second.in_new;
        return true;
      }
      if (fresh) {
        return false;
      }
      POSTERN_TRY(rescan());  // the scan we had is out of date for this message
      fresh = true;
    }
  }

  result<void> rescan() {
    auto index = index_by_base(root_fd_.get());
    if (!index.ok()) {
      return std::move(index).err();
    }
    by_base_ = std::move(*index);
    return ok_result();
  }

  std::string path_;
  unique_fd lock_fd_;  // holds the session lock for the object's life
  unique_fd root_fd_;
  unique_fd cur_fd_;
  unique_fd new_fd_;
  std::vector<entry> entries_;
  std::vector<message_info> infos_;
  std::optional<base_index> by_base_;  // the last rescan, reused within one commit
  bool committed_ = false;
};

}  // namespace

name_parts parse_name(std::string_view file_name) noexcept {
  name_parts p;
  const std::size_t colon = file_name.find(':');
  p.base = file_name.substr(0, colon);
  if (colon != std::string_view::npos) {
    p.info = file_name.substr(colon + 1);
  }
  const std::size_t dot = p.base.find('.');
  if (dot != std::string_view::npos) {
    p.timestamp = parse_u64(p.base.substr(0, dot));
  }
  bool bad_wire = false;
  bool bad_physical = false;
  const auto take = [](std::string_view value, std::optional<std::uint64_t>& out, bool& bad) {
    if (out) {
      bad = true;  // repeated: trust neither
      return;
    }
    out = parse_u64(value);
    bad = bad || !out;
  };
  for (std::size_t comma = p.base.find(','); comma != std::string_view::npos;) {
    const std::size_t next = p.base.find(',', comma + 1);
    const std::string_view field = p.base.substr(
        comma + 1, next == std::string_view::npos ? std::string_view::npos : next - comma - 1);
    if (field.starts_with("W=")) {
      take(field.substr(2), p.wire_size, bad_wire);
    } else if (field.starts_with("S=")) {
      take(field.substr(2), p.physical_size, bad_physical);
    }
    comma = next;
  }
  if (bad_wire) {
    p.wire_size.reset();
  }
  if (bad_physical) {
    p.physical_size.reset();
  }
  return p;
}

std::string cur_name(std::string_view file_name, bool seen) {
  const name_parts p = parse_name(file_name);
  if (!p.info) {
    std::string out(p.base);
    out += seen ? ":2,S" : ":2,";
    return out;
  }
  if (!p.info->starts_with("2,")) {
    return std::string(file_name);
  }
  const std::string_view flags = p.info->substr(2);
  if (!seen || flags.find('S') != std::string_view::npos) {
    return std::string(file_name);
  }
  std::string new_flags(flags);
  new_flags += 'S';
  std::sort(new_flags.begin(), new_flags.end());
  new_flags.erase(std::unique(new_flags.begin(), new_flags.end()), new_flags.end());
  std::string out(p.base);
  out += ":2,";
  out += new_flags;
  return out;
}

result<std::string> uidl_for_base(std::string_view base) {
  if (is_legal_uidl(base)) {
    return std::string(base);
  }
  return sha1_hex(base);
}

result<std::unique_ptr<store::maildrop>> open(const std::string& path) {
  if (path.empty()) {
    return error(errc::invalid, "maildir: empty path");
  }
  auto root = open_or_create_dir(path);
  if (!root.ok()) {
    return std::move(root).err();
  }
  auto lock = take_lock(root->get(), path);
  if (!lock.ok()) {
    return std::move(lock).err();
  }
  for (const char* sub : {"cur", "new", "tmp"}) {
    POSTERN_TRY(make_dir_at(root->get(), sub, path + "/" + sub));
  }
  auto cur = open_at(root->get(), "cur", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, path + "/cur",
                     open_errc);
  if (!cur.ok()) {
    return std::move(cur).err();
  }
  auto new_ = open_at(root->get(), "new", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, path + "/new",
                      open_errc);
  if (!new_.ok()) {
    return std::move(new_).err();
  }
  auto entries = build_listing(root->get(), dirs{cur->get(), new_->get()});
  if (!entries.ok()) {
    error e = std::move(entries).err();
    return error(e.code(), e.context() + " in " + path, e.cause());
  }
  auto infos = make_infos(*entries);
  if (!infos.ok()) {
    return std::move(infos).err();
  }
  return std::unique_ptr<store::maildrop>(std::make_unique<maildir_drop>(
      path, std::move(*root), std::move(*lock), std::move(*cur), std::move(*new_),
      std::move(*entries), std::move(*infos)));
}

}  // namespace postern::store::maildir
