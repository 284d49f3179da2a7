#include "common/encoding.hpp"

#include "common/digest.hpp"
#include "common/line_ends.hpp"
#include "common/read_file.hpp"
#include "common/test_files.hpp"
#include "common/unique_fd.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>

#include <array>
#include <string>

namespace postern {
namespace {

TEST(encoding, ascii_case_leaves_other_bytes_alone) {
  EXPECT_EQ(ascii_to_upper("scram-sha-1 \xe9z"), "SCRAM-SHA-1 \xe9Z");
  EXPECT_EQ(ascii_to_lower("Content-LENGTH \xc9"), "content-length \xc9");
  EXPECT_TRUE(ascii_iequals("Message-ID", "message-id"));
  EXPECT_FALSE(ascii_iequals("Message-ID", "message-i"));
  EXPECT_FALSE(ascii_iequals("\xe9", "\xc9"));  // no locale: only ASCII letters fold
}

TEST(encoding, hex_round_trip) {
  EXPECT_EQ(hex_encode(std::string("\x00\x0f\xa5\xff", 4)), "000fa5ff");
  std::array<unsigned char, 4> out{};
  EXPECT_TRUE(decode_hex_digest("000FA5ff", out));
  EXPECT_EQ(out, (std::array<unsigned char, 4>{0x00, 0x0f, 0xa5, 0xff}));
}

TEST(encoding, hex_digest_refuses_wrong_length_and_digits_and_zeroes) {
  std::array<unsigned char, 2> out{};
  for (const char* bad : {"", "abc", "abcde", "abcg", "ab c", "+bcd"}) {
    out.fill(0x77);
    EXPECT_FALSE(decode_hex_digest(bad, out)) << bad;
    EXPECT_EQ(out, (std::array<unsigned char, 2>{0, 0})) << bad;
  }
}

TEST(digest, sha1_hex_is_the_uidl_digest) {
  auto h = sha1_hex("abc");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, "a9993e364706816aba3e25717850c26c9cd0d89d");  // FIPS 180-2 example
}

TEST(line_ends, wire_octets_of_whole_messages) {
  EXPECT_EQ(message_wire_octets(""), 0u);
  EXPECT_EQ(message_wire_octets("a\n"), 3u);
  EXPECT_EQ(message_wire_octets("a\r\n"), 3u);
  EXPECT_EQ(message_wire_octets("a"), 3u);
  EXPECT_EQ(message_wire_octets("a\r"), 3u);
  EXPECT_EQ(message_wire_octets("\n\n"), 4u);
}

TEST(read_file, pread_full_and_upto) {
  test::temp_dir dir("postern-pread");
  const std::string path = dir.path() + "/f";
  test::write_file(path, "0123456789");
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  std::array<char, 4> buf{};
  ASSERT_TRUE(pread_full(fd.get(), buf.data(), 4, 3, "t", "f").ok());
  EXPECT_EQ(std::string(buf.data(), 4), "3456");
  auto got = pread_upto(fd.get(), buf.data(), 4, 8, "t", "f");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, 2u);
  auto shrank = pread_full(fd.get(), buf.data(), 4, 8, "t", "f");
  ASSERT_FALSE(shrank.ok());
  EXPECT_EQ(shrank.err().code(), errc::temporary);
  EXPECT_NE(shrank.err().message().find("t: f shrank"), std::string::npos);
}

}  // namespace
}  // namespace postern
