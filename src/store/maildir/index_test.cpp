#include "store/maildir/index.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::maildir {
namespace {

using namespace std::literals;

constexpr std::size_t trailer_size = 8 + 8 + 8;

index_contents sample() {
  index_contents c;
  c.new_dir = dir_stamp{1, 2, 4096, fs_time{1700000000, 5}, fs_time{1700000001, 999999999}};
  c.cur_dir = dir_stamp{1, 3, 8192, fs_time{1700000002, 0}, fs_time{1700000003, 7}};
  c.listed_at = fs_time{1700000004, 123456789};
  c.records = {
      index_record{"1700000000.M1P2.host:2,S", 1934, 77, false, 1900, fs_time{1700000005, 42},
                   true},
      index_record{"1700000001.M2P2.host", 0, 78, true},
      index_record{std::string_view("x"), max_index_wire_size, ~std::uint64_t{0}, false},
  };
  return c;
}

// Recomputes the trailer after a test edits the body, so the edit reaches the field checks
// instead of stopping at the checksum.
std::string reseal(std::string body) {
  const std::uint64_t sum = index_checksum(body);
  const std::uint64_t n = body.size();
  std::string out = std::move(body);
  for (const std::uint64_t v : {n, sum}) {
    for (int i = 0; i < 8; ++i) {
      out += static_cast<char>(static_cast<unsigned char>(v >> (8 * i)));
    }
  }
  out += "PSTNEND1";
  return out;
}

std::string body_of(const std::string& file) { return file.substr(0, file.size() - trailer_size); }

constexpr std::size_t header_size = 8 + 4 + 4 + 2 * 56 + 16 + 8;

TEST(maildir_index, round_trip) {
  const index_contents c = sample();
  const std::string bytes = encode_index(c);
  const auto d = decode_index(bytes);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->new_dir, c.new_dir);
  EXPECT_EQ(d->cur_dir, c.cur_dir);
  EXPECT_EQ(d->listed_at, c.listed_at);
  ASSERT_EQ(d->records.size(), c.records.size());
  for (std::size_t i = 0; i < c.records.size(); ++i) {
    EXPECT_EQ(d->records[i].name, c.records[i].name);
    EXPECT_EQ(d->records[i].wire_size, c.records[i].wire_size);
    EXPECT_EQ(d->records[i].ino, c.records[i].ino);
    EXPECT_EQ(d->records[i].in_new, c.records[i].in_new);
    EXPECT_EQ(d->records[i].stat_known, c.records[i].stat_known);
    EXPECT_EQ(d->records[i].file_size, c.records[i].file_size);
    EXPECT_EQ(d->records[i].ctime, c.records[i].ctime);
  }
}

TEST(maildir_index, empty_listing_round_trips) {
  index_contents c;
  const auto d = decode_index(encode_index(c));
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->records.empty());
}

TEST(maildir_index, every_truncation_is_rejected) {
  const std::string bytes = encode_index(sample());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(n);
    EXPECT_FALSE(decode_index(std::string_view(bytes).substr(0, n)));
  }
}

TEST(maildir_index, appended_bytes_are_rejected) {
  const std::string bytes = encode_index(sample());
  EXPECT_FALSE(decode_index(bytes + "x"));
  EXPECT_FALSE(decode_index(bytes + bytes));
}

TEST(maildir_index, every_single_bit_flip_is_rejected) {
  const std::string bytes = encode_index(sample());
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      ASSERT_FALSE(decode_index(bad)) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(maildir_index, zeroed_file_is_rejected) {
  const std::string bytes = encode_index(sample());
  EXPECT_FALSE(decode_index(std::string(bytes.size(), '\0')));
  EXPECT_FALSE(decode_index(""));
}

// Bodies with a valid checksum but hostile contents: each must be rejected by the field
// checks themselves.
TEST(maildir_index, hostile_fields_with_a_valid_checksum) {
  const std::string good = body_of(encode_index(sample()));
  const std::size_t count_at = header_size - 8;
  // Records: wire size, ino, file size, ctime sec, ctime ns (u32), flags, name length, name.
  const std::size_t rec0 = header_size;
  const std::size_t rec1 = rec0 + 39 + std::string_view("1700000000.M1P2.host:2,S").size();
  const std::size_t rec2 = rec1 + 39 + std::string_view("1700000001.M2P2.host").size();
  struct edit {
    std::string_view what;
    std::size_t at;
    std::string bytes;
  };
  const std::vector<edit> edits = {
      {"magic", 0, "PSTNIDX2"},
      {"version 1 (no file size and ctime)", 8, "\x01\0\0\0"s},
      {"reserved", 12, "\x01\0\0\0"s},
      {"mtime nanoseconds out of range", 16 + 24 + 8, "\x00\xCA\x9A\x3B\0\0\0\0"s},  // 1e9
      {"count larger than the file", count_at, "\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x7F"s},
      {"count one too many", count_at, "\x04\0\0\0\0\0\0\0"s},
      {"count one too few", count_at, "\x02\0\0\0\0\0\0\0"s},
      {"size above the limit", rec0, "\x01\0\0\0\0\0\x01\0"s},
      {"unknown flag bit", rec0 + 36, "\x04"s},
      {"file size above the wire size", rec0 + 16, "\xFF\xFF\0\0\0\0\0\0"s},
      {"ctime nanoseconds out of range", rec0 + 32, "\x00\xCA\x9A\x3B"s},
      {"file size without the known flag", rec2 + 16, "\x01"s},
      {"ctime without the known flag", rec1 + 24, "\x01"s},
      {"name length zero", rec0 + 37, "\0\0"s},
      {"name length past the end", rec0 + 37, "\xFF\xFF"s},
      {"name with a slash", rec0 + 39, "../x"s},
      {"name starting with a dot", rec0 + 39, "."s},
      {"name with NUL", rec0 + 39 + 3, "\0"s},
  };
  for (const auto& e : edits) {
    SCOPED_TRACE(std::string(e.what));
    std::string body = good;
    ASSERT_LE(e.at + e.bytes.size(), body.size());
    body.replace(e.at, e.bytes.size(), e.bytes);
    EXPECT_FALSE(decode_index(reseal(body)));
  }
  EXPECT_TRUE(decode_index(reseal(good)));  // the resealing itself is sound
}

TEST(maildir_index, wrong_body_length_in_trailer) {
  std::string bytes = encode_index(sample());
  const std::size_t at = bytes.size() - trailer_size;
  bytes[at] = static_cast<char>(bytes[at] + 1);
  EXPECT_FALSE(decode_index(bytes));
}

TEST(maildir_index, name_limits) {
  index_contents c;
  const std::string longest(max_index_name_size, 'a');
  c.records = {index_record{longest, 1, 1, false}};
  ASSERT_TRUE(decode_index(encode_index(c)));
  const std::string too_long(max_index_name_size + 1, 'a');
  c.records = {index_record{too_long, 1, 1, false}};
  EXPECT_FALSE(decode_index(encode_index(c)));
}

TEST(maildir_index, checksum_is_xxh64) {
  // Reference values of XXH64 with seed 0.
  EXPECT_EQ(index_checksum(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(index_checksum("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(index_checksum("abc"), 0x44BC2CF5AD770999ULL);
  // Lengths that take every path: stripes, 8-byte, 4-byte and 1-byte tails.
  const std::string text = "Nobody inspects the spammish repetition";
  EXPECT_EQ(index_checksum(text), 0xFBCEA83C8A378BF1ULL);
}

TEST(maildir_index, visitor_can_stop_the_decoding) {
  const std::string bytes = encode_index(sample());
  index_contents head;
  int seen = 0;
  EXPECT_FALSE(decode_index(bytes, head, [&seen](const index_record&) { return ++seen < 2; }));
  EXPECT_EQ(seen, 2);
  seen = 0;
  EXPECT_TRUE(decode_index(bytes, head, [&seen](const index_record&) { return ++seen > 0; }));
  EXPECT_EQ(seen, 3);
  EXPECT_TRUE(head.records.empty());
  EXPECT_EQ(head.listed_at, sample().listed_at);
}

TEST(maildir_index, fs_time_order) {
  EXPECT_LT((fs_time{1, 5}), (fs_time{1, 6}));
  EXPECT_LT((fs_time{1, 999999999}), (fs_time{2, 0}));
  EXPECT_FALSE((fs_time{2, 0}) < (fs_time{2, 0}));
}

}  // namespace
}  // namespace postern::store::maildir
