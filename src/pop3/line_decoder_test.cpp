#include "pop3/line_decoder.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace postern::pop3 {
namespace {

// Feeds `input` whole or one byte at a time and records what the decoder reports.
std::vector<std::string> decode_all(const std::string& input, std::size_t max_line, bool bytewise) {
  line_decoder d;
  std::vector<std::string> events;
  std::string buf;
  std::size_t fed = 0;
  while (true) {
    auto r = d.decode(buf, max_line);
    if (r.st == line_decoder::status::need_more) {
      buf.erase(0, r.consumed);
      if (fed == input.size()) {
        break;
      }
      std::size_t n = bytewise ? 1 : input.size() - fed;
      buf.append(input, fed, n);
      fed += n;
      continue;
    }
    switch (r.st) {
      case line_decoder::status::line:
        events.push_back("L:" + std::string(r.line));
        break;
      case line_decoder::status::too_long:
        events.push_back("TOO_LONG");
        break;
      case line_decoder::status::invalid:
        events.push_back("INVALID");
        break;
      default:
        break;
    }
    buf.erase(0, r.consumed);
  }
  EXPECT_LE(buf.size(), max_line);
  return events;
}

struct decoder_case {
  std::string name;
  std::string input;
  std::size_t max_line;
  std::vector<std::string> expected;
};

class line_decoder_table : public ::testing::TestWithParam<decoder_case> {};

TEST_P(line_decoder_table, whole_and_bytewise) {
  const auto& c = GetParam();
  EXPECT_EQ(decode_all(c.input, c.max_line, false), c.expected);
  EXPECT_EQ(decode_all(c.input, c.max_line, true), c.expected);
}

INSTANTIATE_TEST_SUITE_P(
    cases, line_decoder_table,
    ::testing::Values(
        decoder_case{"crlf", "STAT\r\nNOOP\r\n", 255, {"L:STAT", "L:NOOP"}},
        decoder_case{"bare_lf", "STAT\nNOOP\n", 255, {"L:STAT", "L:NOOP"}},
        decoder_case{"incomplete", "STAT\r\nNOO", 255, {"L:STAT"}},
        decoder_case{"empty_line", "\r\n", 255, {"L:"}},
        decoder_case{"inner_cr_kept", "A\rB\r\n", 255, {"L:A\rB"}},
        decoder_case{"nul", std::string("US\0ER\r\nNOOP\r\n", 13), 255, {"INVALID", "L:NOOP"}},
        decoder_case{"exact_limit", std::string(8, 'a') + "\r\n", 10, {"L:aaaaaaaa"}},
        decoder_case{"one_over", std::string(9, 'a') + "\r\n", 10, {"TOO_LONG"}},
        decoder_case{
            "long_then_ok", std::string(1000, 'x') + "\r\nNOOP\r\n", 10, {"TOO_LONG", "L:NOOP"}},
        decoder_case{"long_unterminated", std::string(1000, 'x'), 10, {}}),
    [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace postern::pop3
