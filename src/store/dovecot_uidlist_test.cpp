#include "store/dovecot_uidlist.hpp"

#include "common/test_files.hpp"
#include "store/decorated_maildrop.hpp"
#include "store/maildir/maildir.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <string>
#include <vector>

namespace postern::store {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::read_file;
using test::write_file;

std::string hostname() {
  std::array<char, 256> b{};
  ::gethostname(b.data(), b.size() - 1);
  return b.data();
}

void set_age(const std::string& path, int seconds) {
  struct timeval tv[2];
  tv[0].tv_sec = tv[1].tv_sec = ::time(nullptr) - seconds;
  tv[0].tv_usec = tv[1].tv_usec = 0;
  ASSERT_EQ(::utimes(path.c_str(), tv), 0);
}

// ---------------------------------------------------------------------------------------
// The file

TEST(parse_dovecot_uidlist, keeps_every_field_for_the_rewrite) {
  const std::string text =
      "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1 Xsomething\n"
      "7 W123 GABC :1655390418.M1P2.host,S=3734:2,S\n"
      "9 Pmigrated :1700000003.M3P1.host\n";
  auto l = parse_dovecot_uidlist(text);
  ASSERT_TRUE(l.ok()) << l.err().message();
  EXPECT_EQ(l->uidvalidity, 1275660208u);
  EXPECT_EQ(l->next_uid, 25022u);
  ASSERT_EQ(l->records.size(), 2u);
  EXPECT_EQ(l->records[0].key, "1655390418.M1P2.host,S=3734");
  EXPECT_EQ(l->records[0].guid, "ABC");
  EXPECT_EQ(l->records[1].pop3_uidl, "migrated");
  EXPECT_EQ(format_uidlist(*l), text);
}

TEST(parse_dovecot_uidlist, refuses_what_dovecot_would_call_broken) {
  const char* bad[] = {
      "",                              // empty
      "3 V1 N5\n2 :a\n",               // fine apart from ... (control below)
      "3 V1 N5\n2 :a",                 // last line cut short
      "3 V0 N5\n",                     // uidvalidity 0
      "3 V1 N5 Gnothex\n",             // bad mailbox GUID
      "3 V1 N5\n2 :a\n2 :b\n",         // UIDs not ordered
      "3 V1 N5\n3 :a\n2 :b\n",         // UIDs not ordered
      "3 V1 N5\n0 :a\n",               // UID 0
      "3 V1 N5\nx :a\n",               // not a number
      "3 V1 N5\n2 a\n",                // no ':'
      "3 V1 N5\n2 g1 :a\n",            // field key not A-Z
      "3 V1 N5\n2 :a/b\n",             // a '/' in the name
      "3 V1 N5\n2 :a:2,S\n3 :a:2,\n",  // one base name twice
      "3 V1 N5\n\n",                   // empty line
      "1 5 3\n3 a\n",                  // version 1: UID >= next uid
      "4 V1 N5\n",                     // unknown version
  };
  for (std::size_t i = 0; i < std::size(bad); ++i) {
    auto l = parse_dovecot_uidlist(bad[i]);
    if (i == 1) {
      EXPECT_TRUE(l.ok());
      continue;
    }
    ASSERT_FALSE(l.ok()) << i << ": " << bad[i];
    EXPECT_EQ(l.err().code(), errc::permanent);
  }
}

TEST(extend_uidlist, numbers_as_dovecot_and_keeps_free_old_numbers) {
  auto l = parse_dovecot_uidlist("3 V7 N3\n1 :a\n2 :b\n");
  ASSERT_TRUE(l.ok());
  uidlist old;
  old.records.push_back(uidlist_record{2, "c"});   // taken by b: c gets a new UID
  old.records.push_back(uidlist_record{10, "d"});  // free: kept
  auto added = extend_uidlist(*l, {"a", "c", "b", "d", "e"}, &old);
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(*added, 3u);
  EXPECT_EQ(format_uidlist(*l), "3 V7 N12\n1 :a\n2 :b\n3 :c\n10 :d\n11 :e\n");
}

// ---------------------------------------------------------------------------------------
// The lock and the session

class dovecot_fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    box_ = dir_ / "Maildir";
    for (const char* sub : {"", "/cur", "/new", "/tmp"}) {
      fs::create_directories(box_ + sub);
    }
  }
  void store(const std::string& name) {
    write_file(box_ + "/new/" + name, "Subject: " + name + "\n\nbody\n");
  }
  decoration_options opts(const std::string& format) {
    decoration_options o;
    o.kind = store_kind::maildir;
    o.path = box_;
    o.uidl_format = format;
    o.dovecot_lock_timeout = 200ms;
    o.clock = [] { return std::chrono::system_clock::time_point(1700000000s); };
    return o;
  }
  result<std::unique_ptr<decorated_maildrop>> open(decoration_options o) {
    auto m = maildir::open(box_);
    EXPECT_TRUE(m.ok());
    return decorated_maildrop::wrap(std::move(m).value(), std::move(o));
  }
  std::string lock_path() const { return box_ + "/dovecot-uidlist.lock"; }

  test::temp_dir dir_{"postern-dovecot"};
  std::string box_;
};

TEST_F(dovecot_fixture, new_messages_are_numbered_in_dovecot_uidlist) {
  write_file(box_ + "/dovecot-uidlist",
             "3 V1700000000 N3 G3085f01b7f11094c501100008c4a11c1\n1 :1.M1.h\n2 :2.M2.h\n");
  store("1.M1.h");
  store("2.M2.h");
  store("3.M3.h");
  store("4.M4.h");
  auto d = open(opts("%08Xu%08Xv"));
  ASSERT_TRUE(d.ok()) << d.err().message();
  ASSERT_EQ((*d)->messages().size(), 4u);
  EXPECT_EQ((*d)->messages()[2].uidl, "000000036553f100");
  EXPECT_EQ((*d)->messages()[3].uidl, "000000046553f100");
  EXPECT_EQ(read_file(box_ + "/dovecot-uidlist"),
            "3 V1700000000 N5 G3085f01b7f11094c501100008c4a11c1\n1 :1.M1.h\n2 :2.M2.h\n"
            "3 :3.M3.h\n4 :4.M4.h\n");
  EXPECT_FALSE(fs::exists(lock_path()));  // released after the update
  EXPECT_FALSE(fs::exists(box_ + "/postern-uidlist"));
}

TEST_F(dovecot_fixture, a_missing_list_is_created_with_a_guid) {
  store("1.M1.h");
  auto d = open(opts("%u.%v"));
  ASSERT_TRUE(d.ok()) << d.err().message();
  EXPECT_EQ((*d)->messages()[0].uidl, "1.1700000000");
  auto text = read_file(box_ + "/dovecot-uidlist");
  auto l = parse_dovecot_uidlist(text);
  ASSERT_TRUE(l.ok()) << text;
  EXPECT_EQ(l->mailbox_guid.size(), 32u);
  EXPECT_EQ(l->next_uid, 2u);
}

TEST_F(dovecot_fixture, a_damaged_list_refuses_the_login_and_is_left_alone) {
  store("1.M1.h");
  const std::string damaged = "3 V1 N5\n3 :a\n2 :b\n";
  write_file(box_ + "/dovecot-uidlist", damaged);
  auto d = open(opts("%u"));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.err().code(), errc::permanent);
  EXPECT_NE(d.err().context().find("line 3"), std::string::npos) << d.err().context();
  EXPECT_EQ(read_file(box_ + "/dovecot-uidlist"), damaged);
  EXPECT_FALSE(fs::exists(lock_path()));
}

TEST_F(dovecot_fixture, a_live_holder_gives_in_use) {
  store("1.M1.h");
  write_file(lock_path(), std::to_string(::getpid()) + ":" + hostname());
  set_age(lock_path(), 600);  // old, but its process lives: never stale
  auto d = open(opts("%u"));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.err().code(), errc::in_use);
  EXPECT_TRUE(fs::exists(lock_path()));
}

TEST_F(dovecot_fixture, stale_locks_are_broken) {
  store("1.M1.h");
  pid_t child = ::fork();
  if (child == 0) {
    ::_exit(0);
  }
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);
  write_file(lock_path(), std::to_string(child) + ":" + hostname());
  set_age(lock_path(), 5);  // a dead holder, older than 2 s
  auto d = open(opts("%u"));
  ASSERT_TRUE(d.ok()) << d.err().message();
  d->reset();

  // No pid (or another host's): judged by age, the lock's and the uidlist's change times
  // (ctime included, which a test cannot set back), so a recent one is held.
  write_file(lock_path(), "");
  auto f = open(opts("%u"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.err().code(), errc::in_use);
}

TEST_F(dovecot_fixture, lock_session_holds_dovecots_pop3_lock_until_the_session_ends) {
  store("1.M1.h");
  write_file(box_ + "/dovecot-pop3-session.lock", std::to_string(::getpid()) + ":" + hostname());
  auto o0 = opts("");
  o0.dovecot_lock_session = true;
  auto held = open(o0);  // a Dovecot POP3 session (a live pid) holds it
  ASSERT_FALSE(held.ok());
  EXPECT_EQ(held.err().code(), errc::in_use);
  fs::remove(box_ + "/dovecot-pop3-session.lock");

  const std::string session_lock = box_ + "/dovecot-pop3-session.lock";
  auto o = opts("");
  o.dovecot_lock_session = true;
  ASSERT_TRUE(needs_decoration(o));
  auto d = open(o);
  ASSERT_TRUE(d.ok()) << d.err().message();
  ASSERT_TRUE(fs::exists(session_lock));
  EXPECT_EQ(read_file(session_lock), std::to_string(::getpid()) + ":" + hostname());
  auto second = lock_dovecot_pop3_session(box_, std::chrono::steady_clock::now() + 100ms);
  ASSERT_FALSE(second.ok());  // what a Dovecot POP3 login meets (same rules)
  EXPECT_EQ(second.err().code(), errc::in_use);
  d->reset();
  EXPECT_FALSE(fs::exists(session_lock));

  o.uidl_format = "%u";  // numbering takes dovecot-uidlist.lock only briefly
  auto e = open(o);
  ASSERT_TRUE(e.ok()) << e.err().message();
  EXPECT_TRUE(fs::exists(session_lock));
  EXPECT_FALSE(fs::exists(lock_path()));
  EXPECT_EQ((*e)->messages()[0].uidl, "1");
}

TEST_F(dovecot_fixture, postern_uidlist_is_migrated_and_removed) {
  // Dovecot numbered a, b and d (1-3); an earlier Postern had numbered d as 4, c as 5 and e
  // as 6 in its own file. d keeps Dovecot's UID; c and e keep Postern's, which are free.
  write_file(box_ + "/dovecot-uidlist", "3 V9 N4\n1 :1.a\n2 :2.b\n3 :4.d\n");
  write_file(box_ + "/postern-uidlist", "3 V9 N7\n4 :4.d\n5 :3.c\n6 :5.e\n");
  for (const char* n : {"1.a", "2.b", "3.c", "4.d", "5.e"}) {
    store(n);
  }
  auto d = open(opts("%u"));
  ASSERT_TRUE(d.ok()) << d.err().message();
  std::vector<std::string> uidls;
  for (const auto& m : (*d)->messages()) {
    uidls.push_back(m.uidl);
  }
  EXPECT_EQ(uidls, (std::vector<std::string>{"1", "2", "5", "3", "6"}));
  EXPECT_EQ(read_file(box_ + "/dovecot-uidlist"),
            "3 V9 N7\n1 :1.a\n2 :2.b\n3 :4.d\n5 :3.c\n6 :5.e\n");
  EXPECT_FALSE(fs::exists(box_ + "/postern-uidlist"));
}

}  // namespace
}  // namespace postern::store
