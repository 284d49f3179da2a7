#include "server/bulletins.hpp"

#include "common/test_files.hpp"
#include "store/maildir/maildir.hpp"
#include "store/mbox/mbox.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace postern::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using tp = std::chrono::system_clock::time_point;

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-bulletins") {}
};
using test::append_file;
using test::read_file;

// Writes the file, creating the directories above it first.
void write_file(const std::string& path, std::string_view content) {
  fs::create_directories(fs::path(path).parent_path());
  test::write_file(path, content);
}

std::string bulletin_entry(const std::string& subject, const std::string& body = "Hello.\n") {
  return "From admin@example.org Mon Jan  1 00:00:00 2024\nSubject: " + subject + "\n\n" + body +
         "\n";
}

std::vector<std::string> subjects_in_maildir(const std::string& path) {
  std::vector<std::string> out;
  auto m = store::maildir::open(path);
  EXPECT_TRUE(m.ok()) << m.err().message();
  for (std::size_t i = 0; i < (*m)->messages().size(); ++i) {
    auto r = (*m)->open_message(i, false);
    std::string all;
    char buf[4096];
    for (;;) {
      auto n = (*r)->read(std::span<char>(buf, sizeof buf));
      if (!n.ok() || *n == 0) {
        break;
      }
      all.append(buf, *n);
    }
    auto s = all.find("Subject: ");
    out.push_back(all.substr(s + 9, all.find('\n', s) - s - 9));
  }
  return out;
}

class bulletins_fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = bulletin_db::open(dir_ / "state/bulletins.sqlite");
    ASSERT_TRUE(db.ok()) << db.err().message();
    db_ = std::move(db).value();
    settings_.source_kind = store::store_kind::mbox;
    settings_.source_path = dir_ / "bull/mbox";
    settings_.db = db_.get();
    settings_.locking.timeout = 300ms;
    settings_.clock = [] { return tp(std::chrono::seconds(1700000000)); };
    target_.kind = store::store_kind::maildir;
    target_.path = dir_ / "alice/Maildir";
    target_.user = "alice";
    target_.home = dir_ / "alice";
  }
  std::size_t deliver() {
    auto n = deliver_bulletins(settings_, target_);
    EXPECT_TRUE(n.ok()) << n.err().message();
    return n.ok() ? *n : 999;
  }

  temp_dir dir_;
  std::unique_ptr<bulletin_db> db_;
  bulletin_settings settings_;
  bulletin_target target_;
};

TEST_F(bulletins_fixture, no_source_no_bulletins) {
  EXPECT_EQ(deliver(), 0u);
  EXPECT_FALSE(fs::exists(target_.path));  // nothing to do: the maildrop is not touched
}

TEST_F(bulletins_fixture, mbox_source_into_maildir_exactly_once) {
  write_file(settings_.source_path,
             bulletin_entry("B1", "Greetings.\n>From quoted\n") + bulletin_entry("B2"));
  EXPECT_EQ(deliver(), 2u);
  EXPECT_EQ(deliver(), 0u);  // the next login: nothing new
  EXPECT_EQ(subjects_in_maildir(target_.path), (std::vector<std::string>{"B1", "B2"}));
  EXPECT_EQ(db_->last("alice").value(), 2u);
  // The stored bulletin is unquoted like the store would serve it.
  bool found = false;
  for (const auto& e : fs::directory_iterator(target_.path + "/new")) {
    std::string c = read_file(e.path().string());
    if (c.find("Subject: B1") != std::string::npos) {
      EXPECT_NE(c.find("\nFrom quoted\n"), std::string::npos) << c;
      found = true;
    }
  }
  EXPECT_TRUE(found);
  append_file(settings_.source_path, bulletin_entry("B3"));
  EXPECT_EQ(deliver(), 1u);
  EXPECT_EQ(db_->last("alice").value(), 3u);
  // Another user gets all three.
  target_.user = "bob";
  target_.path = dir_ / "bob/Maildir";
  EXPECT_EQ(deliver(), 3u);
}

TEST_F(bulletins_fixture, crash_between_delivery_and_record_never_delivers_twice) {
  write_file(settings_.source_path, bulletin_entry("B1") + bulletin_entry("B2"));
  EXPECT_EQ(deliver(), 2u);
  ASSERT_TRUE(db_->set_last("alice", 0).ok());  // as if the records were lost
  EXPECT_EQ(deliver(), 0u);
  EXPECT_EQ(db_->last("alice").value(), 2u);
  std::size_t files = 0;
  for (const char* sub : {"/new", "/cur"}) {
    files += static_cast<std::size_t>(
        std::distance(fs::directory_iterator(target_.path + sub), fs::directory_iterator()));
  }
  EXPECT_EQ(files, 2u);
  EXPECT_TRUE(fs::is_empty(target_.path + "/tmp"));
}

TEST_F(bulletins_fixture, maildir_source_in_store_order) {
  settings_.source_kind = store::store_kind::maildir;
  settings_.source_path = dir_ / "bull/Maildir";
  write_file(settings_.source_path + "/cur/1700000002.M2P1.admin:2,S", "Subject: second\n\nb\n");
  write_file(settings_.source_path + "/new/1700000001.M1P1.admin", "Subject: first\n\na\n");
  fs::create_directories(settings_.source_path + "/tmp");
  auto list = read_bulletins(settings_.source_kind, settings_.source_path, 0);
  ASSERT_TRUE(list.ok()) << list.err().message();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].number, 1u);
  EXPECT_NE((*list)[0].content.find("first"), std::string::npos);
  EXPECT_NE((*list)[0].key, (*list)[1].key);
  auto after1 = read_bulletins(settings_.source_kind, settings_.source_path, 1);
  ASSERT_EQ(after1->size(), 1u);
  EXPECT_EQ((*after1)[0].number, 2u);
  EXPECT_EQ((*after1)[0].key, (*list)[1].key);
  EXPECT_EQ(deliver(), 2u);
  EXPECT_EQ(subjects_in_maildir(target_.path), (std::vector<std::string>{"first", "second"}));
}

TEST_F(bulletins_fixture, mbox_target_appended_under_locks_quoted_and_idempotent) {
  target_.kind = store::store_kind::mbox;
  target_.path = dir_ / "spool/alice";
  write_file(target_.path, "From x@y Mon Jan  1 00:00:00 2024\nSubject: mine\n\nmy mail\n");
  write_file(settings_.source_path,
             bulletin_entry("B1", "Line\n>From already quoted in source\nFrom unquoted? no\n"));
  EXPECT_EQ(deliver(), 1u);
  const std::string after = read_file(target_.path);
  EXPECT_NE(after.find("\n\nFrom MAILER-DAEMON Tue Nov 14 22:13:20 2023\nX-Postern-Bulletin: "),
            std::string::npos)
      << after;
  // ">From" in the source was unquoted on reading and is quoted again here (mboxo).
  EXPECT_NE(after.find("\n>From already quoted in source\n"), std::string::npos) << after;
  EXPECT_FALSE(fs::exists(target_.path + ".lock"));
  // The user's mbox parses into both messages, with the bulletin's body intact.
  store::mbox::options o;
  o.locking.timeout = 300ms;
  {
    auto m = store::mbox::open(target_.path, o);
    ASSERT_TRUE(m.ok()) << m.err().message();
    EXPECT_EQ((*m)->messages().size(), 2u);
  }
  ASSERT_TRUE(db_->set_last("alice", 0).ok());  // crash before the record
  EXPECT_EQ(deliver(), 0u);
  EXPECT_EQ(read_file(target_.path), after);
}

TEST_F(bulletins_fixture, mbox_target_created_when_missing_and_unterminated_file) {
  target_.kind = store::store_kind::mbox;
  target_.path = dir_ / "spool2/alice";
  fs::create_directories(dir_ / "spool2");
  write_file(settings_.source_path, bulletin_entry("B1"));
  EXPECT_EQ(deliver(), 1u);
  EXPECT_TRUE(read_file(target_.path).starts_with("From MAILER-DAEMON "));
  // A file that does not end with a line end gets one and a blank line.
  target_.path = dir_ / "spool2/bob";
  target_.user = "bob";
  write_file(target_.path, "From x@y Mon Jan  1 00:00:00 2024\nSubject: s\n\nno newline");
  EXPECT_EQ(deliver(), 1u);
  EXPECT_NE(read_file(target_.path).find("no newline\n\nFrom MAILER-DAEMON"), std::string::npos);
}

TEST_F(bulletins_fixture, popbull_without_database) {
  settings_.db = nullptr;
  write_file(settings_.source_path, bulletin_entry("B1") + bulletin_entry("B2"));
  fs::create_directories(target_.home);
  write_file(target_.home + "/.popbull", "1\n");  // Mailutils left it: B1 was delivered
  EXPECT_EQ(deliver(), 1u);
  EXPECT_EQ(read_file(target_.home + "/.popbull"), "2\n");
  EXPECT_EQ(deliver(), 0u);
  target_.home.clear();
  auto r = deliver_bulletins(settings_, target_);
  ASSERT_FALSE(r.ok());  // nowhere to record
  EXPECT_EQ(r.err().code(), errc::permanent);
}

TEST_F(bulletins_fixture, database_takes_precedence_over_popbull) {
  write_file(settings_.source_path,
             bulletin_entry("B1") + bulletin_entry("B2") + bulletin_entry("B3"));
  write_file(target_.home + "/.popbull", "1\n");
  EXPECT_EQ(deliver(), 2u);  // no row yet: ~/.popbull says 1
  EXPECT_EQ(db_->last("alice").value(), 3u);
  write_file(target_.home + "/.popbull", "0\n");  // ignored now that the database knows
  EXPECT_EQ(deliver(), 0u);
  write_file(target_.home + "/.popbull", "junk\n");
  target_.user = "carol";
  EXPECT_FALSE(deliver_bulletins(settings_, target_).ok());
}

TEST(quote_for_mbox, table) {
  using store::mbox::quoting;
  EXPECT_EQ(quote_for_mbox("From a\nx\n>From b\n", quoting::mboxo), ">From a\nx\n>From b\n");
  EXPECT_EQ(quote_for_mbox("From a\n>From b\n>>From c\n", quoting::mboxrd),
            ">From a\n>>From b\n>>>From c\n");
  EXPECT_EQ(quote_for_mbox("From a", quoting::none), "From a\n");
  EXPECT_EQ(quote_for_mbox("Fromage\n", quoting::mboxo), "Fromage\n");
  EXPECT_EQ(quote_for_mbox("", quoting::mboxo), "");
}

TEST(asctime_utc, format) {
  EXPECT_EQ(asctime_utc(tp(std::chrono::seconds(1700000000))), "Tue Nov 14 22:13:20 2023");
  EXPECT_EQ(asctime_utc(tp(std::chrono::seconds(0))), "Thu Jan  1 00:00:00 1970");
}

}  // namespace
}  // namespace postern::server
