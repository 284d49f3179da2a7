// bulletins: GNU Mailutils' bulletin feature. An administrator puts announcements into a
// bulletin source mailbox ([pop3] bulletin_source, an mbox or a Maildir); when a user logs
// in, before the maildrop is listed, the bulletins newer than the last one that user got are
// delivered into the user's maildrop, so they show up in this very session.
//
// Numbering. A bulletin's number is its position in the source (1-based): for an mbox, file
// order; for a Maildir, the Maildir store's order (the leading "SECONDS." of the file name,
// then the name). Add bulletins only at the end and never remove old ones (as with
// Mailutils: numbers are positions).
//
// Last numbers. Each user's last delivered number lives in [pop3] bulletin_db (SQLite,
// user -> number) or, when that is empty, in the file ~/.popbull (the number in decimal, as
// Mailutils keeps it). With a database, a user without a row there falls back to
// ~/.popbull once (Mailutils: the database takes precedence when both exist). A new user's
// number is 0: every bulletin in the source is delivered, as Mailutils does.
//
// Delivery, exactly once per bulletin and user, crash included:
//  - Maildir: written to tmp/, fsynced, renamed into new/ (never replacing a file) under the
//    name "<time>.B<number>_<key>.postern-bulletin", where <key> is derived from the
//    bulletin's identity in the source (its Maildir base name or mbox UIDL). Before writing, new/ and
//    cur/ are searched for that key, so a crash between delivery and recording the number
//    cannot deliver it twice.
//  - mbox: appended under the same locks delivery agents take (store/lock: dotlock, fcntl,
//    flock as configured), with a From_ line, an "X-Postern-Bulletin: <key>" header, quoting
//    as configured (mboxo by default) and a blank line; the file is searched for that header
//    first, and a failed write is truncated away.
// The number is recorded after each bulletin, so an interrupted run resumes where it
// stopped.
//
// Threading: deliver_bulletins blocks (file system, locks up to the lock timeout, SQLite):
// run it on the worker pool. A bulletin_db is shared by all workers (internally locked).
#pragma once

#include "common/result.hpp"
#include "server/login_stats.hpp"
#include "store/location.hpp"
#include "store/lock/mailbox_lock.hpp"
#include "store/mbox/parser.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::server {

// Last delivered bulletin numbers in SQLite (created like login_stats' file: 0600, WAL).
class bulletin_db {
 public:
  // Errors: see state_db::open. The caller logs and skips bulletins for the session.
  static result<std::unique_ptr<bulletin_db>> open(const std::string& path);
  // The user's last number, nullopt when the user has no row.
  result<std::optional<std::uint64_t>> last(std::string_view user);
  result<void> set_last(std::string_view user, std::uint64_t number);

 private:
  explicit bulletin_db(std::unique_ptr<state_db> db) : db_(std::move(db)) {}
  std::unique_ptr<state_db> db_;
};

// One bulletin read from the source.
struct bulletin {
  std::uint64_t number = 0;  // 1-based position in the source
  std::string key;           // 16 hex digits identifying it (stable while the source is)
  std::string content;       // the message as stored, LF or CRLF line ends, unquoted
};

// Reads the bulletins numbered after `after` from the source at `kind`/`path` (absolute).
// A missing source holds no bulletins. The source is read without locks (bulletins are
// written by an administrator, and an mbox append is seen whole or not at all by the next
// login). Errors: errc::temporary/permanent for I/O; errc::invalid for an mbox larger than
// 64 MiB (bulletins are meant to be few and small).
result<std::vector<bulletin>> read_bulletins(
    store::store_kind kind, const std::string& path, std::uint64_t after,
    store::mbox::quoting source_quoting = store::mbox::quoting::mboxo);

struct bulletin_settings {
  store::store_kind source_kind = store::store_kind::mbox;
  std::string source_path;            // expanded bulletin_source
  bulletin_db* db = nullptr;          // null: ~/.popbull only
  store::lock::lock_options locking;  // for an mbox target (the [mail] mbox_* settings)
  store::mbox::quoting quoting = store::mbox::quoting::mboxo;  // mbox source and target
  // Clock for Maildir names and From_ lines; null = system_clock::now.
  std::function<std::chrono::system_clock::time_point()> clock;
};

struct bulletin_target {
  store::store_kind kind = store::store_kind::maildir;
  std::string path;  // the user's maildrop, as the session will open it
  std::string user;  // the login name (the database key)
  std::string home;  // for ~/.popbull; "" = none
};

// Delivers the bulletins the user has not had yet; returns how many were delivered now
// (bulletins found already delivered by an interrupted earlier run count as delivered but
// are not written again). Errors: errc::permanent when there is nowhere to record numbers
// (no database and no home), or from the source, the target or the record. Nothing the user
// already had is touched. The caller logs an error and lets the login go on.
result<std::size_t> deliver_bulletins(const bulletin_settings& settings,
                                      const bulletin_target& target);

// The From_ line date for `t` in asctime form, UTC ("Mon Jan  1 00:00:00 2024").
std::string asctime_utc(std::chrono::system_clock::time_point t);

// Quotes `content` for an mbox: mboxo puts '>' before lines starting "From ", mboxrd before
// lines matching ^>*From , none leaves it as is. Ensures a final line end.
std::string quote_for_mbox(std::string_view content, store::mbox::quoting q);

}  // namespace postern::server
