// The privilege-separation wire format: exact layouts accepted, everything else refused.
#include "server/privsep.hpp"
#include "server/unix_settings.hpp"

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

namespace postern::server::privsep {
namespace {

std::string frame(std::uint8_t version, std::uint8_t type, std::uint16_t count,
                  const std::vector<std::string>& fields) {
  std::string out;
  out.push_back(static_cast<char>(version));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(count >> 8));
  out.push_back(static_cast<char>(count));
  for (const auto& f : fields) {
    auto n = static_cast<std::uint32_t>(f.size());
    out.push_back(static_cast<char>(n >> 24));
    out.push_back(static_cast<char>(n >> 16));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(n));
    out += f;
  }
  return out;
}

TEST(PrivsepCodec, RoundTripsEveryType) {
  std::vector<message> msgs;
  msgs.emplace_back(msg_type::welcome, std::vector<std::string>{"<abc.1.2@host>"});
  msgs.emplace_back(msg_type::mechanisms, std::vector<std::string>{"1", "0", "", ""});
  msgs.emplace_back(msg_type::password, std::vector<std::string>{"alice", std::string("p\0w", 3)});
  msgs.emplace_back(msg_type::apop, std::vector<std::string>{"bob", std::string(32, 'a')});
  msgs.emplace_back(
      msg_type::sasl_start,
      std::vector<std::string>{"PLAIN", "1", "1", std::string(32, 'x'), "", "AGEAYg=="});
  msgs.emplace_back(msg_type::sasl_step, std::vector<std::string>{""});
  msgs.emplace_back(msg_type::handoff, std::vector<std::string>{"P", "STAT\r\n"});
  msgs.emplace_back(msg_type::mechanisms_reply, std::vector<std::string>{"PLAIN LOGIN"});
  msgs.emplace_back(msg_type::auth_reply, std::vector<std::string>{"O", "alice"});
  msgs.emplace_back(msg_type::sasl_reply, std::vector<std::string>{"C", "Zm9v", ""});
  for (const auto& m : msgs) {
    auto bytes = encode(m);
    ASSERT_TRUE(bytes.ok()) << static_cast<int>(m.type);
    auto back = decode(*bytes);
    ASSERT_TRUE(back.ok()) << back.err().message();
    EXPECT_EQ(back->type, m.type);
    EXPECT_EQ(back->fields, m.fields);
  }
}

TEST(PrivsepCodec, RefusesMalformed) {
  struct row {
    const char* what;
    std::string bytes;
  };
  const std::vector<row> rows = {
      {"empty", ""},
      {"short header", std::string("\x01\x03\x00", 3)},
      {"bad version", frame(2, 3, 2, {"a", "b"})},
      {"unknown type", frame(1, 99, 1, {"a"})},
      {"type zero", frame(1, 0, 1, {"a"})},
      {"too few fields", frame(1, 3, 1, {"a"})},
      {"too many fields", frame(1, 3, 3, {"a", "b", "c"})},
      {"count says 2, one field", frame(1, 3, 2, {"a"})},
      {"trailing byte", frame(1, 3, 2, {"a", "b"}) + "x"},
      {"user too long", frame(1, 3, 2, {std::string(max_user + 1, 'u'), "pw"})},
      {"password too long", frame(1, 3, 2, {"u", std::string(max_password + 1, 'p')})},
      {"apop digest too long", frame(1, 4, 2, {"u", std::string(33, 'a')})},
      {"handoff mode too long", frame(1, 7, 2, {"PR", ""})},
      {"input too long", frame(1, 7, 2, {"P", std::string(max_input + 1, 'x')})},
      {"length beyond end", frame(1, 6, 1, {"abc"}).substr(0, 10)},
      {"huge length", std::string("\x01\x06\x00\x01\xff\xff\xff\xff", 8)},
  };
  for (const auto& r : rows) {
    EXPECT_FALSE(decode(r.bytes).ok()) << r.what;
  }
}

TEST(PrivsepCodec, EncodeRefusesBadLayouts) {
  EXPECT_FALSE(encode(message(msg_type::password, {"only one"})).ok());
  EXPECT_FALSE(encode(message(msg_type::password, {std::string(max_user + 1, 'u'), "pw"})).ok());
  EXPECT_FALSE(encode(message(static_cast<msg_type>(42), {"x"})).ok());
}

TEST(PrivsepSocket, OneDatagramPerMessageAndOversizeRefused) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  ASSERT_TRUE(send_message(sv[0], message(msg_type::sasl_step, {"abc"})).ok());
  ASSERT_TRUE(send_message(sv[0], message(msg_type::sasl_step, {"def"})).ok());
  auto a = recv_message(sv[1], 1000);
  auto b = recv_message(sv[1], 1000);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->fields[0], "abc");
  EXPECT_EQ(b->fields[0], "def");
  std::string big(max_message + 10, 'x');
  ASSERT_EQ(send(sv[0], big.data(), big.size(), 0), static_cast<ssize_t>(big.size()));
  auto c = recv_message(sv[1], 1000);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err().code(), errc::invalid);
  auto timeout = recv_message(sv[1], 10);
  ASSERT_FALSE(timeout.ok());
  EXPECT_EQ(timeout.err().code(), errc::temporary);
  close(sv[0]);
  auto eof = recv_message(sv[1], 1000);
  ASSERT_FALSE(eof.ok());
  EXPECT_EQ(eof.err().code(), errc::not_found);
  close(sv[1]);
}

TEST(PrivsepIdentity, RootIsNeverAMailOwner) {
  auth::user_record r;
  r.name = "root";
  auto id = resolve_mail_owner(r, "");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.err().code(), errc::denied);
  auth::user_record v;
  v.name = "virtual";
  v.uid = 0;
  v.gid = 100;
  EXPECT_FALSE(resolve_mail_owner(v, "").ok());
  v.uid = 5000;
  v.gid = 0;
  EXPECT_FALSE(resolve_mail_owner(v, "").ok());
  v.gid = 5000;
  auto ok = resolve_mail_owner(v, "");
  ASSERT_TRUE(ok.ok()) << ok.err().message();
  EXPECT_EQ(ok->uid, 5000u);
  EXPECT_EQ(ok->gid, 5000u);
}

TEST(MailOwner, RangeRootNobodyAndPreauthUid) {
  auth::mail_owner_rules r;  // the defaults: 500.., no upper limit
  EXPECT_TRUE(auth::check_mail_owner(500, r).ok());
  EXPECT_TRUE(auth::check_mail_owner(1000, r).ok());
  EXPECT_TRUE(auth::check_mail_owner(70000, r).ok());
  for (uid_t bad : {0u, 1u, 499u, 65534u}) {
    auto e = auth::check_mail_owner(bad, r);
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.err().code(), errc::denied) << bad;
  }
  EXPECT_NE(auth::check_mail_owner(499, r).err().message().find("below auth.first_valid_uid (500)"),
            std::string::npos);
  EXPECT_NE(auth::check_mail_owner(0, r).err().message().find("root"), std::string::npos);
  r.first_valid_uid = 1000;
  r.last_valid_uid = 2000;
  EXPECT_TRUE(auth::check_mail_owner(2000, r).ok());
  EXPECT_NE(
      auth::check_mail_owner(2001, r).err().message().find("above auth.last_valid_uid (2000)"),
      std::string::npos);
  r.preauth_uid = 1500;
  EXPECT_NE(auth::check_mail_owner(1500, r).err().message().find("server.login_user"),
            std::string::npos);
  EXPECT_TRUE(auth::check_mail_owner(1501, r).ok());
}

TEST(MailOwner, ConfigGivesTheRules) {
  config c;
  c.first_valid_uid = 1000;
  c.last_valid_uid = 59999;
  auto r = mail_owner_rules_of(c);
  EXPECT_EQ(r.first_valid_uid, 1000u);
  EXPECT_EQ(r.last_valid_uid, 59999u);
  EXPECT_FALSE(r.preauth_uid.has_value());
}

TEST(MailOwner, EventModeAsRootNeedsAnUnprivilegedUser) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root";
  }
  config c;
  unix_settings us;
  auto e = check_store_identity(c, us);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.err().message().find("server.user is not set and the server is started as root"),
            std::string::npos);
  EXPECT_NE(e.err().message().find("server.process_model = \"fork\""), std::string::npos);
  c.user = "root";
  e = check_store_identity(c, us);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.err().message().find("server.user is root"), std::string::npos);
  c.user = "nobody";
  e = check_store_identity(c, us);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.err().message().find("nobody"), std::string::npos);
  us.model = process_model::fork;
  c.user.clear();
  EXPECT_TRUE(check_store_identity(c, us).ok());
}

}  // namespace
}  // namespace postern::server::privsep
