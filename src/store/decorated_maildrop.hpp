// decorated_maildrop: the seed manuals' per-message policies on top of any store, without the
// stores knowing: UIDLs in [pop3] uidl_format (uidl_format.hpp) and RFC 2449 EXPIRE
// (expire.hpp). It wraps the maildrop a store opened and forwards everything else.
//
//  - UIDLs are computed once in wrap(): message_info.uidl is replaced, sizes are kept.
//    A value the format cannot produce (a variable the store cannot supply, a byte outside
//    0x21..0x7E) falls back to the store's native UIDL for that message; duplicates get
//    "-2", "-3"... appended (Dovecot's pop3_uidl_duplicates = rename), so UIDLs stay unique.
//  - Dovecot on the same Maildir (dovecot_uidlist.hpp): with %u/%v the UIDs are numbered in
//    Dovecot's dovecot-uidlist under its lock; with dovecot_lock_session the wrapper holds
//    Dovecot's POP3 session lock (dovecot-pop3-session.lock) until it is destroyed.
//  - Expire stamps: open_message(i, retrieved = true) (RETR) marks message i retrieved; the
//    engine opens TOP with retrieved = false (TOP must not set the Maildir S flag), so the
//    driver calls note_top(i) after it opened a message for TOP. At commit the stamps of
//    this session are added, expired messages are added to the deletions (when the policy
//    deletes), the store commits, and then the stamp side file is rewritten.
//  - Undelete (Mailutils' `undelete`): deletion marks live only in the session's memory and
//    no store persists them (a session that does not QUIT removes nothing), so every open
//    starts with no marks: [pop3] undelete = true needs nothing here and is accepted as is.
//
// Expired deletions are an administrator's policy applied at QUIT, the one case where a
// message the client did not mark leaves storage; they happen only in the UPDATE state, like
// every other removal, so a dropped connection still deletes nothing.
//
// Threading and ownership: like any maildrop (one session, one thread at a time; calls block
// on the file system: run wrap and commit on the worker pool). Owns the inner maildrop and
// therefore its session lock.
#pragma once

#include "common/result.hpp"
#include "store/dovecot_uidlist.hpp"
#include "store/expire.hpp"
#include "store/location.hpp"
#include "store/maildrop.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace postern::store {

struct decoration_options {
  store_kind kind = store_kind::maildir;
  std::string path;         // the maildrop's path, as the store opened it
  std::string uidl_format;  // [pop3] uidl_format; "" = the store's native UIDLs
  // mbox with uidl_format: a valid X-UIDL header (qpopper, UW) keeps its value (Dovecot's
  // pop3_reuse_xuidl); wire it from the mbox store's X-UIDL setting.
  bool reuse_x_uidl = true;
  expire_policy expire;  // [pop3] expire / delete_expired
  // [pop3] dovecot_lock_session (Maildir only): hold Dovecot's POP3 session lock
  // (dovecot-pop3-session.lock) for the whole session, as Dovecot's POP3 does with
  // pop3_lock_session = yes.
  bool dovecot_lock_session = false;
  // How long to wait for a Dovecot lock held by someone else before -ERR [IN-USE].
  std::chrono::milliseconds dovecot_lock_timeout = std::chrono::seconds(5);
  // The clock for stamps and expiry; null = std::chrono::system_clock::now.
  std::function<std::chrono::system_clock::time_point()> clock;
};

// True when `o` changes anything, i.e. when wrapping is worth it.
bool needs_decoration(const decoration_options& o) noexcept;

class decorated_maildrop final : public maildrop {
 public:
  // Wraps `inner` (freshly opened, nothing read yet). Reads the UID lists and, when the
  // format or the store needs them (%m; mbox X-UID/X-UIDL), every message's header section;
  // records new UIDs (Maildir: in Dovecot's dovecot-uidlist, under its lock, see
  // dovecot_uidlist.hpp; mbox: in the postern-uidlist side file); loads the expire stamps.
  // Errors also: errc::in_use when dovecot-uidlist.lock or (dovecot_lock_session)
  // dovecot-pop3-session.lock stays held by someone else; errc::permanent for a damaged
  // dovecot-uidlist.
  // Errors (the session answers -ERR [SYS/TEMP], and `inner` is released with its lock):
  // errc::invalid for a bad format, errc::temporary/permanent when a side file cannot be
  // read or written (never silently: losing stamps or UID records would change UIDLs or
  // expiry), or a message's header cannot be read.
  static result<std::unique_ptr<decorated_maildrop>> wrap(std::unique_ptr<maildrop> inner,
                                                          decoration_options opts);

  std::span<const message_info> messages() const override { return infos_; }
  result<std::unique_ptr<message_reader>> open_message(std::size_t index, bool retrieved) override;
  // Adds the messages that expired to `deleted`, commits through the store, then records
  // the stamps. The stamp file failing after a successful store commit does not fail the
  // commit (stamps lost only delay expiry); see stamp_error().
  result<commit_stats> commit(std::span<const bool> deleted) override;

  // The client read message `index` with TOP (call after open_message succeeded for it).
  void note_top(std::size_t index) noexcept;

  // After commit: how many of the removals were expired messages the client had not marked.
  std::size_t expired_deleted() const noexcept { return expired_deleted_; }
  // After commit: why the stamp file could not be written, if it could not (log it).
  const std::optional<error>& stamp_error() const noexcept { return stamp_error_; }
  // The store's own listing (native UIDLs), e.g. for logs.
  std::span<const message_info> native_messages() const { return inner_->messages(); }

 private:
  decorated_maildrop(std::unique_ptr<maildrop> inner, decoration_options opts);
  result<void> apply_uidl_format();
  // The header section of every listed message into headers[i]; a message removed since the
  // listing is marked in keep_native instead. Errors: from the store's reads.
  result<void> read_headers(std::vector<std::string>& headers, std::vector<bool>& keep_native);
  result<uidlist> sync_dovecot_uids(const std::vector<std::string>& bases,
                                    const std::optional<uidlist>& own);
  result<std::optional<std::int64_t>> header_stamp(std::size_t index);
  std::chrono::system_clock::time_point now() const;

  std::unique_ptr<maildrop> inner_;
  decoration_options opts_;
  // Dovecot's POP3 session lock (dovecot_lock_session). Declared after inner_, so released
  // before the store's own session lock.
  dovecot_dotlock dovecot_session_lock_;
  std::vector<message_info> infos_;
  std::vector<bool> retrieved_;  // RETR or TOP in this session
  std::optional<stamp_file> stamps_;
  std::size_t expired_deleted_ = 0;
  std::optional<error> stamp_error_;
  bool committed_ = false;
};

// Opens nothing: wraps `inner` when needs_decoration(opts), else returns it unchanged.
// `decorated` is set to the wrapper (for note_top) or null.
result<std::unique_ptr<maildrop>> decorate(std::unique_ptr<maildrop> inner, decoration_options opts,
                                           decorated_maildrop** decorated = nullptr);

}  // namespace postern::store
