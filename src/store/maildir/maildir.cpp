#include "store/maildir/maildir.hpp"

#include "common/digest.hpp"
#include "common/line_ends.hpp"
#include "common/log.hpp"
#include "common/mapped_file.hpp"
#include "common/parse.hpp"
#include "common/unique_fd.hpp"
#include "store/maildir/index.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>  // renameat2, RENAME_NOREPLACE (glibc >= 2.28)
#include <cstring>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace postern::store::maildir {

namespace {

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

// Where a Maildir is: a trusted directory `root`, opened by its path (following symlinks:
// it and the path to it are the administrator's), and the components `below` it, the last
// being the Maildir itself, each opened with O_NOFOLLOW from its parent's descriptor, so no
// symlink below the root is ever followed (whoever owns a directory below the root may have
// planted one).
struct place {
  std::string root;
  std::vector<std::string> below;
  std::string path;  // root and below joined, for messages
};

std::vector<std::string> path_components(std::string_view path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < path.size()) {
    const std::size_t slash = path.find('/', i);
    const std::size_t end = slash == std::string_view::npos ? path.size() : slash;
    if (end > i) {
      out.emplace_back(path.substr(i, end - i));
    }
    i = end + 1;
  }
  return out;
}

result<place> make_place(const std::string& path, const std::string& trusted_root) {
  std::string absolute = path;
  if (absolute.front() != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) {
      const int err = errno;
      return error::from_errno(err, "maildir: working directory for " + path);
    }
    absolute = std::string(cwd) + "/" + path;
  }
  std::vector<std::string> all = path_components(absolute);
  for (const auto& c : all) {
    if (c == "." || c == "..") {
      return error(errc::invalid, "maildir: " + path + " has a . or .. component");
    }
  }
  if (all.empty()) {
    return error(errc::invalid, "maildir: " + path + " is the root directory");
  }
  std::size_t n_root = all.size() - 1;  // default: the parent directory is trusted
  if (!trusted_root.empty()) {
    const std::vector<std::string> r = path_components(trusted_root);
    if (trusted_root.front() != '/' || r.size() >= all.size() ||
        !std::equal(r.begin(), r.end(), all.begin())) {
      return error(errc::invalid,
                   "maildir: " + path + " is not below its location's root " + trusted_root);
    }
    n_root = r.size();
  }
  place p;
  p.root = "/";
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i < n_root) {
      p.root += (i > 0 ? "/" : "") + all[i];
    } else {
      p.below.push_back(all[i]);
    }
  }
  p.path = p.root == "/" ? "" : p.root;
  for (const auto& c : p.below) {
    p.path += "/" + c;
  }
  return p;
}

// Checks that `fd` (named `what`) is owned by the effective uid: the mail owner, since the
// store runs with the mail owner's uid. A directory or file of someone else's in a
// maildrop is never read, renamed or removed.
result<void> check_owner(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "maildir: stat " + what);
  }
  if (st.st_uid != ::geteuid()) {
    return error(errc::permanent, "maildir: " + what + " is owned by uid " +
                                      std::to_string(st.st_uid) + ", not by the mail owner (uid " +
                                      std::to_string(::geteuid()) + ")");
  }
  return ok_result();
}

// Opens the directory `name` under `dir_fd` without following a symlink; `what` names it in
// errors. A symlink or non-directory there is errc::permanent.
result<unique_fd> open_dir_nofollow(int dir_fd, const char* name, const std::string& what) {
  for (;;) {
    const int fd = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
      return unique_fd(fd);
    }
    const int err = errno;
    if (err == EINTR) {
      continue;
    }
    struct stat st {};
    if ((err == ELOOP || err == ENOTDIR) &&
        ::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
      return error::from_errno(err, "maildir: " + what + " is a symbolic link (never followed)",
                               errc::permanent);
    }
    return error::from_errno(err, "maildir: open " + what, open_errc(err));
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
  struct stat st {};
  if (::fstatat(dir_fd, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
    return ok_result();
  }
  return error::from_errno(err, "maildir: create " + std::string(what), open_errc(err));
}

// Opens the Maildir directory of `p`: the root by path, then each component below it with
// O_NOFOLLOW, creating missing ones (mode 0700, like Dovecot) when `create`. The Maildir
// itself must be owned by the effective uid.
result<unique_fd> open_place(const place& p, bool create) {
  unique_fd fd;
  for (bool made = false;;) {
    const int raw = ::open(p.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (raw >= 0) {
      fd = unique_fd(raw);
      break;
    }
    const int err = errno;
    if (err == EINTR) {
      continue;
    }
    if (err != ENOENT || !create || made) {
      return error::from_errno(err, "maildir: open " + p.root, open_errc(err));
    }
    // A missing root is created with its missing parents (the administrator's path).
    for (std::size_t slash = p.root.find('/', 1); slash != std::string::npos;
         slash = p.root.find('/', slash + 1)) {
      const std::string parent = p.root.substr(0, slash);
      POSTERN_TRY(make_dir_at(AT_FDCWD, parent, parent));
    }
    POSTERN_TRY(make_dir_at(AT_FDCWD, p.root, p.root));
    made = true;
  }
  std::string so_far = p.root == "/" ? "" : p.root;
  for (const auto& c : p.below) {
    so_far += "/" + c;
    auto next = open_dir_nofollow(fd.get(), c.c_str(), so_far);
    if (!next.ok() && create && is_errno(next.err(), ENOENT)) {
      POSTERN_TRY(make_dir_at(fd.get(), c, so_far));
      next = open_dir_nofollow(fd.get(), c.c_str(), so_far);
    }
    if (!next.ok()) {
      return std::move(next).err();
    }
    fd = std::move(*next);
  }
  POSTERN_TRY(check_owner(fd.get(), p.path));
  return fd;
}

// openat2 with RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH: opens `rel` (several components, no
// "." or "..") under `dir_fd` following no symlink at any step and never leaving `dir_fd`.
// Kernels before 5.6 (ENOSYS) get the same walk one component at a time with O_NOFOLLOW.
int open_beneath(int dir_fd, const std::string& rel, int flags) {
  open_how how{};
  how.flags = static_cast<std::uint64_t>(flags);
  how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    const long fd = ::syscall(SYS_openat2, dir_fd, rel.c_str(), &how, sizeof how);
    if (fd >= 0) {
      return static_cast<int>(fd);
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != ENOSYS) {
      return -1;
    }
    break;
  }
  unique_fd dir;
  int at = dir_fd;
  std::size_t from = 0;
  for (std::size_t slash = rel.find('/'); slash != std::string::npos;
       from = slash + 1, slash = rel.find('/', from)) {
    const int next = ::openat(at, rel.substr(from, slash - from).c_str(),
                              O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (next < 0) {
      return -1;
    }
    dir = unique_fd(next);
    at = next;
  }
  return ::openat(at, rel.c_str() + from, flags | O_NOFOLLOW);
}

// Opens and locks the session lock file; see the header for why flock.
result<unique_fd> take_lock(int root_fd, const std::string& path) {
  const std::string lock_name(lock_file_name);
  auto fd =
      open_at(root_fd, lock_name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
              lock_mode, path + "/" + lock_name, open_errc);
  if (!fd.ok()) {
    return fd;
  }
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "maildir: stat " + path + "/" + lock_name);
  }
  if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
    return error(errc::permanent, "maildir: " + path + "/" + lock_name +
                                      " is not a regular file owned by the mail owner");
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
      return error::from_errno(err, fmt::format("maildir: lock {}/{}", path, lock_name));
    }
  }
}

// Renames without ever replacing an existing target (a rename over a different message would
// destroy it). File systems without RENAME_NOREPLACE get a check-then-rename whose window is
// a few microseconds; every Linux local file system and NFSv4 support the flag.
// `from` and `to` are NUL-terminated names.
result<void> rename_noreplace(int from_dir, const char* from, int to_dir, const char* to,
                              std::string_view what) {
  if (::renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE) == 0) {
    return ok_result();
  }
  int err = errno;
  if (err == EINVAL || err == ENOSYS) {
    struct stat st {};
    if (::fstatat(to_dir, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      err = EEXIST;
    } else {
      err = errno;
      if (err == ENOENT) {
        if (::renameat(from_dir, from, to_dir, to) == 0) {
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
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t i = 0;
#if defined(__SSE2__)
  // 16 bytes at a time, compared as signed: 0x21..0x7E are exactly the bytes greater than
  // 0x20 and less than 0x7F (0x80..0xFF are negative).
  const __m128i above = _mm_set1_epi8(0x20);
  const __m128i below = _mm_set1_epi8(0x7F);
  for (; s.size() - i >= 16; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m128i legal = _mm_and_si128(_mm_cmpgt_epi8(x, above), _mm_cmplt_epi8(x, below));
    if (_mm_movemask_epi8(legal) != 0xFFFF) {
      return false;
    }
  }
#endif
  for (; i < s.size(); ++i) {
    if (p[i] < 0x21 || p[i] > 0x7E) {
      return false;
    }
  }
  return true;
}

struct dir_item {
  std::string name;
  std::uint64_t ino = 0;
  bool in_new = false;
};

std::string relative_path(bool in_new, std::string_view name) {
  std::string out(sub_name(in_new));
  out += '/';
  out.append(name);
  return out;
}

// Appends the regular files of the directory `sub_fd` (cur/ or new/; names not starting with
// '.') to `out`. Lists through a new open file description of the same directory, so the
// caller's descriptor keeps its offset and the listing is of the inode the caller stat'ed.
result<void> scan_sub(int sub_fd, bool in_new, std::vector<dir_item>& out) {
  auto fd = open_at(sub_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, sub_name(in_new));
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
      struct stat st {};
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
      out.push_back(dir_item{ent->d_name, static_cast<std::uint64_t>(ent->d_ino), in_new});
    }
  }
}

struct dirs {
  int cur = -1;
  int new_ = -1;
  int of(bool in_new) const noexcept { return in_new ? new_ : cur; }
};

// Every message file now in cur/ and new/, by base name. When one base name appears twice
// the cur/ file wins (it was listed first).
using base_index = std::unordered_map<std::string, dir_item>;

result<base_index> index_by_base(const dirs& d) {
  std::vector<dir_item> items;
  POSTERN_TRY(scan_sub(d.cur, false, items));
  POSTERN_TRY(scan_sub(d.new_, true, items));
  base_index index;
  index.reserve(items.size());
  for (auto& item : items) {
    std::string base(parse_name(item.name).base);
    index.emplace(std::move(base), std::move(item));
  }
  return index;
}

// Checks what opening the message file `rel` (cur/NAME or new/NAME) returned, `raw` (errno
// when negative): a regular file owned by `euid`; `st` receives its fstat. A file that fails
// the checks is errc::permanent and is never read.
result<unique_fd> checked_message_fd(int raw, const std::string& rel, uid_t euid, struct stat& st) {
  if (raw < 0) {
    const int err = errno;
    if (err == ELOOP || err == EXDEV) {
      return error::from_errno(err, "maildir: " + rel + " is a symbolic link (never followed)",
                               errc::permanent);
    }
    return error::from_errno(err, "maildir: open " + rel);
  }
  unique_fd fd(raw);
  if (::fstat(fd.get(), &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "maildir: stat " + rel);
  }
  if (!S_ISREG(st.st_mode)) {
    return error(errc::permanent, "maildir: " + rel + " is not a regular file");
  }
  if (st.st_uid != euid) {
    return error(errc::permanent, "maildir: " + rel + " is owned by uid " +
                                      std::to_string(st.st_uid) + ", not by the mail owner (uid " +
                                      std::to_string(euid) + ")");
  }
  return fd;
}

// What a file's fstat says that the index records and open_message verifies.
struct file_stat {
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  fs_time ctime;
  bool known = false;  // false: the file could not be read (size and ctime unknown)
};

file_stat file_stat_of(const struct stat& st) noexcept {
  return file_stat{static_cast<std::uint64_t>(st.st_ino),
                   st.st_size > 0 ? static_cast<std::uint64_t>(st.st_size) : 0,
                   fs_time{st.st_ctim.tv_sec, st.st_ctim.tv_nsec}, true};
}

// The octets the dot encoder adds after a message whose last line is unterminated (see
// pop3/dot_encoder.cpp, finish_to): CRLF, or only LF after a final CR. They are part of
// what RETR sends for the message, so the wire size counts them.
std::uint64_t tail_octets(std::uint64_t bytes, char last) noexcept {
  if (bytes == 0 || last == '\n') {
    return 0;
  }
  return last == '\r' ? 1 : 2;
}

// Counts the wire size of the open file `fd` of `file_size` bytes by reading it from offset
// 0 with pread (the descriptor's offset is left alone): file bytes, plus one CR for every LF
// not preceded by CR, plus tail_octets. `buf` is reused across calls. Normally one pread of
// file_size + 1 bytes (a read shorter than asked for, once file_size bytes have arrived,
// ends the file without a second read returning 0).
result<std::uint64_t> count_wire_size(int fd, std::uint64_t file_size, std::vector<char>& buf,
                                      const std::string& what) {
  constexpr std::uint64_t max_read_size = std::uint64_t{1} << 20;
  constexpr std::size_t min_buffer_size = std::size_t{64} * 1024;
  const std::size_t want = file_size < max_read_size ? static_cast<std::size_t>(file_size) + 1
                                                     : static_cast<std::size_t>(max_read_size);
  if (buf.size() < want) {
    buf.resize(std::max(want, min_buffer_size));
  }
  std::uint64_t bytes = 0;
  std::uint64_t bare_lfs = 0;
  bool after_cr = false;
  char last = '\n';
  for (;;) {
    const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(bytes));
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, "maildir: read " + what);
    }
    if (n == 0) {
      break;
    }
    const std::string_view chunk(buf.data(), static_cast<std::size_t>(n));
    bare_lfs += count_bare_lfs(chunk, after_cr);
    after_cr = chunk.back() == '\r';
    last = chunk.back();
    bytes += static_cast<std::uint64_t>(n);
    if (static_cast<std::size_t>(n) < want && bytes >= file_size) {
      break;
    }
  }
  return bytes + bare_lfs + tail_octets(bytes, last);
}

// A listed file's wire size and what its fstat said.
struct sized_file {
  std::uint64_t wire_size = 0;
  file_stat stat;
};

// Sizes a message by reading it once (count_wire_size). Per file: one openat on the
// directory descriptor (O_NOATIME where the kernel permits it, so sizing does not dirty
// every inode), one fstat and normally one read.
class size_counter {
 public:
  // nullopt: the file is no longer there (renamed or removed since the listing), or is no
  // longer a regular file. A file that exists but cannot be read (EACCES, EIO) does not fail
  // the listing: it is listed with its file size as its wire size and without a known stat,
  // so open_message counts it again (and fails there while it stays unreadable), and a
  // warning names it.
  result<std::optional<sized_file>> wire_size(int dir_fd, const std::string& name, bool in_new) {
    int fd_raw = -1;
    for (;;) {
      fd_raw = ::openat(dir_fd, name.c_str(), message_open_flags | noatime_, 0);
      if (fd_raw >= 0) {
        break;
      }
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      if (err == EPERM && noatime_ != 0) {
        noatime_ = 0;  // not the files' owner: O_NOATIME is refused, open without it
        continue;
      }
      if (err == ENOENT || err == ELOOP) {
        return std::optional<sized_file>();
      }
      if (err == EACCES || err == EPERM) {
        return unreadable(dir_fd, name, in_new, err);
      }
      return error::from_errno(err, "maildir: open " + relative_path(in_new, name));
    }
    const unique_fd fd(fd_raw);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      const int err = errno;
      return error::from_errno(err, "maildir: stat " + relative_path(in_new, name));
    }
    if (!S_ISREG(st.st_mode)) {
      return std::optional<sized_file>();  // swapped for something else: not a message
    }
    sized_file out{0, file_stat_of(st)};
    auto size = count_wire_size(fd.get(), out.stat.size, buf_, relative_path(in_new, name));
    if (!size.ok()) {
      if (is_errno(size.err(), EIO)) {
        return unreadable(dir_fd, name, in_new, EIO);
      }
      return std::move(size).err();
    }
    out.wire_size = *size;
    return std::optional<sized_file>(out);
  }

 private:
  static result<std::optional<sized_file>> unreadable(int dir_fd, const std::string& name,
                                                      bool in_new, int err) {
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
      return std::optional<sized_file>();
    }
    sized_file out;
    out.stat.ino = static_cast<std::uint64_t>(st.st_ino);
    out.wire_size = st.st_size > 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    log::warning(
        "maildir: cannot read {} to size it ({}); listed with its file size, {} "
        "octets, and RETR of it fails while it stays unreadable",
        relative_path(in_new, name), std::generic_category().message(err), out.wire_size);
    return std::optional<sized_file>(out);
  }

  std::vector<char> buf_;
  int noatime_ = O_NOATIME;
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

// Stable storage for file names: each name added is copied once, NUL-terminated, into blocks
// that never move, so the views handed out stay valid for the arena's life (moving the arena
// moves only the block pointers). One allocation per quarter megabyte instead of one per
// name: a 100,000-message listing costs a few allocations, not 100,000.
class name_arena {
 public:
  // A view of the copy; view.data()[view.size()] is '\0', so data() can go to a system call.
  std::string_view add(std::string_view s) {
    const std::size_t need = s.size() + 1;
    if (blocks_.empty() || capacity_ - used_ < need) {
      const std::size_t size = std::max(need, block_bytes);
      blocks_.emplace_back(new char[size]);
      capacity_ = size;
      used_ = 0;
    }
    char* p = blocks_.back().get() + used_;
    std::memcpy(p, s.data(), s.size());
    p[s.size()] = '\0';
    used_ += need;
    return std::string_view(p, s.size());
  }

 private:
  static constexpr std::size_t block_bytes = std::size_t{256} * 1024;
  std::vector<std::unique_ptr<char[]>> blocks_;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

struct entry {
  // File name in cur/ or new/, in the listing's name_arena (NUL-terminated there); replaced
  // by a new arena copy when the file is found renamed.
  std::string_view name;
  std::size_t base_len = 0;
  bool in_new = false;
  bool retrieved = false;
  bool shared_base = false;  // another listed file has the same base name (corrupt state)
  std::optional<std::uint64_t> timestamp;
  std::uint64_t size = 0;
  std::uint64_t ino = 0;  // for the index: a file with the same name but another inode is
                          // a different file, sized again
  // The file's size and ctime when it was sized (or verified by open_message); what
  // open_message checks the opened file against. Unknown for sizes taken from ",W=" and
  // for files that could not be read.
  std::uint64_t file_size = 0;
  fs_time ctime;
  bool stat_known = false;

  std::string_view base() const noexcept { return std::string_view(name).substr(0, base_len); }
  std::string relative() const { return relative_path(in_new, name); }
};

// Sizes of files recorded in the index, by base name (views into the index's entries).
using known_sizes = std::unordered_map<std::string_view, const entry*>;

const entry* find_known(const known_sizes* known, std::string_view base) {
  if (known == nullptr) {
    return nullptr;
  }
  const auto it = known->find(base);
  return it == known->end() ? nullptr : it->second;
}

// Builds the entry for one listed file; nullopt when it vanished before it could be sized.
// The size comes from a trusted ",W=", else from the index when it knows the base name with
// the same inode and the stat it was sized with (an entry without one was sized from an
// older name's ",W=" or could not be read), else from reading the file.
result<std::optional<entry>> make_entry(const dirs& d, const dir_item& item, size_counter& counter,
                                        const known_sizes* known, name_arena& names) {
  const name_parts p = parse_name(item.name);
  entry e;
  e.base_len = p.base.size();
  e.in_new = item.in_new;
  e.timestamp = p.timestamp;
  e.ino = item.ino;
  if (auto w = trusted_wire_size(p)) {
    e.size = *w;
  } else if (const entry* k = find_known(known, p.base);
             k != nullptr && k->ino == item.ino && k->stat_known) {
    e.size = k->size;
    e.file_size = k->file_size;
    e.ctime = k->ctime;
    e.stat_known = k->stat_known;
  } else {
    auto size = counter.wire_size(d.of(item.in_new), item.name, item.in_new);
    if (!size.ok()) {
      return std::move(size).err();
    }
    if (!*size) {
      return std::optional<entry>();
    }
    e.size = (*size)->wire_size;
    e.ino = (*size)->stat.ino;
    e.file_size = (*size)->stat.size;
    e.ctime = (*size)->stat.ctime;
    e.stat_known = (*size)->stat.known;
  }
  e.name = names.add(item.name);
  return std::optional<entry>(e);
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
// are dropped; true duplicates (two files, corrupt state) stay. `entries` is in listing
// order, where entries with one base name are adjacent.
result<void> prune_vanished_duplicates(const dirs& d, std::vector<entry>& entries) {
  std::vector<bool> drop;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const entry& e = entries[i];
    const bool shared = (i > 0 && entries[i - 1].base() == e.base()) ||
                        (i + 1 < entries.size() && entries[i + 1].base() == e.base());
    if (!shared) {
      continue;
    }
    struct stat st {};
    if (::fstatat(d.of(e.in_new), e.name.data(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      if (err != ENOENT) {
        return error::from_errno(err, "maildir: stat " + e.relative());
      }
      drop.resize(entries.size(), false);
      drop[i] = true;
    }
  }
  if (!drop.empty()) {
    std::size_t out = 0;
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (!drop[i]) {
        if (out != i) {
          entries[out] = entries[i];
        }
        ++out;
      }
    }
    entries.resize(out);
  }
  return ok_result();
}

// ---------------------------------------------------------------------------------------
// The index file (see index.hpp for its format and the header for when it is trusted).

dir_stamp stamp_of(const struct stat& st) noexcept {
  dir_stamp s;
  s.dev = static_cast<std::uint64_t>(st.st_dev);
  s.ino = static_cast<std::uint64_t>(st.st_ino);
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime = fs_time{st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  s.ctime = fs_time{st.st_ctim.tv_sec, st.st_ctim.tv_nsec};
  return s;
}

result<dir_stamp> stamp_fd(int fd, bool in_new) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    return error::from_errno(err, std::string("maildir: stat ") + sub_name(in_new));
  }
  return stamp_of(st);
}

// The file system's current time, read by setting the lock file's timestamps to "now" and
// reading them back: the same clock, granularity and (on NFS) host that stamp the
// directories. nullopt when that fails; the listing is then never taken from the index.
std::optional<fs_time> file_system_now(int lock_fd) noexcept {
  if (::futimens(lock_fd, nullptr) != 0) {
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(lock_fd, &st) != 0) {
    return std::nullopt;
  }
  return fs_time{st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
}

// A directory's recorded listing may stand in for reading it only when its stamp is what
// the index recorded AND that stamp was strictly older than the file-system time taken
// before the recorded listing was read. Why that is enough: every change to a directory's
// entries sets its mtime and ctime to the file system's current time, which never runs
// backwards in one file system's clock (the kernel clamps to a monotonic floor and
// truncates to the file system's granularity). A change made after the recorded time
// therefore gets a stamp >= that time > the recorded stamp, so it cannot leave the stamp as
// recorded; a change made before it was already in the directory when the recorded listing
// was read (the stamp was taken first). Without the strict inequality, a change in the same
// clock tick as the recorded stamp could go unseen. Comparing against the file system's own
// time rather than this host's clock keeps this true on NFS with skewed clocks and on file
// systems with one-second or two-second timestamps. What it does not survive is the
// system clock being stepped backwards to the very nanosecond (or, on coarse file systems,
// the very second) of a recorded stamp: then a change could reproduce both the recorded
// mtime and ctime exactly. Every mtime-based Maildir cache (Dovecot's too) shares that.
bool is_settled(const dir_stamp& s, const fs_time& listed_at) noexcept {
  return s.mtime < listed_at && s.ctime < listed_at;
}

// An index larger than this (about five million messages) is ignored and the Maildir read.
constexpr std::uint64_t max_index_file_size = std::uint64_t{256} << 20;
// Entries reserved up front from the file's size (about 50 octets a record), bounded so that
// a large hostile file costs no more than its own size before it is checked.
constexpr std::size_t max_index_reserve = std::size_t{1} << 18;

// What parse_name says of a name's base length and leading timestamp, without the ",W=" and
// ",S=" fields (an index record carries its size).
void base_and_timestamp(std::string_view name, std::size_t& base_len,
                        std::optional<std::uint64_t>& timestamp) noexcept {
  const std::size_t colon = name.find(':');
  const std::string_view base = name.substr(0, colon);
  base_len = base.size();
  timestamp.reset();
  const std::size_t dot = base.find('.');
  if (dot == std::string_view::npos) {
    return;
  }
  const std::string_view digits = base.substr(0, dot);
  if (digits.empty() || digits.size() >= 20) {  // 20 digits can overflow: the strict parser
    timestamp = parse_u64(digits);
    return;
  }
  std::uint64_t v = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') {
      return;
    }
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  timestamp = v;
}

// The index as last written, its entries in listing order. nullopt when there is none or it
// is unusable in any way (see decode_index), which is never an error: the caller scans.
struct loaded_index {
  dir_stamp new_dir;
  dir_stamp cur_dir;
  fs_time listed_at;
  std::vector<entry> entries;
  // [in_new]: the directory has an entry whose size is not known to be right, one that could
  // not be read to size it (no stat, no ",W="); such a directory is read again, and the
  // file sized again, rather than taken from the index.
  bool unverified[2] = {false, false};
};

std::optional<loaded_index> load_index(int root_fd, name_arena& names) {
  const std::string name(index_file_name);
  const int fd_raw =
      ::openat(root_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd_raw < 0) {
    return std::nullopt;
  }
  const unique_fd fd(fd_raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() ||
      st.st_size <= 0 || static_cast<std::uint64_t>(st.st_size) > max_index_file_size) {
    return std::nullopt;
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  const std::size_t want = size + 1;  // one more: a file grown since fstat is not trusted
  const std::unique_ptr<char[]> bytes(new char[want]);
  std::size_t have = 0;
  while (have < want) {
    const ssize_t n = ::read(fd.get(), bytes.get() + have, want - have);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    have += static_cast<std::size_t>(n);
  }
  if (have != size) {
    return std::nullopt;
  }
  loaded_index out;
  index_contents head;
  // About 50 octets a record: reserve so the entries are not copied as they grow.
  out.entries.reserve(std::min(size / 48, max_index_reserve));
  const bool ok = decode_index(
      std::string_view(bytes.get(), size), head, [&out, &names](const index_record& r) {
        entry e;
        e.name = names.add(r.name);
        base_and_timestamp(r.name, e.base_len, e.timestamp);
        e.in_new = r.in_new;
        e.size = r.wire_size;
        e.ino = r.ino;
        e.file_size = r.file_size;
        e.ctime = r.ctime;
        e.stat_known = r.stat_known;
        if (!r.stat_known && !trusted_wire_size(parse_name(r.name))) {
          out.unverified[r.in_new] = true;
        }
        // Written in listing order, each file once: anything else
        // is not our file.
        if (!out.entries.empty() && !listing_order(out.entries.back(), e)) {
          return false;
        }
        out.entries.push_back(e);
        return true;
      });
  if (!ok) {
    return std::nullopt;
  }
  out.new_dir = head.new_dir;
  out.cur_dir = head.cur_dir;
  out.listed_at = head.listed_at;
  return out;
}

// Replaces the index with `c`, written under a temporary name (created 0600, O_EXCL and
// O_NOFOLLOW, in the Maildir root) and renamed over the old one, so a reader sees the old
// file or the new one, never a mix. The session lock keeps two Postern sessions from
// writing at once. No fsync: the index is a cache, a crash can at worst leave a file whose
// checksum fails (then ignored) or the previous one (whose stamps no longer match). Failure
// (read-only Maildir, full disk) is ignored for the same reason.
void write_index(int root_fd, const index_contents& c) {
  const std::string tmp(index_temp_name);
  const std::string name(index_file_name);
  const std::string bytes = encode_index(c);
  ::unlinkat(root_fd, tmp.c_str(), 0);  // left by a crash; we hold the session lock
  const int fd_raw = ::openat(root_fd, tmp.c_str(),
                              O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, lock_mode);
  if (fd_raw < 0) {
    return;
  }
  bool ok = true;
  {
    const unique_fd fd(fd_raw);
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        ok = false;
        break;
      }
      done += static_cast<std::size_t>(n);
    }
  }
  if (!ok || ::renameat(root_fd, tmp.c_str(), root_fd, name.c_str()) != 0) {
    ::unlinkat(root_fd, tmp.c_str(), 0);
  }
}

// The index recording `entries` under the stamps and time of `head`.
index_contents index_of(const index_contents& head, const std::vector<entry>& entries) {
  index_contents c;
  c.new_dir = head.new_dir;
  c.cur_dir = head.cur_dir;
  c.listed_at = head.listed_at;
  c.records.reserve(entries.size());
  bool complete = true;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const entry& e = entries[i];
    if (e.name.size() > max_index_name_size) {
      complete = false;
      continue;
    }
    c.records.push_back(
        index_record{e.name, e.size, e.ino, e.in_new, e.file_size, e.ctime, e.stat_known});
  }
  if (!complete) {
    c.new_dir = dir_stamp{};  // a name the format cannot hold: never a complete listing
    c.cur_dir = dir_stamp{};
  }
  return c;
}

bool same_listing(const std::vector<entry>& a, const std::vector<entry>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const entry& x, const entry& y) {
    return x.in_new == y.in_new && x.size == y.size && x.ino == y.ino && x.name == y.name &&
           x.stat_known == y.stat_known && x.file_size == y.file_size && x.ctime == y.ctime;
  });
}

// Lists, sizes and orders the messages of cur/ and new/, using and refreshing the index.
//
// new/ is dealt with first and cur/ is stat'ed only after new/ has been listed: a message
// that another MUA moves from new/ to cur/ meanwhile is then seen at least once (possibly
// twice, which prune_vanished_duplicates resolves) instead of possibly not at all; when new/
// comes from the index, such a move changes cur/'s stamp after new/'s stamp was checked, so
// cur/ is read. A directory whose stamp matches a settled record (is_settled) is taken from
// the index without being read; any other is read with readdir, and each file in it is
// sized from ,W=, else from the index by base name and inode (Maildir programs never change
// a file's content, only its name; open_message verifies the rest), else by reading it. A
// size the index holds for a file that could not be read is never reused: that file is read
// again (and its directory listed) at the next login.
// `head` receives the stamps and time the index records for this listing (what a later
// rewrite of the index, after open_message corrected an entry, must record again).
result<std::vector<entry>> build_listing(int root_fd, const dirs& d, int lock_fd, name_arena& names,
                                         bool use_index, index_contents& head) {
  const std::optional<fs_time> now = file_system_now(lock_fd);
  std::optional<loaded_index> idx;
  if (use_index) {
    idx = load_index(root_fd, names);
  } else {
    ::unlinkat(root_fd, std::string(index_file_name).c_str(), 0);  // nothing may trust it
  }

  std::vector<dir_item> items;
  bool from_index[2] = {false, false};  // [in_new]
  dir_stamp stamps[2];
  for (const bool in_new : {true, false}) {
    auto stamp = stamp_fd(d.of(in_new), in_new);
    if (!stamp.ok()) {
      return std::move(stamp).err();
    }
    stamps[in_new] = *stamp;
    if (idx) {
      const dir_stamp& recorded = in_new ? idx->new_dir : idx->cur_dir;
      from_index[in_new] =
          recorded == *stamp && is_settled(recorded, idx->listed_at) && !idx->unverified[in_new];
    }
    if (!from_index[in_new]) {
      POSTERN_TRY(scan_sub(d.of(in_new), in_new, items));
    }
  }
  const bool any_read = !from_index[0] || !from_index[1];

  size_counter counter;
  std::vector<entry> entries;
  if (any_read) {
    entries.reserve(items.size() + (idx ? idx->entries.size() : 0));
  }
  std::vector<dir_item> missing;
  {
    // Files of new/ come only from new/ (deliveries); files of cur/ may come from either.
    known_sizes known;
    if (idx && !items.empty()) {
      known.reserve(from_index[0] ? 64 : idx->entries.size());
      for (const auto& e : idx->entries) {
        if (e.in_new || !from_index[0]) {
          known.emplace(e.base(), &e);
        }
      }
    }
    for (auto& item : items) {
      auto e = make_entry(d, item, counter, idx ? &known : nullptr, names);
      if (!e.ok()) {
        return std::move(e).err();
      }
      if (*e) {
        entries.push_back(**e);
      } else {
        missing.push_back(std::move(item));
      }
    }
  }
  std::sort(entries.begin(), entries.end(), listing_order);
  if (!any_read) {
    entries = std::move(idx->entries);  // the whole listing, in order: nothing to merge
  } else if (idx && (from_index[0] || from_index[1])) {
    // The index's entries are in listing order already: append those of the directories
    // taken from it and merge the two sorted runs.
    const auto middle = static_cast<std::ptrdiff_t>(entries.size());
    for (auto& e : idx->entries) {
      if (from_index[e.in_new]) {
        entries.push_back(e);
      }
    }
    std::inplace_merge(entries.begin(), entries.begin() + middle, entries.end(), listing_order);
  }

  POSTERN_TRY(prune_vanished_duplicates(d, entries));

  // Files renamed by another MUA while we listed: look each up once more by base name.
  // readdir may have returned the new name as well, so skip files already listed.
  if (!missing.empty()) {
    std::unordered_set<std::string> listed;
    for (const auto& e : entries) {
      listed.insert(e.relative());
    }
    auto index = index_by_base(d);
    if (!index.ok()) {
      return std::move(index).err();
    }
    for (const auto& m : missing) {
      const auto it = index->find(std::string(parse_name(m.name).base));
      if (it == index->end() || listed.count(relative_path(it->second.in_new, it->second.name))) {
        continue;  // gone, or already listed under its new name
      }
      auto e = make_entry(d, it->second, counter, nullptr, names);
      if (!e.ok()) {
        return std::move(e).err();
      }
      if (*e) {
        listed.insert((*e)->relative());
        entries.push_back(**e);
      }
    }
    std::sort(entries.begin(), entries.end(), listing_order);
  }

  // Record what was read, unless that would change nothing: the same listing under stamps
  // that still cannot be trusted.
  if (!any_read) {
    head.new_dir = idx->new_dir;
    head.cur_dir = idx->cur_dir;
    head.listed_at = idx->listed_at;
  } else if (use_index) {
    head.new_dir = stamps[1];
    head.cur_dir = stamps[0];
    head.listed_at = now.value_or(fs_time{});
    const bool settled =
        now && is_settled(stamps[0], head.listed_at) && is_settled(stamps[1], head.listed_at);
    // (When one directory came from the index its entries were moved out of idx above.)
    const bool partial = from_index[0] || from_index[1];
    if (settled || !idx || partial || !same_listing(entries, idx->entries)) {
      write_index(root_fd, index_of(head, entries));
    }
  }
  return entries;
}

// Assigns UIDLs in listing order and marks entries that share a base name (adjacent, in
// listing order). The first file of a base name gets uidl_for_base; a later one (corrupt
// state) gets the hash of its relative path, and any remaining collision is broken with a
// counter. When every base name is distinct and a legal UIDL (the common case), the UIDLs
// are the base names and are unique without further checks.
result<std::vector<message_info>> make_infos(std::vector<entry>& entries) {
  bool plain = true;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    entry& e = entries[i];
    e.shared_base = (i > 0 && entries[i - 1].base() == e.base()) ||
                    (i + 1 < entries.size() && entries[i + 1].base() == e.base());
    plain = plain && !e.shared_base && is_legal_uidl(e.base());
  }
  std::vector<message_info> infos;
  infos.reserve(entries.size());
  if (plain) {
    for (const auto& e : entries) {
      infos.push_back(message_info{e.size, std::string(e.base())});
    }
    return infos;
  }
  std::unordered_set<std::string> used;
  used.reserve(entries.size());
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const entry& e = entries[i];
    const bool first_of_base = i == 0 || entries[i - 1].base() != e.base();
    auto uidl = first_of_base ? uidl_for_base(e.base()) : sha1_hex(e.relative());
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

class file_reader final : public message_reader {
 public:
  // `size`: the file's size when it was opened. Reading stops there, without the read that
  // would return 0 (a message file is never rewritten; one that shrank ends early, as before).
  file_reader(unique_fd fd, std::string name, std::uint64_t size)
      : fd_(std::move(fd)), name_(std::move(name)), size_(size) {}

  result<std::size_t> read(std::span<char> buf) override {
    if (pos_ >= size_ || map_) {
      return std::size_t{0};
    }
    buf = buf.first(static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size_ - pos_)));
    for (;;) {
      const ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
      if (n >= 0) {
        pos_ += static_cast<std::uint64_t>(n);
        return static_cast<std::size_t>(n);
      }
      const int err = errno;
      if (err != EINTR) {
        return error::from_errno(err, "maildir: read " + name_);
      }
    }
  }

  // Maps the rest of the file, from where read() stopped, when it is large.
  result<std::optional<std::span<const char>>> map_next(std::size_t max) override {
    if (!map_tried_) {
      map_tried_ = true;
      if (size_ > pos_) {
        map_ = mapped_file::map(fd_.get(), pos_, size_ - pos_);
      }
    }
    if (!map_) {
      return std::optional<std::span<const char>>{};
    }
    return std::optional<std::span<const char>>(map_->next(max));
  }

 private:
  unique_fd fd_;
  std::string name_;  // relative path, for error context
  std::uint64_t size_;
  std::uint64_t pos_ = 0;  // bytes read()
  bool map_tried_ = false;
  std::unique_ptr<mapped_file> map_;
};

// The Maildir's root, cur/ and new/ opened for one piece of work (the listing at open, a
// commit, a lookup by base name); closed when it ends, so an idle session holds nothing
// but its lock.
struct open_dirs {
  unique_fd root;
  unique_fd cur;
  unique_fd new_;
  dirs view() const noexcept { return dirs{cur.get(), new_.get()}; }
};

// Opens cur/ and new/ under `root`, the already opened Maildir `path` (which names them in
// errors), without following symlinks, and checks they are owned by the effective uid.
// Takes `root` over only on success, so a caller can create what is missing and try again.
result<open_dirs> open_subdirs(unique_fd& root, const std::string& path) {
  open_dirs d;
  for (const bool in_new : {false, true}) {
    const std::string what = path + "/" + sub_name(in_new);
    auto fd = open_dir_nofollow(root.get(), sub_name(in_new), what);
    if (!fd.ok()) {
      return std::move(fd).err();
    }
    POSTERN_TRY(check_owner(fd->get(), what));
    (in_new ? d.new_ : d.cur) = std::move(*fd);
  }
  d.root = std::move(root);
  return d;
}

result<open_dirs> open_maildir_dirs(const place& p) {
  auto root = open_place(p, false);
  if (!root.ok()) {
    return std::move(root).err();
  }
  return open_subdirs(*root, p.path);
}

class maildir_drop final : public maildrop {
 public:
  maildir_drop(place where, unique_fd lock, name_arena names, std::vector<entry> entries,
               std::vector<message_info> infos, std::optional<index_contents> index_head)
      : place_(std::move(where)),
        path_(place_.path),
        lock_fd_(std::move(lock)),
        names_(std::move(names)),
        entries_(std::move(entries)),
        infos_(std::move(infos)),
        index_head_(std::move(index_head)) {}

  // An entry corrected by open_message and not yet written: written now (see save_index).
  ~maildir_drop() override { save_index(); }

  maildir_drop(const maildir_drop&) = delete;
  maildir_drop& operator=(const maildir_drop&) = delete;

  std::span<const message_info> messages() const override { return infos_; }

  result<std::unique_ptr<message_reader>> open_message(std::size_t index, bool retrieved) override {
    if (index >= entries_.size()) {
      return error(errc::invalid, "maildir: no message " + std::to_string(index + 1));
    }
    entry& e = entries_[index];
    by_base_.reset();  // state may have changed since any earlier scan
    for (int attempt = 0;; ++attempt) {
      struct stat st {};
      auto fd = open_file(e, st);
      if (fd.ok()) {
        POSTERN_TRY(verify(index, e, fd->get(), st));
        e.retrieved = e.retrieved || retrieved;
        return std::unique_ptr<message_reader>(std::make_unique<file_reader>(
            std::move(*fd), e.relative(), static_cast<std::uint64_t>(st.st_size)));
      }
      if (fd.err().code() == errc::permanent) {
        log::warning("{}: not served", fd.err().message());
      }
      if (!is_errno(fd.err(), ENOENT)) {
        return std::move(fd).err();
      }
      if (attempt > 0) {
        return error(errc::not_found, "maildir: " + e.relative() + " vanished", fd.err().cause());
      }
      auto found = relocate(e);
      if (!found.ok()) {
        return std::move(found).err();
      }
      if (!*found) {
        return error(errc::not_found, "maildir: " + e.relative() + " vanished", fd.err().cause());
      }
    }
  }

  result<commit_stats> commit(std::span<const bool> deleted) override {
    POSTERN_TRY(check_commit_call("maildir", committed_, deleted.size(), entries_.size()));
    if (!needs_update(deleted)) {
      // Nothing to remove or rename (the common QUIT of a session that only read mail that
      // was already seen): no directory is opened.
      committed_ = true;
      commit_stats stats;
      for (const entry& e : entries_) {
        ++stats.left;
        stats.left_bytes += e.size;
      }
      return stats;
    }
    auto opened = open_maildir_dirs(place_);
    if (!opened.ok()) {
      error e = std::move(opened).err();
      return error(errc::temporary, e.context() + " (commit of " + path_ + ")", e.cause());
    }
    committed_ = true;
    by_base_.reset();
    dirs_ = std::move(*opened);
    const scope_close close_dirs{dirs_};
    commit_progress progress;

    // Removals first: they are what the user asked for.
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (deleted[i]) {
        remove_at_commit(entries_[i], progress);
      }
    }
    // Kept messages: new/ -> cur/, and S for those retrieved in this session.
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (!deleted[i]) {
        keep_at_commit(entries_[i], progress);
      }
    }
    if (progress.changed) {
      sync_dirs_at_commit(progress);
    }

    if (index_dirty_) {
      save_index();
    }
    if (progress.first_error) {
      error e = std::move(*progress.first_error);
      return error(errc::temporary, e.context() + " (commit of " + path_ + ")", e.cause());
    }
    return progress.stats;
  }

 private:
  // What commit() has done so far: counts, the first error (the one reported), and whether
  // any directory changed (then both are synced).
  struct commit_progress {
    commit_stats stats;
    std::optional<error> first_error;
    bool changed = false;

    void note(error e) {
      if (!first_error) {
        first_error = std::move(e);
      }
    }
    void left(const entry& e) {
      ++stats.left;
      stats.left_bytes += e.size;
    }
    void removed(const entry& e) {
      ++stats.deleted;
      stats.deleted_bytes += e.size;
    }
  };

  // Removes a message marked deleted; one that moved (another client renamed it) is looked
  // up once and removed where it is now.
  void remove_at_commit(entry& e, commit_progress& p) {
    for (int attempt = 0;; ++attempt) {
      auto r = unlink_entry(e);
      if (r.ok()) {
        p.changed = true;
        p.removed(e);
        return;
      }
      if (!is_errno(r.err(), ENOENT)) {
        if (r.err().code() == errc::permanent) {
          log::warning("{}: not removed", r.err().message());
        }
        p.note(std::move(r).err());
        p.left(e);
        return;
      }
      if (attempt == 0) {
        auto found = relocate(e);
        if (!found.ok()) {
          p.note(std::move(found).err());
          p.left(e);
          return;
        }
        if (*found) {
          continue;
        }
      }
      // Removed by someone else: the message is gone, which is what was asked.
      p.removed(e);
      return;
    }
  }

  // Moves a kept message from new/ to cur/ and adds S when it was retrieved; one that moved
  // meanwhile is looked up once.
  void keep_at_commit(entry& e, commit_progress& p) {
    if (!e.in_new && !e.retrieved && e.name.find(':') != std::string_view::npos) {
      p.left(e);  // cur_name would keep the name: no string built for the common case
      return;
    }
    for (int attempt = 0;; ++attempt) {
      const std::string target = cur_name(e.name, e.retrieved);
      if (!e.in_new && target == e.name) {
        p.left(e);
        return;
      }
      auto r = check_file(e);
      if (!r.ok() && r.err().code() == errc::permanent) {
        log::warning("{}: not renamed", r.err().message());
        p.left(e);
        return;
      }
      if (r.ok()) {
        r = rename_noreplace(dir_fds().of(e.in_new), e.name.data(), dir_fds().cur, target.c_str(),
                             e.relative() + " to cur/" + target);
      }
      if (r.ok()) {
        p.changed = true;
        e.name = names_.add(target);
        e.in_new = false;
        p.left(e);
        return;
      }
      if (is_errno(r.err(), EEXIST)) {
        // A different file already has the target name (duplicate base names): leave this
        // one as it is rather than risk either.
        p.left(e);
        return;
      }
      if (!is_errno(r.err(), ENOENT)) {
        p.note(std::move(r).err());
        p.left(e);
        return;
      }
      if (attempt > 0) {
        return;  // renamed again under our feet, or removed: not ours to count
      }
      auto found = relocate(e);
      if (!found.ok()) {
        p.note(std::move(found).err());
        p.left(e);
        return;
      }
      if (!*found) {
        return;  // removed by someone else
      }
    }
  }

  void sync_dirs_at_commit(commit_progress& p) {
    for (const bool in_new : {false, true}) {
      if (::fsync(dir_fds().of(in_new)) != 0) {
        const int err = errno;
        if (err != EINVAL) {  // EINVAL: this file system cannot sync directories
          p.note(error::from_errno(err, std::string("maildir: fsync ") + sub_name(in_new)));
        }
      }
    }
  }

  // Whether commit has anything to do: a removal, or a kept message that must move to cur/
  // or change its name there (the same test as keep_at_commit).
  bool needs_update(std::span<const bool> deleted) const {
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (deleted[i]) {
        return true;
      }
      const entry& e = entries_[i];
      if (e.in_new || e.name.find(':') == std::string_view::npos) {
        return true;
      }
      if (e.retrieved && cur_name(e.name, true) != e.name) {
        return true;
      }
    }
    return false;
  }

  // Opens the file of `e` for reading (O_NONBLOCK: a FIFO swapped in cannot block) without
  // following a symlink below the location's root, and checks it (checked_message_fd). The
  // common case is one system call: openat2 of the whole path with RESOLVE_NO_SYMLINKS. When
  // that meets a symlink (perhaps the administrator's, above the root) or openat2 is
  // missing, the root is opened by path and the rest resolved beneath it (open_beneath).
  result<unique_fd> open_file(const entry& e, struct stat& st) {
    const std::string rel = e.relative();
    const std::string full = path_ + "/" + rel;
    open_how how{};
    how.flags = static_cast<std::uint64_t>(message_open_flags);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long raw = -1;
    do {
      raw = ::syscall(SYS_openat2, AT_FDCWD, full.c_str(), &how, sizeof how);
    } while (raw < 0 && errno == EINTR);
    if (raw >= 0 || (errno != ELOOP && errno != ENOSYS)) {
      return checked_message_fd(static_cast<int>(raw), rel, euid_, st);
    }
    const int root = ::open(place_.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) {
      const int err = errno;
      return error::from_errno(err, "maildir: open " + place_.root);
    }
    const unique_fd root_fd(root);
    std::string beneath;
    for (const auto& c : place_.below) {
      beneath += c;
      beneath += '/';
    }
    return checked_message_fd(open_beneath(root_fd.get(), beneath + rel, message_open_flags), rel,
                              euid_, st);
  }

  // Checks the opened file of message `index` against what the listing recorded, so RETR
  // never sends a byte count other than the one LIST gave. Same inode, size and ctime: the
  // file is the one that was sized. A size from ",W=" (no stat recorded) is trusted when the
  // file's size agrees with it (and with ",S="). Anything else is counted again from the
  // opened file: the entry takes the new stat and size (written to the index at commit or
  // when the session ends, so the next session lists it right), a changed size is logged,
  // and when the size is not the one LIST gave, the message is errc::changed for the rest of
  // the session.
  result<void> verify(std::size_t index, entry& e, int fd, const struct stat& st) {
    const file_stat now = file_stat_of(st);
    const bool same =
        e.stat_known && e.ino == now.ino && e.file_size == now.size && e.ctime == now.ctime;
    if (!same && !e.stat_known && plausible_name_size(e, now.size)) {
      return check_listed(index, e);  // sized from ",W=", which the file agrees with
    }
    if (!same) {
      auto counted = count_wire_size(fd, now.size, count_buf_, e.relative());
      if (!counted.ok()) {
        return std::move(counted).err();
      }
      if (*counted != e.size) {
        log::warning(
            "maildir: {}/{} changed since it was indexed ({} octets recorded, {} now); "
            "index corrected",
            path_, e.relative(), e.size, *counted);
      }
      e.size = *counted;
      e.ino = now.ino;
      e.file_size = now.size;
      e.ctime = now.ctime;
      e.stat_known = true;
      index_dirty_ = index_dirty_ || index_head_.has_value();
    }
    return check_listed(index, e);
  }

  // Whether a size taken from the name (",W=") fits a file of `file_size` octets.
  static bool plausible_name_size(const entry& e, std::uint64_t file_size) {
    const name_parts p = parse_name(e.name);
    const auto w = trusted_wire_size(p);
    if (!w || *w != e.size || (p.physical_size && *p.physical_size != file_size)) {
      return false;
    }
    return *w >= file_size && *w - file_size <= file_size + 2;
  }

  result<void> check_listed(std::size_t index, const entry& e) const {
    if (e.size == infos_[index].size) {
      return ok_result();
    }
    return error(errc::changed, "maildir: " + path_ + "/" + e.relative() +
                                    " changed since it was listed (" +
                                    std::to_string(infos_[index].size) + " octets listed, " +
                                    std::to_string(e.size) + " now)");
  }

  // Rewrites the index after open_message corrected an entry, under the stamps and time of
  // the listing it was read with. Entries renamed or removed since (by commit or another
  // program) are recorded as they are now or were; either way the directories' stamps have
  // changed since, so the next open lists them and takes from this index only the sizes
  // (by base name and inode).
  void save_index() {
    if (!index_dirty_ || !index_head_) {
      return;
    }
    index_dirty_ = false;
    auto maildir = open_place(place_, false);
    if (maildir.ok()) {
      write_index(maildir->get(), index_of(*index_head_, entries_));
    }
  }

  // Before a removal or rename: the file must (still) be a regular file owned by the mail
  // owner. errc::permanent when it is not; an ENOENT error when it is gone.
  result<void> check_file(const entry& e) const {
    struct stat st {};
    if (::fstatat(dir_fds().of(e.in_new), e.name.data(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      return error::from_errno(err, "maildir: stat " + e.relative());
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
      return error(errc::permanent, "maildir: " + path_ + "/" + e.relative() +
                                        " is not a regular file owned by the mail owner");
    }
    return ok_result();
  }

  // The directories opened for the commit in progress.
  dirs dir_fds() const noexcept { return dirs_ ? dirs_->view() : dirs{}; }

  // Closes the commit's directories however commit returns.
  struct scope_close {
    std::optional<open_dirs>& d;
    ~scope_close() { d.reset(); }
  };

  result<void> unlink_entry(const entry& e) {
    POSTERN_TRY(check_file(e));
    if (::unlinkat(dir_fds().of(e.in_new), e.name.data(), 0) == 0) {
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
      if (it != by_base_->end() && (it->second.name != e.name || it->second.in_new != e.in_new)) {
        e.name = names_.add(it->second.name);
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
    std::optional<open_dirs> temporary;
    if (!dirs_) {
      auto opened = open_maildir_dirs(place_);
      if (!opened.ok()) {
        return std::move(opened).err();
      }
      temporary = std::move(*opened);
    }
    auto index = index_by_base(dirs_ ? dirs_->view() : temporary->view());
    if (!index.ok()) {
      return std::move(index).err();
    }
    by_base_ = std::move(*index);
    return ok_result();
  }

  place place_;
  std::string path_;               // place_.path: the Maildir, for messages
  unique_fd lock_fd_;              // holds the session lock for the object's life
  name_arena names_;               // every entry's name; declared before entries_, destroyed after
  std::optional<open_dirs> dirs_;  // open only while commit runs
  std::vector<entry> entries_;
  std::vector<message_info> infos_;
  std::optional<base_index> by_base_;  // the last rescan, reused within one commit
  bool committed_ = false;
  // What the index records for this listing (stamps and time), when the index is kept;
  // index_dirty_: open_message corrected an entry since, and the index must be rewritten.
  std::optional<index_contents> index_head_;
  bool index_dirty_ = false;
  std::vector<char> count_buf_;  // reused by verify's counts
  uid_t euid_ = ::geteuid();     // the mail owner: files owned by anyone else are refused
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

result<std::unique_ptr<store::maildrop>> open(const std::string& path, const open_options& opts) {
  if (path.empty()) {
    return error(errc::invalid, "maildir: empty path");
  }
  auto where = make_place(path, opts.root);
  if (!where.ok()) {
    return std::move(where).err();
  }
  auto root = open_place(*where, true);
  if (!root.ok()) {
    return std::move(root).err();
  }
  auto lock = take_lock(root->get(), path);
  if (!lock.ok()) {
    return std::move(lock).err();
  }
  auto d = open_subdirs(*root, path);
  if (!d.ok() && is_errno(d.err(), ENOENT)) {
    // A new or incomplete Maildir: create what is missing (mkdir only then, not at every
    // login).
    for (const char* sub : {"cur", "new", "tmp"}) {
      POSTERN_TRY(make_dir_at(root->get(), sub, path + "/" + sub));
    }
    d = open_subdirs(*root, path);
  }
  if (!d.ok()) {
    return std::move(d).err();
  }
  name_arena names;
  index_contents head;
  auto entries = build_listing(d->root.get(), d->view(), lock->get(), names, opts.use_index, head);
  if (!entries.ok()) {
    error e = std::move(entries).err();
    return error(e.code(), e.context() + " in " + path, e.cause());
  }
  auto infos = make_infos(*entries);
  if (!infos.ok()) {
    return std::move(infos).err();
  }
  std::optional<index_contents> index_head;
  if (opts.use_index) {
    index_head = std::move(head);
  }
  return std::unique_ptr<store::maildrop>(std::make_unique<maildir_drop>(
      std::move(*where), std::move(*lock), std::move(names), std::move(*entries), std::move(*infos),
      std::move(index_head)));
}

}  // namespace postern::store::maildir
