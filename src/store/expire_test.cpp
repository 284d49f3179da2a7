#include "store/expire.hpp"

#include <gtest/gtest.h>
#include "common/test_files.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace postern::store {
namespace {

namespace fs = std::filesystem;

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-expire") {}
};
using test::read_file;

TEST(expire_policy, flags_and_capability) {
  EXPECT_FALSE((expire_policy{-1, true}).stamps());
  EXPECT_FALSE((expire_policy{-1, true}).deletes());
  EXPECT_TRUE((expire_policy{0, false}).stamps());
  EXPECT_TRUE((expire_policy{0, false}).deletes());  // expire 0 implies delete-expired
  EXPECT_TRUE((expire_policy{5, false}).stamps());
  EXPECT_FALSE((expire_policy{5, false}).deletes());
  EXPECT_TRUE((expire_policy{5, true}).deletes());
  EXPECT_EQ(expire_capability({-1, false}), "EXPIRE NEVER");
  EXPECT_EQ(expire_capability({0, false}), "EXPIRE 0");
  EXPECT_EQ(expire_capability({30, true}), "EXPIRE 30");
}

TEST(is_expired, table) {
  struct row {
    std::int64_t stamp, now;
    std::int32_t days;
    bool expired;
  };
  const std::int64_t day = 86400;
  const std::vector<row> rows = {
      {1000, 1000, 0, true},  // expire 0: every stamped message
      {5000, 1000, 0, true},  // even one stamped "in the future"
      {1000, 1000 + day - 1, 1, false},
      {1000, 1000 + day, 1, true},  // exactly n days
      {1000, 1000 + 30 * day, 30, true},
      {1000, 1000 + 30 * day - 1, 30, false},
      {5000, 1000, 3, false},                // future stamp (clock skew): not expired
      {1000, 1000 + 1000 * day, -1, false},  // NEVER
  };
  for (const auto& r : rows) {
    EXPECT_EQ(is_expired(r.stamp, r.now, r.days), r.expired)
        << r.stamp << " " << r.now << " " << r.days;
  }
}

TEST(parse_expire_timestamp, table) {
  EXPECT_EQ(parse_expire_timestamp("1700000000"), 1700000000);
  EXPECT_EQ(parse_expire_timestamp(" 1700000000 \r\n"), 1700000000);
  EXPECT_EQ(parse_expire_timestamp("\t42"), 42);
  for (const char* bad :
       {"", " ", "-5", "+5", "12a", "1.5", "1 2", "99999999999999999999", "18446744073709551615"}) {
    EXPECT_FALSE(parse_expire_timestamp(bad).has_value()) << bad;
  }
}

TEST(side_file_path, maildir_and_mbox) {
  EXPECT_EQ(side_file_path(store_kind::maildir, "/home/a/Maildir", "postern-expire"),
            "/home/a/Maildir/postern-expire");
  EXPECT_EQ(side_file_path(store_kind::maildir, "/home/a/Maildir/", "postern-expire"),
            "/home/a/Maildir/postern-expire");
  EXPECT_EQ(side_file_path(store_kind::mbox, "/var/mail/alice", "postern-expire"),
            "/var/mail/.alice.postern-expire");
  EXPECT_EQ(side_file_path(store_kind::mbox, "/home/a/mbox", "postern-uidlist"),
            "/home/a/.mbox.postern-uidlist");
}

TEST(stamp_file, parse_skips_malformed_lines_and_formats_sorted) {
  auto f = stamp_file::parse("b 200\na 100\nbroken\n 5\nc -1\nd 12x\ne 300", "/x");
  EXPECT_EQ(f.size(), 3u);
  EXPECT_EQ(f.get("a"), 100);
  EXPECT_EQ(f.get("b"), 200);
  EXPECT_EQ(f.get("e"), 300);
  EXPECT_FALSE(f.get("c").has_value());
  EXPECT_TRUE(f.changed());  // the malformed lines go at the next save
  EXPECT_EQ(f.format(), "a 100\nb 200\ne 300\n");
  auto clean = stamp_file::parse("a 1\n", "/x");
  EXPECT_FALSE(clean.changed());
  clean.set("a", 1);
  EXPECT_FALSE(clean.changed());
  clean.set("a", 2);
  EXPECT_TRUE(clean.changed());
}

TEST(stamp_file, load_save_roundtrip_atomic_and_private) {
  temp_dir t;
  const std::string path = t / "postern-expire";
  auto f = stamp_file::load(path);
  ASSERT_TRUE(f.ok()) << f.err().message();
  EXPECT_EQ(f->size(), 0u);
  ASSERT_TRUE(f->save().ok());
  EXPECT_FALSE(fs::exists(path));  // nothing changed: nothing written
  f->set("1700000001.M1P1.host", 1700000100);
  f->set("other", 5);
  ASSERT_TRUE(f->save().ok());
  EXPECT_EQ(read_file(path), "1700000001.M1P1.host 1700000100\nother 5\n");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temporary file left behind.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(t.path())) {
    names.push_back(e.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"postern-expire"});

  auto again = stamp_file::load(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get("other"), 5);
  again->retain_if([](const std::string& u) { return u != "other"; });
  ASSERT_TRUE(again->save().ok());
  EXPECT_EQ(read_file(path), "1700000001.M1P1.host 1700000100\n");
  again->erase("1700000001.M1P1.host");
  ASSERT_TRUE(again->save().ok());
  EXPECT_FALSE(fs::exists(path));  // empty: removed
}

TEST(stamp_file, unreadable_file_is_an_error_not_an_empty_set) {
  temp_dir t;
  fs::create_directory(t / "postern-expire");  // a directory where the file should be
  auto f = stamp_file::load(t / "postern-expire");
  EXPECT_FALSE(f.ok());
}

TEST(replace_side_file, failure_leaves_the_old_file) {
  temp_dir t;
  const std::string path = t / "side";
  ASSERT_TRUE(replace_side_file(path, "old\n").ok());
  // The directory becomes read-only: the temporary file cannot be created (unless root,
  // who ignores modes; then only check the success path).
  ::chmod(t.path().c_str(), 0500);
  auto r = replace_side_file(path, "new\n");
  ::chmod(t.path().c_str(), 0700);
  if (::geteuid() != 0) {
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(read_file(path), "old\n");
  }
  ASSERT_TRUE(replace_side_file(path, "new\n").ok());
  EXPECT_EQ(read_file(path), "new\n");
}

TEST(read_side_file, missing_regular_and_too_big) {
  temp_dir t;
  auto missing = read_side_file(t / "nope");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(replace_side_file(t / "f", std::string(100, 'x')).ok());
  auto small = read_side_file(t / "f");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->value().size(), 100u);
  auto big = read_side_file(t / "f", 10);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.err().code(), errc::invalid);
  ::symlink((t / "f").c_str(), (t / "link").c_str());
  EXPECT_FALSE(read_side_file(t / "link").ok());  // never follows a symlink
}

}  // namespace
}  // namespace postern::store
