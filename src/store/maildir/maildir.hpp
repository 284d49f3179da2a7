// Maildir store: a POP3 maildrop over one Maildir (cur/ new/ tmp/), laid out and named as
// Dovecot and the Maildir specification do, safe to share with Dovecot IMAP and delivery
// agents working on the same directory at the same time.
//
// Session lock. open() takes flock(LOCK_EX | LOCK_NB) on "<maildir>/postern-pop3.lock"
// (created 0600, opened O_CLOEXEC | O_NOFOLLOW) and the maildrop holds it until it is
// destroyed. flock locks belong to the open file description, so a second open() of the
// same Maildir fails with errc::in_use whether it comes from this process or another, and
// the kernel drops the lock when the holder dies, even by kill -9: there is no stale lock to
// break. The lock file is never unlinked (unlinking would let a third opener lock a fresh
// inode while the first still holds the old one). Trade-offs: the lock binds only Postern
// sessions (Dovecot and MDAs do not take it; the code below tolerates their renames and
// deliveries); a descriptor inherited over fork() without exec shares the lock; and on NFS,
// Linux emulates flock with whole-file POSIX locks, which conflict across hosts but not
// within one process, so in-process exclusion there rests on the callers.
//
// Snapshot. open() lists cur/ and new/ once (names starting with '.' and anything that is
// not a regular file are skipped) and sorts by the leading "SECONDS." of the name, then by
// base name; names without that prefix sort last. Mail delivered later is never listed and
// never touched. Sizes come from Dovecot's ",W=<n>" field when present (no file read);
// otherwise from the index (below), and failing that each file is read once to count bare
// LFs. UIDLs are the base name when it is a legal UIDL, else its SHA-1 in hex, and are
// unique within the listing.
//
// Index. "<maildir>/postern-pop3.index" (format in index.hpp; created 0600 with O_NOFOLLOW
// under a temporary name in the Maildir root, then renamed over the old one) records the
// last listing: each file's name, directory, inode and wire size, plus each directory's
// device, inode, size, mtime and ctime, and the file system's time just before they were
// stat'ed (read by touching the lock file: the file system's own clock, granularity and,
// on NFS, host). At open, a directory whose stamp equals the recorded one, recorded while
// strictly older than that time, is taken from the index without readdir; see is_settled
// in maildir.cpp for why no change can hide behind that. Any other directory is listed,
// and a file the index knows by base name with the same inode takes its recorded size and
// stat (Maildir programs never change a file's content, only its name; one that does is
// caught at open_message, below). The index is rewritten after a listing that
// read a directory, unless it would record the same listing under stamps that still cannot
// be trusted. It is a cache: a missing, unreadable, truncated or corrupt file (checksum,
// lengths, fields or order) is ignored and the Maildir is read; it is never fsynced, and a
// failure to write it is ignored. Commit does not rewrite it (unless open_message
// corrected an entry, below): our own unlinks and renames
// move the directories' stamps, so the next open lists the changed directories once
// (sizes from the index, no file read) and records them again. Trade-off: the index relies
// on the file system updating a directory's mtime and ctime whenever an entry is added,
// removed or renamed (POSIX local file systems and NFS do; the directories are opened afresh
// at each open, which makes NFS revalidate their attributes); a file system that does not
// would serve a stale listing. Directories are opened only for the listing, a commit or a
// lookup by base name: between calls a maildrop holds only its lock file descriptor.
//
// Concurrent renames. Another MUA may rename a message (flag change, new/ -> cur/) at any
// time; open_message and commit then look the message up again by its base name, once.
// Files that share a base name (corrupt state) are never looked up that way, so one can
// never be mistaken for the other.
//
// Commit. Marked messages are unlinked first (one already removed by someone else counts as
// deleted). Then every kept message still in new/ moves to cur/<base>:2,<flags>, with S only
// if it was retrieved in this session, and a retrieved message in cur/ gains S (flags sorted
// in ASCII order, as the Maildir specification asks). Renames never replace an existing file
// (RENAME_NOREPLACE): if the target name is taken the message stays where it is. Then cur/
// and new/ are fsynced. Each unlink and rename is atomic, so a crash at any point leaves
// every message either intact or gone. After a failure the remaining operations still run
// and the first error is returned (errc::temporary, with the file in its context). Commit
// reopens the Maildir by path first; when that fails it returns errc::temporary having
// changed nothing.
//
// Verification (docs/storage.md, "Maildir trust rules"). The index records, for each file
// it sized by reading, its inode, size and ctime. open_message fstats the opened file: when
// those match, the file is the one sized; a ",W=" size is taken when the file's size agrees
// with it; anything else is counted again from the opened descriptor, the entry is corrected
// (and the index rewritten at commit or destruction, under the listing's stamps), a changed
// size is logged, and a size other than the one listed answers errc::changed for the rest of
// the session, so RETR never sends a byte count other than LIST's. A listing does not stat
// every file, so a file rewritten in place (or re-created under its name with a reused
// inode) keeps its old size until it is opened: at most the session that sees it lists it
// wrong.
//
// Paths and owners. The location's root (open_options::root) is opened as given; every
// component below it, cur/ and new/ are opened with O_NOFOLLOW, message files with openat2
// RESOLVE_NO_SYMLINKS (RESOLVE_BENEATH the root when the whole path holds a symlink). The
// Maildir, cur/, new/, the lock file and the index must be owned by the effective uid (the
// mail owner), and so must a message file to be read, renamed or removed; anything else is
// errc::permanent and logged.
//
// Threading and ownership: a maildrop is used from one thread at a time; every call may
// block on the file system. It owns the lock descriptor and reopens the Maildir from its
// root and absolute path (made absolute at open) for each call. Readers returned by open_message own
// their own descriptor and may outlive the maildrop.
#pragma once

#include "common/result.hpp"
#include "store/maildrop.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace postern::store::maildir {

// The session lock file, in the Maildir's root. No leading '.', so Maildir++ folder
// listings (which are directories starting with '.') never mistake it for a folder.
inline constexpr std::string_view lock_file_name = "postern-pop3.lock";

// Opens the Maildir at `path` (absolute, or relative to the working directory), creating it
// and any missing parents with mode 0700 when absent (below the root without following a
// symlink), and cur/, new/ and tmp/ when cur/ or
// new/ is missing (an empty maildrop results; a Maildir that has both is not touched), takes
// the session lock and lists the messages.
// Errors: errc::in_use when another session holds the lock (answer -ERR [IN-USE]);
// errc::permanent when the path cannot be a Maildir (not a directory, a symlink below the
// root, permission denied, the Maildir, cur/, new/ or the lock file not owned by the
// effective uid, lock file not a regular file); errc::invalid for an empty path or one not
// below open_options::root; errc::temporary for other file-system failures (answer
// -ERR [SYS/TEMP]; nothing has been changed). A message file that exists but cannot be read
// to size it is listed with its file size (and a warning); only its RETR fails.
struct open_options {
  // Keep postern-pop3.index; false (location parameter INDEX=MEMORY) lists and sizes the
  // whole Maildir at every open, writes no index and removes one left behind.
  bool use_index = true;
  // The location's root: an absolute directory that `path` is below (store::location_root).
  // It, and the path up to it, are opened as given (symlinks there are the administrator's);
  // every component of `path` below it is opened with O_NOFOLLOW, so a symlink planted by
  // whoever can write there is never followed. Empty: the parent directory of `path`.
  std::string root;
};
[[nodiscard]] result<std::unique_ptr<store::maildrop>> open(const std::string& path,
                                                            const open_options& opts = {});

// What a Maildir file name says about its message. I/O-free; exposed for tests and
// the fuzz target fuzz/maildir_name_fuzz.cpp.
struct name_parts {
  std::string_view base;                       // up to the ':' info separator: the unique name
  std::optional<std::string_view> info;        // after ':', e.g. "2,FS"; nullopt without ':'
  std::optional<std::uint64_t> timestamp;      // the leading "SECONDS." of the base
  std::optional<std::uint64_t> wire_size;      // Dovecot ",W=<n>": size with CRLF line ends
  std::optional<std::uint64_t> physical_size;  // Dovecot ",S=<n>": size of the file
};

// Splits `file_name` (views into it). Fields after the first ',' of the base are KEY=VALUE;
// W and S are read strictly with parse_u64, and a malformed or repeated W or S is treated as
// absent.
name_parts parse_name(std::string_view file_name) noexcept;

// The name a kept message takes in cur/ at commit: a name without info gains ":2,"; with
// `seen`, flag S is added to a "2," info and the flags are written sorted in ASCII order
// without repeats. Returns `file_name` unchanged when nothing needs to change, and for an
// info that is not "2,..." (whose meaning Postern does not know).
std::string cur_name(std::string_view file_name, bool seen);

// The UIDL for a base name: the base itself when it is 1..70 octets of 0x21..0x7E, else the
// lowercase hex SHA-1 of the base. Errors: errc::temporary if the digest is unavailable.
result<std::string> uidl_for_base(std::string_view base);

}  // namespace postern::store::maildir
