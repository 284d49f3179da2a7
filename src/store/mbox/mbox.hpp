// mbox store: a POP3 maildrop over one mbox file, such as a Debian mail spool
// ("mbox:/var/mail/%u") or a user's "mbox:~/mbox", shared safely with the delivery agents
// and MUAs that lock it the usual way. docs/mbox.md is the full account; in short:
//
// Locks. open() takes the session lock (flock on "<state>/.<base>.postern-session", never
// unlinked) for the maildrop's whole life, so a second session gets errc::in_use. The spool
// locks that MDAs take (dotlock "<path>.lock", fcntl, flock: options.locking) are held only
// while the file is scanned at open and while QUIT updates it, never while a client idles,
// so deliveries are never stalled by POP3.
//
// Snapshot. open() completes any update a crash interrupted (see journal.hpp), then learns
// the messages (parser.hpp: separators, quoting, Content-Length, sizes, UIDLs) and keeps
// per-message offsets. Mail appended later is not listed and is never touched. A missing
// file or an empty one is an empty maildrop; a missing file (with no journal left by a
// crash) creates nothing and takes no lock, since there is nothing to protect.
//
// Index. What a scan found is cached in "<state>/.<base>.postern-index" (index.hpp: 0600,
// written to a temporary name and renamed, checksummed, strictly parsed, ignored unless
// owned by us and writable by nobody else). Under the spool locks, open() first reads the
// file system's clock (it touches the session lock file), then the spool's stamp (device,
// inode, size, mtime and ctime to the nanosecond), and:
//  - same stamp, the recorded scan "stable" (its mtime and ctime strictly older than the
//    file system's clock read before that scan, so no later change can have kept them),
//    same parse options, and the first and last From_ lines and the 64 bytes before the
//    scanned end as recorded: the index is the listing; nothing else is read;
//  - same inode, larger than the scanned part, same spot checks, no honour_content_length
//    (a Content-Length could reach into the new bytes), no bytes before the first message,
//    and every indexed message but the last still has its identity (parser.hpp; its
//    extent is read and hashed, so a same-length edit or two swapped messages are seen):
//    only the last indexed message and what follows it are scanned (scanner's
//    resume_point), with the earlier UIDLs taken;
//  - anything else (another inode, smaller, same size but another mtime or ctime, a
//    damaged or foreign index): a full scan.
// After a scan the index is rewritten, after the spool locks are released. A commit writes
// the index of the file it produced (kept messages moved down; the scanned part ends before
// any mail appended meanwhile) unless a deletion can change more than offsets (a UIDL that
// yielded to an earlier equal one, a blank line put before a From_ line,
// honour_content_length) or, when the spool was written since the listing, a message
// before the first deleted one no longer has its identity: then the index is removed. A
// mismatch is logged. Data safety never rests on the index: open_message and commit check
// the identities of the messages they send, move or remove.
//
// Reading. open_message reads the message's byte range with pread through its own
// descriptor, unquoting ">From " lines on the fly with bounded memory. It first checks that
// the message's extent still has its identity. Otherwise another program changed the
// file: errc::temporary ("mailbox changed by another program; log in again"), a warning is
// logged, the index is removed so that the next login scans, and the session reads and
// deletes nothing more. `retrieved` is ignored: marking messages read
// ("Status: RO") would mean rewriting the file from the first marked message on, so
// Postern does not do it.
//
// Commit. With no deletion, nothing is written and no lock is taken. Otherwise the spool
// locks are taken, the scanned part is checked to be unchanged (same inode, size not
// smaller, the bytes at the end of the scanned part and the identity of every message from
// the first deleted one on: errc::temporary and nothing deleted otherwise, a changed message
// also removing the index), and the file
// is rewritten in place from the first deleted message on, through a redo journal, so that
// the cost grows with the bytes after the first deleted message, owner, group, mode, links
// and ACLs stay as they are, mail appended after the scan is kept, and a crash at any
// instant leaves every undeleted message exactly once after the next open. A full disk
// fails before the spool is touched (errc::temporary). Where a deletion would leave an
// undated From_ line right after a non-blank line, a blank line is put before it, so the
// file parses the same afterwards.
//
// Side files and trust. The session lock, journal and index live in <state>: the spool's
// directory when it is the mail owner's alone (owned by the effective uid, not writable by
// group or others), else options.state_dir (created 0700; it must be the effective uid's
// and writable by nobody else; none configured: errc::permanent naming mbox_state_dir).
// Side files are opened O_NOFOLLOW|O_NONBLOCK and checked (regular, ours, mode); a journal
// or session lock failing that is renamed aside and logged. The spool must be a regular file
// owned by the effective uid (errc::permanent otherwise: never served).
//
// Privileges: the session must be able to create the dotlock in the spool's directory: on
// Debian, /var/mail is root:mail 2775, so the post-login process needs group mail
// (Dovecot's mail_privileged_group). On a full disk the scan goes on without the dotlock
// (lock_options::read_without_dotlock_when_full); the update at QUIT then fails.
//
// Threading and ownership: a maildrop is used from one thread at a time; every call may
// block on the file system and on locks (up to options.locking.timeout). It owns its
// descriptors and the session lock. Readers own a duplicate descriptor and may outlive it.
#pragma once

#include "common/result.hpp"
#include "store/lock/mailbox_lock.hpp"
#include "store/maildrop.hpp"
#include "store/mbox/journal.hpp"
#include "store/mbox/parser.hpp"

#include <memory>
#include <string>

namespace postern::store::mbox {

// How open() found the messages: nothing to list, a full scan, the index, or the index and
// a scan of the mail appended since.
enum class open_source { none, full_scan, index, appended_scan };

struct options {
  lock::lock_options locking;  // dotlock + fcntl, 30 s, stale after 10 min
  quoting from_quoting = quoting::mboxo;
  bool honour_content_length = false;
  // An X-UIDL header (qpopper, UW) gives the UIDL when valid. Off by default: a sender can
  // write one and so take the UIDL of another message (parser.hpp).
  bool use_x_uidl = false;
  // Keep the index file (.<name>.postern-index); false (location parameter INDEX=MEMORY)
  // scans the whole file at every login, writes no index and removes one left behind.
  bool use_index = true;
  // The state directory (absolute, expanded; [mail] mbox_state_dir) for a spool whose
  // directory is not the mail owner's alone; empty: such spools are refused.
  std::string state_dir;
  // Crash-test fault injection for the journal (journal.hpp); null in production. Not owned:
  // it must outlive every maildrop opened with these options.
  journal_faults* faults = nullptr;
  // Where open() writes how it found the messages (tests of the index); null: nowhere.
  open_source* opened_from = nullptr;
};

// Opens the mbox file at `path` (absolute), taking the session lock, recovering an
// interrupted update and scanning it.
// Errors: errc::invalid for an empty or relative path; errc::in_use when another session
// holds the maildrop, or when the spool stays locked by others past the lock timeout
// (answer -ERR [IN-USE]); errc::permanent when the path cannot be used (not a regular file,
// a symlink, no permission to open it read-write or to create the lock files, a damaged
// journal); errc::temporary for other file-system failures (answer -ERR [SYS/TEMP]).
// Nothing has been changed on error, apart from a completed crash recovery.
[[nodiscard]] result<std::unique_ptr<store::maildrop>> open(const std::string& path,
                                                            const options& opts = {});

// What recover_pending did.
struct recovery_report {
  recovery_outcome outcome = recovery_outcome::nothing;
  std::string state_dir;  // where the side files of the spool are (empty: no directory)
};

// Completes (or sets aside, see journal.hpp) an update of the mbox at `path` that a crash
// interrupted, with the same session lock and spool locks as open(), and nothing else: for
// `posternd --recover` and for startup. Errors: as open().
[[nodiscard]] result<recovery_report> recover_pending(const std::string& path,
                                                      const options& opts = {});

}  // namespace postern::store::mbox
