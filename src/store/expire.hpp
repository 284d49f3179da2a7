// expire: RFC 2449 EXPIRE as GNU Mailutils does it, without rewriting messages.
//
// A message retrieved by RETR or TOP is stamped with the time of its first retrieval. At
// QUIT, when the policy deletes (delete_expired with expire = n > 0, or expire = 0, which
// always deletes), every message whose stamp is n days old or older (for expire = 0: every
// stamped message) is added to the session's deletions. With expire = n and delete_expired
// off, stamps are still kept, for an administrator's purge job.
//
// Where stamps live. Mailutils writes an "X-Expire-Timestamp: SECONDS" header into the
// message; Postern never rewrites a message (that would mean rewriting an mbox from the
// first stamped message on, or replacing Maildir files under other readers). Instead:
//  - a side file of lines "UIDL SECONDS\n", keyed by the store's native UIDL (the one that
//    does not depend on [pop3] uidl_format): "<maildir>/postern-expire" for a Maildir,
//    "<dir>/.<mbox name>.postern-expire" beside an mbox (next to the mbox store's own
//    ".<name>.postern-session" lock file, in the directory Postern must be able to write
//    anyway for dotlocks);
//  - in an mbox, an existing X-Expire-Timestamp header (left by Mailutils) counts as the
//    stamp of a message that has none in the side file. (Not in a Maildir: that would mean
//    opening every message file at every QUIT; such a message expires counting from its
//    first retrieval through Postern, i.e. later, never earlier.)
// The side file is rewritten whole at commit (temporary file, fsync, rename, fsync of the
// directory), so a crash leaves the old or the new version, never a torn one; entries of
// messages that are no longer in the maildrop are dropped then. A lost update (crash between
// the store's commit and the side file's) only makes a message expire later, never earlier.
//
// This header holds the store-agnostic parts; decorated_maildrop.hpp applies them to a
// maildrop. Threading: plain values and functions; a stamp_file is used by one session.
#pragma once

#include "common/result.hpp"
#include "store/location.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace postern::store {

struct expire_policy {
  std::int32_t days = -1;       // [pop3] expire: -1 = NEVER, 0 = no mail may stay after QUIT
  bool delete_expired = false;  // [pop3] delete_expired

  // Stamps are kept at all.
  bool stamps() const noexcept { return days >= 0; }
  // Expired messages are removed at QUIT (expire = 0 always implies it, as in Mailutils).
  bool deletes() const noexcept { return days == 0 || (days > 0 && delete_expired); }
};

// The CAPA line: "EXPIRE NEVER" or "EXPIRE n" (RFC 2449 section 6.7).
std::string expire_capability(const expire_policy& p);

// True when a message stamped at `stamp` (Unix seconds) has expired at `now` under `days`:
// days == 0 expires every stamped message; days > 0 when now - stamp >= days * 86400
// (a stamp in the future is not expired); days < 0 never.
bool is_expired(std::int64_t stamp, std::int64_t now, std::int32_t days) noexcept;

// Parses an X-Expire-Timestamp header value: optional blanks, decimal digits, optional
// blanks (as Mailutils writes "X-Expire-Timestamp: 1700000000"). nullopt otherwise.
std::optional<std::int64_t> parse_expire_timestamp(std::string_view value) noexcept;

// Unix seconds of a time point.
std::int64_t unix_seconds(std::chrono::system_clock::time_point t) noexcept;

// ---------------------------------------------------------------------------------------
// Side files: small per-maildrop files Postern keeps next to the mail.

// The path of side file `name` ("postern-expire", "postern-uidlist") of a maildrop:
// "<maildir>/<name>" or "<dir of mbox>/.<mbox file name>.<name>".
std::string side_file_path(store_kind kind, const std::string& maildrop_path,
                           std::string_view name);

// The largest side file (expiry stamps) read into memory: some tens of bytes a message, so
// 64 MiB is room for millions of messages; a larger file is refused, not read.
inline constexpr std::size_t max_side_file = std::size_t{64} << 20;

// Reads a whole side file. A missing file reads as nullopt. Errors: errc::temporary (I/O),
// errc::permanent (not a regular file, permission denied), errc::invalid (over max_size).
result<std::optional<std::string>> read_side_file(const std::string& path,
                                                  std::size_t max_size = max_side_file);

// Replaces `path` with `content` atomically: writes "<path>.tmp.<pid>" (mode 0600, and when
// running as root, owned like `owner_reference` if that names an existing file), fsyncs it,
// renames it over `path` and fsyncs the directory. On error the old file is intact and the
// temporary file is removed. Errors: errc::temporary (disk full, I/O) or errc::permanent.
result<void> replace_side_file(const std::string& path, std::string_view content,
                               const std::string& owner_reference = {});

// The expire stamps of one maildrop, keyed by native UIDL.
class stamp_file {
 public:
  stamp_file() = default;
  explicit stamp_file(std::string path) : path_(std::move(path)) {}

  // Loads `path`; a missing file is an empty set. Malformed lines are skipped (and dropped
  // at the next save). Errors: as read_side_file; the session must then not commit stamps
  // (it would lose the others), so the caller fails the open with -ERR [SYS/TEMP].
  static result<stamp_file> load(const std::string& path);
  // The same, from text (for tests).
  static stamp_file parse(std::string_view text, std::string path = {});

  std::optional<std::int64_t> get(std::string_view uidl) const;
  // Sets the stamp; marks the file changed when the value differs.
  void set(const std::string& uidl, std::int64_t stamp);
  // Drops the entry, if any.
  void erase(const std::string& uidl);
  // Drops every entry for which keep(uidl) is false.
  template <typename Pred>
  void retain_if(Pred keep) {
    for (auto it = stamps_.begin(); it != stamps_.end();) {
      if (keep(it->first)) {
        ++it;
      } else {
        it = stamps_.erase(it);
        changed_ = true;
      }
    }
  }

  std::size_t size() const noexcept { return stamps_.size(); }
  bool changed() const noexcept { return changed_; }
  const std::string& path() const noexcept { return path_; }
  // "UIDL SECONDS\n" lines in UIDL order.
  std::string format() const;
  // Writes the file with replace_side_file when changed (an empty set removes the file).
  result<void> save(const std::string& owner_reference = {});

 private:
  std::string path_;
  std::map<std::string, std::int64_t, std::less<>> stamps_;
  bool changed_ = false;
};

}  // namespace postern::store
