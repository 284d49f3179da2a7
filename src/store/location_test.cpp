#include "store/location.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace postern::store {
namespace {

using namespace std::literals;

struct parse_row {
  std::string_view spec;
  bool ok;
  store_kind kind = store_kind::maildir;
  std::string_view path = {};
};

TEST(parse_location, table) {
  const std::vector<parse_row> rows = {
      {"maildir:~/Maildir", true, store_kind::maildir, "~/Maildir"},
      {"maildir:~", true, store_kind::maildir, "~"},
      {"mbox:/var/mail/%u", true, store_kind::mbox, "/var/mail/%u"},
      {"maildir:/srv/mail/%d/%n/Maildir", true, store_kind::maildir, "/srv/mail/%d/%n/Maildir"},
      {"maildir:%h/Maildir", true, store_kind::maildir, "%h/Maildir"},
      {"maildir:/srv/100%%/%u", true, store_kind::maildir, "/srv/100%%/%u"},
      {"maildir:/srv/a::b/%u", true, store_kind::maildir, "/srv/a:b/%u"},
      {"maildir:~/Maildir:INDEX=/var/index/%u", true, store_kind::maildir, "~/Maildir"},
      {"maildir:~/Maildir:INDEX=MEMORY:CONTROL=/var/control/%u", true, store_kind::maildir,
       "~/Maildir"},
      {"maildir:~/Maildir:LAYOUT=fs", true, store_kind::maildir, "~/Maildir"},
      {"maildir:~/Maildir:LAYOUT=maildir++", true, store_kind::maildir, "~/Maildir"},
      {"maildir:~/Maildir:VOLATILEDIR=/tmp/v/%u:INDEXPVT=/p", true, store_kind::maildir,
       "~/Maildir"},
      {"maildir:/srv/a..b/%u", true, store_kind::maildir, "/srv/a..b/%u"},

      {"", false},
      {"maildir", false},
      {"maildir:", false},
      {"MAILDIR:~/Maildir", false},
      {"Maildir:~/Maildir", false},
      {"mdbox:~/mdbox", false},
      {"~/Maildir", false},
      {"maildir:Maildir", false},          // relative
      {"maildir:%u/Maildir", false},       // relative after expansion
      {"maildir::INDEX=x", false},         // "::" is a literal ':': relative path
      {"maildir:~/Maildir:", false},       // empty parameter
      {"maildir:~/Maildir:INDEX", false},  // not KEY=VALUE
      {"maildir:~/Maildir:INBOX=/var/mail/%u", false},
      {"maildir:~/Maildir:LAYOUT=index", false},
      {"maildir:~/Maildir:FOO=bar", false},
      {"maildir:~/Maildir:index=/x", false},  // keys are upper case
      {"maildir:~/Maildir:INDEX=/x\n", false},
      {"maildir:/srv/%x", false},
      {"maildir:/srv/%U", false},
      {"maildir:/srv/%{user}", false},
      {"maildir:/srv/%Lu", false},
      {"maildir:/srv/%", false},
      {"maildir:~bob/Maildir", false},
      {"maildir:/srv/~/Maildir", false},
      {"maildir:/srv/../etc", false},
      {"maildir:/srv/./x", false},
      {"maildir:/srv/..", false},
      {"maildir:~/..", false},
      {"maildir:/srv/\x01x", false},
      {"maildir:/srv/\x7fx", false},
      {"maildir:/srv/a\nb", false},
      {"maildir:/srv/a\0b"sv, false},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(std::string(row.spec));
    auto r = parse_location(row.spec);
    ASSERT_EQ(r.ok(), row.ok) << (r.ok() ? "" : r.err().message());
    if (row.ok) {
      EXPECT_EQ(r->kind, row.kind);
      EXPECT_EQ(r->path, row.path);
    } else {
      EXPECT_EQ(r.err().code(), errc::invalid);
      EXPECT_FALSE(r.err().context().empty());
    }
  }
}

TEST(parse_location, index_memory_keeps_no_index) {
  auto plain = parse_location("maildir:~/Maildir:INDEX=/var/index/%u");
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->keep_index);
  auto memory = parse_location("mbox:/var/mail/%u:INDEX=MEMORY");
  ASSERT_TRUE(memory.ok());
  EXPECT_FALSE(memory->keep_index);
  EXPECT_EQ(memory->path, "/var/mail/%u");
  auto other = parse_location("maildir:~/Maildir:CONTROL=MEMORY");
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->keep_index);
}

// Every hostile name, also used below to check that expansion refuses them on its own.
const std::vector<std::string_view>& hostile_names() {
  static const std::vector<std::string_view> names = {
      ""sv,      "."sv,      ".."sv,      "/"sv,        "a/b"sv,     "../x"sv,     "x/.."sv,
      "/etc"sv,  "a\0b"sv,   "\0"sv,      "a\nb"sv,     "a\rb"sv,    "a\tb"sv,     "\x1b[0m"sv,
      "a\x7f"sv, "\x01"sv,   "@x.org"sv,  "@"sv,        ".@x.org"sv, "..@x.org"sv, "bob@"sv,
      "bob@."sv, "bob@.."sv, "bob@a/b"sv, "bob@../x"sv, "../@x"sv,   "bob@x\n"sv,  "bob\0@x.org"sv,
  };
  return names;
}

TEST(is_safe_user_name, refuses_hostile_names) {
  for (std::string_view name : hostile_names()) {
    SCOPED_TRACE(testing::PrintToString(std::string(name)));
    EXPECT_FALSE(is_safe_user_name(name));
  }
  EXPECT_FALSE(is_safe_user_name(std::string(256, 'a')));
  EXPECT_FALSE(is_safe_user_name(std::string(250, 'a') + "@x/.."));
}

TEST(is_safe_user_name, accepts_ordinary_names) {
  const std::vector<std::string_view> names = {
      "bob",
      "bob@example.com",
      "bob.smith@example.com",
      "a..b",
      "..a",
      "a..",
      "...",
      "bob@a..b",
      "bob@...",
      "a@b@c",
      "bob+tag@x.org",
      "o'neil",
      "\xc3\xbc"
      "ser@x.org",
      "bob@x.",
      "-bob",
  };
  for (std::string_view name : names) {
    SCOPED_TRACE(std::string(name));
    EXPECT_TRUE(is_safe_user_name(name));
  }
  EXPECT_TRUE(is_safe_user_name(std::string(255, 'a')));
}

struct expand_row {
  std::string_view path;
  std::string_view user;
  std::string_view home;
  bool ok;
  std::string_view want = {};
};

TEST(expand_location, table) {
  const std::vector<expand_row> rows = {
      {"~/Maildir", "bob", "/home/bob", true, "/home/bob/Maildir"},
      {"~", "bob", "/home/bob", true, "/home/bob"},
      {"%h/Maildir", "bob", "/home/bob", true, "/home/bob/Maildir"},
      {"/srv/mail/%d/%n/Maildir", "bob@example.com", "", true, "/srv/mail/example.com/bob/Maildir"},
      {"/srv/mail/%d/%n", "bob", "", true, "/srv/mail//bob"},
      {"/srv/mail/%u", "bob@example.com", "", true, "/srv/mail/bob@example.com"},
      {"/srv/mail/%d/%n", "a@b@c", "", true, "/srv/mail/b@c/a"},
      {"/srv/100%%/%u", "bob", "", true, "/srv/100%/bob"},
      {"/srv/%u/%%u", "bob", "", true, "/srv/bob/%u"},
      {"/srv/%u", "a..b", "", true, "/srv/a..b"},
      {"/srv/%u", "%n", "", true, "/srv/%n"},  // values are never expanded again
      {"/srv/.%n", "x", "", true, "/srv/.x"},

      {"~/Maildir", "bob", "", false},
      {"~", "bob", "", false},
      {"%h/Maildir", "bob", "", false},
      {"~/Maildir", "bob", "home/bob", false},  // not absolute
      {"~/Maildir", "bob", "/home/../etc", false},
      {"~/Maildir", "bob", "/home/./bob", false},
      {"~/Maildir", "bob", "/home/bob/..", false},
      {"~/Maildir", "bob", "/home/bob\n", false},
      {"~/Maildir", "bob", "/home/b\0b"sv, false},
      {"~bob/Maildir", "bob", "/home/bob", false},
      {"/srv/%x", "bob", "", false},
      {"/srv/%", "bob", "", false},
      {"%u/Maildir", "bob", "", false},  // not absolute
      {"/srv/%n/%d", "bob@x", "", true, "/srv/bob/x"},
  };
  for (const auto& row : rows) {
    SCOPED_TRACE(testing::PrintToString(std::string(row.path) + " | " + std::string(row.user) +
                                        " | " + std::string(row.home)));
    const location_template loc{store_kind::maildir, std::string(row.path)};
    auto r = expand_location(loc, expand_input{row.user, row.home});
    ASSERT_EQ(r.ok(), row.ok) << (r.ok() ? *r : r.err().message());
    if (row.ok) {
      EXPECT_EQ(*r, row.want);
    } else {
      EXPECT_EQ(r.err().code(), errc::invalid);
    }
  }
}

TEST(expand_location, refuses_every_hostile_name_itself) {
  // expand_location must not rely on the caller having checked the name.
  const std::vector<std::string_view> templates = {"/srv/mail/%u", "/srv/mail/%d/%n",
                                                   "/srv/mail/%n", "~/%u/Maildir"};
  for (std::string_view t : templates) {
    const location_template loc{store_kind::maildir, std::string(t)};
    for (std::string_view name : hostile_names()) {
      SCOPED_TRACE(testing::PrintToString(std::string(t) + " " + std::string(name)));
      auto r = expand_location(loc, expand_input{name, "/home/x"});
      ASSERT_FALSE(r.ok()) << *r;
      EXPECT_EQ(r.err().code(), errc::invalid);
    }
  }
}

TEST(expand_location, parsed_templates_expand) {
  auto loc = parse_location("maildir:/srv/a::b/%d/%n:INDEX=/var/idx/%u");
  ASSERT_TRUE(loc.ok()) << loc.err().message();
  auto r = expand_location(*loc, expand_input{"bob@x.org", ""});
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(*r, "/srv/a:b/x.org/bob");
}

}  // namespace
TEST(location_root, the_part_before_the_user) {
  struct row {
    std::string_view path;
    std::string_view want;
  };
  const row rows[] = {
      {"~/Maildir", "/home/bob"},
      {"%h/Maildir", "/home/bob"},
      {"~/mail/%u/Maildir", "/home/bob/mail"},
      {"/srv/mail/%d/%n/Maildir", "/srv/mail"},
      {"/srv/mail/x%n/Maildir", "/srv/mail"},
      {"/srv/%%/%u", "/srv/%"},
      {"/%u/Maildir", "/"},
      {"/srv/shared/Maildir", "/srv/shared"},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.path));
    location_template loc;
    loc.path = std::string(r.path);
    auto root = location_root(loc, expand_input{"bob@x.org", "/home/bob"});
    ASSERT_TRUE(root.ok()) << root.err().message();
    EXPECT_EQ(*root, r.want);
    auto full = expand_location(loc, expand_input{"bob@x.org", "/home/bob"});
    ASSERT_TRUE(full.ok());
    EXPECT_TRUE(full->starts_with(*root)) << *full;
  }
}

}  // namespace postern::store
