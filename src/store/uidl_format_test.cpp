#include "store/uidl_format.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace postern::store {
namespace {

TEST(uidl_format, dovecot_default_reproduces_dovecot) {
  auto f = uidl_format::parse("%08Xu%08Xv");
  ASSERT_TRUE(f.ok()) << f.err().message();
  uidl_vars v;
  v.uid = 1;
  v.uidvalidity = 1275660208;  // 0x4c0907b0
  // Dovecot's X modifier prints lower-case hex ("%llx"), zero-padded by the 0 flag.
  EXPECT_EQ(f->expand(v), "000000014c0907b0");
  v.uid = 25021;
  EXPECT_EQ(f->expand(v), "000061bd4c0907b0");
  EXPECT_TRUE(f->uses('u'));
  EXPECT_TRUE(f->uses('v'));
  EXPECT_FALSE(f->uses('m'));
}

TEST(uidl_format, expansion_table) {
  struct row {
    const char* spec;
    const char* expected;
  };
  uidl_vars v;
  v.uid = 42;
  v.uidvalidity = 1000;
  v.md5 = "0123456789abcdef0123456789abcdef";
  v.filename = "1700000000.M1P2.host,S=10";
  v.guid = "guid-1";
  const std::vector<row> rows = {
      {"%u", "42"},
      {"%v.%u", "1000.42"},
      {"%Xu", "2a"},
      {"%08Xu", "0000002a"},
      {"%8u", "42"},  // width without 0 truncates, never pads (Dovecot)
      {"%1u", "4"},
      {"%04u", "0042"},
      {"%m", "0123456789abcdef0123456789abcdef"},
      {"%8m", "01234567"},
      {"%f", "1700000000.M1P2.host,S=10"},
      {"%g", "guid-1"},
      {"%%u", "%u"},
      {"a%%b", "a%b"},
      {"x-%u-%v-y", "x-42-1000-y"},
      {"%Xm", "0"},  // X of a non-number is 0, as in Dovecot
  };
  for (const auto& r : rows) {
    auto f = uidl_format::parse(r.spec);
    ASSERT_TRUE(f.ok()) << r.spec;
    EXPECT_EQ(f->expand(v), r.expected) << r.spec;
  }
  auto f = uidl_format::parse("%u%v");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->expand(uidl_vars{}), "");  // missing values expand to nothing
}

TEST(uidl_format, refuses_bad_specs) {
  for (const char* bad :
       {"", "%", "%q", "%08", "%X", "a b", "%08Xz", "tab\there", "%x u", "%999u"}) {
    EXPECT_FALSE(uidl_format::parse(bad).ok()) << bad;
  }
}

TEST(is_sendable_uidl, table) {
  EXPECT_TRUE(is_sendable_uidl("abc"));
  EXPECT_TRUE(is_sendable_uidl(std::string(82, 'a')));  // Dovecot %f can exceed 70
  EXPECT_FALSE(is_sendable_uidl(""));
  EXPECT_FALSE(is_sendable_uidl("a b"));
  EXPECT_FALSE(is_sendable_uidl("a\x7f"));
  EXPECT_FALSE(is_sendable_uidl(std::string(256, 'a')));
}

class string_reader final : public message_reader {
 public:
  string_reader(std::string s, std::size_t chunk) : s_(std::move(s)), chunk_(chunk) {}
  result<std::size_t> read(std::span<char> buf) override {
    std::size_t n = std::min({buf.size(), chunk_, s_.size() - pos_});
    std::copy_n(s_.data() + pos_, n, buf.data());
    pos_ += n;
    return n;
  }

 private:
  std::string s_;
  std::size_t chunk_;
  std::size_t pos_ = 0;
};

TEST(read_header_section, stops_after_the_empty_line_in_any_chunking) {
  struct row {
    std::string message;
    std::string header;
  };
  const std::vector<row> rows = {
      {"A: 1\nB: 2\n\nbody\n", "A: 1\nB: 2\n\n"},
      {"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\n"},
      {"\nbody", "\n"},
      {"A: 1\nB: 2\n", "A: 1\nB: 2\n"},  // no body: the whole message
      {"A: 1\r\n\r", "A: 1\r\n\r"},
  };
  for (const auto& r : rows) {
    for (std::size_t chunk : {1u, 2u, 3u, 4096u}) {
      string_reader reader(r.message, chunk);
      auto h = read_header_section(reader);
      ASSERT_TRUE(h.ok());
      EXPECT_EQ(*h, r.header) << "chunk " << chunk;
    }
  }
  string_reader big(std::string(10000, 'x'), 4096);
  auto h = read_header_section(big, 5000);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->size(), 5000u);
}

TEST(header_value, first_field_unfolded_case_insensitive) {
  const std::string h =
      "Subject: hello\n"
      "X-UIDL:  abc \n"
      "subject: second\n"
      "Received: from a\n"
      "\tby b\n"
      "X-Empty:\n"
      "\n"
      "Body: not a header\n";
  EXPECT_EQ(header_value(h, "Subject"), "hello");
  EXPECT_EQ(header_value(h, "SUBJECT"), "hello");
  EXPECT_EQ(header_value(h, "X-UIDL"), " abc");  // one blank after ':' removed, trailing trimmed
  EXPECT_EQ(header_value(h, "Received"), "from a\tby b");
  EXPECT_EQ(header_value(h, "X-Empty"), "");
  EXPECT_FALSE(header_value(h, "Body").has_value());
  EXPECT_FALSE(header_value(h, "Missing").has_value());
}

TEST(header_md5_hex, dovecot_apop3d_fields) {
  // The first Received (both lines, as Dovecot's parser gives them), Delivered-To and
  // X-Delivery-ID; Date and Message-ID are skipped once a Received was seen; the second
  // Received is ignored.
  const std::string h =
      "Received: from a by b;\n"
      "\tTue, 1 Jan 2020\n"
      "Date: x\n"
      "Message-ID: <m@x>\n"
      "Delivered-To: bob@x\n"
      "Received: second\n"
      "X-Delivery-ID: abc\n"
      "\n";
  EXPECT_EQ(header_md5_hex(h), "187671bc7f45b58a587af7ab3e04843f");
  // Without Received, Date and Message-ID count. CRLF line ends make no difference.
  EXPECT_EQ(header_md5_hex("Date: x\r\nMessage-ID: <m@x>\r\nSubject: s\r\n\r\n"),
            "45cfac43609f4d31dca55cb75ef68c2f");
}

TEST(parse_uidlist, version3_as_dovecot_writes_it) {
  const std::string text =
      "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
      "1 :1035478339.27041_118.foo.org\n"
      "2 W2331 :1035478339.27041_119.foo.org,S=2000:2,S\n"
      "5 GAAAA P :1035478339.27041_120.foo.org\n"
      "6 Pold-uidl-6 O3 :1035478339.27041_121.foo.org\n"
      "4 :out-of-order\n"
      "7 lowercase :bad-ext-skipped-but-record-kept\n"
      "8 :a/b\n"
      "9 W1\n"
      "garbage\n";
  auto l = parse_uidlist(text);
  ASSERT_TRUE(l.ok()) << l.err().message();
  EXPECT_EQ(l->version, 3u);
  EXPECT_EQ(l->uidvalidity, 1275660208u);
  EXPECT_EQ(l->next_uid, 25022u);
  EXPECT_EQ(l->mailbox_guid, "3085f01b7f11094c501100008c4a11c1");
  ASSERT_EQ(l->records.size(), 5u);
  EXPECT_EQ(l->records[0].uid, 1u);
  EXPECT_EQ(l->records[0].key, "1035478339.27041_118.foo.org");
  EXPECT_EQ(l->records[1].key, "1035478339.27041_119.foo.org,S=2000");  // base only
  EXPECT_EQ(l->records[2].guid, "AAAA");
  ASSERT_TRUE(l->records[2].pop3_uidl.has_value());
  EXPECT_EQ(*l->records[2].pop3_uidl, "");
  EXPECT_EQ(l->records[3].pop3_uidl, "old-uidl-6");
  EXPECT_EQ(l->records[4].uid, 7u);
  EXPECT_EQ(l->records[4].key, "bad-ext-skipped-but-record-kept");
}

TEST(parse_uidlist, version1_and_broken_headers) {
  auto v1 = parse_uidlist("1 1000 5\n1 a.b.c\n3 d.e.f:2,S\n");
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->uidvalidity, 1000u);
  EXPECT_EQ(v1->next_uid, 5u);
  ASSERT_EQ(v1->records.size(), 2u);
  EXPECT_EQ(v1->records[1].key, "d.e.f");
  for (const char* bad : {"", "3", "x V1 N2\n", "3 V0 N5\n", "3 V5 N0\n", "2 1 2\n", "1 5\n"}) {
    EXPECT_FALSE(parse_uidlist(bad).ok()) << bad;
  }
  // next_uid below the highest record is raised, as Dovecot does.
  auto low = parse_uidlist("3 V1 N2\n7 :x\n");
  ASSERT_TRUE(low.ok());
  EXPECT_EQ(low->next_uid, 8u);
}

TEST(format_uidlist, roundtrip) {
  uidlist l;
  l.uidvalidity = 99;
  l.next_uid = 12;
  l.records.push_back({3, "a.b", "", std::nullopt});
  l.records.push_back({11, "c.d,S=5", "G1", std::string("p")});
  std::string text = format_uidlist(l);
  EXPECT_EQ(text, "3 V99 N12\n3 :a.b\n11 GG1 Pp :c.d,S=5\n");
  auto back = parse_uidlist(text);
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->records.size(), 2u);
  EXPECT_EQ(back->records[1].guid, "G1");
  EXPECT_EQ(back->records[1].pop3_uidl, "p");
}

TEST(uid_assigner, legacy_first_then_new_numbers_after_the_highest) {
  auto legacy = parse_uidlist("3 V500 N10\n2 :a\n7 :b\n");
  ASSERT_TRUE(legacy.ok());
  uid_assigner a(std::move(legacy).value(), std::nullopt, 123);
  EXPECT_EQ(a.uidvalidity(), 500u);
  EXPECT_EQ(a.lookup_or_assign("b").uid, 7u);
  EXPECT_EQ(a.lookup_or_assign("new1").uid, 10u);  // N10 is the next uid
  EXPECT_EQ(a.lookup_or_assign("a").uid, 2u);
  EXPECT_EQ(a.lookup_or_assign("new2").uid, 11u);
  EXPECT_EQ(a.lookup_or_assign("new1").uid, 10u);  // stable
  EXPECT_TRUE(a.changed());
  EXPECT_EQ(format_uidlist(a.own()), "3 V500 N12\n10 :new1\n11 :new2\n");
  EXPECT_FALSE(a.lookup("unknown").has_value());
}

TEST(uid_assigner, own_records_win_and_are_never_renumbered) {
  // Dovecot (still running) later numbered "x" too; Postern's number stays.
  auto legacy = parse_uidlist("3 V500 N20\n15 :x\n");
  auto own = parse_uidlist("3 V500 N11\n10 :x\n");
  uid_assigner a(std::move(legacy).value(), std::move(own).value(), 1);
  EXPECT_EQ(a.lookup_or_assign("x").uid, 10u);
  EXPECT_EQ(a.lookup_or_assign("y").uid, 20u);  // after both lists' highest
}

TEST(uid_assigner, fresh_list_records_its_uidvalidity) {
  uid_assigner a(std::nullopt, std::nullopt, 1700000000);
  EXPECT_TRUE(a.changed());
  EXPECT_EQ(a.uidvalidity(), 1700000000u);
  EXPECT_EQ(a.lookup_or_assign("m1").uid, 1u);
  EXPECT_EQ(a.lookup_or_assign("m2").uid, 2u);
  EXPECT_EQ(format_uidlist(a.own()), "3 V1700000000 N3\n1 :m1\n2 :m2\n");
  auto reread = parse_uidlist(format_uidlist(a.own()));
  uid_assigner b(std::nullopt, std::move(reread).value(), 5);
  EXPECT_FALSE(b.changed());
  EXPECT_EQ(b.uidvalidity(), 1700000000u);
  EXPECT_EQ(b.lookup_or_assign("m2").uid, 2u);
  EXPECT_FALSE(b.changed());
}

TEST(mbox_uidlist_from_headers, x_imapbase_and_x_uid) {
  std::vector<std::string> uidls = {"u1", "u2", "u3", "u4"};
  std::vector<std::string> headers = {
      "X-IMAPbase: 1181234567 0000000004\nX-UID: 1\nSubject: a\n\n", "X-UID: 3\n\n",
      "Subject: new, no X-UID\n\n",
      "X-UID: 2\n\n",  // not ascending: ignored (Dovecot renumbers it)
  };
  auto l = mbox_uidlist_from_headers(uidls, headers);
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->uidvalidity, 1181234567u);
  EXPECT_EQ(l->next_uid, 5u);
  ASSERT_EQ(l->records.size(), 2u);
  EXPECT_EQ(l->records[0].key, "u1");
  EXPECT_EQ(l->records[1].uid, 3u);
  headers[0] = "X-UID: 1\n\n";
  EXPECT_FALSE(mbox_uidlist_from_headers(uidls, headers).has_value());
}

}  // namespace
}  // namespace postern::store
