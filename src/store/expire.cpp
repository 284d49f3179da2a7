#include "store/expire.hpp"

#include "common/parse.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace postern::store {
namespace {

constexpr std::int64_t seconds_per_day = 86400;
constexpr mode_t side_file_mode = 0600;

errc classify(int err) noexcept {
  switch (err) {
    case EACCES:
    case EPERM:
    case ELOOP:
    case ENOTDIR:
    case EISDIR:
    case EROFS:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

result<void> write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, "write " + what, classify(err));
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return ok_result();
}

result<void> fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return error::from_errno(err, "open " + dir, classify(err));
  }
  unique_fd owner(fd);
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    return error::from_errno(err, "fsync " + dir, classify(err));
  }
  return ok_result();
}

bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

}  // namespace

std::string expire_capability(const expire_policy& p) {
  if (p.days < 0) {
    return "EXPIRE NEVER";
  }
  return "EXPIRE " + std::to_string(p.days);
}

bool is_expired(std::int64_t stamp, std::int64_t now, std::int32_t days) noexcept {
  if (days < 0) {
    return false;
  }
  if (days == 0) {
    return true;
  }
  if (now < stamp) {
    return false;
  }
  return now - stamp >= static_cast<std::int64_t>(days) * seconds_per_day;
}

std::optional<std::int64_t> parse_expire_timestamp(std::string_view v) noexcept {
  while (!v.empty() && (is_blank(v.front()) || v.front() == '\r' || v.front() == '\n')) {
    v.remove_prefix(1);
  }
  while (!v.empty() && (is_blank(v.back()) || v.back() == '\r' || v.back() == '\n')) {
    v.remove_suffix(1);
  }
  auto n = parse_u64(v);
  if (!n || *n > static_cast<std::uint64_t>(INT64_MAX)) {
    return std::nullopt;
  }
  return static_cast<std::int64_t>(*n);
}

std::int64_t unix_seconds(std::chrono::system_clock::time_point t) noexcept {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string side_file_path(store_kind kind, const std::string& maildrop_path,
                           std::string_view name) {
  if (kind == store_kind::maildir) {
    std::string out = maildrop_path;
    while (out.size() > 1 && out.back() == '/') {
      out.pop_back();
    }
    return out + "/" + std::string(name);
  }
  auto slash = maildrop_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : maildrop_path.substr(0, slash);
  std::string base = slash == std::string::npos ? maildrop_path : maildrop_path.substr(slash + 1);
  return dir + "/." + base + "." + std::string(name);
}

result<std::optional<std::string>> read_side_file(const std::string& path, std::size_t max_size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) {
      return std::optional<std::string>();
    }
    return error::from_errno(err, "open " + path, classify(err));
  }
  unique_fd owner(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    return error::from_errno(err, "stat " + path);
  }
  if (!S_ISREG(st.st_mode)) {
    return error(errc::permanent, path + " is not a regular file");
  }
  read_outcome got = read_to_end(fd, max_size);
  if (got.err != 0) {
    return error::from_errno(got.err, "read " + path);
  }
  if (got.too_large) {
    return error(errc::invalid, path + " is larger than " + std::to_string(max_size) + " bytes");
  }
  return std::optional<std::string>(std::move(got.data));
}

result<void> replace_side_file(const std::string& path, std::string_view content,
                               const std::string& owner_reference) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // a leftover of a crashed process with our pid
  int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, side_file_mode);
  if (fd < 0) {
    int err = errno;
    return error::from_errno(err, "create " + tmp, classify(err));
  }
  unique_fd owner(fd);
  bool keep = false;
  struct cleanup {
    const std::string& name;
    bool& keep;
    ~cleanup() {
      if (!keep) {
        ::unlink(name.c_str());
      }
    }
  } remove_tmp{tmp, keep};

  if (!owner_reference.empty() && ::geteuid() == 0) {
    struct stat ref {};
    if (::stat(owner_reference.c_str(), &ref) == 0 && (ref.st_uid != 0 || ref.st_gid != 0)) {
      if (::fchown(fd, ref.st_uid, ref.st_gid) != 0) {
        int err = errno;
        return error::from_errno(err, "chown " + tmp, classify(err));
      }
    }
  }
  POSTERN_TRY(write_all(fd, content, tmp));
  if (::fsync(fd) != 0) {
    int err = errno;
    return error::from_errno(err, "fsync " + tmp, classify(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    return error::from_errno(err, "rename " + tmp + " to " + path, classify(err));
  }
  keep = true;
  return fsync_dir(dir_of(path));
}

// ---------------------------------------------------------------------------------------
// stamp_file

result<stamp_file> stamp_file::load(const std::string& path) {
  auto text = read_side_file(path);
  if (!text) {
    return std::move(text).err();
  }
  if (!text->has_value()) {
    return stamp_file(path);
  }
  return parse(**text, path);
}

stamp_file stamp_file::parse(std::string_view text, std::string path) {
  stamp_file f(std::move(path));
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    auto sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0) {
      f.changed_ = true;  // malformed: rewritten without it at the next save
      continue;
    }
    auto stamp = parse_u64(line.substr(sp + 1));
    std::string_view uidl = line.substr(0, sp);
    bool legal = true;
    for (char c : uidl) {
      legal = legal && static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7F;
    }
    if (!stamp || *stamp > static_cast<std::uint64_t>(INT64_MAX) || !legal) {
      f.changed_ = true;
      continue;
    }
    f.stamps_[std::string(uidl)] = static_cast<std::int64_t>(*stamp);
  }
  return f;
}

std::optional<std::int64_t> stamp_file::get(std::string_view uidl) const {
  auto it = stamps_.find(uidl);
  if (it == stamps_.end()) {
    return std::nullopt;
  }
  return it->second;
}

void stamp_file::set(const std::string& uidl, std::int64_t stamp) {
  auto [it, inserted] = stamps_.try_emplace(uidl, stamp);
  if (inserted || it->second != stamp) {
    it->second = stamp;
    changed_ = true;
  }
}

void stamp_file::erase(const std::string& uidl) {
  if (stamps_.erase(uidl) > 0) {
    changed_ = true;
  }
}

std::string stamp_file::format() const {
  std::string out;
  for (const auto& [uidl, stamp] : stamps_) {
    out += uidl;
    out += ' ';
    out += std::to_string(stamp);
    out += '\n';
  }
  return out;
}

result<void> stamp_file::save(const std::string& owner_reference) {
  if (!changed_) {
    return ok_result();
  }
  if (path_.empty()) {
    return error(errc::invalid, "expire: stamp file without a path");
  }
  if (stamps_.empty()) {
    if (::unlink(path_.c_str()) != 0 && errno != ENOENT) {
      int err = errno;
      return error::from_errno(err, "unlink " + path_, classify(err));
    }
    POSTERN_TRY(fsync_dir(dir_of(path_)));
  } else {
    POSTERN_TRY(replace_side_file(path_, format(), owner_reference));
  }
  changed_ = false;
  return ok_result();
}

}  // namespace postern::store
