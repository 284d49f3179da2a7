// dovecot_uidlist: one UID space with Dovecot on a shared Maildir.
//
// Where [pop3] uidl_format uses IMAP UIDs (%u, %v), the UIDs are Dovecot's: the file that
// holds them is Dovecot's own "dovecot-uidlist" in the Maildir's root, and Postern reads and
// extends it under Dovecot's own lock, so that a message has the same UID whichever server
// numbered it, and a UID is never given to two messages.
//
//  - The lock: the dotlock "dovecot-uidlist.lock" (dovecot_dotlock below: created with
//    O_CREAT|O_EXCL, Dovecot's dotlock_use_excl = yes, its default, holding "<pid>:<host>"
//    as Dovecot's file_dotlock_create writes it, and judged stale by Dovecot's rules with
//    its 120-second MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT). It is held only while the list is
//    read, extended and written back, never for a session, so IMAP is never kept waiting.
//  - The POP3 session lock: Dovecot's pop3_lock_session = yes takes the dotlock
//    "dovecot-pop3-session.lock" (stale after 300 s) for a POP3 session; with
//    [pop3] dovecot_lock_session Postern takes the same lock for its sessions, so a Dovecot
//    POP3 session and a Postern session are never logged in at once: whichever comes second
//    gets -ERR [IN-USE].
//  - Changes: the new list is written to a temporary file, fsynced and renamed over
//    dovecot-uidlist while the lock is held (Dovecot's own maildir_uidlist_recreate does
//    the same), so a reader sees the old file or the new one, never a part.
//  - New messages get UIDs as Dovecot gives them: next_uid, next_uid + 1, ... in listing
//    order; the header's N is raised past them. Records, header fields and record fields
//    Postern does not use are written back unchanged.
//  - A file that cannot be parsed safely (any line Dovecot would call broken, a last line
//    without its newline, a base name listed twice) is refused with errc::permanent and a
//    text naming the line: Dovecot would delete such a file and renumber every message, and
//    Postern must not invent numbers that Dovecot would then give to other messages.
//  - Migration from Postern's own postern-uidlist (what earlier versions kept): a message
//    Dovecot has no UID for keeps the UID Postern showed for it when that UID is still free
//    (not below Dovecot's next_uid), so its UIDL does not change; the file is removed once
//    its numbers are in dovecot-uidlist. A message both lists number differently takes
//    Dovecot's UID (a UIDL change the client sees once, as a new message: a duplicate
//    download, never a lost message).
//
// Threading: no shared state; calls block on the file system (run on the worker pool).
#pragma once

#include "common/result.hpp"
#include "store/uidl_format.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store {

inline constexpr std::string_view dovecot_uidlist_name = "dovecot-uidlist";
inline constexpr std::string_view dovecot_uidlist_lock_name = "dovecot-uidlist.lock";
inline constexpr std::chrono::seconds dovecot_uidlist_stale_timeout{120};
// Dovecot's POP3 session lock (pop3_lock_session = yes), in the Maildir's root.
inline constexpr std::string_view dovecot_pop3_lock_name = "dovecot-pop3-session.lock";
inline constexpr std::chrono::seconds dovecot_pop3_stale_timeout{300};

// A dotlock as Dovecot's file_dotlock_create makes and judges it. Move-only; removes the
// lock file when destroyed if it is still ours (same device and inode).
class dovecot_dotlock {
 public:
  dovecot_dotlock() = default;
  dovecot_dotlock(const dovecot_dotlock&) = delete;
  dovecot_dotlock& operator=(const dovecot_dotlock&) = delete;
  dovecot_dotlock(dovecot_dotlock&& o) noexcept;
  dovecot_dotlock& operator=(dovecot_dotlock&& o) noexcept;
  ~dovecot_dotlock();

  // Creates `lock_path` with O_EXCL holding "<pid>:<hostname>", waiting until `deadline`
  // while a live holder has it. A lock is stale, and is removed, when it holds the pid of a
  // process on this host that no longer exists (and is older than 2 seconds); otherwise
  // when neither it nor `protected_path` (the file it guards; the lock itself for the POP3
  // session lock) changed for `stale_timeout`. A lock held by a live process is never
  // broken. Errors: errc::in_use when it is still held at the deadline; errc::permanent
  // when the lock cannot be created (EACCES, EROFS, not a regular file); errc::temporary
  // otherwise.
  static result<dovecot_dotlock> acquire(const std::string& lock_path,
                                         const std::string& protected_path,
                                         std::chrono::seconds stale_timeout,
                                         std::chrono::steady_clock::time_point deadline);

  bool held() const noexcept { return !path_.empty(); }
  // Removes the lock if it is still ours. Idempotent.
  void release() noexcept;

 private:
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// dovecot-uidlist.lock of `maildir` (see dovecot_dotlock::acquire; errc::in_use names a
// Dovecot sync or a Postern session numbering messages).
result<dovecot_dotlock> lock_dovecot_uidlist(const std::string& maildir,
                                             std::chrono::steady_clock::time_point deadline);
// dovecot-pop3-session.lock of `maildir`, Dovecot's pop3_lock_session lock.
result<dovecot_dotlock> lock_dovecot_pop3_session(const std::string& maildir,
                                                  std::chrono::steady_clock::time_point deadline);

// Parses a dovecot-uidlist strictly (versions 1 and 3). Every record keeps its fields and
// file name verbatim for format_uidlist. Errors: errc::permanent naming the line, for
// anything Dovecot would treat as a broken file, a last line without '\n', a record field
// that is not <A-Z><value>, or a base name listed twice.
result<uidlist> parse_dovecot_uidlist(std::string_view text);

// Gives every base name in `bases` (listing order) that `l` lacks a UID: the UID
// `migrate_from` (Postern's old postern-uidlist) has for it when that is >= l.next_uid,
// else l.next_uid; next_uid follows. Returns how many records were added. Errors:
// errc::permanent when the UID space is exhausted (Dovecot would then reset UIDVALIDITY).
result<std::size_t> extend_uidlist(uidlist& l, const std::vector<std::string>& bases,
                                   const uidlist* migrate_from);

// Reads "<maildir>/dovecot-uidlist" (a missing file is a new list with `new_uidvalidity`
// and a random mailbox GUID), extends it with extend_uidlist and, when records were added,
// replaces it atomically. The caller holds `lock`. Errors: from parse_dovecot_uidlist
// (prefixed with the path), extend_uidlist, or the file system.
result<uidlist> sync_dovecot_uidlist(const dovecot_dotlock& lock, const std::string& maildir,
                                     const std::vector<std::string>& bases,
                                     const uidlist* migrate_from, std::uint32_t new_uidvalidity);

}  // namespace postern::store
