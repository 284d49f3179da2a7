#include "net/acl.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace postern::net {
namespace {

asio::ip::address ip(const char* s) { return asio::ip::make_address(s); }

TEST(acl, empty_list_allows_everyone) {
  auto a = acl::parse({});
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->allows(ip("127.0.0.1")));
  EXPECT_TRUE(a->allows(ip("::1")));
  EXPECT_FALSE(a->matching_rule(ip("10.0.0.1")).has_value());
}

TEST(acl, first_match_wins_and_no_match_allows) {
  struct row {
    std::vector<std::string> rules;
    const char* client;
    bool allowed;
  };
  const std::vector<row> rows = {
      {{"deny 127.0.0.1", "allow any"}, "127.0.0.1", false},
      {{"deny 127.0.0.1", "allow any"}, "127.0.0.2", true},
      {{"allow 127.0.0.1", "deny any"}, "127.0.0.1", true},
      {{"allow 127.0.0.1", "deny any"}, "10.1.2.3", false},
      {{"deny 10.0.0.0/8"}, "10.200.1.1", false},
      {{"deny 10.0.0.0/8"}, "11.0.0.1", true},          // no match: allowed
      {{"deny 10.0.0.0/8"}, "::ffff:10.0.0.1", false},  // IPv4-mapped counts as IPv4
      {{"deny 2001:db8::/32", "allow any"}, "2001:db8::5", false},
      {{"deny 2001:db8::/32", "allow any"}, "2001:db9::5", true},
      {{"deny 2001:db8::/32"}, "10.0.0.1", true},                     // families never match across
      {{"allow 192.0.2.0/24", "deny 192.0.2.7"}, "192.0.2.7", true},  // order matters
      {{"deny 192.0.2.7", "allow 192.0.2.0/24"}, "192.0.2.7", false},
      {{"deny any"}, "::1", false},
      {{"DENY ANY"}, "::1", false},                    // case-insensitive words
      {{"  deny\t 127.0.0.1  "}, "127.0.0.1", false},  // blanks are separators
  };
  for (const auto& r : rows) {
    auto a = acl::parse(r.rules);
    ASSERT_TRUE(a.ok()) << r.rules[0];
    EXPECT_EQ(a->allows(ip(r.client)), r.allowed) << r.rules[0] << " for " << r.client;
  }
}

TEST(acl, refuses_bad_rules) {
  for (const char* bad :
       {"", "deny", "allow", "permit 10.0.0.0/8", "deny 10.0.0.1/8", "deny localhost",
        "deny 10.0.0.0/8 extra", "deny 10/8", "deny *", "deny 300.1.1.1", "allow anyone"}) {
    auto a = acl::parse({"allow any", bad});
    ASSERT_FALSE(a.ok()) << bad;
    EXPECT_EQ(a.err().code(), errc::invalid);
    EXPECT_NE(a.err().context().find("rule 2"), std::string::npos) << a.err().context();
  }
}

TEST(acl, matching_rule_and_text_for_logs) {
  auto a = acl::parse({"allow 10.0.0.0/8", "deny 127.0.0.1", "allow any"});
  ASSERT_TRUE(a.ok());
  auto i = a->matching_rule(ip("127.0.0.1"));
  ASSERT_TRUE(i.has_value());
  EXPECT_EQ(*i, 1u);
  EXPECT_EQ(to_string(a->rules()[*i]), "deny 127.0.0.1/32");
  EXPECT_EQ(to_string(a->rules()[0]), "allow 10.0.0.0/8");
  EXPECT_EQ(to_string(a->rules()[2]), "allow any");
}

}  // namespace
}  // namespace postern::net
