#include "pop3/dot_encoder.hpp"
#include "common/line_ends.hpp"
#include "common/test_files.hpp"

#include <gtest/gtest.h>

#include <vector>

#include <string>

namespace postern::pop3 {
namespace {

std::string encode(const std::string& msg, std::optional<std::uint64_t> lines, std::size_t chunk) {
  dot_encoder enc(lines);
  std::string out;
  for (std::size_t pos = 0; pos < msg.size(); pos += chunk) {
    if (!enc.encode(std::string_view(msg).substr(pos, chunk), out)) {
      break;
    }
  }
  enc.finish(out);
  return out;
}

struct encoder_case {
  std::string name;
  std::string msg;
  std::optional<std::uint64_t> lines;
  std::string expected;
};

class dot_encoder_table : public ::testing::TestWithParam<encoder_case> {};

TEST_P(dot_encoder_table, every_chunk_size) {
  const auto& c = GetParam();
  for (std::size_t chunk : {1, 2, 3, 7, 64, 100000}) {
    EXPECT_EQ(encode(c.msg, c.lines, chunk), c.expected) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(
    cases, dot_encoder_table,
    ::testing::Values(
        encoder_case{"lf_to_crlf", "A: b\n\nbody\n", std::nullopt, "A: b\r\n\r\nbody\r\n.\r\n"},
        encoder_case{"crlf_kept", "A: b\r\n\r\nbody\r\n", std::nullopt,
                     "A: b\r\n\r\nbody\r\n.\r\n"},
        encoder_case{"dot_stuffing", "A: b\n\n.\n..x\n.y\nz.\n", std::nullopt,
                     "A: b\r\n\r\n..\r\n...x\r\n..y\r\nz.\r\n.\r\n"},
        encoder_case{"no_final_newline", "A: b\n\nlast", std::nullopt, "A: b\r\n\r\nlast\r\n.\r\n"},
        encoder_case{"empty_message", "", std::nullopt, ".\r\n"},
        encoder_case{"bare_cr_kept", "A\rB\n", std::nullopt, "A\rB\r\n.\r\n"},
        encoder_case{"top_zero", "A: b\nC: d\n\nl1\nl2\n", 0, "A: b\r\nC: d\r\n\r\n.\r\n"},
        encoder_case{"top_one", "A: b\r\n\r\nl1\r\nl2\r\n", 1, "A: b\r\n\r\nl1\r\n.\r\n"},
        encoder_case{"top_more_than_body", "A: b\n\nl1\n", 5, "A: b\r\n\r\nl1\r\n.\r\n"},
        encoder_case{"top_headers_only", "A: b\nC: d\n", 3, "A: b\r\nC: d\r\n.\r\n"},
        encoder_case{"top_dot_lines", "A: b\n\n.x\n.y\n", 1, "A: b\r\n\r\n..x\r\n.\r\n"},
        encoder_case{"top_unterminated", "A: b\n\nl1", 1, "A: b\r\n\r\nl1\r\n.\r\n"}),
    [](const auto& param_info) { return param_info.param.name; });

TEST(count_wire_octets, matches_encoder_for_all_chunkings) {
  const std::string msg = "a\nb\r\nc\r\r\n\n.d\ne";
  for (std::size_t chunk : {1, 2, 3, 100}) {
    bool prev_cr = false;
    std::uint64_t total = 0;
    for (std::size_t pos = 0; pos < msg.size(); pos += chunk) {
      total += count_wire_octets(std::string_view(msg).substr(pos, chunk), prev_cr);
    }
    // a\r\n b\r\n c\r\r\n \r\n .d\r\n e  = 3+3+4+2+4+1
    EXPECT_EQ(total, 17u) << chunk;
  }
}

// Boundaries that used to be easy to get wrong when a chunk ends in the middle of a line ending
// or just before a line that starts with '.'.
TEST(dot_encoder, chunk_boundaries) {
  struct split_case {
    std::string first, second, expected;
  };
  const split_case cases[] = {
      {"a\r", "\nb\n", "a\r\nb\r\n.\r\n"},   // CR ends a chunk, its LF starts the next
      {"a\r", "b\n", "a\rb\r\n.\r\n"},       // a bare CR at the end of a chunk
      {"a\n", ".b\n", "a\r\n..b\r\n.\r\n"},  // '.' right after a chunk boundary
      {"a\n.", "b\n", "a\r\n..b\r\n.\r\n"},  // '.' the last byte of a chunk
      {"a\n.", ".\n", "a\r\n...\r\n.\r\n"},  // ".." split in two
      {"a", "\n", "a\r\n.\r\n"},             // LF alone in a chunk
      {"\n", "\n", "\r\n\r\n.\r\n"},         // empty lines
      {".", "", "..\r\n.\r\n"},              // a lone '.' with no newline
      {"a\r", "", "a\r\n.\r\n"},             // ends in a bare CR
      {"ab", "c", "abc\r\n.\r\n"},           // unterminated across chunks
  };
  for (const auto& c : cases) {
    dot_encoder enc;
    std::string out;
    enc.encode(c.first, out);
    enc.encode(c.second, out);
    enc.finish(out);
    EXPECT_EQ(out, c.expected) << "first=" << c.first << " second=" << c.second;
  }
}

TEST(dot_encoder, encode_to_stays_within_max_size) {
  // The worst cases for growth: every line "." or empty with bare LF.
  for (const std::string& msg :
       {std::string(1000, '\n'), std::string(".\n.\n.\n.\n"), std::string("\n.\n..")}) {
    dot_encoder enc;
    std::string out(dot_encoder::max_encoded_size(msg.size()) + dot_encoder::max_finish_size, '#');
    std::size_t n = enc.encode_to(msg, out.data());
    EXPECT_LE(n, dot_encoder::max_encoded_size(msg.size()));
    n += enc.finish_to(out.data() + n);
    EXPECT_LE(n, out.size());
    EXPECT_EQ(out.substr(0, n), encode(msg, std::nullopt, 100000));
  }
  EXPECT_EQ(encode(std::string(3, '\n'), std::nullopt, 1), "\r\n\r\n\r\n.\r\n");
  EXPECT_EQ(encode(".\n.\n", std::nullopt, 1), "..\r\n..\r\n.\r\n");
}

// The stores list message_wire_octets() as a message's size (their tests pin that side): the
// encoder must send exactly that many octets, plus the stuffing dots and ".CRLF".
TEST(dot_encoder, sends_message_wire_octets) {
  const std::vector<std::string> bodies = test::line_end_samples();
  for (const std::string& msg : bodies) {
    const std::string out = encode(msg, std::nullopt, 7);
    std::size_t stuffed = 0;
    for (std::size_t i = 0; i + 1 < out.size(); ++i) {
      if ((i == 0 || out[i - 1] == '\n') && out[i] == '.' && out[i + 1] == '.') {
        ++stuffed;
      }
    }
    EXPECT_EQ(out.size() - 3 - stuffed, message_wire_octets(msg)) << msg.size();
  }
  EXPECT_EQ(message_wire_octets(std::string(32, 'x') + "y"), 35u);
}

// A pseudo-random message through every chunking gives what the one-chunk encoding gives, and
// its RETR body is exactly message_wire_octets() plus the stuffing dots.
TEST(dot_encoder, random_messages_every_chunking) {
  std::uint32_t seed = 12345;
  auto next = [&] {
    seed = seed * 1103515245u + 12345u;
    return (seed >> 16) & 0x7fff;
  };
  const char alphabet[] = {'a', '.', '\r', '\n', ' ', '\n', 'x', '.'};
  for (int round = 0; round < 50; ++round) {
    std::string msg;
    const std::size_t len = next() % 300;
    for (std::size_t i = 0; i < len; ++i) {
      msg.push_back(alphabet[next() % sizeof alphabet]);
    }
    const std::string whole = encode(msg, std::nullopt, msg.size() + 1);
    for (std::size_t chunk : {1, 2, 3, 5, 17}) {
      EXPECT_EQ(encode(msg, std::nullopt, chunk), whole) << round << "/" << chunk;
    }
    const std::uint64_t octets = message_wire_octets(msg);
    // Undo the stuffing: every line of the body that starts with ".." lost one '.'.
    std::size_t stuffed = 0;
    for (std::size_t i = 0; i + 1 < whole.size(); ++i) {
      if ((i == 0 || whole[i - 1] == '\n') && whole[i] == '.' && whole[i + 1] == '.') {
        ++stuffed;
      }
    }
    EXPECT_EQ(whole.size() - 3 - stuffed, octets) << round;
  }
}

// An independent byte-at-a-time RETR encoder, the oracle for the block-wise one.
std::string reference_retr(const std::string& msg) {
  std::string out;
  bool line_start = true;
  char prev = 0;
  for (char c : msg) {
    if (line_start && c == '.') {
      out.push_back('.');
    }
    line_start = false;
    if (c == '\n') {
      if (prev != '\r') {
        out.push_back('\r');
      }
      line_start = true;
    }
    out.push_back(c);
    prev = c;
  }
  if (!line_start) {
    if (prev != '\r') {
      out.push_back('\r');
    }
    out.push_back('\n');
  }
  return out + ".\r\n";
}

TEST(dot_encoder, long_lines_match_reference_for_every_chunking) {
  std::uint32_t seed = 777;
  auto next = [&] {
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
  };
  for (int round = 0; round < 40; ++round) {
    std::string msg;
    const std::size_t lines = next() % 40;
    for (std::size_t i = 0; i < lines; ++i) {
      const std::size_t len = next() % 70;
      for (std::size_t j = 0; j < len; ++j) {
        const unsigned r = next() % 20;
        msg.push_back(r == 0 ? '.' : r == 1 ? '\r' : static_cast<char>('a' + r));
      }
      if (next() % 3 == 0) {
        msg.push_back('\r');
      }
      if (next() % 5 != 0) {
        msg.push_back('\n');
      }
      if (next() % 4 == 0) {
        msg.push_back('.');
      }
    }
    const std::string expected = reference_retr(msg);
    for (std::size_t chunk : {1, 2, 15, 16, 17, 31, 32, 33, 64, 100000}) {
      EXPECT_EQ(encode(msg, std::nullopt, chunk), expected) << round << "/" << chunk;
    }
  }
  // Blocks of exactly 16 with the LF in every position, and a '.' right after it.
  for (std::size_t at = 0; at < 16; ++at) {
    std::string msg(40, 'x');
    msg[at] = '\n';
    msg[at + 1] = '.';
    msg[16 + at] = '\n';
    if (at > 0) {
      msg[at - 1] = '\r';
    }
    for (std::size_t chunk : {1, 16, 17, 100}) {
      EXPECT_EQ(encode(msg, std::nullopt, chunk), reference_retr(msg)) << at << "/" << chunk;
    }
  }
}

}  // namespace
}  // namespace postern::pop3
