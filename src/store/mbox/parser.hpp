// The mbox parser: I/O-free, so it is unit-tested on strings and has a fuzz target
// (fuzz/mbox_parser_fuzz.cpp; runs and findings: docs/reliability.md). It finds the
// messages of an mbox file in one sequential pass over its bytes, fed in chunks of any size,
// and computes for each one its wire size and UIDL. docs/mbox.md gives the rules and why.
//
// Separators. A From_ line is a line that starts with "From " and is
//  - the first line of the file or, before the first message, any line (the bytes before
//    the first From_ line are a "garbage prefix": skipped, and never touched by an update);
//  - after a blank line (RFC 4155, and the only rule jwz and mutt agree on); or
//  - after a non-blank line, when it also carries an asctime date ("Www Mmm dd hh:mm"), as
//    a delivery agent writes it: a writer that forgot the blank line is tolerated, while a
//    body line "From here on..." that sendmail's mail.local or procmail -Y left unquoted
//    (they quote only after blank lines) does not split a message.
// With honour_content_length, a message whose "Content-Length:" header points exactly at a
// boundary (end of file, or an optional blank line and then "From ") extends to there and
// "From " lines inside it are body text (mboxcl2); a Content-Length that points anywhere
// else is ignored.
//
// Content. A message's content runs from after its From_ line to the next separator, minus
// one blank line just before that separator (or at the end of the file): that blank line
// belongs to the mbox, not to the message. Line ends are LF or CRLF, mixed freely.
//
// Sizes are what pop3::dot_encoder sends for the content minus byte-stuffing and the final
// ".CRLF": bare LF counts 2, CRLF 2, an unterminated last line gains the CRLF (or LF after
// a CR) that dot_encoder::finish adds, and each unquoted line counts one octet less.
//
// Quoting. mboxo: ">From " at the start of a line is served as "From ". mboxrd: one '>' is
// removed from any line matching ^>+From . none: served as stored. The match must lie in the
// first line_head_bytes of the line (a bound the scanner and the unquoter share, so sizes
// always agree with what is sent). Messages delimited by a valid Content-Length are never
// unquoted (mboxcl2 writers do not quote).
//
// Identity: each message's digest is XXH3-128, with the scan's seed, of its whole stored
// extent [separator, extent_end): From_ line, headers, body and the blank line that ends it.
// Two messages with equal From_ lines and equal footers differ in it; a same-length edit
// anywhere in the extent changes it. The store checks it before sending or deleting bytes
// (mbox.hpp). The scanner computes it from the bytes it is fed anyway.
//
// UIDL: the first "X-UIDL:" header (qpopper, UW imapd) when use_x_uidl and its value is
// 1..70 octets of 0x21..0x7E and not already taken by an earlier message; otherwise the
// lowercase hex SHA-1 of "postern-mbox-uidl-1\n", the From_ line, the first Message-ID and
// Date header values and the first 512 bytes of the body. A value already taken by an
// earlier message is replaced by SHA-1(value "#" n) for the smallest n that is free.
//
// Threading: a scanner is used from one thread; the free functions are pure.
#pragma once

#include "common/result.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::mbox {

enum class quoting {
  mboxo,   // ">From " -> "From " (what Debian's MDAs write: Postfix, Exim, procmail)
  mboxrd,  // ^>+From  loses one '>' (qmail, mboxrd writers)
  none,    // served as stored (popa3d's behaviour)
};

struct parse_options {
  quoting from_quoting = quoting::mboxo;
  bool honour_content_length = false;
  // Off by default: any sender can write an X-UIDL header, and so give a message the UIDL of
  // another one the client already holds (which it then never downloads).
  bool use_x_uidl = false;
};

// How much of each line the parser looks at for separators, headers and quoting.
inline constexpr std::size_t line_head_bytes = 1024;
// How much of a From_ line the fingerprint covers.
inline constexpr std::size_t fingerprint_bytes = 256;
// How much of the body goes into a derived UIDL.
inline constexpr std::size_t uidl_body_bytes = 512;

// A message's identity (see Identity above): the two halves of an XXH3-128 digest.
struct content_digest {
  std::uint64_t low = 0;
  std::uint64_t high = 0;

  bool operator==(const content_digest&) const = default;
};

// Streaming XXH3-128 with a seed, for the identity of a byte range fed in pieces.
class digester {
 public:
  explicit digester(std::uint64_t seed = 0);
  ~digester();
  digester(const digester& other);
  digester& operator=(const digester& other);

  void reset(std::uint64_t seed);
  void update(std::string_view bytes) noexcept;
  content_digest digest() const noexcept;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

// The identity of bytes held in memory.
content_digest digest_of(std::string_view bytes, std::uint64_t seed) noexcept;

struct message_span {
  std::uint64_t separator = 0;         // offset of the From_ line
  std::uint64_t content = 0;           // first byte after the From_ line
  std::uint64_t end = 0;               // end of the content (exclusive)
  std::uint64_t extent_end = 0;        // next separator, or the end of the scanned bytes
  std::uint64_t size = 0;              // octets on the wire
  std::uint64_t from_line_length = 0;  // the From_ line with its line end
  std::uint64_t from_fingerprint = 0;  // fingerprint() of its first fingerprint_bytes
  bool unquote = true;                 // the reader unquotes ">From " lines (see quoting)
  // The From_ line carries a delivery date, so it separates after any line; without one it
  // separates only at the start of the file or after a blank line.
  bool dated_separator = false;
  // The last line of the extent (just before the next separator or the end) is blank.
  bool ends_with_blank_line = false;
  // The UIDL is not the message's own value (its X-UIDL or plain derived digest): an earlier
  // message held that value. Deleting earlier messages can change such a UIDL.
  bool uidl_collided = false;
  content_digest digest;  // the identity of [separator, extent_end)
  std::string uidl;
};

struct scan_result {
  std::vector<message_span> messages;
  std::uint64_t scanned_size = 0;      // the end of the bytes fed (absolute)
  std::uint64_t tail_fingerprint = 0;  // fingerprint() of the last <= 64 bytes fed
                                       // (of the last 64 bytes scanned when they were fed)
  std::uint64_t digest_seed = 0;       // the seed of every message's digest
};

// Reads up to n bytes at offset (fewer only at the end of the data). Used to check a
// Content-Length boundary that lies ahead of the bytes fed so far.
using peek_fn = std::function<result<std::string>(std::uint64_t offset, std::size_t n)>;

// Where a scan of a grown file resumes instead of starting at byte 0: at the From_ line of
// the last message an earlier scan of the same bytes found (a scan of the earlier bytes ends
// every message but the last one exactly as a scan of the grown file does; see mbox.hpp for
// when this holds). `taken` answers whether an earlier message (one before `offset`) holds a
// UIDL, so that the messages from `offset` on get the UIDLs a full scan would give them.
struct resume_point {
  std::uint64_t offset = 0;
  std::function<bool(std::string_view)> taken;
};

class scanner {
 public:
  // total_size: the size of the data (the file size at the scan); bytes are fed from
  // `from.offset` (0 by default) to total_size, and offsets in the result are absolute.
  // digest_seed: the seed of the messages' digests (a random one per listing, kept in the
  // index, so that no sender can prepare two messages with one identity).
  scanner(const parse_options& opts, std::uint64_t total_size, peek_fn peek, resume_point from = {},
          std::uint64_t digest_seed = 0);
  ~scanner();
  scanner(const scanner&) = delete;
  scanner& operator=(const scanner&) = delete;

  // Feeds the next bytes. Errors: from peek, or errc::temporary if SHA-1 is unavailable.
  result<void> feed(std::string_view chunk);
  // Ends the input (which must have been total_size bytes) and returns the messages.
  result<scan_result> finish();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Scans a whole mbox held in memory.
result<scan_result> scan(std::string_view data, const parse_options& opts,
                         std::uint64_t digest_seed = 0);

// Streaming unquoter for one message's content (state carries across chunks).
class unquoter {
 public:
  explicit unquoter(quoting q) noexcept : q_(q) {}
  // Appends the unquoted form of `in` to `out`.
  void filter(std::string_view in, std::string& out);
  // Appends what is held back at the end of the input (a partial ">From" match).
  void finish(std::string& out);

 private:
  void emit_held(std::string& out);

  quoting q_;
  bool at_line_start_ = true;
  bool checking_ = false;    // deciding whether this line is a quoted From line
  std::size_t gt_run_ = 0;   // '>' at the line start (the first one is held back)
  std::size_t matched_ = 0;  // bytes of "From " matched after them
};

// True if the line (head of it) is a quoted From line that `q` unquotes.
bool is_quoted_from(std::string_view line_head, quoting q) noexcept;
// True if the line carries an asctime-style delivery date after "From sender ".
bool looks_like_from_line(std::string_view line) noexcept;
// 1 to 70 octets of 0x21..0x7E (RFC 1939 section 7).
bool is_legal_uidl(std::string_view s) noexcept;
// FNV-1a, 64 bits: cheap change detection, not a cryptographic digest.
std::uint64_t fingerprint(std::string_view data) noexcept;

}  // namespace postern::store::mbox
