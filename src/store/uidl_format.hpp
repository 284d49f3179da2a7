// uidl_format: UIDLs that match what an older POP3 server showed, so that users who move to
// Postern from Dovecot, qpopper or UW do not download all their mail again.
//
//  - uidl_format: Dovecot's pop3_uidl_format. Variables %v (UIDVALIDITY, decimal), %u (the
//    message's IMAP UID, decimal), %m (MD5 of selected header fields, hex), %f (Maildir base
//    file name), %g (message GUID), %% (a '%'). Between '%' and the variable: an optional
//    '0' (zero-pad), a width, and 'X' (the number in hexadecimal). These follow Dovecot's
//    var_expand exactly, including where it differs from printf: 'X' gives *lower-case* hex
//    (Dovecot's m_str_hex prints "%llx"), and a width without '0' truncates to that many
//    characters instead of padding. Dovecot's default "%08Xu%08Xv" therefore yields
//    "00000001" "5f3a9c10" for uid 1 and uidvalidity 0x5f3a9c10.
//  - dovecot-uidlist: the UID map Dovecot keeps in each Maildir (versions 1 and 3; see
//    parse_dovecot_uidlist). A record's 'P' field (a POP3 UIDL Dovecot saved, e.g. by a
//    migration) wins over the format, as in Dovecot; an empty 'P' means the base file name.
//  - X-UID / X-IMAPbase headers: Dovecot's (and UW's) UIDs inside an mbox.
//  - X-UIDL headers (qpopper, UW): already the mbox store's native UIDL.
//  - header_md5: Dovecot's %m for mbox (mbox_md5 = apop3d, its default), computed the same
//    way, so %m UIDLs of an mbox Dovecot served are reproduced too.
//
// Messages the old server never numbered get UIDs after the highest one known, recorded
// before any client sees them: in a Maildir in Dovecot's own dovecot-uidlist, under
// Dovecot's lock (dovecot_uidlist.hpp: one UID space, whichever server numbers a message);
// in an mbox in Postern's own "postern-uidlist" side file (same v3 format, keyed by native
// UIDL), whose records win over the X-UID headers.
//
// Everything here is I/O-free apart from read_header_section, which reads from a
// message_reader. Threading: values and pure functions.
#pragma once

#include "common/result.hpp"
#include "store/maildrop.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store {

// ---------------------------------------------------------------------------------------
// The format

struct uidl_vars {
  std::optional<std::uint64_t> uid;          // %u
  std::optional<std::uint64_t> uidvalidity;  // %v
  std::string md5;                           // %m, lower-case hex
  std::string filename;                      // %f
  std::string guid;                          // %g
};

class uidl_format {
 public:
  // Parses a pop3_uidl_format string: printable ASCII without spaces; each '%' followed by
  // ['0'][width]['X'] and one of v u m f g %. Errors: errc::invalid naming the position.
  static result<uidl_format> parse(std::string_view spec);

  // True if the format refers to variable `var` ('u', 'v', 'm', 'f' or 'g').
  bool uses(char var) const noexcept;
  // Expands the format; a variable with no value expands to "" (Dovecot refuses to list
  // UIDLs then; the caller falls back to the native UIDL when the result is unusable).
  std::string expand(const uidl_vars& vars) const;
  const std::string& spec() const noexcept { return spec_; }

 private:
  struct piece {
    char var = 0;  // 0: literal text
    std::string literal;
    bool zero_pad = false;
    unsigned width = 0;
    bool hex = false;
  };
  std::string spec_;
  std::vector<piece> pieces_;
};

// True if `s` can be sent as a UIDL: non-empty, octets 0x21..0x7E only, at most 255 octets.
// RFC 1939 caps UIDLs at 70 octets; Dovecot does not (its %f of a long Maildir name is
// longer), and a migrated client only recognizes its mail if the string is exactly the old
// one, so Postern sends such UIDLs unchanged, as Dovecot did.
bool is_sendable_uidl(std::string_view s) noexcept;

// ---------------------------------------------------------------------------------------
// Headers

// The most of a header section read for a UIDL format or an expiry stamp: real headers are a
// few KiB (a long Received chain some tens); past this the header is cut, so a hostile
// message costs a session at most this much memory.
inline constexpr std::size_t max_header_section = 256 * 1024;

// Reads a message's header section: everything up to and including the first empty line
// (LF or CRLF), at most `limit` bytes (a longer header is cut there). Errors: from the reader.
result<std::string> read_header_section(message_reader& reader,
                                        std::size_t limit = max_header_section);

// The first field named `name` (case-insensitive) in a header section: its value with the
// one blank after the colon removed, continuation lines joined with their line ends dropped,
// trailing blanks removed. nullopt when absent.
std::optional<std::string> header_value(std::string_view header, std::string_view name);

// Dovecot's header MD5 for mbox (mbox_md5 = apop3d): the MD5 over the values of Date and
// Message-ID (only while no Received has been seen), every Delivered-To and X-Delivery-ID,
// and the first Received field (all its lines), each line's value as Dovecot's header
// parser gives it (after "Name:" and one blank; a continuation line whole; line end
// removed). Lower-case hex.
std::string header_md5_hex(std::string_view header);

// ---------------------------------------------------------------------------------------
// dovecot-uidlist

struct uidlist_record {
  std::uint32_t uid = 0;
  std::string key;   // the base file name (up to ':') for Maildir; native UIDL for mbox
  std::string guid;  // 'G' field; "" if none
  std::optional<std::string> pop3_uidl;  // 'P' field ("" = the base file name)
  // Verbatim, from parse_dovecot_uidlist only: the record's fields between the UID and the
  // ':' ("G... P... X..."), and its file name. format_uidlist writes these when set.
  std::string extensions;
  std::string filename;
};

struct uidlist {
  unsigned version = 3;
  std::uint32_t uidvalidity = 0;
  std::uint32_t next_uid = 1;
  std::string mailbox_guid;
  std::string header_extensions;        // other header fields, verbatim (parse_dovecot_uidlist)
  std::vector<uidlist_record> records;  // in file order (ascending uid)
};

// Parses a dovecot-uidlist (or postern-uidlist):
//   version 1: header "1 <uidvalidity> <next uid>", records "<uid> <filename>";
//   version 3: header "3 V<uidvalidity> N<next uid> [G<mailbox guid>] [<key><value>...]",
//              records "<uid> [<key><value> ...] :<filename>".
// The record key is the file name up to ':' (Dovecot matches by base name). Records whose
// uid does not ascend, or are otherwise malformed, are skipped, as Dovecot drops them.
// Errors: errc::invalid for a broken header (unknown version, zero uidvalidity or next uid).
result<uidlist> parse_uidlist(std::string_view text);

// Version 3 text of `l`: header "3 V.. N.." [G..] [header_extensions], records
// "<uid> [extensions | G.. P..] :<filename | key>".
std::string format_uidlist(const uidlist& l);

// ---------------------------------------------------------------------------------------
// UID assignment

// What one message maps to.
struct uid_entry {
  std::uint32_t uid = 0;
  std::string guid;                      // "" if the list had none
  std::optional<std::string> pop3_uidl;  // a saved POP3 UIDL that overrides the format
};

// Looks messages up by key in the old server's list (`legacy`, read-only) and Postern's own
// (`own`), and numbers the rest after the highest UID either knows. Postern's records are
// consulted first. uidvalidity: the legacy list's, else the own list's, else `fallback`
// (Unix time, like Dovecot), which the own list then records.
class uid_assigner {
 public:
  uid_assigner(std::optional<uidlist> legacy, std::optional<uidlist> own,
               std::uint32_t fallback_uidvalidity);

  // The entry for `key` in either list, without assigning.
  std::optional<uid_entry> lookup(std::string_view key) const;
  // The entry for `key`, assigning a new UID (and recording it in own()) when neither list
  // has one. Call in listing order so new messages are numbered in that order.
  uid_entry lookup_or_assign(const std::string& key);

  std::uint32_t uidvalidity() const noexcept { return uidvalidity_; }
  // Postern's list, to be saved when changed() (also true for a list that did not exist:
  // its uidvalidity must be on disk before a client sees a UIDL made with it).
  const uidlist& own() const noexcept { return own_; }
  bool changed() const noexcept { return changed_; }

 private:
  std::map<std::string, uid_entry, std::less<>> legacy_;
  std::map<std::string, uid_entry, std::less<>> own_index_;
  uidlist own_;
  std::uint32_t uidvalidity_ = 0;
  bool changed_ = false;
};

// Dovecot's UIDLs from X-UID/X-IMAPbase headers of an mbox: a uidlist keyed by each
// message's native UIDL. `headers[i]` is message i's header section. X-IMAPbase counts only
// in the first message ("<uidvalidity> <last uid>"); X-UID values must ascend, others are
// ignored (Dovecot renumbers those). nullopt when no message carries X-IMAPbase.
std::optional<uidlist> mbox_uidlist_from_headers(const std::vector<std::string>& native_uidls,
                                                 const std::vector<std::string>& headers);

}  // namespace postern::store
