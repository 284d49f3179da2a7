#include "store/mbox/mbox.hpp"

#include "common/log.hpp"
#include "common/mapped_file.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"
#include "store/mbox/index.hpp"
#include "store/mbox/journal.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

namespace postern::store::mbox {

namespace {

constexpr std::size_t scan_buffer_size = std::size_t{1} << 20;
constexpr std::size_t read_buffer_size = std::size_t{64} * 1024;
constexpr std::uint64_t tail_window = 64;  // what scan_result::tail_fingerprint covers
constexpr int reopen_attempts = 3;
// From this many messages on, a maildrop's listing is freed off the caller's thread.
constexpr std::size_t deferred_free_messages = 10000;
// How long to wait, spool locked, for the file system's clock to tick past timestamps the
// spool got within the current tick (read_stamp): a Linux clock tick is 1 to 10 ms; on a
// coarser file system the wait gives up and the index is trusted only from the next scan on.
constexpr int stable_wait_attempts = 12;
constexpr useconds_t stable_wait_step_us = 1000;

// Failures to reach the mailbox that will not pass by retrying.
errc open_errc(int err) noexcept {
  switch (err) {
    case ENOTDIR:
    case ELOOP:
    case ENAMETOOLONG:
    case EACCES:
    case EPERM:
    case EROFS:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

// Reads up to n bytes at off; fewer only at the end of the file.
result<std::string> pread_some(int fd, std::uint64_t off, std::size_t n, const std::string& what) {
  std::string out(n, '\0');
  auto got = pread_upto(fd, out.data(), n, off, "mbox", what);
  if (!got.ok()) {
    return std::move(got).err();
  }
  out.resize(*got);
  return out;
}

result<bool> exists_at(int dir_fd, const std::string& name, const std::string& what,
                       struct stat* st_out = nullptr) {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (st_out != nullptr) {
      *st_out = st;
    }
    return true;
  }
  const int err = errno;
  if (err == ENOENT) {
    return false;
  }
  return error::from_errno(err, "mbox: stat " + what, open_errc(err));
}

// One sequential pass over the bytes [from.offset, size).
result<scan_result> scan_file(int fd, std::uint64_t size, const parse_options& po,
                              const std::string& what, std::uint64_t seed, resume_point from = {}) {
  const std::uint64_t start = from.offset;
  scanner sc(
      po, size,
      [fd, size, &what](std::uint64_t off, std::size_t n) -> result<std::string> {
        if (off >= size) {
          return std::string();
        }
        return pread_some(fd, off, static_cast<std::size_t>(std::min<std::uint64_t>(n, size - off)),
                          what);
      },
      std::move(from), seed);
  std::vector<char> buf(static_cast<std::size_t>(
      std::min<std::uint64_t>(scan_buffer_size, std::max<std::uint64_t>(size - start, 1))));
  std::uint64_t pos = start;
  while (pos < size) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - pos));
    POSTERN_TRY(pread_full(fd, buf.data(), n, pos, "mbox", what));
    POSTERN_TRY(sc.feed(std::string_view(buf.data(), n)));
    pos += n;
  }
  return sc.finish();
}

// A fresh seed for the digests of a full scan (parser.hpp: Identity). Should the random
// source fail, the seed is 0: the digests still tell apart every message that was not
// made on purpose to collide.
std::uint64_t random_seed() noexcept {
  std::uint64_t seed = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof seed) != 1) {
    return 0;
  }
  return seed;
}

// Index of the first of spans[b, e) whose bytes no longer have its digest (a file that
// ends inside one counts as a difference), or nullopt when all match. One sequential read
// of their extents, which tile [spans[b].separator, spans[e - 1].extent_end).
result<std::optional<std::size_t>> first_changed(int fd, std::span<const message_span> spans,
                                                 std::size_t b, std::size_t e, std::uint64_t seed,
                                                 const std::string& what) {
  if (b >= e) {
    return std::optional<std::size_t>{};
  }
  const std::uint64_t begin = spans[b].separator;
  const std::uint64_t end = spans[e - 1].extent_end;
  std::vector<char> buf(static_cast<std::size_t>(
      std::min<std::uint64_t>(scan_buffer_size, std::max<std::uint64_t>(end - begin, 1))));
  digester d(seed);
  std::size_t i = b;
  std::uint64_t pos = begin;
  while (pos < end) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end - pos));
    auto got = pread_upto(fd, buf.data(), want, pos, "mbox", what);
    if (!got.ok()) {
      return std::move(got).err();
    }
    const std::string_view chunk(buf.data(), *got);
    std::uint64_t at = pos;  // absolute offset of chunk[0]
    std::size_t used = 0;
    while (used < chunk.size()) {
      const std::uint64_t stop = std::min(spans[i].extent_end, at + (chunk.size() - used));
      d.update(chunk.substr(used, static_cast<std::size_t>(stop - at)));
      used += static_cast<std::size_t>(stop - at);
      at = stop;
      if (stop == spans[i].extent_end) {
        if (d.digest() != spans[i].digest) {
          return std::optional<std::size_t>(i);
        }
        d.reset(seed);
        ++i;
      }
    }
    if (chunk.size() < want) {
      return std::optional<std::size_t>(i);  // the file ends inside message i
    }
    pos += want;
  }
  return std::optional<std::size_t>{};
}

// fingerprint() of the last <= tail_window bytes before `end`, as scan_result records it.
result<std::uint64_t> tail_fingerprint_at(int fd, std::uint64_t end, const std::string& what) {
  const std::uint64_t tail = std::min(end, tail_window);
  auto bytes = pread_some(fd, end - tail, static_cast<std::size_t>(tail), what);
  if (!bytes.ok()) {
    return std::move(bytes).err();
  }
  if (bytes->size() != tail) {
    return error(errc::temporary, "mbox: " + what + " shrank while in use");
  }
  return fingerprint(*bytes);
}

// True if the From_ line of `s` is still where a scan saw it.
result<bool> from_line_in_place(int fd, const message_span& s, const std::string& what) {
  const auto n =
      static_cast<std::size_t>(std::min<std::uint64_t>(s.from_line_length, fingerprint_bytes));
  auto bytes = pread_some(fd, s.separator, n, what);
  if (!bytes.ok()) {
    return std::move(bytes).err();
  }
  return bytes->size() == n && fingerprint(*bytes) == s.from_fingerprint;
}

// The cheap check that the scanned part of the file is still what the index describes: the
// first and last From_ lines and the bytes just before the scanned end. (Data safety does
// not rest on it: open_message and commit check every From_ line they rely on.)
result<bool> spot_check(int fd, const scan_result& scan, const std::string& what) {
  if (!scan.messages.empty()) {
    for (const message_span* m : {&scan.messages.front(), &scan.messages.back()}) {
      auto in_place = from_line_in_place(fd, *m, what);
      if (!in_place.ok()) {
        return std::move(in_place).err();
      }
      if (!*in_place) {
        return false;
      }
    }
  }
  auto tail = tail_fingerprint_at(fd, scan.scanned_size, what);
  if (!tail.ok()) {
    return std::move(tail).err();
  }
  return *tail == scan.tail_fingerprint;
}

file_stamp stamp_of(const struct stat& st) noexcept {
  file_stamp s;
  s.dev = static_cast<std::uint64_t>(st.st_dev);
  s.ino = static_cast<std::uint64_t>(st.st_ino);
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime_s = st.st_mtim.tv_sec;
  s.mtime_ns = st.st_mtim.tv_nsec;
  s.ctime_s = st.st_ctim.tv_sec;
  s.ctime_ns = st.st_ctim.tv_nsec;
  return s;
}

bool before(std::int64_t s, std::int64_t ns, const struct timespec& t) noexcept {
  return s < t.tv_sec || (s == t.tv_sec && ns < t.tv_nsec);
}

// The file system's clock: the session lock file (ours, in the spool's directory, so on the
// same file system) is touched and its new mtime read. Comparing the mbox's timestamps with
// it, rather than with the system clock, is exact whatever the file system's timestamp
// granularity (a second on some NFS servers, two on FAT, a clock tick on Linux).
std::optional<struct timespec> file_system_now(int session_fd) noexcept {
  struct stat st {};
  if (::futimens(session_fd, nullptr) != 0 || ::fstat(session_fd, &st) != 0) {
    return std::nullopt;
  }
  return st.st_mtim;
}

// A scan's stamp can be trusted later only if the file's timestamps were strictly older
// than the file system's clock when the scan started: any change after that moves them.
bool stamp_is_stable(const file_stamp& s, const std::optional<struct timespec>& now) noexcept {
  return now && before(s.mtime_s, s.mtime_ns, *now) && before(s.ctime_s, s.ctime_ns, *now);
}

struct current_stamp {
  file_stamp stamp;
  bool stable = false;
};

// The spool's stamp (call with the spool locked), read after the file system's clock. A
// spool changed within the clock's current tick (just written, or copied into place right
// before the login) waits up to stable_wait_attempts ms for the tick to pass, so that the
// stamp is stable and the index written with it can be trusted next time.
result<current_stamp> read_stamp(int session_fd, int spool_fd, const std::string& path) {
  current_stamp out;
  for (int attempt = 0;; ++attempt) {
    const std::optional<struct timespec> now = file_system_now(session_fd);
    struct stat st {};
    if (::fstat(spool_fd, &st) != 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: stat " + path);
    }
    out.stamp = stamp_of(st);
    out.stable = stamp_is_stable(out.stamp, now);
    if (out.stable || !now || attempt >= stable_wait_attempts) {
      return out;
    }
    ::usleep(stable_wait_step_us);
  }
}

bool same_options(const parse_options& a, const parse_options& b) noexcept {
  return a.from_quoting == b.from_quoting && a.honour_content_length == b.honour_content_length &&
         a.use_x_uidl == b.use_x_uidl;
}

// ---------------------------------------------------------------------------------------

class mbox_reader final : public message_reader {
 public:
  mbox_reader(unique_fd fd, std::uint64_t begin, std::uint64_t end, quoting q, std::string display)
      : fd_(std::move(fd)), pos_(begin), end_(end), display_(std::move(display)) {
    if (q != quoting::none) {
      unquote_.emplace(q);
      raw_.resize(read_buffer_size);
    }
  }

  result<std::size_t> read(std::span<char> buf) override {
    if (buf.empty()) {
      return std::size_t{0};
    }
    if (!unquote_) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end_ - pos_));
      POSTERN_TRY(pread_full(fd_.get(), buf.data(), n, pos_, "mbox", display_));
      pos_ += n;
      return n;
    }
    for (;;) {
      if (out_pos_ < out_.size()) {
        const std::size_t n = std::min(buf.size(), out_.size() - out_pos_);
        std::copy_n(out_.data() + out_pos_, n, buf.data());
        out_pos_ += n;
        return n;
      }
      out_.clear();
      out_pos_ = 0;
      if (pos_ == end_) {
        if (finished_) {
          return std::size_t{0};
        }
        unquote_->finish(out_);
        finished_ = true;
        continue;
      }
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(raw_.size(), end_ - pos_));
      POSTERN_TRY(pread_full(fd_.get(), raw_.data(), n, pos_, "mbox", display_));
      pos_ += n;
      unquote_->filter(std::string_view(raw_.data(), n), out_);
    }
  }

  // Maps the rest of the message when it is large and stored unquoted (quoted lines need
  // the filter, which works on read()).
  result<std::optional<std::span<const char>>> map_next(std::size_t max) override {
    if (!map_tried_) {
      map_tried_ = true;
      if (!unquote_ && end_ > pos_) {
        map_ = mapped_file::map(fd_.get(), pos_, end_ - pos_);
        if (map_) {
          pos_ = end_;  // read() now has nothing left; the mapping has the rest
        }
      }
    }
    if (!map_) {
      return std::optional<std::span<const char>>{};
    }
    return std::optional<std::span<const char>>(map_->next(max));
  }

 private:
  unique_fd fd_;
  std::uint64_t pos_;
  std::uint64_t end_;
  std::string display_;
  std::optional<unquoter> unquote_;
  std::vector<char> raw_;
  std::string out_;
  std::size_t out_pos_ = 0;
  bool finished_ = false;
  bool map_tried_ = false;
  std::unique_ptr<mapped_file> map_;
};

class mbox_drop final : public maildrop {
 public:
  // An empty maildrop with no file behind it.
  mbox_drop() = default;

  // `spool_dir`: the spool's directory; `state_dir`: the side files' (the same directory, or
  // a state directory of the mail owner's when the spool's is shared). `opened`: the spool's
  // stamp when it was listed; `stable`: no later write can keep it.
  mbox_drop(std::string path, std::string base, options opts, unique_fd spool_dir,
            // cppcheck-suppress passedByValue ; its messages are moved: cppcheck 2.10 misses it
            unique_fd state_dir, unique_fd session, unique_fd spool, scan_result scan,
            const file_stamp& opened, bool stable)
      : path_(std::move(path)),
        base_(std::move(base)),
        opts_(std::move(opts)),
        names_(side_files_for(base_)),
        spool_dir_fd_(std::move(spool_dir)),
        dir_fd_(std::move(state_dir)),
        session_fd_(std::move(session)),
        spool_fd_(std::move(spool)),
        scanned_size_(scan.scanned_size),
        tail_fingerprint_(scan.tail_fingerprint),
        digest_seed_(scan.digest_seed),
        opened_(opened),
        opened_stable_(stable),
        spans_(std::move(scan.messages)) {
    infos_.reserve(spans_.size());
    for (auto& s : spans_) {
      infos_.push_back(message_info{s.size, std::move(s.uidl)});
      s.uidl.clear();
      s.uidl.shrink_to_fit();
    }
  }

  // Freeing the listing of a large maildrop (100,000 UIDL strings and offsets) takes
  // milliseconds, and the QUIT reply waits for this destructor; the descriptors (and so the
  // session lock) go at once, the memory on a short-lived thread of its own. If no thread
  // can be started, it is freed here.
  ~mbox_drop() override {
    if (infos_.size() < deferred_free_messages) {
      return;
    }
    try {
      std::thread([spans = std::move(spans_), infos = std::move(infos_)] {}).detach();
    } catch (const std::system_error&) {
      // The vectors were not moved out, or were destroyed with the failed thread's state.
    }
  }
  mbox_drop(const mbox_drop&) = delete;
  mbox_drop& operator=(const mbox_drop&) = delete;

  std::span<const message_info> messages() const override { return infos_; }

  result<std::unique_ptr<message_reader>> open_message(std::size_t index,
                                                       bool /*retrieved*/) override {
    if (committed_) {
      return error(errc::invalid, "mbox: the maildrop was committed");
    }
    if (index >= spans_.size()) {
      return error(errc::invalid, "mbox: no message " + std::to_string(index + 1));
    }
    if (changed_) {
      return changed_error();
    }
    const message_span& s = spans_[index];
    POSTERN_TRY(verify(index, index + 1));
    const int dup = ::fcntl(spool_fd_.get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: duplicate descriptor of " + path_);
    }
    const quoting q = s.unquote ? opts_.from_quoting : quoting::none;
    return std::unique_ptr<message_reader>(
        std::make_unique<mbox_reader>(unique_fd(dup), s.content, s.end, q, path_));
  }

  result<commit_stats> commit(std::span<const bool> deleted) override {
    POSTERN_TRY(check_commit_call("mbox", committed_, deleted.size(), spans_.size()));
    committed_ = true;
    commit_stats stats;
    std::optional<std::size_t> first;
    for (std::size_t i = 0; i < spans_.size(); ++i) {
      if (deleted[i]) {
        first = first.value_or(i);
        ++stats.deleted;
        stats.deleted_bytes += infos_[i].size;
      } else {
        ++stats.left;
        stats.left_bytes += infos_[i].size;
      }
    }
    if (!first) {
      return stats;  // nothing to write: no lock, no I/O
    }
    if (changed_) {
      return changed_error();  // a message differed from the listing: delete nothing
    }
    auto r = update(deleted, *first);
    if (!r.ok()) {
      error e = std::move(r).err();
      // A lock timeout at QUIT is a temporary failure of the update, not "in use".
      return error(errc::temporary, e.context() + " (update of " + path_ + ")", e.cause());
    }
    return stats;
  }

 private:
  error changed_error() const {
    return error(errc::temporary, "mbox: " + path_ +
                                      ": mailbox changed by another program; log in again "
                                      "(nothing is deleted in this session)");
  }

  // Checks that messages [b, e) still have their identities. On a difference the session
  // is marked (it reads and deletes nothing more), the index removed so that the next login
  // scans, a warning logged, and errc::temporary returned.
  result<void> verify(std::size_t b, std::size_t e) {
    auto changed = first_changed(spool_fd_.get(), spans_, b, e, digest_seed_, path_);
    if (!changed.ok()) {
      return std::move(changed).err();
    }
    if (!*changed) {
      return ok_result();
    }
    changed_ = true;
    log::warning(
        "mbox: {}: message {} differs from the listing (changed by another program); "
        "the session deletes nothing and the next login rescans",
        log::safe(path_), **changed + 1);
    static_cast<void>(remove_index(dir_fd_.get(), names_));
    return changed_error();
  }

  // The scanned part must still be what we scanned, at least where the update relies on it.
  result<void> check_unchanged(std::size_t first) {
    struct stat named {};
    struct stat ours {};
    if (::fstatat(spool_dir_fd_.get(), base_.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: " + path_ + " vanished");
    }
    if (::fstat(spool_fd_.get(), &ours) != 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: stat " + path_);
    }
    if (named.st_dev != ours.st_dev || named.st_ino != ours.st_ino) {
      return error(errc::temporary, "mbox: " + path_ + " was replaced by another program");
    }
    if (static_cast<std::uint64_t>(ours.st_size) < scanned_size_) {
      return error(errc::temporary, "mbox: " + path_ + " shrank since it was opened");
    }
    const std::uint64_t tail = std::min(scanned_size_, tail_window);
    auto bytes =
        pread_some(spool_fd_.get(), scanned_size_ - tail, static_cast<std::size_t>(tail), path_);
    if (!bytes.ok()) {
      return std::move(bytes).err();
    }
    if (fingerprint(*bytes) != tail_fingerprint_) {
      changed_ = true;
      log::warning(
          "mbox: {}: the end of the listed messages changed (by another program); "
          "nothing deleted, the next login rescans",
          log::safe(path_));
      static_cast<void>(remove_index(dir_fd_.get(), names_));
      return changed_error();
    }
    // Every message the rewrite moves or removes: from the first deleted one to the end.
    return verify(first, spans_.size());
  }

  // Fills `plan` (start and old_size already set) with what the file keeps from the first
  // deleted message on, putting back a blank line before a separator that would otherwise
  // stop being one; mail delivered since the scan is kept whole. `derivable` says whether the
  // new index can be derived from the listing, `moved` lists the kept messages after `first`
  // for it. Errors: reading the head of the appended mail.
  result<void> plan_update(std::span<const bool> deleted, std::size_t first, update_plan& plan,
                           bool& derivable, std::vector<std::size_t>& moved) {
    const auto keep = [&plan](std::uint64_t from, std::uint64_t to, bool blank_line_before) {
      if (from == to) {
        return;
      }
      if (!blank_line_before && !plan.keep.empty() && plan.keep.back().to == from) {
        plan.keep.back().to = to;
      } else {
        plan.keep.push_back(plan_piece{from, to, blank_line_before});
      }
    };
    // A From_ line without a date is a separator only after a blank line (or first in the
    // file, or after the garbage prefix). Where a deletion gives it a new predecessor that
    // does not end with a blank line, the plan puts one back so that it stays a separator.
    bool after_prefix = first == 0;  // what precedes is the garbage prefix or the file start
    bool after_blank = first > 0 && spans_[first - 1].ends_with_blank_line;
    bool joined = true;  // the predecessor changed: a deleted message was just skipped
    // The messages of the new file, for the index: those before `first` stay where they are,
    // the kept ones after it move down. Not derived where a deletion can change more than
    // offsets: a UIDL that yielded to an earlier message's, or Content-Length boundaries.
    derivable = !opts_.honour_content_length;
    for (std::size_t i = first + 1; i < spans_.size(); ++i) {
      if (deleted[i]) {
        joined = true;
        continue;
      }
      const message_span& s = spans_[i];
      const bool blank = joined && !after_prefix && !after_blank && !s.dated_separator;
      keep(s.separator, s.extent_end, blank);
      // A blank line put before s ends the previous kept message's extent, which changes its
      // identity; the index is then removed rather than that digest computed again.
      derivable = derivable && !s.uidl_collided && !blank;
      if (derivable) {
        moved.push_back(i);
      }
      after_prefix = false;
      after_blank = s.ends_with_blank_line;
      joined = false;
    }
    if (plan.old_size > scanned_size_) {  // mail delivered since the scan
      bool needs_blank = false;
      if (joined && !after_prefix && !after_blank) {
        auto head = pread_some(spool_fd_.get(), scanned_size_, line_head_bytes, path_);
        if (!head.ok()) {
          return std::move(head).err();
        }
        const std::string_view line = std::string_view(*head).substr(0, head->find('\n'));
        needs_blank = line.starts_with("From ") && !looks_like_from_line(line);
      }
      keep(scanned_size_, plan.old_size, needs_blank);
    }
    return ok_result();
  }

  // Rewrites spans_ for the file just updated: messages before `first` stay, the kept ones in
  // `moved` move down to start at `start`; origin[k] is then the old number of spans_[first + k].
  // The index contents of the new file, or nullopt when it cannot be described now.
  std::optional<index_contents> shift_kept_spans(std::size_t first, std::uint64_t start,
                                                 const std::vector<std::size_t>& moved,
                                                 std::vector<std::size_t>& origin) {
    std::size_t w = first;
    std::uint64_t cursor = start;  // the end of the kept messages in the new file
    origin.reserve(moved.size());
    for (const std::size_t i : moved) {
      message_span m = std::move(spans_[i]);
      const std::uint64_t from = m.separator;
      m.separator = cursor;
      m.content = cursor + (m.content - from);
      m.end = cursor + (m.end - from);
      m.extent_end = cursor + (m.extent_end - from);
      cursor = m.extent_end;
      spans_[w++] = std::move(m);
      origin.push_back(i);
    }
    spans_.resize(w);
    auto described = describe(cursor);
    if (!described.ok()) {
      return std::nullopt;
    }
    return std::move(*described);
  }

  result<void> update(std::span<const bool> deleted, std::size_t first) {
    auto lock = lock::mailbox_lock::acquire(path_, spool_fd_.get(), opts_.locking);
    if (!lock.ok()) {
      return std::move(lock).err();
    }
    // An unfinished update cannot exist: open() recovered it and the session lock kept every
    // other Postern out. Refuse rather than guess if one does.
    auto pending = exists_at(dir_fd_.get(), names_.journal, names_.journal);
    if (!pending.ok()) {
      return std::move(pending).err();
    }
    if (*pending) {
      return error(errc::temporary, "mbox: an unfinished update journal appeared for " + path_);
    }
    POSTERN_TRY(check_unchanged(first));
    struct stat st {};
    if (::fstat(spool_fd_.get(), &st) != 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: stat " + path_);
    }
    update_plan plan;
    plan.start = spans_[first].separator;
    plan.old_size = static_cast<std::uint64_t>(st.st_size);
    // No write at all since the listing: its messages before `first` are as listed.
    const bool untouched = opened_stable_ && stamp_of(st) == opened_;
    bool derivable = false;
    std::vector<std::size_t> moved;  // kept after `first`
    POSTERN_TRY(plan_update(deleted, first, plan, derivable, moved));
    POSTERN_TRY(
        run_update(dir_fd_.get(), names_, spool_fd_.get(), path_, plan, &*lock, opts_.faults));
    if (derivable && opts_.use_index && !untouched) {
      // The file was written since the listing (a delivery, or an edit): the messages the
      // update did not touch go into the new index only if they still have their identity.
      auto changed = first_changed(spool_fd_.get(), spans_, 0, first, digest_seed_, path_);
      if (!changed.ok() || *changed) {
        log::notice(
            "mbox: {}: a message before the first deleted one changed during the "
            "session; the index is removed, the next login scans",
            log::safe(path_));
        derivable = false;
      }
    }
    // The update is done: from here on nothing may fail the commit. spans_ now describes the
    // new file (the session reads no message after its commit): messages before `first`
    // are unchanged; the kept ones after it move down in place, so the cost grows with the
    // messages after the first deleted one, like the update's.
    std::optional<index_contents> idx;
    std::vector<std::size_t> origin;  // spans_[first + k] was message origin[k]
    if (derivable) {
      idx = shift_kept_spans(first, plan.start, moved, origin);
    }
    POSTERN_TRY(lock->release());
    // A cache: failing to write it costs the next login a scan, nothing else.
    if (idx && opts_.use_index) {
      idx->scan.messages = std::move(spans_);
      const auto uidl_of = [this, first, &origin](std::size_t k) -> std::string_view {
        return infos_[k < first ? k : origin[k - first]].uidl;
      };
      static_cast<void>(save_index(dir_fd_.get(), names_, *idx, uidl_of));
      spans_ = std::move(idx->scan.messages);  // freed with the maildrop (see the destructor)
    } else {
      static_cast<void>(remove_index(dir_fd_.get(), names_));
    }
    return ok_result();
  }

  // The index of the file just rewritten (still locked), without its messages: the kept
  // messages end at `scanned`; the stamp and the tail are read now. Waits a little for the
  // file system's clock to pass the file's timestamps, so that the index can be trusted when
  // nothing changes (see stamp_is_stable).
  result<index_contents> describe(std::uint64_t scanned) {
    index_contents c;
    c.opts.from_quoting = opts_.from_quoting;
    c.opts.honour_content_length = opts_.honour_content_length;
    c.opts.use_x_uidl = opts_.use_x_uidl;
    auto now = read_stamp(session_fd_.get(), spool_fd_.get(), path_);
    if (!now.ok()) {
      return std::move(now).err();
    }
    c.stamp = now->stamp;
    c.stable = now->stable;
    if (scanned > c.stamp.size) {
      return error(errc::temporary, "mbox: " + path_ + " shrank during the update");
    }
    auto tail = tail_fingerprint_at(spool_fd_.get(), scanned, path_);
    if (!tail.ok()) {
      return std::move(tail).err();
    }
    c.scan.scanned_size = scanned;
    c.scan.tail_fingerprint = *tail;
    c.scan.digest_seed = digest_seed_;
    return c;
  }

  std::string path_;
  std::string base_;
  options opts_;
  side_files names_;
  unique_fd spool_dir_fd_;
  unique_fd dir_fd_;      // the side files' directory
  unique_fd session_fd_;  // holds the session lock for the object's life
  unique_fd spool_fd_;
  std::uint64_t scanned_size_ = 0;
  std::uint64_t tail_fingerprint_ = 0;
  std::uint64_t digest_seed_ = 0;
  file_stamp opened_;
  bool opened_stable_ = false;
  std::vector<message_span> spans_;
  std::vector<message_info> infos_;
  // A message differed from its identity: the session reads and deletes nothing more.
  bool changed_ = false;
  bool committed_ = false;
};

result<unique_fd> open_spool(int dir_fd, const std::string& base, const std::string& path) {
  for (;;) {
    const int fd = ::openat(dir_fd, base.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd >= 0) {
      unique_fd out(fd);
      struct stat st {};
      if (::fstat(fd, &st) != 0) {
        const int err = errno;
        return error::from_errno(err, "mbox: stat " + path);
      }
      if (!S_ISREG(st.st_mode)) {
        return error(errc::permanent, "mbox: " + path + " is not a regular file");
      }
      if (st.st_uid != ::geteuid()) {
        return error(errc::permanent, "mbox: " + path + " belongs to uid " +
                                          std::to_string(st.st_uid) +
                                          ", not to the mail "
                                          "owner (uid " +
                                          std::to_string(::geteuid()) + "): not served");
      }
      return out;
    }
    const int err = errno;
    if (err == EINTR) {
      continue;
    }
    if (err == ELOOP) {
      return error::from_errno(err, "mbox: " + path + " is a symbolic link", errc::permanent);
    }
    return error::from_errno(err, "mbox: open " + path, open_errc(err));
  }
}

bool same_inode(const struct stat& a, const struct stat& b) noexcept {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

struct known_result {
  index_contents index;                    // index.scan: the messages of the file
  bool save = false;                       // the index file should be (re)written with it
  open_source source = open_source::none;  // how index.scan was found
};

// The messages of the spool (locked; `now` is its state), from the index when the
// file is provably the one it describes, by scanning only the mail appended since when the
// file only grew, and by a full scan otherwise.
result<known_result> known_messages(int dir_fd, const side_files& names, int spool_fd,
                                    const current_stamp& now, const parse_options& po,
                                    bool use_index, const std::string& path) {
  const file_stamp& stamp = now.stamp;
  known_result out;
  out.index.stamp = stamp;
  out.index.opts = po;
  out.index.stable = now.stable;
  out.save = use_index;
  std::optional<index_contents> idx;
  if (use_index) {
    idx = load_index(dir_fd, names);
  }
  if (idx && same_options(idx->opts, po) && idx->stamp.dev == stamp.dev &&
      idx->stamp.ino == stamp.ino) {
    const bool unchanged =
        idx->stamp == stamp && idx->stable && idx->scan.scanned_size == stamp.size;
    // Mail appended since: every message but the last one ends as it did (a Content-Length
    // could reach into the new bytes, so not with honour_content_length). Bytes before the
    // first message could have gained a From_ line, so not with such a prefix either.
    const bool grown = !unchanged && stamp.size > idx->scan.scanned_size &&
                       !idx->scan.messages.empty() && !po.honour_content_length &&
                       idx->scan.messages.front().separator == 0;
    if (unchanged || grown) {
      auto same = spot_check(spool_fd, idx->scan, path);
      if (!same.ok()) {
        return std::move(same).err();
      }
      if (!*same) {
        log::notice(
            "mbox: {}: the index does not match the mailbox (rewritten by another "
            "program); scanning it again",
            log::safe(path));
      }
      if (*same && grown) {
        // The old region must be as indexed: every message but the last (which is scanned
        // again) still has its identity. Otherwise a same-length edit or two swapped
        // messages would keep stale sizes and UIDLs.
        auto changed = first_changed(spool_fd, idx->scan.messages, 0, idx->scan.messages.size() - 1,
                                     idx->scan.digest_seed, path);
        if (!changed.ok()) {
          return std::move(changed).err();
        }
        if (*changed) {
          log::notice(
              "mbox: {}: message {} differs from the index (changed by another "
              "program); scanning the mailbox again",
              log::safe(path), **changed + 1);
          *same = false;
        }
      }
      if (*same && unchanged) {
        out.index.scan = std::move(idx->scan);
        out.save = false;
        out.source = open_source::index;
        return out;
      }
      if (*same) {
        std::vector<message_span> msgs = std::move(idx->scan.messages);
        const std::uint64_t resume_at = msgs.back().separator;
        msgs.pop_back();
        // UIDLs of the messages before the resume point, looked up only if a new message
        // needs it: an open-addressing table of indexes into `msgs` (which does not change
        // until the scan is done), a quarter or less full.
        std::vector<std::uint32_t> slots;  // message index + 1; 0 is free
        const auto is_taken = [&slots, &msgs](std::string_view uidl) {
          const std::hash<std::string_view> hash;
          if (slots.empty()) {
            std::size_t n = 16;
            while (n < msgs.size() * 4) {
              n *= 2;
            }
            slots.assign(n, 0);
            for (std::size_t i = 0; i < msgs.size(); ++i) {
              std::size_t h = hash(msgs[i].uidl) & (n - 1);
              while (slots[h] != 0) {
                h = (h + 1) & (n - 1);
              }
              slots[h] = static_cast<std::uint32_t>(i + 1);
            }
          }
          for (std::size_t h = hash(uidl) & (slots.size() - 1); slots[h] != 0;
               h = (h + 1) & (slots.size() - 1)) {
            if (msgs[slots[h] - 1].uidl == uidl) {
              return true;
            }
          }
          return false;
        };
        auto tail = scan_file(spool_fd, stamp.size, po, path, idx->scan.digest_seed,
                              resume_point{resume_at, is_taken});
        if (!tail.ok()) {
          return std::move(tail).err();
        }
        auto fp = tail_fingerprint_at(spool_fd, stamp.size, path);
        if (!fp.ok()) {
          return std::move(fp).err();
        }
        msgs.reserve(msgs.size() + tail->messages.size());
        for (auto& m : tail->messages) {
          msgs.push_back(std::move(m));
        }
        out.index.scan.messages = std::move(msgs);
        out.index.scan.scanned_size = stamp.size;
        out.index.scan.tail_fingerprint = *fp;
        out.index.scan.digest_seed = idx->scan.digest_seed;
        out.source = open_source::appended_scan;
        return out;
      }
    }
  }
  auto scanned = scan_file(spool_fd, stamp.size, po, path, random_seed());
  if (!scanned.ok()) {
    return std::move(scanned).err();
  }
  out.index.scan = std::move(*scanned);
  out.source = open_source::full_scan;
  return out;
}

// Where a spool's side files live (see mbox.hpp, "Side files"). `state_fd` is invalid while
// the state directory does not exist yet.
struct places {
  std::string path;
  std::string dir;
  std::string base;
  unique_fd dir_fd;    // the spool's directory; invalid when it does not exist
  unique_fd state_fd;  // the directory of the side files
  std::string state_dir;
  bool shared = false;  // the spool's directory is not the mail owner's alone
};

std::string shared_dir_text(const places& p) {
  return "mbox: " + p.dir +
         " is not the mail owner's alone (owned by another user or "
         "writable by group or others), so the journal, index and session lock of " +
         p.path + " are kept in a state directory of the mail owner's";
}

// Opens the state directory `p.state_dir` (creating it, mode 0700, when `create`): it must be
// a directory owned by the effective uid and writable by nobody else.
result<void> open_state_dir(places& p, bool create) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = ::open(p.state_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
      unique_fd out(fd);
      struct stat st {};
      if (::fstat(fd, &st) != 0) {
        const int err = errno;
        return error::from_errno(err, "mbox: stat " + p.state_dir);
      }
      if (st.st_uid != ::geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        return error(errc::permanent,
                     shared_dir_text(p) + ", but " + p.state_dir + " is " +
                         (st.st_uid != ::geteuid() ? "owned by uid " + std::to_string(st.st_uid)
                                                   : std::string("writable by group or others")) +
                         " (it must belong to uid " + std::to_string(::geteuid()) + ", mode 0700)");
      }
      p.state_fd = std::move(out);
      return ok_result();
    }
    const int err = errno;
    if (err != ENOENT || !create) {
      if (err == ENOENT) {
        return ok_result();  // no state yet: nothing to recover
      }
      return error::from_errno(
          err, shared_dir_text(p) + ", but " + p.state_dir + " cannot be opened",
          open_errc(err) == errc::permanent || err == ENOTDIR ? errc::permanent : errc::temporary);
    }
    if (::mkdir(p.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      const int merr = errno;
      return error::from_errno(merr,
                               shared_dir_text(p) + ", but " + p.state_dir + " cannot be created",
                               open_errc(merr));
    }
  }
  return error(errc::temporary, "mbox: " + p.state_dir + " keeps vanishing");
}

// Splits and checks `path`, opens its directory and finds the side files' directory (not
// creating it). A missing directory leaves dir_fd invalid.
result<places> locate(const std::string& path, const options& opts) {
  if (path.empty() || path[0] != '/') {
    return error(errc::invalid, "mbox: path must be absolute: \"" + path + "\"");
  }
  places p;
  p.path = path;
  const std::size_t slash = path.rfind('/');
  p.dir = slash == 0 ? "/" : path.substr(0, slash);
  p.base = path.substr(slash + 1);
  if (p.base.empty() || p.base == "." || p.base == "..") {
    return error(errc::invalid, "mbox: path names no file: \"" + path + "\"");
  }
  for (;;) {
    const int fd = ::open(p.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      p.dir_fd.reset(fd);
      break;
    }
    const int err = errno;
    if (err == ENOENT) {
      return p;  // no directory, no mail: create nothing
    }
    if (err != EINTR) {
      return error::from_errno(err, "mbox: open directory " + p.dir, open_errc(err));
    }
  }
  struct stat st {};
  if (::fstat(p.dir_fd.get(), &st) != 0) {
    const int err = errno;
    return error::from_errno(err, "mbox: stat " + p.dir);
  }
  p.shared = st.st_uid != ::geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (!p.shared) {
    const int dup = ::fcntl(p.dir_fd.get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: duplicate descriptor of " + p.dir);
    }
    p.state_fd.reset(dup);
    p.state_dir = p.dir;
    return p;
  }
  if (opts.state_dir.empty()) {
    return error(errc::permanent, shared_dir_text(p) +
                                      ": set [mail] mbox_state_dir (the "
                                      "default \"~/.postern\" needs a home "
                                      "directory)");
  }
  p.state_dir = opts.state_dir;
  POSTERN_TRY(open_state_dir(p, false));
  return p;
}

struct locked_spool {
  unique_fd spool;
  lock::mailbox_lock lock;
};

// Opens and locks the spool; if another program renamed a new file into place meanwhile,
// starts again with that one. Returns an invalid spool descriptor when there is no file.
result<locked_spool> open_and_lock(const places& p, const lock::lock_options& locking) {
  for (int attempt = 0;; ++attempt) {
    auto fd = open_spool(p.dir_fd.get(), p.base, p.path);
    if (!fd.ok()) {
      if (fd.err().cause() == std::error_code(ENOENT, std::generic_category())) {
        return locked_spool{};
      }
      return std::move(fd).err();
    }
    auto l = lock::mailbox_lock::acquire(p.path, fd->get(), locking);
    if (!l.ok()) {
      return std::move(l).err();
    }
    struct stat named {};
    struct stat ours {};
    if (::fstat(fd->get(), &ours) != 0) {
      const int err = errno;
      return error::from_errno(err, "mbox: stat " + p.path);
    }
    const bool still =
        ::fstatat(p.dir_fd.get(), p.base.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        same_inode(named, ours);
    if (still) {
      return locked_spool{std::move(*fd), std::move(*l)};
    }
    if (attempt + 1 >= reopen_attempts) {
      return error(errc::temporary, "mbox: " + p.path + " keeps being replaced");
    }
  }
}

// Takes the session lock in the state directory (created if needed) when there is a spool or
// a journal; `nothing` is set when there is neither.
result<unique_fd> session_for(places& p, const side_files& names, bool& nothing) {
  nothing = false;
  if (!p.dir_fd.valid()) {
    nothing = true;
    return unique_fd();
  }
  auto spool_there = exists_at(p.dir_fd.get(), p.base, p.path);
  if (!spool_there.ok()) {
    return std::move(spool_there).err();
  }
  bool journal_there = false;
  if (p.state_fd.valid()) {
    auto j = exists_at(p.state_fd.get(), names.journal, p.state_dir + "/" + names.journal);
    if (!j.ok()) {
      return std::move(j).err();
    }
    journal_there = *j;
  }
  if (!*spool_there && !journal_there) {
    nothing = true;
    return unique_fd();
  }
  if (!p.state_fd.valid()) {
    POSTERN_TRY(open_state_dir(p, true));
  }
  return lock::take_session_lock(p.state_fd.get(), names.session,
                                 p.state_dir + "/" + names.session);
}

// Completes or sets aside a pending journal, under the spool locks. Under a lock without
// its dotlock (a full disk) a pending journal is left for a later open.
result<recovery_outcome> recover_locked(const places& p, const side_files& names, locked_spool& ls,
                                        journal_faults* faults) {
  if (ls.spool.valid() && !ls.lock.complete()) {
    auto j = exists_at(p.state_fd.get(), names.journal, names.journal);
    if (!j.ok()) {
      return std::move(j).err();
    }
    if (*j) {
      return error(errc::temporary, "mbox: " + p.path +
                                        " has an unfinished update, which is "
                                        "not completed without its dotlock (disk full)");
    }
    return recovery_outcome::nothing;
  }
  return recover(p.state_fd.get(), names, ls.spool.valid() ? ls.spool.get() : -1, p.path,
                 ls.spool.valid() ? &ls.lock : nullptr, faults);
}

}  // namespace

result<std::unique_ptr<store::maildrop>> open(const std::string& path, const options& opts) {
  if (opts.opened_from != nullptr) {
    *opts.opened_from = open_source::none;
  }
  const auto empty = [] { return std::unique_ptr<store::maildrop>(std::make_unique<mbox_drop>()); };
  auto p = locate(path, opts);
  if (!p.ok()) {
    return std::move(p).err();
  }
  const side_files names = side_files_for(p->base);
  bool nothing = false;
  auto session = session_for(*p, names, nothing);
  if (!session.ok()) {
    return std::move(session).err();
  }
  if (nothing) {
    return empty();
  }
  // The scan reads only: on a full disk it may go on without the dotlock (lock_options).
  lock::lock_options scan_locking = opts.locking;
  scan_locking.read_without_dotlock_when_full = true;
  auto ls = open_and_lock(*p, scan_locking);
  if (!ls.ok()) {
    return std::move(ls).err();
  }
  auto rec = recover_locked(*p, names, *ls, opts.faults);
  if (!rec.ok()) {
    return std::move(rec).err();
  }
  if (!ls->spool.valid()) {
    return empty();  // only a journal was left: recovery set it aside
  }
  const int state_fd = p->state_fd.get();
  auto now = read_stamp(session->get(), ls->spool.get(), path);
  if (!now.ok()) {
    return std::move(now).err();
  }
  parse_options po;
  po.from_quoting = opts.from_quoting;
  po.honour_content_length = opts.honour_content_length;
  po.use_x_uidl = opts.use_x_uidl;
  auto known = known_messages(state_fd, names, ls->spool.get(), *now, po, opts.use_index, path);
  if (!known.ok()) {
    return std::move(known).err();
  }
  if (opts.opened_from != nullptr) {
    *opts.opened_from = known->source;
  }
  POSTERN_TRY(ls->lock.release());
  if (known->save) {
    // A cache: failing to write it costs the next login a scan, nothing else.
    static_cast<void>(save_index(state_fd, names, known->index));
  } else if (!opts.use_index) {
    static_cast<void>(remove_index(state_fd, names));  // nothing may trust an old one
  }
  return std::unique_ptr<store::maildrop>(std::make_unique<mbox_drop>(
      path, p->base, opts, std::move(p->dir_fd), std::move(p->state_fd), std::move(*session),
      std::move(ls->spool), std::move(known->index.scan), known->index.stamp, known->index.stable));
}

result<recovery_report> recover_pending(const std::string& path, const options& opts) {
  recovery_report out;
  auto p = locate(path, opts);
  if (!p.ok()) {
    return std::move(p).err();
  }
  out.state_dir = p->state_dir;
  const side_files names = side_files_for(p->base);
  bool nothing = false;
  auto session = session_for(*p, names, nothing);
  if (!session.ok()) {
    return std::move(session).err();
  }
  if (nothing) {
    return out;
  }
  out.state_dir = p->state_dir;
  auto ls = open_and_lock(*p, opts.locking);
  if (!ls.ok()) {
    return std::move(ls).err();
  }
  auto rec = recover_locked(*p, names, *ls, opts.faults);
  if (!rec.ok()) {
    return std::move(rec).err();
  }
  out.outcome = *rec;
  if (ls->spool.valid()) {
    POSTERN_TRY(ls->lock.release());
  }
  if (out.outcome == recovery_outcome::completed) {
    static_cast<void>(remove_index(p->state_fd.get(), names));  // the next open rescans
  }
  return out;
}

}  // namespace postern::store::mbox
