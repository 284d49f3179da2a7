#include "server/login_stats.hpp"

#include <gtest/gtest.h>
#include "common/test_files.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace postern::server {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;
using tp = std::chrono::system_clock::time_point;

tp at(std::int64_t s) { return tp(seconds(s)); }

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-login-stats") {}
};

mode_t mode_of(const std::string& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST(login_stats, creates_directory_and_private_file) {
  temp_dir t;
  const std::string path = t / "a/b/login.sqlite";
  auto s = login_stats::open(path);
  ASSERT_TRUE(s.ok()) << s.err().message();
  EXPECT_EQ(mode_of(t / "a"), 0700u);
  EXPECT_EQ(mode_of(t / "a/b"), 0700u);
  EXPECT_EQ(mode_of(path), 0600u);
  ASSERT_TRUE((*s)->check_and_record("alice", at(1000), seconds(60)).ok());
  if (fs::exists(path + "-wal")) {
    EXPECT_EQ(mode_of(path + "-wal"), 0600u);
  }
}

TEST(login_stats, delay_is_enforced_from_the_last_successful_login) {
  temp_dir t;
  auto s = login_stats::open(t / "stats.db");
  ASSERT_TRUE(s.ok()) << s.err().message();
  auto& st = **s;
  struct row {
    const char* user;
    std::int64_t now;
    bool allowed;
  };
  const std::vector<row> rows = {
      {"alice", 1000, true},   // first login
      {"alice", 1001, false},  // 1 s later
      {"alice", 1059, false},  // 59 s: still too soon (not recorded, so still from 1000)
      {"bob", 1059, true},     // other users are independent
      {"alice", 1060, true},   // exactly the delay: allowed
      {"alice", 1119, false},  // measured from 1060 now
      {"alice", 1120, true},  {"alice", 500, true},  // clock went back: never a lock-out; recorded
      {"alice", 520, false},                         // ...and measured from there
  };
  for (const auto& r : rows) {
    auto ok = st.check_and_record(r.user, at(r.now), seconds(60));
    ASSERT_TRUE(ok.ok()) << ok.err().message();
    EXPECT_EQ(*ok, r.allowed) << r.user << " at " << r.now;
  }
  auto last = st.last_login("alice");
  ASSERT_TRUE(last.ok());
  ASSERT_TRUE(last->has_value());
  EXPECT_EQ(**last, at(500));
  auto none = st.last_login("carol");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(login_stats, zero_delay_always_allows_and_records) {
  temp_dir t;
  auto s = login_stats::open(t / "stats.db");
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 3; ++i) {
    auto ok = (*s)->check_and_record("alice", at(1000), seconds(0));
    ASSERT_TRUE(ok.ok());
    EXPECT_TRUE(*ok);
  }
  EXPECT_EQ(*(*s)->last_login("alice").value(), at(1000));
}

TEST(login_stats, user_names_are_data_not_sql) {
  temp_dir t;
  auto s = login_stats::open(t / "stats.db");
  ASSERT_TRUE(s.ok());
  const std::string evil = "x'); DROP TABLE login_stats; --";
  EXPECT_TRUE(*(*s)->check_and_record(evil, at(1), seconds(10)));
  EXPECT_FALSE(*(*s)->check_and_record(evil, at(2), seconds(10)));
  EXPECT_TRUE(*(*s)->check_and_record("plain", at(2), seconds(10)));
}

TEST(login_stats, state_survives_reopen_and_is_shared_between_connections) {
  temp_dir t;
  const std::string path = t / "stats.db";
  {
    auto s = login_stats::open(path);
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(*(*s)->check_and_record("alice", at(1000), seconds(60)));
  }
  auto a = login_stats::open(path);
  auto b = login_stats::open(path);  // as another process would
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(*(*a)->check_and_record("alice", at(1010), seconds(60)));
  EXPECT_TRUE(*(*b)->check_and_record("alice", at(1060), seconds(60)));
  EXPECT_FALSE(*(*a)->check_and_record("alice", at(1061), seconds(60)));
}

TEST(login_stats, exactly_one_of_many_concurrent_logins_wins) {
  temp_dir t;
  auto s = login_stats::open(t / "stats.db");
  ASSERT_TRUE(s.ok());
  auto other = login_stats::open(t / "stats.db");  // a second connection, as another process
  ASSERT_TRUE(other.ok());
  std::atomic<int> allowed{0}, failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto& st = i % 2 == 0 ? **s : **other;
      auto r = st.check_and_record("alice", at(5000), seconds(60));
      if (!r.ok()) {
        ++failed;
      } else if (*r) {
        ++allowed;
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(allowed.load(), 1);
}

TEST(login_stats, unusable_path_fails_to_open_and_open_or_warn_returns_null) {
  temp_dir t;
  // A regular file where a directory should be.
  {
    std::FILE* f = std::fopen((t / "file").c_str(), "w");
    std::fclose(f);
  }
  auto s = login_stats::open(t / "file/stats.db");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::permanent);
  EXPECT_EQ(login_stats::open_or_warn(t / "file/stats.db"), nullptr);
  // A directory where the file should be.
  fs::create_directory(t / "dir.db");
  EXPECT_FALSE(login_stats::open(t / "dir.db").ok());
  // Relative paths are refused.
  EXPECT_FALSE(login_stats::open("relative.db").ok());
  // Not a database.
  {
    std::FILE* f = std::fopen((t / "junk.db").c_str(), "w");
    std::fputs("this is not an SQLite database, not even a little bit............", f);
    std::fclose(f);
  }
  EXPECT_FALSE(login_stats::open(t / "junk.db").ok());
}

TEST(login_stats, capability_text) {
  EXPECT_EQ(login_delay_capability(seconds(0)), "");
  EXPECT_EQ(login_delay_capability(seconds(900)), "LOGIN-DELAY 900");
}

}  // namespace
}  // namespace postern::server
