// Maildir index: the on-disk cache that lets a large Maildir open without reading its
// messages (and, when nothing changed, without listing its directories).
//
// The file "<maildir>/postern-pop3.index" records, for one moment, the listing of cur/ and
// new/: every message file's name, directory, inode, wire size and, when the file was
// stat'ed, its size and change time (what open_message verifies the file against), in
// listing order, plus
// the identity and timestamps of both directories and the file system's own time just
// before they were listed. maildir.cpp decides when that record may be trusted; this module
// only encodes and decodes it, without I/O, so the decoder is unit-tested and has
// a fuzz target (fuzz/maildir_index_fuzz.cpp; runs and findings: docs/reliability.md).
//
// The file is untrusted input (anyone who can write the Maildir can write it, and a crash
// can leave anything in it): decode_index checks every length, count and field, and a
// checksum of the body in a fixed trailer, and returns nullopt on any anomaly; the caller
// then ignores the file and lists and sizes the Maildir itself.
//
// Layout (all integers little-endian):
//   "PSTNIDX1"  u32 version (2)  u32 reserved (0)
//   stamp new/  stamp cur/   each: u64 dev, u64 ino, u64 size, i64 mtime sec, i64 mtime ns,
//                                  i64 ctime sec, i64 ctime ns
//   i64 listed_at sec, i64 listed_at ns      u64 record count
//   records: u64 wire size, u64 inode, u64 file size, i64 ctime sec, u32 ctime ns,
//            u8 flags (1: in new/, 2: file size and ctime known), u16 name length, name
//   (a version 1 file, without the file size and ctime, is not decoded: the Maildir is
//   then listed and sized once more and the index rewritten)
//   trailer: u64 body length (every byte before the trailer), u64 XXH64 of the body,
//            "PSTNEND1"
// The checksum detects truncation and corruption, not forgery: whoever can write the file
// can write a matching checksum, and could as well write the messages themselves.
//
// Threading: pure functions, safe from any thread.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::maildir {

// The index file, in the Maildir's root, and the temporary name it is written under before
// being renamed over it. No leading '.': Maildir++ folder listings never see them.
inline constexpr std::string_view index_file_name = "postern-pop3.index";
inline constexpr std::string_view index_temp_name = "postern-pop3.index.tmp";

// A file-system timestamp (struct timespec), ordered.
struct fs_time {
  std::int64_t sec = 0;
  std::int64_t nsec = 0;
  friend auto operator<=>(const fs_time&, const fs_time&) = default;
};

// What identifies one state of a directory: any entry added, removed or renamed changes
// its mtime and ctime (and a replaced directory has another inode).
struct dir_stamp {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  fs_time mtime;
  fs_time ctime;
  friend bool operator==(const dir_stamp&, const dir_stamp&) = default;
};

// One message file. `name` views the decoded buffer (or the caller's storage when encoding).
struct index_record {
  std::string_view name;
  std::uint64_t wire_size = 0;
  std::uint64_t ino = 0;
  bool in_new = false;
  // The file's st_size and st_ctim when it was sized or last verified; meaningless (and
  // encoded as zeros) unless stat_known. A file sized from its ",W=" name field, or one that
  // could not be read, has none.
  std::uint64_t file_size = 0;
  fs_time ctime;
  bool stat_known = false;
};

struct index_contents {
  dir_stamp new_dir;
  dir_stamp cur_dir;
  fs_time listed_at;  // file-system time taken before either directory was stat'ed
  std::vector<index_record> records;
};

// Limits the decoder enforces. A name is one directory entry (NAME_MAX); a size beyond
// max_index_wire_size is not a message Postern would serve, and keeps any sum of sizes far
// from overflowing.
inline constexpr std::size_t max_index_name_size = 255;
inline constexpr std::uint64_t max_index_wire_size = std::uint64_t{1} << 48;

// Serializes `c` (records in the order given). Names must be 1..max_index_name_size octets.
std::string encode_index(const index_contents& c);

// Decodes a whole index file. Returns nullopt when anything is wrong: short or long file,
// bad magic, version or trailer, checksum mismatch, a count the file cannot hold, a record
// running past the body, a name that is empty, too long, starts with '.', or holds '/' or
// NUL, an unknown flag bit, a wire size above max_index_wire_size or below the file size,
// a file size or ctime without the "known" flag, a nanosecond field outside
// 0..999,999,999, or bytes left over. The records' names view `bytes`, which
// must outlive the result. Record order is not checked here (the caller knows the order).
std::optional<index_contents> decode_index(std::string_view bytes);

// The same checks without collecting the records: fills `head` (leaving head.records empty)
// and calls `visit` for each record in file order (its name views `bytes`). Returns false on
// any anomaly, or as soon as `visit` returns false; records visited before a failure must
// then be discarded by the caller.
bool decode_index(std::string_view bytes, index_contents& head,
                  const std::function<bool(const index_record&)>& visit);

// The trailer's checksum: XXH64 with seed 0.
std::uint64_t index_checksum(std::string_view data) noexcept;

}  // namespace postern::store::maildir
