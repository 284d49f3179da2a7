#include "store/maildir/index.hpp"

#include <xxhash.h>

#include <bit>

namespace postern::store::maildir {

namespace {

constexpr std::string_view head_magic = "PSTNIDX1";
constexpr std::string_view tail_magic = "PSTNEND1";
constexpr std::uint32_t format_version = 2;
constexpr std::size_t digest_size = 8;  // XXH64
constexpr std::size_t stamp_size = 7 * 8;
constexpr std::size_t header_size = 8 + 4 + 4 + 2 * stamp_size + 16 + 8;
constexpr std::size_t record_fixed_size = 8 + 8 + 8 + 8 + 4 + 1 + 2;
constexpr std::uint8_t flag_new = 1;
constexpr std::uint8_t flag_stat = 2;
constexpr std::size_t trailer_size = 8 + digest_size + 8;
constexpr std::int64_t ns_per_sec = 1'000'000'000;

std::uint64_t load_u64(const unsigned char* p) noexcept {
  return static_cast<std::uint64_t>(p[0]) | static_cast<std::uint64_t>(p[1]) << 8 |
         static_cast<std::uint64_t>(p[2]) << 16 | static_cast<std::uint64_t>(p[3]) << 24 |
         static_cast<std::uint64_t>(p[4]) << 32 | static_cast<std::uint64_t>(p[5]) << 40 |
         static_cast<std::uint64_t>(p[6]) << 48 | static_cast<std::uint64_t>(p[7]) << 56;
}

}  // namespace

// XXH64 with seed 0, from libxxhash: the trailer only has to catch torn or damaged files
// (the parser checks every field anyway), so a fast non-cryptographic digest is enough.
std::uint64_t index_checksum(std::string_view data) noexcept {
  return XXH64(data.data(), data.size(), 0);
}

namespace {

void put_u64(std::string& out, std::uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<char>(static_cast<unsigned char>(v >> (8 * i)));
  }
  out.append(b, sizeof b);
}

void put_u32(std::string& out, std::uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) {
    b[i] = static_cast<char>(static_cast<unsigned char>(v >> (8 * i)));
  }
  out.append(b, sizeof b);
}

void put_u16(std::string& out, std::uint16_t v) {
  out += static_cast<char>(static_cast<unsigned char>(v));
  out += static_cast<char>(static_cast<unsigned char>(v >> 8));
}

void put_time(std::string& out, const fs_time& t) {
  put_u64(out, static_cast<std::uint64_t>(t.sec));
  put_u64(out, static_cast<std::uint64_t>(t.nsec));
}

void put_stamp(std::string& out, const dir_stamp& s) {
  put_u64(out, s.dev);
  put_u64(out, s.ino);
  put_u64(out, s.size);
  put_time(out, s.mtime);
  put_time(out, s.ctime);
}

// Bounds-checked little-endian reader over the body; every get fails once past the end.
class cursor {
 public:
  explicit cursor(std::string_view s) noexcept : s_(s) {}

  std::size_t remaining() const noexcept { return s_.size() - pos_; }
  std::size_t pos() const noexcept { return pos_; }

  bool get_u64(std::uint64_t& v) noexcept {
    if (remaining() < 8) {
      return false;
    }
    v = load_u64(reinterpret_cast<const unsigned char*>(s_.data()) + pos_);
    pos_ += 8;
    return true;
  }

  bool get_u32(std::uint32_t& v) noexcept {
    if (remaining() < 4) {
      return false;
    }
    v = 0;
    for (int i = 3; i >= 0; --i) {
      v = (v << 8) | static_cast<unsigned char>(s_[pos_ + static_cast<std::size_t>(i)]);
    }
    pos_ += 4;
    return true;
  }

  bool get_u16(std::uint16_t& v) noexcept {
    if (remaining() < 2) {
      return false;
    }
    v = static_cast<std::uint16_t>(static_cast<unsigned char>(s_[pos_]) |
                                   (static_cast<unsigned char>(s_[pos_ + 1]) << 8));
    pos_ += 2;
    return true;
  }

  bool get_u8(std::uint8_t& v) noexcept {
    if (remaining() < 1) {
      return false;
    }
    v = static_cast<unsigned char>(s_[pos_]);
    ++pos_;
    return true;
  }

  bool get_bytes(std::size_t n, std::string_view& v) noexcept {
    if (remaining() < n) {
      return false;
    }
    v = s_.substr(pos_, n);
    pos_ += n;
    return true;
  }

  bool get_time(fs_time& t) noexcept {
    std::uint64_t sec = 0;
    std::uint64_t nsec = 0;
    if (!get_u64(sec) || !get_u64(nsec) || nsec >= static_cast<std::uint64_t>(ns_per_sec)) {
      return false;
    }
    t.sec = static_cast<std::int64_t>(sec);
    t.nsec = static_cast<std::int64_t>(nsec);
    return true;
  }

  bool get_stamp(dir_stamp& s) noexcept {
    return get_u64(s.dev) && get_u64(s.ino) && get_u64(s.size) && get_time(s.mtime) &&
           get_time(s.ctime);
  }

 private:
  std::string_view s_;
  std::size_t pos_ = 0;
};

bool is_valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > max_index_name_size || name.front() == '.') {
    return false;
  }
  return name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

}  // namespace

std::string encode_index(const index_contents& c) {
  std::size_t size = header_size + trailer_size;
  for (const auto& r : c.records) {
    size += record_fixed_size + r.name.size();
  }
  std::string out;
  out.reserve(size);
  out.append(head_magic);
  put_u32(out, format_version);
  put_u32(out, 0);
  put_stamp(out, c.new_dir);
  put_stamp(out, c.cur_dir);
  put_time(out, c.listed_at);
  put_u64(out, c.records.size());
  for (const auto& r : c.records) {
    put_u64(out, r.wire_size);
    put_u64(out, r.ino);
    put_u64(out, r.stat_known ? r.file_size : 0);
    put_u64(out, static_cast<std::uint64_t>(r.stat_known ? r.ctime.sec : 0));
    put_u32(out, static_cast<std::uint32_t>(r.stat_known ? r.ctime.nsec : 0));
    out += static_cast<char>((r.in_new ? flag_new : 0) | (r.stat_known ? flag_stat : 0));
    put_u16(out, static_cast<std::uint16_t>(r.name.size()));
    out.append(r.name);
  }
  const std::size_t body = out.size();
  const std::uint64_t sum = index_checksum(out);
  put_u64(out, body);
  put_u64(out, sum);
  out.append(tail_magic);
  return out;
}

bool decode_index(std::string_view bytes, index_contents& head,
                  const std::function<bool(const index_record&)>& visit) {
  head.records.clear();
  if (bytes.size() < header_size + trailer_size) {
    return false;
  }
  const std::size_t body_size = bytes.size() - trailer_size;
  const std::string_view body = bytes.substr(0, body_size);
  {
    cursor t(bytes.substr(body_size));
    std::uint64_t recorded_body = 0;
    std::uint64_t recorded_sum = 0;
    std::string_view magic;
    if (!t.get_u64(recorded_body) || recorded_body != body_size || !t.get_u64(recorded_sum) ||
        !t.get_bytes(tail_magic.size(), magic) || magic != tail_magic ||
        index_checksum(body) != recorded_sum) {
      return false;
    }
  }

  cursor c(body);
  std::string_view magic;
  std::uint32_t version = 0;
  std::uint32_t reserved = 0;
  std::uint64_t count = 0;
  if (!c.get_bytes(head_magic.size(), magic) || magic != head_magic || !c.get_u32(version) ||
      version != format_version || !c.get_u32(reserved) || reserved != 0 ||
      !c.get_stamp(head.new_dir) || !c.get_stamp(head.cur_dir) || !c.get_time(head.listed_at) ||
      !c.get_u64(count)) {
    return false;
  }
  // Every record takes at least record_fixed_size + 1 octets: a count the rest of the body
  // cannot hold is rejected before anything is allocated for it.
  if (count > c.remaining() / (record_fixed_size + 1)) {
    return false;
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    index_record r;
    std::uint8_t flags = 0;
    std::uint16_t name_size = 0;
    std::uint64_t ctime_sec = 0;
    std::uint32_t ctime_nsec = 0;
    if (!c.get_u64(r.wire_size) || r.wire_size > max_index_wire_size || !c.get_u64(r.ino) ||
        !c.get_u64(r.file_size) || r.file_size > r.wire_size || !c.get_u64(ctime_sec) ||
        !c.get_u32(ctime_nsec) || ctime_nsec >= static_cast<std::uint64_t>(ns_per_sec) ||
        !c.get_u8(flags) || (flags & ~(flag_new | flag_stat)) != 0 || !c.get_u16(name_size) ||
        !c.get_bytes(name_size, r.name) || !is_valid_name(r.name)) {
      return false;
    }
    r.in_new = (flags & flag_new) != 0;
    r.stat_known = (flags & flag_stat) != 0;
    r.ctime = fs_time{static_cast<std::int64_t>(ctime_sec), static_cast<std::int64_t>(ctime_nsec)};
    if (!r.stat_known && (r.file_size != 0 || ctime_sec != 0 || ctime_nsec != 0)) {
      return false;
    }
    if (!visit(r)) {
      return false;
    }
  }
  return c.remaining() == 0;
}

std::optional<index_contents> decode_index(std::string_view bytes) {
  index_contents out;
  std::vector<index_record> records;
  if (!decode_index(bytes, out, [&records](const index_record& r) {
        records.push_back(r);
        return true;
      })) {
    return std::nullopt;
  }
  out.records = std::move(records);
  return out;
}

}  // namespace postern::store::maildir
