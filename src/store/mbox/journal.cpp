#include "store/mbox/journal.hpp"

#include "common/encoding.hpp"
#include "common/log.hpp"
#include "common/parse.hpp"
#include "common/read_file.hpp"
#include "common/unique_fd.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <optional>
#include <system_error>
#include <vector>

namespace postern::store::mbox {

namespace {

// The copy buffer of an update: big enough that a large spool is copied in few system calls,
// small enough to be held by every session that commits at once.
constexpr std::size_t default_copy_buffer = std::size_t{1} << 20;
constexpr std::uint64_t prefix_window = 4096;
constexpr auto touch_interval = std::chrono::seconds(30);
constexpr mode_t journal_mode = 0600;
constexpr std::string_view magic = "postern-mbox-journal 2\n";
// The pre-update bytes of [start, new_size) are recorded per cell: cells are the file's
// 4 KiB pages (a write cut short by a signal or a crash stops at a page boundary), each
// with its XXH3-128.
constexpr std::uint64_t cell_size = 4096;
constexpr std::size_t cell_digest_bytes = 16;

error io_error(int err, const std::string& what) {
  return error::from_errno(err, "mbox: " + what, errc::temporary);
}

class sha256 {
 public:
  sha256() : ctx_(EVP_MD_CTX_new()) {
    ok_ = ctx_ != nullptr && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1;
  }
  ~sha256() { EVP_MD_CTX_free(ctx_); }
  sha256(const sha256&) = delete;
  sha256& operator=(const sha256&) = delete;

  void update(const char* data, std::size_t n) {
    if (ok_ && n > 0) {
      ok_ = EVP_DigestUpdate(ctx_, data, n) == 1;
    }
  }
  result<std::string> hex() {
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    if (!ok_ || EVP_DigestFinal_ex(ctx_, md.data(), &len) != 1) {
      return error(errc::temporary, "mbox: SHA-256 digest unavailable");
    }
    std::string out;
    append_hex(out, {md.data(), len});
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
  bool ok_ = false;
};

result<std::string> digest_of(std::string_view text) {
  sha256 h;
  h.update(text.data(), text.size());
  return h.hex();
}

result<void> pwrite_full(int fd, const char* buf, std::size_t n, std::uint64_t off,
                         const std::string& what) {
  while (n > 0) {
    const ssize_t r = ::pwrite(fd, buf, n, static_cast<off_t>(off));
    if (r < 0) {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      return io_error(err, "write " + what);
    }
    buf += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
  return ok_result();
}

result<void> sync_fd(int fd, const std::string& what) {
  if (::fsync(fd) != 0) {
    return io_error(errno, "fsync " + what);
  }
  return ok_result();
}

result<void> sync_dir(int dir_fd) {
  if (::fsync(dir_fd) != 0 && errno != EINVAL) {  // EINVAL: cannot sync directories here
    return io_error(errno, "fsync directory");
  }
  return ok_result();
}

result<void> remove_if_there(int dir_fd, const std::string& name) {
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
    return io_error(errno, "remove " + name);
  }
  return ok_result();
}

result<std::uint64_t> size_of(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return io_error(errno, "stat " + what);
  }
  return static_cast<std::uint64_t>(st.st_size);
}

// Creates `name` afresh (a leftover of a crash is replaced) and reserves `bytes` for it, so
// that writing it later cannot fail for lack of space.
result<unique_fd> create_preallocated(int dir_fd, const std::string& name, std::uint64_t bytes) {
  POSTERN_TRY(remove_if_there(dir_fd, name));
  int raw = -1;
  do {
    raw = ::openat(dir_fd, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                   journal_mode);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    return io_error(errno, "create " + name);
  }
  unique_fd fd(raw);
  if (bytes > 0) {
    const int err = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes));
    if (err != 0) {
      ::unlinkat(dir_fd, name.c_str(), 0);
      return io_error(err, "reserve " + std::to_string(bytes) + " bytes for " + name);
    }
  }
  return fd;
}

std::uint64_t cell_count(std::uint64_t start, std::uint64_t end) noexcept {
  return end > start ? (end - 1) / cell_size - start / cell_size + 1 : 0;
}

// XXH3-128 of a cell: the cells tell the crashed update's own bytes from anything else
// written since (mutt, a restore, an editor), not from an attacker (the journal is in a
// directory only the mail owner can write, and whoever can write the spool needs no
// journal to damage it); a cryptographic hash here cost a third of a 100 MB update.
result<std::string> cell_digest(const char* data, std::size_t n) {
  const XXH128_hash_t h = XXH3_128bits(data, n);
  XXH128_canonical_t canon{};
  XXH128_canonicalFromHash(&canon, h);
  static_assert(sizeof(canon.digest) == cell_digest_bytes);
  return std::string(reinterpret_cast<const char*>(canon.digest), cell_digest_bytes);
}

// Copies byte ranges between descriptors through one buffer, hashing what it copies,
// touching the dotlock now and then and passing a fault point after every chunk.
class copier {
 public:
  copier(lock::mailbox_lock* lock, journal_faults* faults)
      : buf_(faults != nullptr && faults->copy_buffer_bytes() > 0 ? faults->copy_buffer_bytes()
                                                                  : default_copy_buffer),
        lock_(lock),
        faults_(faults),
        last_touch_(std::chrono::steady_clock::now()) {}

  // A point where a crash test may stop the process (journal.hpp, journal_faults).
  void fault_point() {
    if (faults_ != nullptr) {
      faults_->passed_fault_point();
    }
  }

  // With `cell_aligned`, every write but the last ends on a cell boundary of dst (and is
  // at least a cell long), so that an interrupted copy leaves each cell wholly old or wholly
  // new (see first_foreign_cell).
  result<void> copy(int src, std::uint64_t src_off, int dst, std::uint64_t dst_off,
                    std::uint64_t len, sha256* h, const std::string& what,
                    bool cell_aligned = false) {
    if (cell_aligned && buf_.size() < block_bytes()) {
      buf_.resize(block_bytes());
    }
    while (len > 0) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, buf_.size()));
      if (cell_aligned) {
        n = static_cast<std::size_t>(
            std::min<std::uint64_t>(len, block_end_from(dst_off, block_bytes()) - dst_off));
      }
      POSTERN_TRY(pread_full(src, buf_.data(), n, src_off, "mbox", what));
      if (h != nullptr) {
        h->update(buf_.data(), n);
      }
      if (dst >= 0) {
        POSTERN_TRY(pwrite_full(dst, buf_.data(), n, dst_off, what));
      }
      src_off += n;
      dst_off += n;
      len -= n;
      keepalive();
      fault_point();
    }
    return ok_result();
  }

  // The cell digests of fd's bytes [start, end) (see cell_size), concatenated.
  result<std::string> cell_digests(int fd, std::uint64_t start, std::uint64_t end,
                                   const std::string& what) {
    std::string out;
    out.reserve(static_cast<std::size_t>(cell_count(start, end) * cell_digest_bytes));
    std::vector<char> buf(block_bytes());
    for (std::uint64_t pos = start; pos < end;) {
      const std::uint64_t block_end = std::min<std::uint64_t>(end, block_end_from(pos, buf.size()));
      POSTERN_TRY(
          pread_full(fd, buf.data(), static_cast<std::size_t>(block_end - pos), pos, "mbox", what));
      for (std::uint64_t c = pos; c < block_end;) {
        const std::uint64_t c_end = std::min(block_end, (c / cell_size + 1) * cell_size);
        auto d = cell_digest(buf.data() + (c - pos), static_cast<std::size_t>(c_end - c));
        if (!d.ok()) {
          return std::move(d).err();
        }
        out += *d;
        c = c_end;
      }
      pos = block_end;
      keepalive();
    }
    return out;
  }

  // Checks that every cell of the spool's [start, end) holds either the payload's bytes
  // (already rewritten: payload_fd at payload_off + (cell - start)) or the bytes `cells`
  // recorded before the update. Returns the offset of the first cell holding neither.
  result<std::optional<std::uint64_t>> first_foreign_cell(int spool_fd, int payload_fd,
                                                          std::uint64_t payload_off,
                                                          std::uint64_t start, std::uint64_t end,
                                                          std::string_view cells,
                                                          const std::string& what) {
    std::vector<char> cur(block_bytes());
    std::vector<char> want(cur.size());
    std::size_t k = 0;
    for (std::uint64_t pos = start; pos < end;) {
      const std::uint64_t block_end = std::min<std::uint64_t>(end, block_end_from(pos, cur.size()));
      const auto n = static_cast<std::size_t>(block_end - pos);
      POSTERN_TRY(pread_full(spool_fd, cur.data(), n, pos, "mbox", what));
      POSTERN_TRY(
          pread_full(payload_fd, want.data(), n, payload_off + (pos - start), "mbox", what));
      for (std::uint64_t c = pos; c < block_end; ++k) {
        const std::uint64_t c_end = std::min(block_end, (c / cell_size + 1) * cell_size);
        const char* here = cur.data() + (c - pos);
        const auto len = static_cast<std::size_t>(c_end - c);
        if (!std::equal(here, here + len, want.data() + (c - pos))) {
          auto d = cell_digest(here, len);
          if (!d.ok()) {
            return std::move(d).err();
          }
          if ((k + 1) * cell_digest_bytes > cells.size() ||
              cells.substr(k * cell_digest_bytes, cell_digest_bytes) != *d) {
            return std::optional<std::uint64_t>(c);
          }
        }
        c = c_end;
      }
      pos = block_end;
      keepalive();
    }
    return std::optional<std::uint64_t>();
  }

  result<std::string> digest(int fd, std::uint64_t off, std::uint64_t len,
                             const std::string& what) {
    sha256 h;
    while (len > 0) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, buf_.size()));
      POSTERN_TRY(pread_full(fd, buf_.data(), n, off, "mbox", what));
      h.update(buf_.data(), n);
      off += n;
      len -= n;
      keepalive();
    }
    return h.hex();
  }

 private:
  // Reads for cell work go in blocks of whole cells, at least one.
  std::size_t block_bytes() const noexcept {
    return static_cast<std::size_t>(
        std::max<std::uint64_t>(cell_size, buf_.size() / cell_size * cell_size));
  }
  // The end of the block starting at pos: block bytes on from pos's cell start.
  static std::uint64_t block_end_from(std::uint64_t pos, std::size_t block) noexcept {
    return pos / cell_size * cell_size + block;
  }

  void keepalive() {
    if (lock_ == nullptr) {
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_touch_ >= touch_interval) {
      (void)lock_->touch();  // best effort; a broken lock shows at release
      last_touch_ = now;
    }
  }

  std::vector<char> buf_;
  lock::mailbox_lock* lock_;
  journal_faults* faults_;  // null in production
  std::chrono::steady_clock::time_point last_touch_;
};

std::uint64_t prefix_offset(std::uint64_t start) noexcept {
  return start > prefix_window ? start - prefix_window : 0;
}

struct update_context {
  int dir_fd;
  const side_files& names;
  int spool_fd;
  const std::string& display;
  copier& cp;
};

// Removes the journal: the update is complete.
result<void> finish_journal(const update_context& c) {
  if (::unlinkat(c.dir_fd, c.names.journal.c_str(), 0) != 0) {
    return io_error(errno, "remove " + c.names.journal);
  }
  c.cp.fault_point();
  POSTERN_TRY(sync_dir(c.dir_fd));
  c.cp.fault_point();
  return ok_result();
}

struct prepared {
  unique_fd journal;  // the committed redo journal
  unique_fd trunc;    // the preallocated trunc journal
  journal_header header;
};

result<void> apply_redo(const update_context& c, int journal_fd, journal_header h,
                        unique_fd trunc_fd);
result<prepared> fold_appended(const update_context& c, const journal_header& h, int payload_fd,
                               std::uint64_t payload_off, std::uint64_t now_size);

// Step 3's second half: T is in place and the trunc journal says so. Mail that a delivery
// agent appended without taking our locks would be cut off by the truncation: if the file
// grew, that mail is folded into a new redo journal first, as recovery does.
result<void> truncate_and_finish(const update_context& c, const journal_header& h) {
  struct stat st {};
  if (::fstat(c.spool_fd, &st) != 0) {
    return io_error(errno, "stat " + c.display);
  }
  if (static_cast<std::uint64_t>(st.st_size) > h.old_size) {
    auto p = fold_appended(c, h, c.spool_fd, h.start, static_cast<std::uint64_t>(st.st_size));
    if (!p.ok()) {
      return std::move(p).err();
    }
    return apply_redo(c, p->journal.get(), p->header, std::move(p->trunc));
  }
  if (::ftruncate(c.spool_fd, static_cast<off_t>(h.new_size)) != 0) {
    return io_error(errno, "truncate " + c.display);
  }
  c.cp.fault_point();
  POSTERN_TRY(sync_fd(c.spool_fd, c.display));
  c.cp.fault_point();
  return finish_journal(c);
}

// Steps 2 and 3 from a committed redo journal `journal_fd`. `trunc_fd` is the preallocated
// trunc journal, or invalid to create one now.
result<void> apply_redo(const update_context& c, int journal_fd, journal_header h,
                        unique_fd trunc_fd) {
  POSTERN_TRY(c.cp.copy(journal_fd, journal_header_size, c.spool_fd, h.start, h.payload_size,
                        nullptr, c.names.journal + " to " + c.display, true));
  c.cp.fault_point();
  POSTERN_TRY(sync_fd(c.spool_fd, c.display));
  c.cp.fault_point();
  if (!trunc_fd.valid()) {
    auto fd = create_preallocated(c.dir_fd, c.names.journal_trunc, journal_header_size);
    if (!fd.ok()) {
      return std::move(fd).err();
    }
    trunc_fd = std::move(*fd);
  }
  h.st = journal_header::state::trunc;
  auto text = format_journal_header(h);
  if (!text.ok()) {
    return std::move(text).err();
  }
  POSTERN_TRY(pwrite_full(trunc_fd.get(), text->data(), text->size(), 0, c.names.journal_trunc));
  c.cp.fault_point();
  POSTERN_TRY(sync_fd(trunc_fd.get(), c.names.journal_trunc));
  c.cp.fault_point();
  if (::renameat(c.dir_fd, c.names.journal_trunc.c_str(), c.dir_fd, c.names.journal.c_str()) != 0) {
    return io_error(errno, "rename " + c.names.journal_trunc);
  }
  c.cp.fault_point();
  POSTERN_TRY(sync_dir(c.dir_fd));
  c.cp.fault_point();
  return truncate_and_finish(c, h);
}

// A piece of a journal's payload: bytes of a descriptor, or literal bytes.
struct source {
  int fd = -1;
  std::uint64_t off = 0;
  std::uint64_t len = 0;
  std::string_view literal;  // used when fd < 0
};

// Step 1: writes a redo journal whose payload is the concatenation of `sources` and commits
// it by renaming it over the journal name. Before the rename the half-written files are
// removed on error; the spool is never touched here.
result<prepared> write_redo_journal(const update_context& c, journal_header h,
                                    const std::vector<source>& sources, const std::string& cells) {
  struct remover {
    int dir;
    const side_files& names;
    bool armed = true;
    ~remover() {
      if (armed) {
        ::unlinkat(dir, names.journal_new.c_str(), 0);
        ::unlinkat(dir, names.journal_trunc.c_str(), 0);
      }
    }
  } cleanup{c.dir_fd, c.names};

  auto jnew = create_preallocated(c.dir_fd, c.names.journal_new,
                                  journal_header_size + h.payload_size + cells.size());
  if (!jnew.ok()) {
    return std::move(jnew).err();
  }
  auto trunc = create_preallocated(c.dir_fd, c.names.journal_trunc, journal_header_size);
  if (!trunc.ok()) {
    return std::move(trunc).err();
  }
  c.cp.fault_point();
  sha256 payload;
  std::uint64_t at = journal_header_size;
  for (const auto& src : sources) {
    if (src.fd < 0) {
      payload.update(src.literal.data(), src.literal.size());
      POSTERN_TRY(pwrite_full(jnew->get(), src.literal.data(), src.literal.size(), at,
                              c.names.journal_new));
      at += src.literal.size();
      continue;
    }
    POSTERN_TRY(c.cp.copy(src.fd, src.off, jnew->get(), at, src.len, &payload,
                          c.display + " to " + c.names.journal_new));
    at += src.len;
  }
  POSTERN_TRY(pwrite_full(jnew->get(), cells.data(), cells.size(), at, c.names.journal_new));
  auto digest = payload.hex();
  if (!digest.ok()) {
    return std::move(digest).err();
  }
  auto cells_digest = digest_of(cells);
  if (!cells_digest.ok()) {
    return std::move(cells_digest).err();
  }
  h.st = journal_header::state::redo;
  h.payload_digest = std::move(*digest);
  h.cells_digest = std::move(*cells_digest);
  auto text = format_journal_header(h);
  if (!text.ok()) {
    return std::move(text).err();
  }
  POSTERN_TRY(pwrite_full(jnew->get(), text->data(), text->size(), 0, c.names.journal_new));
  c.cp.fault_point();
  POSTERN_TRY(sync_fd(jnew->get(), c.names.journal_new));
  c.cp.fault_point();
  if (::renameat(c.dir_fd, c.names.journal_new.c_str(), c.dir_fd, c.names.journal.c_str()) != 0) {
    return io_error(errno, "rename " + c.names.journal_new);
  }
  cleanup.armed = false;  // committed: from here on only recovery may remove it
  c.cp.fault_point();
  POSTERN_TRY(sync_dir(c.dir_fd));
  c.cp.fault_point();
  return prepared{std::move(*jnew), std::move(*trunc), std::move(h)};
}

// Mail appended after a crash, at [old_size, now): a new redo journal takes T followed by it,
// so that applying it moves that mail down instead of cutting it off.
result<prepared> fold_appended(const update_context& c, const journal_header& h, int payload_fd,
                               std::uint64_t payload_off, std::uint64_t now_size) {
  journal_header n = h;
  const std::uint64_t appended = now_size - h.old_size;
  n.payload_size = h.payload_size + appended;
  n.new_size = h.start + n.payload_size;
  n.old_size = now_size;
  auto gap = c.cp.digest(c.spool_fd, n.new_size, n.old_size - n.new_size, c.display);
  if (!gap.ok()) {
    return std::move(gap).err();
  }
  n.gap_digest = std::move(*gap);
  auto cells = c.cp.cell_digests(c.spool_fd, n.start, n.new_size, c.display);
  if (!cells.ok()) {
    return std::move(cells).err();
  }
  return write_redo_journal(c, n,
                            {source{payload_fd, payload_off, h.payload_size, {}},
                             source{c.spool_fd, h.old_size, appended, {}}},
                            *cells);
}

bool parse_hex_digest(std::string_view v) noexcept {
  return v.size() == 64 && std::all_of(v.begin(), v.end(), [](char ch) {
           return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
         });
}

// "<journal>.obsolete-<UTC time>.<nanoseconds>Z": a name no other journal has.
std::string aside_name(const std::string& journal) {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  ::gmtime_r(&ts.tv_sec, &tm);
  std::array<char, 64> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y%m%dT%H%M%S", &tm);
  std::array<char, 16> ns{};
  (void)std::snprintf(ns.data(), ns.size(), ".%09ldZ", static_cast<long>(ts.tv_nsec));
  return journal + ".obsolete-" + std::string(buf.data(), n) + ns.data();
}

// Renames the journal aside (whatever it is: a symlink or a FIFO is renamed, not followed)
// and logs its new name; the mailbox is then served as it is.
result<recovery_outcome> set_aside(const update_context& c, const std::string& why) {
  const std::string aside = aside_name(c.names.journal);
  if (::renameat(c.dir_fd, c.names.journal.c_str(), c.dir_fd, aside.c_str()) != 0) {
    const int err = errno;
    log::error("mbox: {}: unfinished update journal {} not applied ({}) and not set aside: {}",
               c.display, c.names.journal, why, std::generic_category().message(err));
    return io_error(err, "rename " + c.names.journal + " aside");
  }
  POSTERN_TRY(remove_if_there(c.dir_fd, c.names.journal_trunc));
  POSTERN_TRY(sync_dir(c.dir_fd));
  log::error(
      "mbox: {}: unfinished update not applied ({}); its journal is kept as {}; the "
      "mailbox is served as it is",
      c.display, why, aside);
  return recovery_outcome::obsolete;
}

}  // namespace

// -----------------------------------------------------------------------------------------

side_files side_files_for(std::string_view base) {
  const std::string stem = "." + std::string(base) + ".postern-";
  return side_files{stem + "session",       stem + "journal", stem + "journal.new",
                    stem + "journal.trunc", stem + "index",   stem + "index.new"};
}

result<std::string> format_journal_header(const journal_header& h) {
  std::string text(magic);
  text += h.st == journal_header::state::redo ? "state redo\n" : "state trunc\n";
  text += "ino " + std::to_string(h.ino) + "\n";
  text += "start " + std::to_string(h.start) + "\n";
  text += "old-size " + std::to_string(h.old_size) + "\n";
  text += "new-size " + std::to_string(h.new_size) + "\n";
  text += "payload-size " + std::to_string(h.payload_size) + "\n";
  text += "prefix " + h.prefix_digest + "\n";
  text += "gap " + h.gap_digest + "\n";
  text += "payload " + h.payload_digest + "\n";
  text += "cells " + h.cells_digest + "\n";
  auto check = digest_of(text);
  if (!check.ok()) {
    return std::move(check).err();
  }
  text += "check " + *check + "\n\n";
  return text;
}

result<journal_header> parse_journal_header(std::string_view block) {
  const auto bad = [](const std::string& why) {
    return error(errc::invalid, "mbox: journal header: " + why);
  };
  const std::size_t end = block.find("\n\n");
  if (end == std::string_view::npos || !block.starts_with(magic)) {
    return bad("no header");
  }
  const std::string_view text = block.substr(0, end + 1);
  const std::size_t check_at = text.rfind("check ");
  if (check_at == std::string_view::npos || (check_at > 0 && text[check_at - 1] != '\n')) {
    return bad("no check line");
  }
  auto digest = digest_of(text.substr(0, check_at));
  if (!digest.ok()) {
    return std::move(digest).err();
  }
  if (text.substr(check_at + 6) != *digest + "\n") {
    return bad("check digest mismatch");
  }
  journal_header h;
  bool have[10] = {};
  std::size_t pos = magic.size();
  while (pos < check_at) {
    const std::size_t nl = text.find('\n', pos);
    const std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    const std::size_t sp = line.find(' ');
    if (sp == std::string_view::npos) {
      return bad("malformed line");
    }
    const std::string_view key = line.substr(0, sp);
    const std::string_view value = line.substr(sp + 1);
    const auto number = [&](std::uint64_t& out, int slot) -> bool {
      const auto v = parse_u64(value);
      if (!v || have[slot]) {
        return false;
      }
      out = *v;
      have[slot] = true;
      return true;
    };
    const auto hex = [&](std::string& out, int slot) -> bool {
      if (!parse_hex_digest(value) || have[slot]) {
        return false;
      }
      out = std::string(value);
      have[slot] = true;
      return true;
    };
    bool ok = false;
    if (key == "state") {
      ok = !have[0] && (value == "redo" || value == "trunc");
      h.st = value == "redo" ? journal_header::state::redo : journal_header::state::trunc;
      have[0] = true;
    } else if (key == "ino") {
      ok = number(h.ino, 1);
    } else if (key == "start") {
      ok = number(h.start, 2);
    } else if (key == "old-size") {
      ok = number(h.old_size, 3);
    } else if (key == "new-size") {
      ok = number(h.new_size, 4);
    } else if (key == "payload-size") {
      ok = number(h.payload_size, 5);
    } else if (key == "prefix") {
      ok = hex(h.prefix_digest, 6);
    } else if (key == "gap") {
      ok = hex(h.gap_digest, 7);
    } else if (key == "payload") {
      ok = hex(h.payload_digest, 8);
    } else if (key == "cells") {
      ok = hex(h.cells_digest, 9);
    }
    if (!ok) {
      return bad("bad line \"" + std::string(line) + "\"");
    }
  }
  if (!std::all_of(std::begin(have), std::end(have), [](bool b) { return b; })) {
    return bad("missing field");
  }
  if (h.payload_size > h.new_size || h.new_size - h.payload_size != h.start ||
      h.new_size >= h.old_size) {
    return bad("inconsistent sizes");
  }
  return h;
}

result<void> run_update(int dir_fd, const side_files& names, int spool_fd,
                        const std::string& display, const update_plan& plan,
                        lock::mailbox_lock* lock, journal_faults* faults) {
  copier cp(lock, faults);
  const update_context c{dir_fd, names, spool_fd, display, cp};

  static constexpr std::string_view blank_line = "\n";
  std::uint64_t keep_bytes = 0;
  std::uint64_t prev_end = plan.start;
  std::vector<source> sources;
  for (const auto& piece : plan.keep) {
    if (piece.from < prev_end || piece.to < piece.from || piece.to > plan.old_size) {
      return error(errc::invalid, "mbox: update plan ranges out of order");
    }
    if (piece.blank_line_before) {
      sources.push_back(source{-1, 0, 0, blank_line});
      keep_bytes += blank_line.size();
    }
    if (piece.to > piece.from) {
      sources.push_back(source{spool_fd, piece.from, piece.to - piece.from, {}});
    }
    keep_bytes += piece.to - piece.from;
    prev_end = piece.to;
  }
  if (plan.start + keep_bytes >= plan.old_size) {
    return error(errc::invalid, "mbox: update plan removes nothing");
  }
  c.cp.fault_point();

  journal_header h;
  struct stat st {};
  if (::fstat(spool_fd, &st) != 0) {
    return io_error(errno, "stat " + display);
  }
  h.ino = static_cast<std::uint64_t>(st.st_ino);
  h.start = plan.start;
  h.old_size = plan.old_size;
  h.payload_size = keep_bytes;
  h.new_size = plan.start + keep_bytes;
  auto prefix =
      cp.digest(spool_fd, prefix_offset(h.start), h.start - prefix_offset(h.start), display);
  if (!prefix.ok()) {
    return std::move(prefix).err();
  }
  h.prefix_digest = std::move(*prefix);
  auto gap = cp.digest(spool_fd, h.new_size, h.old_size - h.new_size, display);
  if (!gap.ok()) {
    return std::move(gap).err();
  }
  h.gap_digest = std::move(*gap);
  auto cells = cp.cell_digests(spool_fd, h.start, h.new_size, display);
  if (!cells.ok()) {
    return std::move(cells).err();
  }

  auto p = write_redo_journal(c, h, sources, *cells);
  if (!p.ok()) {
    return std::move(p).err();
  }
  // The torn window: from here until the journal is gone, readers that do not take our
  // locks may see T partly written over the old bytes.
  const auto committed = std::chrono::steady_clock::now();
  POSTERN_TRY(apply_redo(c, p->journal.get(), p->header, std::move(p->trunc)));
  log::debug(
      "mbox: {}: update committed and applied: {} bytes rewritten from offset {} in "
      "{} ms",
      display, h.payload_size, h.start,
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                            committed)
          .count());
  return ok_result();
}

namespace {

// Opens the committed journal if there is one. A journal that is not a regular file owned by
// us and writable by nobody else (a symlink, a FIFO, another user's file) is never read:
// `why` says what is wrong with it and the caller sets it aside.
result<std::optional<unique_fd>> open_journal(int dir_fd, const std::string& name,
                                              std::string& why) {
  int raw = -1;
  do {
    raw = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return std::optional<unique_fd>();
    }
    if (err == ELOOP || err == EACCES || err == ENXIO || err == EPERM) {
      why = err == ELOOP ? "it is a symbolic link"
                         : "it cannot be opened: " + std::generic_category().message(err);
      return std::optional<unique_fd>(unique_fd());
    }
    return io_error(err, "open " + name);
  }
  unique_fd fd(raw);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return io_error(errno, "stat " + name);
  }
  if (!S_ISREG(st.st_mode)) {
    why = "it is not a regular file";
  } else if (st.st_uid != ::geteuid()) {
    why = "it belongs to uid " + std::to_string(st.st_uid) + ", not to uid " +
          std::to_string(::geteuid());
  } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    why = "others may write it";
  }
  if (!why.empty()) {
    return std::optional<unique_fd>(unique_fd());
  }
  return std::optional<unique_fd>(std::move(fd));
}

// Reads and verifies a redo journal's header, payload and cell table. Returns the reason it
// cannot be believed (empty when it can).
result<std::string> check_journal(copier& cp, int jfd, const std::string& name,
                                  const journal_header& h, std::string& cells) {
  auto jsize = size_of(jfd, name);
  if (!jsize.ok()) {
    return std::move(jsize).err();
  }
  if (h.st == journal_header::state::trunc) {
    return std::string();
  }
  const std::uint64_t cells_bytes = cell_count(h.start, h.new_size) * cell_digest_bytes;
  if (*jsize != journal_header_size + h.payload_size + cells_bytes) {
    return std::string("damaged: wrong size");
  }
  auto d = cp.digest(jfd, journal_header_size, h.payload_size, name);
  if (!d.ok()) {
    return std::move(d).err();
  }
  if (*d != h.payload_digest) {
    return std::string("damaged: payload digest");
  }
  cells.resize(static_cast<std::size_t>(cells_bytes));
  POSTERN_TRY(pread_full(jfd, cells.data(), cells.size(), journal_header_size + h.payload_size,
                         "mbox", name));
  auto cd = digest_of(cells);
  if (!cd.ok()) {
    return std::move(cd).err();
  }
  if (*cd != h.cells_digest) {
    return std::string("damaged: cell digests");
  }
  return std::string();
}

// A redo journal may be applied only if every byte it overwrites or cuts off is one the
// update expected: [start, new_size) cell by cell the old bytes or the payload (partly
// rewritten), [new_size, old_size) the old bytes, and the 4 KiB before `start` unchanged.
// Returns why not (empty: it may).
result<std::string> check_redo_target(const update_context& c, int jfd, const journal_header& h,
                                      std::string_view cells, std::uint64_t size) {
  if (size < h.old_size) {
    return std::string("the mailbox was truncated");
  }
  auto gap = c.cp.digest(c.spool_fd, h.new_size, h.old_size - h.new_size, c.display);
  if (!gap.ok()) {
    return std::move(gap).err();
  }
  if (*gap != h.gap_digest) {
    return std::string("the mailbox was changed after the rewritten part");
  }
  auto foreign = c.cp.first_foreign_cell(c.spool_fd, jfd, journal_header_size, h.start, h.new_size,
                                         cells, c.display);
  if (!foreign.ok()) {
    return std::move(foreign).err();
  }
  if (*foreign) {
    return "the mailbox was changed at offset " + std::to_string(**foreign) +
           ", in the part the update rewrites";
  }
  return std::string();
}

result<recovery_outcome> recover_journal(int dir_fd, const side_files& names, int spool_fd,
                                         const std::string& display, lock::mailbox_lock* lock,
                                         journal_faults* faults);

}  // namespace

result<recovery_outcome> recover(int dir_fd, const side_files& names, int spool_fd,
                                 const std::string& display, lock::mailbox_lock* lock,
                                 journal_faults* faults) {
  const auto t0 = std::chrono::steady_clock::now();
  auto r = recover_journal(dir_fd, names, spool_fd, display, lock, faults);
  if (r.ok() && *r == recovery_outcome::completed) {
    log::notice(
        "mbox: {}: completed an update interrupted by a crash ({} ms)", display,
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count());
  }
  return r;
}

namespace {

result<recovery_outcome> recover_journal(int dir_fd, const side_files& names, int spool_fd,
                                         const std::string& display, lock::mailbox_lock* lock,
                                         journal_faults* faults) {
  // A redo journal that was never renamed into place was never acted on.
  POSTERN_TRY(remove_if_there(dir_fd, names.journal_new));
  copier cp(lock, faults);
  const update_context c{dir_fd, names, spool_fd, display, cp};
  std::string why;
  auto opened = open_journal(dir_fd, names.journal, why);
  if (!opened.ok()) {
    return std::move(opened).err();
  }
  if (!*opened) {
    POSTERN_TRY(remove_if_there(dir_fd, names.journal_trunc));
    return recovery_outcome::nothing;
  }
  if (!why.empty()) {
    return set_aside(c, "not trusted: " + why);
  }
  const unique_fd jfd = std::move(**opened);
  c.cp.fault_point();

  std::array<char, journal_header_size> block{};
  auto got = pread_upto(jfd.get(), block.data(), block.size(), 0, "mbox", names.journal);
  if (!got.ok()) {
    return std::move(got).err();
  }
  auto parsed = parse_journal_header(std::string_view(block.data(), *got));
  if (!parsed.ok()) {
    return set_aside(c, "damaged: " + parsed.err().context());
  }
  journal_header h = std::move(*parsed);
  std::string cells;
  auto checked = check_journal(cp, jfd.get(), names.journal, h, cells);
  if (!checked.ok()) {
    return std::move(checked).err();
  }
  if (!checked->empty()) {
    return set_aside(c, *checked);
  }

  // Does the journal still describe this spool?
  if (spool_fd < 0) {
    return set_aside(c, "the mailbox no longer exists");
  }
  struct stat st {};
  if (::fstat(spool_fd, &st) != 0) {
    return io_error(errno, "stat " + display);
  }
  if (static_cast<std::uint64_t>(st.st_ino) != h.ino) {
    return set_aside(c, "the mailbox was replaced");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < h.start) {
    return set_aside(c, "the mailbox was truncated");
  }
  auto prefix =
      cp.digest(spool_fd, prefix_offset(h.start), h.start - prefix_offset(h.start), display);
  if (!prefix.ok()) {
    return std::move(prefix).err();
  }
  if (*prefix != h.prefix_digest) {
    return set_aside(c, "the mailbox was changed before the update's start");
  }

  if (h.st == journal_header::state::redo) {
    auto target = check_redo_target(c, jfd.get(), h, cells, size);
    if (!target.ok()) {
      return std::move(target).err();
    }
    if (!target->empty()) {
      return set_aside(c, *target);
    }
    POSTERN_TRY(remove_if_there(dir_fd, names.journal_trunc));  // recreated when needed
    c.cp.fault_point();
    if (size > h.old_size) {
      auto p = fold_appended(c, h, jfd.get(), journal_header_size, size);
      if (!p.ok()) {
        return std::move(p).err();
      }
      POSTERN_TRY(apply_redo(c, p->journal.get(), p->header, std::move(p->trunc)));
      return recovery_outcome::completed;
    }
    POSTERN_TRY(apply_redo(c, jfd.get(), h, unique_fd()));
    return recovery_outcome::completed;
  }

  // trunc: T is in place at [start, new_size). Was the file truncated?
  if (size < h.new_size) {
    return set_aside(c, "the mailbox was truncated");
  }
  auto payload = cp.digest(spool_fd, h.start, h.payload_size, display);
  if (!payload.ok()) {
    return std::move(payload).err();
  }
  if (*payload != h.payload_digest) {
    return set_aside(c, "the rewritten part of the mailbox was changed");
  }
  bool untruncated = false;
  if (size >= h.old_size) {
    auto gap = cp.digest(spool_fd, h.new_size, h.old_size - h.new_size, display);
    if (!gap.ok()) {
      return std::move(gap).err();
    }
    untruncated = *gap == h.gap_digest;
  }
  POSTERN_TRY(remove_if_there(dir_fd, names.journal_trunc));
  c.cp.fault_point();
  if (!untruncated) {
    // Truncated already (nothing is cut here); anything past new_size came since.
    POSTERN_TRY(finish_journal(c));
    return recovery_outcome::completed;
  }
  if (size > h.old_size) {
    auto p = fold_appended(c, h, spool_fd, h.start, size);
    if (!p.ok()) {
      return std::move(p).err();
    }
    POSTERN_TRY(apply_redo(c, p->journal.get(), p->header, std::move(p->trunc)));
    return recovery_outcome::completed;
  }
  POSTERN_TRY(truncate_and_finish(c, h));
  return recovery_outcome::completed;
}

}  // namespace

fault_countdown::fault_countdown(int step, std::size_t copy_buffer, std::function<void()> action)
    : left_(step < 0 ? 0 : step), copy_buffer_(copy_buffer), action_(std::move(action)) {}

void fault_countdown::passed_fault_point() {
  if (left_ > 0 && --left_ == 0) {
    if (action_) {
      action_();
      return;
    }
    ::_exit(fault_exit_code_for_test);
  }
}

}  // namespace postern::store::mbox
