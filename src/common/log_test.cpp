#include "common/log.hpp"

#include <gtest/gtest.h>

#include <string>

namespace postern::log {
namespace {

TEST(LogClient, PlainNamesStayReadable) {
  EXPECT_EQ(client("alice@example.org"), "alice@example.org");
  EXPECT_EQ(client("bob.smith-1_2+tag"), "bob.smith-1_2+tag");
}

TEST(LogClient, FieldPunctuationCannotEndTheField) {
  EXPECT_EQ(client("x>, method=PASS, rip=6.6.6.6, session=<y"),
            "x\\x3e\\x2c\\x20method\\x3dPASS\\x2c\\x20rip\\x3d6.6.6.6\\x2c\\x20session\\x3d\\x3cy");
  EXPECT_EQ(client("a\\b\"c'd"), "a\\x5cb\\x22c\\x27d");
}

TEST(LogClient, ControlAndNonAsciiBytesAreEscaped) {
  EXPECT_EQ(client("a\r\nb"), "a\\x0d\\x0ab");
  EXPECT_EQ(client(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(client("\x7f\xc3\xa9"), "\\x7f\\xc3\\xa9");
  EXPECT_EQ(client("a\tb"), "a\\x09b");
}

TEST(LogClient, OutputIsBounded) {
  std::string out = client(std::string(10000, '>'));
  EXPECT_LE(out.size(), 256u + 4u + 3u);
  EXPECT_EQ(out.substr(out.size() - 3), "...");
  EXPECT_EQ(client(std::string(256, 'a')), std::string(256, 'a'));
  EXPECT_EQ(client(std::string(257, 'a')), std::string(256, 'a') + "...");
}

TEST(LogSafe, LocalTextKeepsSpacesAndPunctuation) {
  EXPECT_EQ(safe("/var/mail/my box, <x>=1"), "/var/mail/my box, <x>=1");
  EXPECT_EQ(safe("a\nb\\c\xff"), "a\\x0ab\\x5cc\\xff");
}

}  // namespace
}  // namespace postern::log
