#include "body_scanner.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>

namespace postern::bench {
namespace {

struct expected {
  std::uint64_t octets = 0;
  std::uint64_t lines = 0;
  bool bare_lf = false;
  std::size_t consumed = 0;  // bytes up to and including the terminator
  bool done = false;
};

// The definition, one whole line at a time.
expected reference(std::string_view wire) {
  expected e;
  std::size_t pos = 0;
  while (pos < wire.size()) {
    const auto lf = wire.find('\n', pos);
    if (lf == std::string_view::npos) {
      // An unfinished last line: counted as far as it goes (after unstuffing).
      std::string_view part = wire.substr(pos);
      if (!part.empty() && part[0] == '.') {
        if (part == "." || part == ".\r") {
          return e;  // cannot tell yet
        }
        part.remove_prefix(1);
      }
      e.octets += part.size();
      return e;
    }
    std::string_view line = wire.substr(pos, lf + 1 - pos);
    pos = lf + 1;
    if (line == ".\r\n" || line == ".\n") {
      e.bare_lf = e.bare_lf || line == ".\n";
      e.consumed = pos;
      e.done = true;
      return e;
    }
    if (line[0] == '.') {
      line.remove_prefix(1);
    }
    if (line.size() < 2 || line[line.size() - 2] != '\r') {
      e.bare_lf = true;
    }
    e.octets += line.size();
    ++e.lines;
  }
  return e;
}

// Feeds `wire` in chunks of `chunk` bytes (0: random sizes from `rng`).
expected scan(std::string_view wire, std::size_t chunk, std::mt19937* rng = nullptr) {
  body_scanner s;
  expected e;
  std::size_t pos = 0;
  while (pos < wire.size() && !s.done()) {
    std::size_t n = chunk;
    if (rng != nullptr) {
      n = std::uniform_int_distribution<std::size_t>(1, 90)(*rng);
    }
    n = std::min(n, wire.size() - pos);
    const std::size_t used = s.feed(wire.data() + pos, n);
    EXPECT_LE(used, n);
    if (used < n) {
      EXPECT_TRUE(s.done());
    }
    pos += used;
  }
  e.octets = s.octets();
  e.lines = s.lines();
  e.bare_lf = s.bare_lf();
  e.done = s.done();
  e.consumed = e.done ? pos : 0;
  return e;
}

void expect_same(std::string_view wire) {
  const expected want = reference(wire);
  for (std::size_t chunk = 1; chunk <= wire.size() + 1; ++chunk) {
    const expected got = scan(wire, chunk);
    SCOPED_TRACE(testing::Message() << "chunk " << chunk << " wire \"" << wire << "\"");
    EXPECT_EQ(got.octets, want.octets);
    EXPECT_EQ(got.lines, want.lines);
    EXPECT_EQ(got.bare_lf, want.bare_lf);
    EXPECT_EQ(got.done, want.done);
    EXPECT_EQ(got.consumed, want.consumed);
  }
}

TEST(BodyScanner, PlainBodyAndTerminator) {
  expect_same("a\r\nbc\r\n.\r\n");
  const expected e = scan("a\r\nbc\r\n.\r\n+OK next", 64);
  EXPECT_TRUE(e.done);
  EXPECT_EQ(e.octets, 7u);
  EXPECT_EQ(e.lines, 2u);
  EXPECT_EQ(e.consumed, 10u);  // the next reply is left alone
  EXPECT_FALSE(e.bare_lf);
}

TEST(BodyScanner, EmptyBody) {
  expect_same(".\r\n");
  EXPECT_EQ(scan(".\r\n", 1).octets, 0u);
}

TEST(BodyScanner, DotStuffingIsUndoneAcrossEveryBoundary) {
  expect_same("..\r\n.\r\n");  // a line holding one dot
  expect_same("..a\r\n...\r\nb.\r\n.\r\n");
  expect_same(".\rx\r\n.\r\n");  // a stuffing dot before a CR that does not end the line
  expect_same(".\r\r\n.\r\n");
  const expected e = scan("..\r\n.\r\n", 1);
  EXPECT_EQ(e.octets, 3u);  // ".\r\n"
  EXPECT_EQ(e.lines, 1u);
}

TEST(BodyScanner, BareLineFeedsAreFound) {
  expect_same("a\nb\r\n.\r\n");
  expect_same("\n.\r\n");   // an empty line without CR
  expect_same("a\r\n.\n");  // a terminator without CR
  expect_same("ab\r\r\n\r\n.\r\n");
  EXPECT_TRUE(scan("a\nb\r\n.\r\n", 2).bare_lf);
  EXPECT_FALSE(scan("a\r\nb\r\n.\r\n", 1).bare_lf);
  // A CR at the end of one chunk and the LF at the start of the next is a CRLF.
  EXPECT_FALSE(scan("abc\r\n.\r\n", 4).bare_lf);
  // An LF after a chunk that ended in a byte other than CR is bare.
  EXPECT_TRUE(scan("abc\n.\r\n", 3).bare_lf);
}

TEST(BodyScanner, UnfinishedBodyIsNotDone) {
  expect_same("abc\r\n..");
  expect_same("abc\r\n.\r");
  expect_same("abc\r\nde");
}

void random_bodies(const std::string& alphabet, int max_len, int rounds) {
  std::mt19937 rng(20261122);
  for (int round = 0; round < rounds; ++round) {
    std::string wire;
    const int len = std::uniform_int_distribution<int>(0, max_len)(rng);
    for (int i = 0; i < len; ++i) {
      wire += alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
    }
    wire += "\r\n.\r\nNEXT";
    const expected want = reference(wire);
    ASSERT_TRUE(want.done);
    for (int k = 0; k < 4; ++k) {
      const expected got = scan(wire, 0, &rng);
      ASSERT_EQ(got.octets, want.octets) << wire;
      ASSERT_EQ(got.lines, want.lines) << wire;
      ASSERT_EQ(got.bare_lf, want.bare_lf) << wire;
      ASSERT_EQ(got.consumed, want.consumed) << wire;
    }
  }
}

// Bodies whose every line ends in CRLF, so a scanner that sees a bare LF where there is none
// is caught (random bytes nearly always hold a real bare LF somewhere).
void clean_random_bodies(int rounds) {
  std::mt19937 rng(1122);
  for (int round = 0; round < rounds; ++round) {
    std::string wire;
    const int lines = std::uniform_int_distribution<int>(0, 12)(rng);
    for (int l = 0; l < lines; ++l) {
      const int len = std::uniform_int_distribution<int>(0, 100)(rng);
      for (int i = 0; i < len; ++i) {
        wire += "ab.\r"[std::uniform_int_distribution<int>(0, 3)(rng)];
      }
      wire += "\r\n";
    }
    wire += ".\r\n";
    const expected want = reference(wire);
    ASSERT_FALSE(want.bare_lf);
    for (int k = 0; k < 4; ++k) {
      const expected got = scan(wire, 0, &rng);
      ASSERT_EQ(got.octets, want.octets) << wire;
      ASSERT_EQ(got.lines, want.lines) << wire;
      ASSERT_EQ(got.bare_lf, want.bare_lf) << wire;
      ASSERT_EQ(got.consumed, want.consumed) << wire;
    }
    ASSERT_FALSE(scan(wire, wire.size()).bare_lf) << wire;
  }
}

void all_random_bodies() {
  clean_random_bodies(2000);
  random_bodies("ab.\r\n", 40, 3000);           // short lines, dots and CRs everywhere
  random_bodies("abcdefghij.\r\n", 400, 1000);  // longer lines, several per chunk
  random_bodies("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.\r\n", 900,
                1000);  // lines around the 32-octet steps of the vector loop
}

TEST(BodyScanner, RandomBodiesInRandomChunks) { all_random_bodies(); }

TEST(BodyScanner, PortableLoopAgreesToo) {
  body_scanner::use_portable_for_test(true);
  all_random_bodies();
  expect_same(std::string(100, 'x') + "\r\n" + std::string(31, 'y') + "\n..z\r\n.\r\n");
  body_scanner::use_portable_for_test(false);
}

TEST(BodyScanner, LongLinesAcrossVectorSteps) {
  for (std::size_t len : {30u, 31u, 32u, 33u, 63u, 64u, 65u, 100u}) {
    const std::string line(len, 'x');
    expect_same(line + "\r\n" + line + "\n" + "." + line + "\r\n\r\n.\r\n");
    expect_same(line + "\r" + line + "\r\n.\r\n");
    expect_same(line + "\r\n" + line + "\r\n." + line + "\r\n\r\n.\r\n");
  }
}

}  // namespace
}  // namespace postern::bench
