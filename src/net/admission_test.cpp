#include "net/admission.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace postern::net {
namespace {

using namespace std::chrono_literals;

asio::ip::address addr(const char* text) { return asio::ip::make_address(text); }

TEST(Admission, CountsUntilTheSessionEnds) {
  source_limits limits(2, 1);
  admission_policy p{&limits};
  counted_connection a, b, c;
  EXPECT_FALSE(admit(p, addr("192.0.2.1"), a));
  EXPECT_EQ(admit(p, addr("192.0.2.1"), b), refusal_reason::max_connections_per_ip);
  EXPECT_FALSE(admit(p, addr("192.0.2.2"), b));
  EXPECT_EQ(admit(p, addr("192.0.2.3"), c), refusal_reason::max_connections);
  EXPECT_EQ(limits.active(), 2u);
  a.reset();
  EXPECT_EQ(limits.active(), 1u);
  EXPECT_FALSE(admit(p, addr("192.0.2.1"), a));
}

TEST(Admission, ForkModeNamesItsTotalMaxChildren) {
  source_limits limits(1, 0);
  admission_policy p{&limits, true};
  counted_connection a, b;
  EXPECT_FALSE(admit(p, addr("192.0.2.1"), a));
  EXPECT_EQ(admit(p, addr("192.0.2.2"), b), refusal_reason::max_children);
}

TEST(Admission, PacerAndAclRefusalsReleaseTheCount) {
  source_limits limits(0, 0);
  connection_pacer pacer(1h);
  auto list = acl::parse({"deny 198.51.100.0/24", "allow any"});
  ASSERT_TRUE(list.ok());
  admission_policy p{&limits, false, &pacer, &*list};
  counted_connection a, b, c;
  EXPECT_FALSE(admit(p, addr("192.0.2.1"), a));
  EXPECT_EQ(admit(p, addr("192.0.2.1"), b), refusal_reason::min_connection_interval);
  EXPECT_EQ(admit(p, addr("198.51.100.7"), c), refusal_reason::acl);
  EXPECT_EQ(limits.active(), 1u);
}

TEST(Admission, NothingConfiguredAdmitsEverything) {
  admission_policy p;
  counted_connection a;
  EXPECT_FALSE(admit(p, addr("2001:db8::1"), a));
  EXPECT_FALSE(admit_wrappers(p, addr("2001:db8::1")));
}

TEST(Admission, RefusalRepliesAndNames) {
  EXPECT_EQ(reason_name(refusal_reason::proxy_untrusted), "proxy_untrusted");
  EXPECT_EQ(reason_name(refusal_reason::max_connections_per_ip), "max_connections_per_ip");
  EXPECT_TRUE(refusal_reply(refusal_reason::proxy_untrusted).empty());
  EXPECT_TRUE(refusal_reply(refusal_reason::proxy_header).empty());
  EXPECT_EQ(refusal_reply(refusal_reason::acl), "-ERR [SYS/PERM] Access denied.\r\n");
  EXPECT_EQ(refusal_reply(refusal_reason::max_connections),
            "-ERR [SYS/TEMP] Too many connections, try again later.\r\n");
}

// The PROXY step on a descriptor: a socket pair stands in for the front end's connection.
struct proxy_pair {
  proxy_pair() { EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0); }
  ~proxy_pair() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
  void send(const std::string& s) {
    ASSERT_EQ(::write(fds[1], s.data(), s.size()), static_cast<ssize_t>(s.size()));
  }
  int fds[2] = {-1, -1};
};

TEST(ProxyStep, TrustedHeaderNamesTheClient) {
  proxy_pair pp;
  pp.send("PROXY TCP4 192.0.2.7 127.0.0.1 4000 110\r\nUSER x\r\n");
  auto trusted = std::vector<network>{*parse_network("127.0.0.0/8")};
  auto origin = proxy_step(pp.fds[0], addr("127.0.0.1"), trusted);
  ASSERT_TRUE(origin.has_value());
  EXPECT_EQ(origin->address, addr("192.0.2.7"));
  EXPECT_FALSE(origin->client_tls);
  char rest[16] = {};
  // MSG_DONTWAIT: a step that read too much fails here instead of blocking the test.
  EXPECT_EQ(::recv(pp.fds[0], rest, sizeof rest, MSG_DONTWAIT),
            8);  // the client's bytes stay unread
  EXPECT_STREQ(rest, "USER x\r\n");
}

TEST(ProxyStep, UntrustedPeerIsRefusedUnread) {
  proxy_pair pp;
  pp.send("PROXY TCP4 192.0.2.7 127.0.0.1 4000 110\r\n");
  auto trusted = std::vector<network>{*parse_network("10.0.0.0/8")};
  EXPECT_FALSE(proxy_step(pp.fds[0], addr("127.0.0.1"), trusted).has_value());
  char buf[64];
  EXPECT_EQ(::recv(pp.fds[0], buf, sizeof buf, MSG_DONTWAIT), 41);  // nothing was read from it
}

TEST(ProxyStep, LocalKeepsThePeer) {
  proxy_pair pp;
  std::string local("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16);
  pp.send(local);
  auto trusted = std::vector<network>{*parse_network("127.0.0.1")};
  auto origin = proxy_step(pp.fds[0], addr("127.0.0.1"), trusted);
  ASSERT_TRUE(origin.has_value());
  EXPECT_EQ(origin->address, addr("127.0.0.1"));
}

TEST(ProxyStep, MalformedHeaderIsRefused) {
  proxy_pair pp;
  pp.send("PROXY TCP4 1.2.3.999 127.0.0.1 1 2\r\n");
  auto trusted = std::vector<network>{*parse_network("127.0.0.1")};
  EXPECT_FALSE(proxy_step(pp.fds[0], addr("127.0.0.1"), trusted).has_value());
}

}  // namespace
}  // namespace postern::net
