#include "pop3/dot_encoder.hpp"

#include <gtest/gtest.h>

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
        encoder_case{"crlf_kept", "A: b\r\n\r\nbody\r\n", std::nullopt, "A: b\r\n\r\nbody\r\n.\r\n"},
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

}  // namespace
}  // namespace postern::pop3
