#include "common/log.hpp"

#include <gtest/gtest.h>

#include <string>

namespace postern::log {
namespace {

TEST(LogSafe, PlainNamesStayReadable) {
  EXPECT_EQ(safe("alice@example.org"), "alice@example.org");
  EXPECT_EQ(safe("bob.smith-1_2+tag"), "bob.smith-1_2+tag");
}

TEST(LogSafe, FieldPunctuationCannotEndTheField) {
  EXPECT_EQ(safe("x>, method=PASS, rip=6.6.6.6, session=<y"),
            "x\\x3e\\x2c\\x20method\\x3dPASS\\x2c\\x20rip\\x3d6.6.6.6\\x2c\\x20session\\x3d\\x3cy");
  EXPECT_EQ(safe("a\\b\"c'd"), "a\\x5cb\\x22c\\x27d");
}

TEST(LogSafe, ControlAndNonAsciiBytesAreEscaped) {
  EXPECT_EQ(safe("a\r\nb"), "a\\x0d\\x0ab");
  EXPECT_EQ(safe(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(safe("\x7f\xc3\xa9"), "\\x7f\\xc3\\xa9");
  EXPECT_EQ(safe("a\tb"), "a\\x09b");
}

TEST(LogSafe, OutputIsBounded) {
  std::string out = safe(std::string(10000, '>'));
  EXPECT_LE(out.size(), 256u + 4u + 3u);
  EXPECT_EQ(out.substr(out.size() - 3), "...");
  EXPECT_EQ(safe(std::string(256, 'a')), std::string(256, 'a'));
  EXPECT_EQ(safe(std::string(257, 'a')), std::string(256, 'a') + "...");
}

}  // namespace
}  // namespace postern::log
