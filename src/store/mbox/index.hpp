// The mbox index: a cache of what a scan of an mbox file found, so that a later login opens
// a large, unchanged mailbox without reading it. It lives next to the session lock,
// "<dir>/.<base>.postern-index" (side_files::index), is written to ".postern-index.new"
// (mode 0600, O_NOFOLLOW, O_EXCL) and renamed into place, and is never needed for safety:
// mbox.hpp says when open() trusts it and what it still checks in the mbox itself.
//
// Format (all integers little-endian; varints are LEB128, at most 10 bytes, no overflow):
//   "PMBXIDX\n", u32 version (2), u32 option bits (quoting, honour_content_length,
//   use_x_uidl, stable), the mbox's stamp (u64 dev, ino, size, mtime s/ns, ctime s/ns),
//   u64 first separator, scanned size, tail fingerprint, digest seed, message count;
//   per message: varint From_ line length, content offset (from the separator), extent
//   length, end-back (extent end - content end), wire size; u8 flags; u64 From_ line
//   fingerprint; u64 low and high half of its identity (parser.hpp: the digest of its
//   extent); the UIDL (20 bytes for a 40-digit lowercase hex value, else varint length
//   1..70 and the octets);
//   trailer: u64 length of the whole file, SHA-256 of every byte before the digest.
// decode_index() checks every field: lengths, bounds, that extents tile the scanned part
// without gaps, that content <= end <= extent end, that UIDLs are legal, and the trailer.
// Any anomaly is errc::invalid: the caller ignores the file and scans.
//
// Threading: the functions are reentrant; load and save are called with the session lock.
#pragma once

#include "common/result.hpp"
#include "store/mbox/journal.hpp"
#include "store/mbox/parser.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace postern::store::mbox {

// What identifies one state of the mbox file.
struct file_stamp {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_s = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_s = 0;
  std::int64_t ctime_ns = 0;

  bool operator==(const file_stamp&) const = default;
};

struct index_contents {
  file_stamp stamp;  // the mbox when it was scanned (or rewritten by a commit)
  // mtime and ctime were strictly older than the file system's clock read before the scan:
  // any later change of the file moves one of them, so an equal stamp means equal bytes.
  bool stable = false;
  parse_options opts;  // the options the scan used
  scan_result scan;    // scan.scanned_size <= stamp.size
};

// Version 1 (no message identities) is ignored: the mbox is scanned and the index rewritten.
inline constexpr std::uint32_t index_format_version = 2;
// A larger file is not an index Postern wrote (a 100,000-message mbox needs about 4 MB).
inline constexpr std::uint64_t max_index_bytes = std::uint64_t{1} << 30;

// Where encode_index takes each message's UIDL from when not from scan.messages[i].uidl.
using uidl_source = std::function<std::string_view(std::size_t message)>;

// The file's bytes. Errors: errc::invalid when a message does not fit the format (a UIDL
// that is not legal, offsets out of order), errc::temporary when SHA-256 is unavailable.
result<std::string> encode_index(const index_contents& c, const uidl_source& uidl_of = {});

// Parses and checks a whole index file. Errors: errc::invalid for any anomaly.
result<index_contents> decode_index(std::string_view bytes);

// Reads "<dir>/<names.index>". nullopt when it is missing, not a regular file, not owned by
// this process's effective uid, writable by group or others, too large, unreadable or
// invalid: every such file is ignored, never trusted.
std::optional<index_contents> load_index(int dir_fd, const side_files& names);

// Writes the index through names.index_new and renames it into place (no fsync: a torn file
// after a power loss fails its checksum and is ignored). Errors: errc::temporary; the caller
// may ignore them (the next open scans).
result<void> save_index(int dir_fd, const side_files& names, const index_contents& c,
                        const uidl_source& uidl_of = {});

// Removes the index (an update that cannot describe its result). ENOENT is not an error.
result<void> remove_index(int dir_fd, const side_files& names);

}  // namespace postern::store::mbox
