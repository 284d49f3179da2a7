#include "store/decorated_maildrop.hpp"

#include "common/test_files.hpp"
#include "store/maildir/maildir.hpp"
#include "store/mbox/mbox.hpp"
#include "store/uidl_format.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace postern::store {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using tp = std::chrono::system_clock::time_point;

constexpr std::int64_t day = 86400;

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-decorated") {}
};
using test::read_file;
using test::write_file;

std::string message(const std::string& subject, const std::string& extra = {}) {
  return "From: a@example.org\nSubject: " + subject + "\n" + extra + "\nbody of " + subject + "\n";
}

class maildir_fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    box_ = dir_ / "Maildir";
    for (const char* sub : {"", "/cur", "/new", "/tmp"}) {
      fs::create_directories(box_ + sub);
    }
  }
  // Stores a message as <where>/<name>.
  void store(const std::string& where, const std::string& name, const std::string& content) {
    write_file(box_ + "/" + where + "/" + name, content);
  }
  std::unique_ptr<maildrop> open_plain() {
    auto m = maildir::open(box_);
    EXPECT_TRUE(m.ok()) << m.err().message();
    return m.ok() ? std::move(*m) : nullptr;
  }
  decoration_options opts(std::string format = {}, expire_policy ex = {}) {
    decoration_options o;
    o.kind = store_kind::maildir;
    o.path = box_;
    o.uidl_format = std::move(format);
    o.expire = ex;
    o.clock = [this] { return now_; };
    return o;
  }
  std::unique_ptr<decorated_maildrop> open_decorated(decoration_options o) {
    auto d = decorated_maildrop::wrap(open_plain(), std::move(o));
    EXPECT_TRUE(d.ok()) << d.err().message();
    return d.ok() ? std::move(*d) : nullptr;
  }
  static std::map<std::string, std::string> uidls_by_subject(decorated_maildrop& d) {
    std::map<std::string, std::string> out;
    for (std::size_t i = 0; i < d.messages().size(); ++i) {
      auto r = d.open_message(i, false);
      EXPECT_TRUE(r.ok());
      auto h = read_header_section(**r);
      out[*header_value(*h, "Subject")] = d.messages()[i].uidl;
    }
    return out;
  }
  temp_dir dir_;
  std::string box_;
  tp now_ = tp(std::chrono::seconds(1700000000));
};

TEST(needs_decoration, only_when_something_is_configured) {
  decoration_options o;
  EXPECT_FALSE(needs_decoration(o));
  o.uidl_format = "%u";
  EXPECT_TRUE(needs_decoration(o));
  o.uidl_format.clear();
  o.expire.days = 0;
  EXPECT_TRUE(needs_decoration(o));
}

TEST_F(maildir_fixture, decorate_returns_the_store_unchanged_when_nothing_applies) {
  store("new", "1700000001.M1P1.host", message("one"));
  auto plain = open_plain();
  maildrop* raw = plain.get();
  decorated_maildrop* deco = reinterpret_cast<decorated_maildrop*>(1);
  auto d = decorate(std::move(plain), opts(), &deco);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->get(), raw);
  EXPECT_EQ(deco, nullptr);
}

TEST_F(maildir_fixture, dovecot_uidlist_reproduces_dovecot_uidls) {
  // Dovecot's own file: a long base name (over 70 octets: the store's native UIDL is its
  // SHA-1), flags after ':', a saved POP3 UIDL and an empty P (= base name).
  const std::string long_base =
      "1655390418.M100238P743770V0000000000000030I00000000081274AE_0.cp.example.ch,S=3734";
  store("cur", long_base + ":2,S", message("long"));
  store("cur", "1700000002.M2P1.host:2,", message("two"));
  store("new", "1700000003.M3P1.host", message("saved"));
  store("new", "1700000004.M4P1.host", message("empty-p"));
  store("new", "1700000009.M9P1.host", message("new-since"));
  write_file(box_ + "/dovecot-uidlist",
             "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
             "7 :" +
                 long_base +
                 "\n"
                 "8 :1700000002.M2P1.host:2,\n"
                 "9 Pmigrated-uidl-9 :1700000003.M3P1.host\n"
                 "10 P :1700000004.M4P1.host\n");
  auto d = open_decorated(opts("%08Xu%08Xv"));
  ASSERT_NE(d, nullptr);
  auto u = uidls_by_subject(*d);
  EXPECT_EQ(u["long"], "000000074c0907b0");
  EXPECT_EQ(u["two"], "000000084c0907b0");
  EXPECT_EQ(u["saved"], "migrated-uidl-9");
  EXPECT_EQ(u["empty-p"], "1700000004.M4P1.host");
  EXPECT_EQ(u["new-since"], "000061be4c0907b0");  // N25022 = 0x61be
  // The new number is in Dovecot's file before anyone saw it (one UID space); every other
  // line is kept as it was.
  EXPECT_EQ(read_file(box_ + "/dovecot-uidlist"),
            "3 V1275660208 N25023 G3085f01b7f11094c501100008c4a11c1\n"
            "7 :" +
                long_base +
                "\n"
                "8 :1700000002.M2P1.host:2,\n"
                "9 Pmigrated-uidl-9 :1700000003.M3P1.host\n"
                "10 P :1700000004.M4P1.host\n"
                "25022 :1700000009.M9P1.host\n");
  EXPECT_FALSE(fs::exists(box_ + "/postern-uidlist"));
}

TEST_F(maildir_fixture, assigned_numbers_are_stable_across_sessions) {
  store("new", "1700000001.M1P1.host", message("a"));
  store("new", "1700000002.M2P1.host", message("b"));
  std::map<std::string, std::string> first;
  {
    auto d = open_decorated(opts("%u-%v"));
    ASSERT_NE(d, nullptr);
    first = uidls_by_subject(*d);
    EXPECT_EQ(first["a"], "1-1700000000");
    EXPECT_EQ(first["b"], "2-1700000000");
  }
  store("new", "1700000000.M0P1.host", message("older-name-delivered-later"));
  now_ += 1000s;  // a later session: uidvalidity must not follow the clock
  auto d = open_decorated(opts("%u-%v"));
  ASSERT_NE(d, nullptr);
  auto second = uidls_by_subject(*d);
  EXPECT_EQ(second["a"], first["a"]);
  EXPECT_EQ(second["b"], first["b"]);
  EXPECT_EQ(second["older-name-delivered-later"], "3-1700000000");
}

TEST_F(maildir_fixture, filename_guid_md5_and_fallbacks) {
  store("new", "1700000001.M1P1.host", message("a", "Message-ID: <a@x>\nDate: d\n"));
  write_file(box_ + "/dovecot-uidlist", "3 V5 N2\n1 GGUID-A :1700000001.M1P1.host\n");
  auto d = open_decorated(opts("%f"));
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->messages()[0].uidl, "1700000001.M1P1.host");
  EXPECT_FALSE(fs::exists(box_ + "/postern-uidlist"));  // nothing numbered: nothing written
  d.reset();
  d = open_decorated(opts("%g"));
  EXPECT_EQ(d->messages()[0].uidl, "GUID-A");
  d.reset();
  d = open_decorated(opts("%m"));
  EXPECT_EQ(d->messages()[0].uidl, header_md5_hex("Message-ID: <a@x>\nDate: d\n\n"));
}

TEST_F(maildir_fixture, a_message_removed_before_its_header_is_read_does_not_fail_the_login) {
  store("new", "1700000001.M1P1.host", message("gone"));
  store("new", "1700000002.M2P1.host", message("kept", "Message-ID: <k@x>\n"));
  auto plain = open_plain();
  fs::remove(box_ + "/new/1700000001.M1P1.host");  // an IMAP expunge meanwhile
  auto d = decorated_maildrop::wrap(std::move(plain), opts("%m"));
  ASSERT_TRUE(d.ok()) << d.err().message();
  EXPECT_EQ((*d)->messages()[0].uidl, "1700000001.M1P1.host");  // native, never readable
  EXPECT_EQ((*d)->messages()[1].uidl, header_md5_hex("Message-ID: <k@x>\n\n"));
  auto r = (*d)->open_message(0, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::not_found);  // the store's own code, passed through
}

TEST_F(maildir_fixture, duplicates_are_renamed_and_sizes_kept) {
  store("new", "1700000001.M1P1.host", message("a"));
  store("new", "1700000002.M2P1.host", message("bb"));
  store("new", "1700000003.M3P1.host", message("ccc"));
  auto plain = open_plain();
  std::vector<message_info> native(plain->messages().begin(), plain->messages().end());
  plain.reset();
  auto d = open_decorated(opts("same"));
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->messages().size(), 3u);
  EXPECT_EQ(d->messages()[0].uidl, "same");
  EXPECT_EQ(d->messages()[1].uidl, "same-2");
  EXPECT_EQ(d->messages()[2].uidl, "same-3");
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(d->messages()[i].size, native[i].size);
    EXPECT_EQ(d->native_messages()[i].uidl, native[i].uidl);
  }
}

TEST_F(maildir_fixture, bad_format_and_damaged_own_list_fail_the_open) {
  store("new", "1700000001.M1P1.host", message("a"));
  auto bad = decorated_maildrop::wrap(open_plain(), opts("%q"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), errc::invalid);
  write_file(box_ + "/postern-uidlist", "garbage\n");
  auto damaged = decorated_maildrop::wrap(open_plain(), opts("%u"));
  ASSERT_FALSE(damaged.ok());
  // A damaged Dovecot file refuses numbered formats too: Dovecot would renumber every
  // message, and numbers Postern made up could collide with the ones Dovecot then gives.
  fs::remove(box_ + "/postern-uidlist");
  write_file(box_ + "/dovecot-uidlist", "garbage\n");
  auto refused = decorated_maildrop::wrap(open_plain(), opts("%u"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.err().code(), errc::permanent);
  // Formats without UIDs only read it and ignore a damaged one.
  auto ok = decorated_maildrop::wrap(open_plain(), opts("%f"));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->messages()[0].uidl, "1700000001.M1P1.host");
}

// ---------------------------------------------------------------------------------------
// Expire

TEST_F(maildir_fixture, expire_zero_deletes_exactly_the_retrieved_messages) {
  store("new", "1700000001.M1P1.host", message("retr"));
  store("new", "1700000002.M2P1.host", message("top"));
  store("new", "1700000003.M3P1.host", message("listed"));
  store("new", "1700000004.M4P1.host", message("client-deleted"));
  auto d = open_decorated(opts({}, {0, false}));
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->open_message(0, true).ok());   // RETR
  ASSERT_TRUE(d->open_message(1, false).ok());  // TOP...
  d->note_top(1);                               // ...which the driver reports
  ASSERT_TRUE(d->open_message(2, false).ok());  // e.g. XTND XLIST: not a retrieval
  bool marks[] = {false, false, false, true};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->deleted, 3u);
  EXPECT_EQ(r->left, 1u);
  EXPECT_EQ(d->expired_deleted(), 2u);
  d.reset();
  auto left = open_plain();
  ASSERT_EQ(left->messages().size(), 1u);
  EXPECT_EQ(left->messages()[0].uidl, "1700000003.M3P1.host");
  EXPECT_FALSE(fs::exists(box_ + "/postern-expire"));  // nothing stamped is left
}

TEST_F(maildir_fixture, expire_n_days_deletes_old_stamps_and_keeps_the_rest) {
  store("new", "1700000001.M1P1.host", message("old"));
  store("new", "1700000002.M2P1.host", message("recent"));
  store("new", "1700000003.M3P1.host", message("never-retrieved"));
  store("new", "1700000004.M4P1.host", message("retrieved-now"));
  const std::int64_t now_s = 1700000000;
  write_file(box_ + "/postern-expire", "1700000001.M1P1.host " + std::to_string(now_s - 3 * day) +
                                           "\n"
                                           "1700000002.M2P1.host " +
                                           std::to_string(now_s - 3 * day + 1) +
                                           "\n"
                                           "vanished.message " +
                                           std::to_string(now_s - 100 * day) + "\n");
  auto d = open_decorated(opts({}, {3, true}));
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->open_message(3, true).ok());
  bool marks[4] = {};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->deleted, 1u);
  EXPECT_EQ(d->expired_deleted(), 1u);
  d.reset();
  auto left = open_plain();
  EXPECT_EQ(left->messages().size(), 3u);
  EXPECT_EQ(read_file(box_ + "/postern-expire"),
            "1700000002.M2P1.host " + std::to_string(now_s - 3 * day + 1) + "\n" +
                "1700000004.M4P1.host " + std::to_string(now_s) + "\n");
}

TEST_F(maildir_fixture, stamps_without_delete_expired_delete_nothing) {
  store("new", "1700000001.M1P1.host", message("a"));
  write_file(box_ + "/postern-expire", "1700000001.M1P1.host 1\n");  // very old
  auto d = open_decorated(opts({}, {1, false}));
  ASSERT_NE(d, nullptr);
  bool marks[] = {false};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, 0u);
  d.reset();
  EXPECT_EQ(open_plain()->messages().size(), 1u);
}

TEST_F(maildir_fixture, first_retrieval_time_is_kept) {
  store("new", "1700000001.M1P1.host", message("a"));
  for (int session = 0; session < 2; ++session) {
    auto d = open_decorated(opts({}, {10, true}));
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(d->open_message(0, true).ok());
    bool marks[] = {false};
    ASSERT_TRUE(d->commit(marks).ok());
    now_ += std::chrono::hours(24);
  }
  EXPECT_EQ(read_file(box_ + "/postern-expire"), "1700000001.M1P1.host 1700000000\n");
}

TEST_F(maildir_fixture, header_stamps_are_not_read_in_a_maildir) {
  const std::int64_t now_s = 1700000000;
  store("new", "1700000001.M1P1.host",
        message("old-header", "X-Expire-Timestamp: " + std::to_string(now_s - 10 * day) + "\n"));
  auto d = open_decorated(opts({}, {5, true}));
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->open_message(0, true).ok());
  bool marks[] = {false};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, 0u);  // expires 5 days after this first retrieval instead
  EXPECT_EQ(read_file(box_ + "/postern-expire"),
            "1700000001.M1P1.host " + std::to_string(now_s) + "\n");
}

TEST_F(maildir_fixture, unreadable_stamp_file_fails_the_open) {
  store("new", "1700000001.M1P1.host", message("a"));
  fs::create_directory(box_ + "/postern-expire");
  auto d = decorated_maildrop::wrap(open_plain(), opts({}, {0, true}));
  EXPECT_FALSE(d.ok());
}

TEST_F(maildir_fixture, no_quit_means_no_stamps_and_no_deletions) {
  store("new", "1700000001.M1P1.host", message("a"));
  {
    auto d = open_decorated(opts({}, {0, true}));
    ASSERT_TRUE(d->open_message(0, true).ok());
    // destroyed without commit: the connection dropped
  }
  EXPECT_EQ(open_plain()->messages().size(), 1u);
  EXPECT_FALSE(fs::exists(box_ + "/postern-expire"));
}

// ---------------------------------------------------------------------------------------
// mbox

class mbox_fixture : public ::testing::Test {
 protected:
  void SetUp() override { box_ = dir_ / "alice"; }
  mbox::options fast() {
    mbox::options o;
    o.locking.timeout = 300ms;
    o.use_x_uidl = true;  // as with mbox_x_uidl = true: the X-UIDL reuse tests need it
    return o;
  }
  std::unique_ptr<maildrop> open_plain() {
    auto m = mbox::open(box_, fast());
    EXPECT_TRUE(m.ok()) << m.err().message();
    return m.ok() ? std::move(*m) : nullptr;
  }
  decoration_options opts(std::string format = {}, expire_policy ex = {}) {
    decoration_options o;
    o.kind = store_kind::mbox;
    o.path = box_;
    o.uidl_format = std::move(format);
    o.expire = ex;
    o.clock = [this] { return now_; };
    return o;
  }
  std::unique_ptr<decorated_maildrop> open_decorated(decoration_options o) {
    auto d = decorated_maildrop::wrap(open_plain(), std::move(o));
    EXPECT_TRUE(d.ok()) << d.err().message();
    return d.ok() ? std::move(*d) : nullptr;
  }
  static std::string entry(const std::string& subject, const std::string& extra = {}) {
    return "From sender@example.org Mon Jan  1 00:00:00 2024\n" + message(subject, extra) + "\n";
  }

  temp_dir dir_;
  std::string box_;
  tp now_ = tp(std::chrono::seconds(1700000000));
};

TEST_F(mbox_fixture, dovecot_x_uid_headers_and_x_uidl_reuse) {
  write_file(box_, entry("one", "X-IMAPbase: 1181234567 0000000007\nX-UID: 5\n") +
                       entry("two", "X-UID: 7\n") + entry("qpopper", "X-UIDL: qp-123\n") +
                       entry("new"));
  auto d = open_decorated(opts("%08Xu%08Xv"));
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->messages().size(), 4u);
  EXPECT_EQ(d->messages()[0].uidl, "0000000546683587");  // 1181234567 = 0x46683587
  EXPECT_EQ(d->messages()[1].uidl, "0000000746683587");
  EXPECT_EQ(d->messages()[2].uidl, "qp-123");            // X-UIDL reused
  EXPECT_EQ(d->messages()[3].uidl, "0000000846683587");  // after X-IMAPbase's last uid
  EXPECT_TRUE(fs::exists(dir_ / ".alice.postern-uidlist"));
  d.reset();
  auto again = open_decorated(opts("%08Xu%08Xv"));
  EXPECT_EQ(again->messages()[3].uidl, "0000000846683587");
}

TEST_F(mbox_fixture, header_md5_format) {
  write_file(box_, entry("one", "Message-ID: <1@x>\nDate: Mon\n"));
  auto d = open_decorated(opts("%m"));
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->messages()[0].uidl, header_md5_hex("Message-ID: <1@x>\nDate: Mon\n\n"));
}

TEST_F(mbox_fixture, expire_with_header_stamp_and_side_file_next_to_the_spool) {
  const std::int64_t now_s = 1700000000;
  write_file(box_, entry("mailutils-stamped",
                         "X-Expire-Timestamp: " + std::to_string(now_s - 40 * day) + "\n") +
                       entry("retrieved") + entry("untouched"));
  auto d = open_decorated(opts({}, {30, true}));
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->open_message(1, true).ok());
  bool marks[] = {false, false, false};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->deleted, 1u);
  d.reset();
  auto left = open_plain();
  ASSERT_EQ(left->messages().size(), 2u);
  EXPECT_NE(read_file(box_).find("Subject: untouched"), std::string::npos);
  EXPECT_EQ(read_file(box_).find("mailutils-stamped"), std::string::npos);
  const std::string stamps = read_file(dir_ / ".alice.postern-expire");
  EXPECT_NE(stamps.find(" " + std::to_string(now_s) + "\n"), std::string::npos) << stamps;
  EXPECT_EQ(std::count(stamps.begin(), stamps.end(), '\n'), 1);
}

TEST_F(mbox_fixture, retrieval_keeps_an_older_header_stamp) {
  const std::int64_t now_s = 1700000000;
  write_file(box_,
             entry("old-header", "X-Expire-Timestamp: " + std::to_string(now_s - 10 * day) + "\n") +
                 entry("new-header", "X-Expire-Timestamp: " + std::to_string(now_s - day) + "\n"));
  auto d = open_decorated(opts({}, {5, true}));
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->open_message(1, true).ok());  // retrieved again: keeps the older stamp
  bool marks[] = {false, false};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, 1u);
  const std::string stamps = read_file(dir_ / ".alice.postern-expire");
  EXPECT_NE(stamps.find(" " + std::to_string(now_s - day) + "\n"), std::string::npos) << stamps;
}

TEST_F(mbox_fixture, expire_zero_removes_retrieved_messages) {
  write_file(box_, entry("a") + entry("b"));
  auto d = open_decorated(opts({}, {0, false}));
  ASSERT_TRUE(d->open_message(0, true).ok());
  bool marks[] = {false, false};
  auto r = d->commit(marks);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deleted, 1u);
  d.reset();
  auto left = open_plain();
  ASSERT_EQ(left->messages().size(), 1u);
  EXPECT_NE(read_file(box_).find("Subject: b"), std::string::npos);
}

}  // namespace
}  // namespace postern::store
