// The maildrop interface: what a POP3 session needs from a mail store.
//
// A maildrop is opened for one authenticated session and holds that maildrop's session lock
// for its whole life (a second open of the same maildrop, in this process or another, fails
// with errc::in_use until the first is destroyed). The message list is a snapshot taken at
// open: mail delivered later is not listed and can never be touched by this session.
//
// Threading: a maildrop is used by one session at a time, from any one thread at a time.
// Opening, committing and reading may block on the file system: callers run them off the
// I/O threads.
#pragma once

#include "common/result.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store {

struct message_info {
  // Octets on the wire: the message with CRLF line ends, before byte-stuffing and without
  // the terminating ".CRLF" (RFC 1939 section 11, as mature servers count).
  std::uint64_t size = 0;
  // Unique-id listing value: 1 to 70 octets in 0x21..0x7E (RFC 1939 section 7), stable
  // across sessions.
  std::string uidl;
};

// Sequential reader of one message's stored bytes (line ends as stored; the pop3 dot
// encoder converts them for the wire).
class message_reader {
 public:
  virtual ~message_reader() = default;
  // Reads up to buf.size() bytes. Returns 0 at end of message. On error the message cannot
  // be streamed further: the caller must drop the connection (a partial reply cannot be
  // taken back).
  virtual result<std::size_t> read(std::span<char> buf) = 0;

  // Optional path without a copy, for large messages: the next up to `max` bytes as a view
  // into a read-only mapping of the stored file, valid until the next call on the reader or
  // its end; it advances the reader like read(). An empty view: end of message. nullopt: no
  // mapping (the default, and for small messages); use read(). It answers nullopt on the
  // first call or never, so a caller asks once and then keeps to one path. The mapped bytes
  // fault (SIGBUS) if the file is truncated meanwhile: touch them only inside a
  // mapped_access (common/mapped_access.hpp) scope, and treat a fault like a read error.
  virtual result<std::optional<std::span<const char>>> map_next(std::size_t max) {
    (void)max;
    return std::optional<std::span<const char>>{};
  }
};

// What happened at commit, for the session's log line.
struct commit_stats {
  std::size_t deleted = 0;
  std::uint64_t deleted_bytes = 0;
  std::size_t left = 0;
  std::uint64_t left_bytes = 0;
};

class maildrop {
 public:
  virtual ~maildrop() = default;

  // The snapshot listing; index i is message number i + 1. Valid for the maildrop's life.
  virtual std::span<const message_info> messages() const = 0;

  // Opens message `index` for reading. `retrieved` marks it as seen by the client (RETR, or
  // TOP per store policy) so commit can record that (Maildir S flag). Errors: the message
  // was removed by another program (errc::not_found: a permanent -ERR), changed since it was
  // listed (errc::changed: -ERR, listed right at the next open), is not the mail owner's or
  // not a regular file (errc::permanent: -ERR [SYS/PERM]), or cannot be read now
  // (errc::temporary: -ERR [SYS/TEMP]).
  virtual result<std::unique_ptr<message_reader>> open_message(std::size_t index,
                                                               bool retrieved) = 0;

  // The UPDATE state (RFC 1939 section 6): removes exactly the messages whose index has
  // deleted[index] == true (deleted.size() == messages().size()) and records retrieval
  // marks. Never touches mail delivered after open. Each removal is atomic; on error some
  // removals may have happened and the rest have not, and every message not removed is
  // intact. Called at most once.
  virtual result<commit_stats> commit(std::span<const bool> deleted) = 0;
};

// The caller errors every store's commit() refuses first: a second call, or a deletion list
// whose size is not the number of messages. `store` names the store in the message.
// Errors: errc::invalid (a bug in the caller; nothing was touched).
inline result<void> check_commit_call(std::string_view store, bool committed, std::size_t marks,
                                      std::size_t messages) {
  if (committed) {
    return error(errc::invalid, std::string(store) + ": commit called twice");
  }
  if (marks != messages) {
    return error(errc::invalid, std::string(store) + ": commit with " + std::to_string(marks) +
                                    " marks for " + std::to_string(messages) + " messages");
  }
  return ok_result();
}

}  // namespace postern::store
