#include "common/log.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

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

// What write() puts on stderr for `message`.
std::string written(std::string_view message) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  int saved = ::dup(STDERR_FILENO);
  ::dup2(fds[1], STDERR_FILENO);
  write(level::error, message);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  return out;
}

TEST(LogWrite, OneMessageIsOneLine) {
  std::string out = written("reason=a\r\nposternd[1]: notice: auth failed: rip=6.6.6.6\x01");
  EXPECT_EQ(out.find('\n'), out.size() - 1) << out;
  EXPECT_NE(out.find("reason=a\\x0d\\x0aposternd[1]: notice: auth failed: rip=6.6.6.6\\x01\n"),
            std::string::npos)
      << out;
  out = written("plain text, <kept> as is: caf\xc3\xa9");
  EXPECT_NE(out.find(": error: plain text, <kept> as is: caf\xc3\xa9\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace postern::log
