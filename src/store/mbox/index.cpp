#include "store/mbox/index.hpp"

#include "common/encoding.hpp"
#include "common/unique_fd.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

namespace postern::store::mbox {

namespace {

constexpr std::string_view index_magic = "PMBXIDX\n";
constexpr std::size_t digest_size = 32;
constexpr std::size_t trailer_size = 8 + digest_size;
// magic, version, options, 7 stamp fields, first separator, scanned size, tail, digest
// seed, count.
constexpr std::size_t header_size = 8 + 4 + 4 + 7 * 8 + 5 * 8;
// The smallest record: five one-byte varints, flags, fingerprint, digest, a one-octet UIDL.
constexpr std::size_t min_record_size = 5 + 1 + 8 + 16 + 2;
constexpr std::size_t hex_uidl_size = 40;
constexpr std::size_t raw_uidl_size = 20;
constexpr mode_t index_mode = 0600;

enum : std::uint32_t {
  opt_quoting_mask = 0x3,
  opt_honour_content_length = 0x4,
  opt_use_x_uidl = 0x8,
  opt_stable = 0x10,
  opt_known = 0x1F,
};

enum : std::uint8_t {
  flag_unquote = 0x01,
  flag_dated = 0x02,
  flag_ends_blank = 0x04,
  flag_collided = 0x08,
  flag_hex_uidl = 0x10,
  flag_known = 0x1F,
};

bool sha256(std::string_view data, unsigned char* out) {
  unsigned int len = 0;
  return EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr) == 1 &&
         len == digest_size;
}

// Lowercase hex digit values; 0xFF for every other byte.
constexpr std::array<std::uint8_t, 256> hex_table = [] {
  std::array<std::uint8_t, 256> t{};
  t.fill(0xFF);
  for (int i = 0; i < 10; ++i) {
    t['0' + i] = static_cast<std::uint8_t>(i);
  }
  for (int i = 0; i < 6; ++i) {
    t['a' + i] = static_cast<std::uint8_t>(10 + i);
  }
  return t;
}();

// Packs a 40-digit lowercase hex UIDL into 20 bytes; false (out unspecified) for any other.
bool pack_hex_uidl(std::string_view u, unsigned char* out) noexcept {
  if (u.size() != hex_uidl_size) {
    return false;
  }
  unsigned bad_bits = 0;
  for (std::size_t k = 0; k < raw_uidl_size; ++k) {
    const std::uint8_t hi = hex_table[static_cast<unsigned char>(u[2 * k])];
    const std::uint8_t lo = hex_table[static_cast<unsigned char>(u[2 * k + 1])];
    bad_bits |= hi | lo;
    out[k] = static_cast<unsigned char>((hi << 4) | (lo & 0x0F));
  }
  return (bad_bits & 0xF0) == 0;
}

bool is_lower_hex_uidl(std::string_view u) noexcept {
  std::array<unsigned char, raw_uidl_size> scratch{};
  return pack_hex_uidl(u, scratch.data());
}

// A bounds-checked reader over the index bytes; every getter fails instead of reading past
// the end.
class reader {
 public:
  explicit reader(std::string_view data) noexcept : data_(data) {}

  std::size_t left() const noexcept { return data_.size() - pos_; }

  bool u8(std::uint8_t& v) noexcept {
    if (left() < 1) {
      return false;
    }
    v = static_cast<std::uint8_t>(data_[pos_++]);
    return true;
  }

  bool u32(std::uint32_t& v) noexcept {
    if (left() < 4) {
      return false;
    }
    v = 0;
    for (int i = 0; i < 4; ++i) {
      v |= static_cast<std::uint32_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += 4;
    return true;
  }

  bool u64(std::uint64_t& v) noexcept {
    if (left() < 8) {
      return false;
    }
    v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += 8;
    return true;
  }

  bool i64(std::int64_t& v) noexcept {
    std::uint64_t u = 0;
    if (!u64(u)) {
      return false;
    }
    v = static_cast<std::int64_t>(u);
    return true;
  }

  // LEB128, at most 10 bytes, the last one holding at most the top bit; no padding bytes.
  bool varint(std::uint64_t& v) noexcept {
    v = 0;
    for (int i = 0; i < 10; ++i) {
      if (left() < 1) {
        return false;
      }
      const auto b = static_cast<std::uint8_t>(data_[pos_++]);
      if (i == 9 && b > 1) {
        return false;  // more than 64 bits
      }
      v |= static_cast<std::uint64_t>(b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) {
        return i == 0 || b != 0;  // a trailing zero byte is not the shortest encoding
      }
    }
    return false;
  }

  bool bytes(std::size_t n, std::string_view& out) noexcept {
    if (left() < n) {
      return false;
    }
    out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
};

error bad(std::string_view what) {
  return error(errc::invalid, "mbox index: " + std::string(what));
}

}  // namespace

result<std::string> encode_index(const index_contents& c, const uidl_source& uidl_of) {
  const auto& msgs = c.scan.messages;
  // Written through a raw cursor into a buffer sized for the largest records: this runs at
  // QUIT for 100,000 messages and must cost a few milliseconds, not tens.
  constexpr std::size_t max_record = 5 * 10 + 1 + 8 + 16 + 1 + 70;
  // Uninitialized: only the pages written are touched.
  const auto buf =
      std::make_unique_for_overwrite<char[]>(header_size + msgs.size() * max_record + trailer_size);
  char* const base = buf.get();
  char* p = base;
  const auto u32 = [&p](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) {
      *p++ = static_cast<char>((v >> (8 * i)) & 0xFF);
    }
  };
  const auto u64 = [&p](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      *p++ = static_cast<char>((v >> (8 * i)) & 0xFF);
    }
  };
  const auto varint = [&p](std::uint64_t v) {
    while (v >= 0x80) {
      *p++ = static_cast<char>((v & 0x7F) | 0x80);
      v >>= 7;
    }
    *p++ = static_cast<char>(v);
  };
  std::memcpy(p, index_magic.data(), index_magic.size());
  p += index_magic.size();
  u32(index_format_version);
  std::uint32_t opts = static_cast<std::uint32_t>(c.opts.from_quoting) & opt_quoting_mask;
  opts |= c.opts.honour_content_length ? opt_honour_content_length : 0U;
  opts |= c.opts.use_x_uidl ? opt_use_x_uidl : 0U;
  opts |= c.stable ? opt_stable : 0U;
  u32(opts);
  u64(c.stamp.dev);
  u64(c.stamp.ino);
  u64(c.stamp.size);
  u64(static_cast<std::uint64_t>(c.stamp.mtime_s));
  u64(static_cast<std::uint64_t>(c.stamp.mtime_ns));
  u64(static_cast<std::uint64_t>(c.stamp.ctime_s));
  u64(static_cast<std::uint64_t>(c.stamp.ctime_ns));
  u64(msgs.empty() ? c.scan.scanned_size : msgs.front().separator);
  u64(c.scan.scanned_size);
  u64(c.scan.tail_fingerprint);
  u64(c.scan.digest_seed);
  u64(msgs.size());
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    const message_span& m = msgs[i];
    const std::string_view uidl = uidl_of ? uidl_of(i) : std::string_view(m.uidl);
    const std::uint64_t next = i + 1 < msgs.size() ? msgs[i + 1].separator : c.scan.scanned_size;
    auto* const packed = reinterpret_cast<unsigned char*>(p) + 5 * 10 + 1 + 8 + 16;  // scratch
    const bool hex = pack_hex_uidl(uidl, packed);
    if (m.extent_end != next || m.separator > m.content || m.content > m.end ||
        m.end > m.extent_end || (!hex && !is_legal_uidl(uidl))) {
      return bad("message " + std::to_string(i + 1) + " does not fit the format");
    }
    varint(m.from_line_length);
    varint(m.content - m.separator);
    varint(m.extent_end - m.separator);
    varint(m.extent_end - m.end);
    varint(m.size);
    std::uint8_t flags = 0;
    flags |= m.unquote ? flag_unquote : 0;
    flags |= m.dated_separator ? flag_dated : 0;
    flags |= m.ends_with_blank_line ? flag_ends_blank : 0;
    flags |= m.uidl_collided ? flag_collided : 0;
    flags |= hex ? flag_hex_uidl : 0;
    *p++ = static_cast<char>(flags);
    u64(m.from_fingerprint);
    u64(m.digest.low);
    u64(m.digest.high);
    if (hex) {
      std::memmove(p, packed, raw_uidl_size);
      p += raw_uidl_size;
    } else {
      varint(uidl.size());
      std::memcpy(p, uidl.data(), uidl.size());
      p += uidl.size();
    }
  }
  const auto body = static_cast<std::size_t>(p - base);
  u64(body + trailer_size);
  std::array<unsigned char, digest_size> md{};
  if (!sha256(std::string_view(base, body + 8), md.data())) {
    return error(errc::temporary, "mbox index: SHA-256 unavailable");
  }
  std::memcpy(p, md.data(), md.size());
  return std::string(base, body + trailer_size);
}

result<index_contents> decode_index(std::string_view bytes) {
  if (bytes.size() < header_size + trailer_size || bytes.size() > max_index_bytes) {
    return bad("wrong size");
  }
  // The trailer first: nothing else is read from a torn or altered file.
  const std::string_view body = bytes.substr(0, bytes.size() - digest_size);
  std::array<unsigned char, digest_size> md{};
  if (!sha256(body, md.data())) {
    return error(errc::temporary, "mbox index: SHA-256 unavailable");
  }
  if (std::memcmp(md.data(), bytes.data() + body.size(), digest_size) != 0) {
    return bad("checksum mismatch");
  }
  reader r(body);
  std::string_view magic;
  std::uint32_t version = 0;
  std::uint32_t opts = 0;
  index_contents c;
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  if (!r.bytes(index_magic.size(), magic) || magic != index_magic || !r.u32(version) ||
      !r.u32(opts) || !r.u64(c.stamp.dev) || !r.u64(c.stamp.ino) || !r.u64(c.stamp.size) ||
      !r.i64(c.stamp.mtime_s) || !r.i64(c.stamp.mtime_ns) || !r.i64(c.stamp.ctime_s) ||
      !r.i64(c.stamp.ctime_ns) || !r.u64(first) || !r.u64(c.scan.scanned_size) ||
      !r.u64(c.scan.tail_fingerprint) || !r.u64(c.scan.digest_seed) || !r.u64(count)) {
    return bad("truncated header");
  }
  if (version != index_format_version) {
    return bad("unknown version");
  }
  if ((opts & ~std::uint32_t{opt_known}) != 0 || (opts & opt_quoting_mask) > 2) {
    return bad("unknown options");
  }
  c.opts.from_quoting = static_cast<quoting>(opts & opt_quoting_mask);
  c.opts.honour_content_length = (opts & opt_honour_content_length) != 0;
  c.opts.use_x_uidl = (opts & opt_use_x_uidl) != 0;
  c.stable = (opts & opt_stable) != 0;
  if (c.scan.scanned_size > c.stamp.size || first > c.scan.scanned_size) {
    return bad("scanned size out of range");
  }
  if (count > (r.left() - 8) / min_record_size) {
    return bad("message count out of range");
  }
  if (count == 0 && first != c.scan.scanned_size) {
    return bad("empty index with a separator");
  }
  // Room for a few appended messages, so that a resumed scan does not copy the list.
  c.scan.messages.reserve(static_cast<std::size_t>(count) + 64);
  c.scan.messages.resize(static_cast<std::size_t>(count));
  std::uint64_t pos = first;
  for (std::size_t i = 0; i < count; ++i) {
    message_span& m = c.scan.messages[i];
    std::uint64_t content_off = 0;
    std::uint64_t extent_len = 0;
    std::uint64_t end_back = 0;
    std::uint8_t flags = 0;
    if (!r.varint(m.from_line_length) || !r.varint(content_off) || !r.varint(extent_len) ||
        !r.varint(end_back) || !r.varint(m.size) || !r.u8(flags) || !r.u64(m.from_fingerprint) ||
        !r.u64(m.digest.low) || !r.u64(m.digest.high)) {
      return bad("truncated message record");
    }
    if ((flags & ~flag_known) != 0) {
      return bad("unknown message flags");
    }
    // The extent must end within the scanned part; content and end lie inside it.
    if (extent_len == 0 || extent_len > c.scan.scanned_size - pos || content_off > extent_len ||
        end_back > extent_len - content_off || m.from_line_length == 0 ||
        m.from_line_length > extent_len) {
      return bad("message " + std::to_string(i + 1) + " out of bounds");
    }
    m.separator = pos;
    m.content = pos + content_off;
    m.extent_end = pos + extent_len;
    m.end = m.extent_end - end_back;
    m.unquote = (flags & flag_unquote) != 0;
    m.dated_separator = (flags & flag_dated) != 0;
    m.ends_with_blank_line = (flags & flag_ends_blank) != 0;
    m.uidl_collided = (flags & flag_collided) != 0;
    if ((flags & flag_hex_uidl) != 0) {
      std::string_view raw;
      if (!r.bytes(raw_uidl_size, raw)) {
        return bad("truncated UIDL");
      }
      m.uidl.clear();
      append_hex(m.uidl, {reinterpret_cast<const unsigned char*>(raw.data()), raw_uidl_size});
    } else {
      std::uint64_t len = 0;
      std::string_view text;
      if (!r.varint(len) || len == 0 || len > 70 || !r.bytes(static_cast<std::size_t>(len), text) ||
          !is_legal_uidl(text) || is_lower_hex_uidl(text)) {
        return bad("bad UIDL");
      }
      m.uidl.assign(text);
    }
    pos = m.extent_end;
  }
  if (pos != c.scan.scanned_size) {
    return bad("messages do not reach the scanned size");
  }
  std::uint64_t length = 0;
  if (!r.u64(length) || length != bytes.size() || r.left() != 0) {
    return bad("wrong length trailer");
  }
  return c;
}

std::optional<index_contents> load_index(int dir_fd, const side_files& names) {
  const int fd =
      ::openat(dir_fd, names.index.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    return std::nullopt;
  }
  const unique_fd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() ||
      (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 || st.st_size <= 0 ||
      static_cast<std::uint64_t>(st.st_size) > max_index_bytes) {
    return std::nullopt;
  }
  std::string data(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return std::nullopt;
    }
    got += static_cast<std::size_t>(n);
  }
  auto decoded = decode_index(data);
  if (!decoded.ok()) {
    return std::nullopt;
  }
  return std::move(*decoded);
}

result<void> save_index(int dir_fd, const side_files& names, const index_contents& c,
                        const uidl_source& uidl_of) {
  auto bytes = encode_index(c, uidl_of);
  if (!bytes.ok()) {
    return std::move(bytes).err();
  }
  if (::unlinkat(dir_fd, names.index_new.c_str(), 0) != 0 && errno != ENOENT) {
    const int err = errno;
    return error::from_errno(err, "mbox index: remove " + names.index_new);
  }
  const int fd = ::openat(dir_fd, names.index_new.c_str(),
                          O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, index_mode);
  if (fd < 0) {
    const int err = errno;
    return error::from_errno(err, "mbox index: create " + names.index_new);
  }
  unique_fd owned(fd);
  std::string_view left = *bytes;
  while (!left.empty()) {
    const ssize_t n = ::write(fd, left.data(), left.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      ::unlinkat(dir_fd, names.index_new.c_str(), 0);
      return error::from_errno(err, "mbox index: write " + names.index_new);
    }
    left.remove_prefix(static_cast<std::size_t>(n));
  }
  owned.reset();
  if (::renameat(dir_fd, names.index_new.c_str(), dir_fd, names.index.c_str()) != 0) {
    const int err = errno;
    ::unlinkat(dir_fd, names.index_new.c_str(), 0);
    return error::from_errno(err, "mbox index: rename " + names.index_new);
  }
  return ok_result();
}

result<void> remove_index(int dir_fd, const side_files& names) {
  if (::unlinkat(dir_fd, names.index.c_str(), 0) != 0 && errno != ENOENT) {
    const int err = errno;
    return error::from_errno(err, "mbox index: remove " + names.index);
  }
  return ok_result();
}

}  // namespace postern::store::mbox
