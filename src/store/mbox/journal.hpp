// The crash-safe update of an mbox file, and its recovery. docs/mbox.md explains the
// procedure and why every crash instant is safe; in short:
//
// An update removes messages by rewriting the file in place from `start` (the first deleted
// message) on: the bytes to keep after `start` (kept messages and any mail appended since
// the scan) are the payload T, the new size is N = start + |T| < A (the old size).
//  1. The redo journal "<state>/.<base>.postern-journal.new" receives a header and T, is
//     preallocated first (a full disk fails here, before anything is touched), fsynced and
//     renamed to ".postern-journal"; the directory is fsynced. This rename is the commit
//     point: before it nothing happened, after it the update will be completed.
//  2. T is written over the spool at `start`; the spool is fsynced.
//  3. A small "trunc" journal (preallocated in step 1) replaces the redo journal, saying T is
//     in place; then the spool is truncated to N and fsynced, and the journal removed.
// Recovery, at the next open, under the same locks, completes an update left by a crash:
// a redo journal is applied again (step 2 is idempotent) only after verifying every byte it
// overwrites or cuts off: [N, A) unchanged (gap digest), and every 4 KiB page of [start, N)
// either T's bytes already or the pre-update bytes (the journal's cell table, recorded in
// step 1); a trunc journal tells, by a digest of the old bytes [N, A), whether the truncation
// happened. Mail appended by a delivery agent after the crash (which may break our stale
// dotlock) is folded into a new redo journal first, so it is never cut off. A journal that
// fails any check (its spool replaced, truncated or changed by someone else; damaged; not a
// regular file of ours writable by nobody else) is renamed aside with a timestamp, logged
// with its name, and not applied: the mailbox is served as it is.
//
// Threading: called with the session lock and the spool locks held, from one thread.
#pragma once

#include "common/result.hpp"
#include "store/lock/mailbox_lock.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::mbox {

// The side files of the mailbox "<dir>/<base>", all in one directory: <dir> when it is the
// mail owner's alone, else a state directory of the mail owner's (mbox.hpp). Their names
// start with '.', and none ends in ".lock", so none can be another user's spool or dotlock
// on a system whose user names cannot start with '.'.
struct side_files {
  std::string session;        // .<base>.postern-session: the POP3 session lock (flock)
  std::string journal;        // .<base>.postern-journal: a committed, unfinished update
  std::string journal_new;    // .<base>.postern-journal.new: a redo journal being written
  std::string journal_trunc;  // .<base>.postern-journal.trunc: the preallocated trunc journal
  std::string index;          // .<base>.postern-index: the scan cache (index.hpp)
  std::string index_new;      // .<base>.postern-index.new: an index being written
};
side_files side_files_for(std::string_view base);

// The journal's fixed-size header block; the payload starts right after it.
inline constexpr std::size_t journal_header_size = 1024;

struct journal_header {
  enum class state { redo, trunc };
  state st = state::redo;
  std::uint64_t ino = 0;           // the spool's inode
  std::uint64_t start = 0;         // where the rewrite starts (the first deleted message)
  std::uint64_t old_size = 0;      // A: the spool's size when the update was planned
  std::uint64_t new_size = 0;      // N = start + payload_size
  std::uint64_t payload_size = 0;  // |T|
  std::string prefix_digest;       // SHA-256 of spool[max(0, start - 4096), start)
  std::string gap_digest;          // SHA-256 of spool[N, A) before the update
  std::string payload_digest;      // SHA-256 of T
  // SHA-256 of the cell table that follows T in a redo journal: for every 4 KiB page of the
  // file that [start, new_size) touches, the XXH3-128 of the spool's bytes of that page
  // within [start, new_size) before the update.
  std::string cells_digest;
};

// The header as stored (text, ending with a "check" line holding its own SHA-256 and an empty
// line). Never longer than journal_header_size.
result<std::string> format_journal_header(const journal_header& h);
// Parses a header block. Errors: errc::invalid when it is not a complete, self-consistent
// header with a matching check digest.
result<journal_header> parse_journal_header(std::string_view block);

struct plan_piece {
  std::uint64_t from = 0;  // a byte range [from, to) of the spool to keep
  std::uint64_t to = 0;
  // Write a blank line ("\n") before it: a From_ line that needs a blank line before it to
  // be a separator, and lost it with the message deleted before it, gets one back (the
  // parser counts it as the mbox's, so the previous message's content does not change).
  bool blank_line_before = false;
};

struct update_plan {
  std::uint64_t start = 0;     // the first byte removed
  std::uint64_t old_size = 0;  // the spool's current size (locked)
  // What follows `start` in the new file, in file order. Ranges must lie within
  // [start, old_size), in order, and the new tail must be shorter than the old one (an update
  // always removes something).
  std::vector<plan_piece> keep;
};

// Fault injection for the crash tests, handed explicitly to run_update and recover (through
// mbox::options::faults); production passes none (nullptr). Fault points sit between every
// two externally visible steps of run_update and recover, and after every chunk copied.
class journal_faults {
 public:
  virtual ~journal_faults() = default;
  // Called at every fault point; it may end the process or throw to simulate a crash.
  virtual void passed_fault_point() = 0;
  // The copy buffer size to use instead of 1 MiB (small values make more fault points);
  // 0: the default.
  virtual std::size_t copy_buffer_bytes() const { return 0; }
};

// Runs the update on the spool `spool_fd` (open read-write, locked), with the side files in
// `dir_fd`; `display` names the spool in errors. `lock` is touched during long copies;
// `faults` is null but in crash tests. Errors: errc::temporary; when returned
// before the commit point (disk full included) the spool is untouched and no journal is
// left; after it, the journal stays and the next open completes the update.
result<void> run_update(int dir_fd, const side_files& names, int spool_fd,
                        const std::string& display, const update_plan& plan,
                        lock::mailbox_lock* lock, journal_faults* faults);

enum class recovery_outcome {
  nothing,    // no journal
  completed,  // an interrupted update was finished
  obsolete,   // the journal did not match the spool and was set aside (logged)
};

// Cleans up after a crash: removes half-written journals and completes or sets aside a
// committed one. `spool_fd` is -1 when the spool does not exist. `display` names the spool in
// errors and logs; `faults` as for run_update. Errors: errc::temporary (I/O, disk full, a
// journal that cannot be renamed aside; retry at the next open, nothing is lost).
result<recovery_outcome> recover(int dir_fd, const side_files& names, int spool_fd,
                                 const std::string& display, lock::mailbox_lock* lock,
                                 journal_faults* faults);

// A fault countdown that exits: the exit code, so a crash test tells it from a real failure.
inline constexpr int fault_exit_code_for_test = 86;

// The n-th fault point passed from construction on calls _exit(fault_exit_code_for_test), or
// runs `action` instead when one is given (step 0: never). copy_buffer: journal_faults.
// Not thread-safe: one per test or per test-hook process.
class fault_countdown final : public journal_faults {
 public:
  explicit fault_countdown(int step, std::size_t copy_buffer = 0,
                           std::function<void()> action = {});
  void passed_fault_point() override;
  std::size_t copy_buffer_bytes() const override { return copy_buffer_; }

 private:
  int left_;
  std::size_t copy_buffer_;
  std::function<void()> action_;
};

}  // namespace postern::store::mbox
