#include "pop3/session.hpp"

#include "common/line_ends.hpp"
#include "pop3/dot_encoder.hpp"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

namespace postern::pop3 {
namespace {

// An in-memory driver: completes every request the engine makes against fake users and a
// fake maildrop, the way net/session_driver does against real ones.
struct fake_driver {
  std::map<std::string, std::string> users{{"alice", "secret"}, {"bob", "pw with spaces "}};
  std::set<std::string> locked;
  std::set<std::string> broken;  // auth backend down for these
  std::vector<std::string> bodies{"Subject: one\n\nhello\n", "Subject: two\n\n.dot\nline2\nline3\n",
                                  "Subject: three\r\n\r\nbody"};
  std::vector<store::message_info> infos;
  std::vector<bool> committed;  // deletion marks seen at commit
  bool commit_fails = false;
  bool closed = false;
  bool tls_ok = true;
  int tls_handshakes = 0;
  int yields = 0;
  std::vector<std::string> sasl_log;
  std::string sasl_final = "Zmlu";
  session s;

  explicit fake_driver(session_options opts = {}) : s(std::move(opts)) {
    for (std::size_t i = 0; i < bodies.size(); ++i) {
      bool prev = false;
      infos.push_back({count_wire_octets(bodies[i], prev), "uid-" + std::to_string(i + 1)});
    }
  }

  // Runs until the engine needs input or closes; returns what it sent.
  std::string run() {
    std::string sent;
    for (;;) {
      step st = s.next();
      sent += s.output();
      s.output().clear();
      switch (st) {
        case step::need_input:
          return sent;
        case step::close:
          closed = true;
          return sent;
        case step::authenticate: {
          std::string user(s.login_user());
          if (s.login_method() == "APOP") {
            s.auth_done(user == "alice" && s.apop_digest() == "c4c9334bac560ecc979e58001b3e22fb"
                            ? auth_status::ok
                            : auth_status::bad_credentials);
            break;
          }
          auto pw = s.take_password();
          if (broken.count(user)) {
            s.auth_done(auth_status::temporary_failure);
          } else {
            auto it = users.find(user);
            s.auth_done(it != users.end() && it->second == pw.view()
                            ? auth_status::ok
                            : auth_status::bad_credentials);
          }
          break;
        }
        case step::open_maildrop:
          if (locked.count(std::string(s.login_user()))) {
            s.open_done(open_status::in_use);
          } else {
            s.open_done(open_status::ok, infos);
          }
          break;
        case step::retrieve: {
          s.retrieve_started(true);
          sent += s.output();
          s.output().clear();
          dot_encoder enc(s.retrieve_top_lines());
          std::string body;
          enc.encode(bodies[s.retrieve_index()], body);
          enc.finish(body);
          sent += body;
          s.retrieve_done(body.size());
          break;
        }
        case step::start_tls: {
          ++tls_handshakes;
          connection_policy p;
          p.user_pass_allowed = true;
          p.sasl_mechanisms = {"PLAIN"};
          s.tls_started(tls_ok, p);
          break;
        }
        case step::sasl: {
          // A fake PLAIN-like mechanism: the first response must be "good", then one
          // challenge "Y2g=" is answered with "ok" and the exchange ends with final data "Zmlu".
          sasl_log.push_back((s.sasl_is_start() ? "start:" : "cont:") +
                             std::string(s.sasl_mechanism()) + ":" +
                             std::string(s.sasl_response()));
          if (s.sasl_is_start() && s.sasl_response().empty()) {
            s.sasl_challenge("");
          } else if (s.sasl_response() == "good") {
            s.sasl_challenge("Y2g=");
          } else if (s.sasl_response() == "ok") {
            s.sasl_done(auth_status::ok, sasl_final);
          } else {
            s.sasl_done(auth_status::bad_credentials);
          }
          break;
        }
        case step::xlist:
          s.xlist_done(true, std::vector<std::string>(s.xlist_messages().size()));
          break;
        case step::xmit:
          s.xmit_done(true);
          break;
        case step::yield:
          ++yields;
          break;
        case step::commit: {
          auto marks = s.deletion_marks();
          committed.assign(marks.begin(), marks.end());
          s.commit_done(!commit_fails);
          break;
        }
      }
    }
  }

  std::string say(const std::string& in) {
    s.feed(in);
    return run();
  }
};

const std::string greeting = "+OK Postern ready.\r\n";

TEST(session, greeting_and_quit_in_authorization) {
  fake_driver d;
  EXPECT_EQ(d.run(), greeting);
  EXPECT_EQ(d.say("QUIT\r\n"), "+OK Logging out.\r\n");
  EXPECT_TRUE(d.closed);
}

TEST(session, login_and_stat) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say("USER alice\r\n"), "+OK\r\n");
  EXPECT_EQ(d.say("PASS secret\r\n"), "+OK Logged in.\r\n");
  EXPECT_EQ(d.s.state(), session_state::transaction);
  EXPECT_EQ(
      d.say("STAT\r\n"),
      "+OK 3 " + std::to_string(d.infos[0].size + d.infos[1].size + d.infos[2].size) + "\r\n");
}

TEST(session, password_with_spaces_kept_verbatim) {
  fake_driver d;
  d.run();
  d.say("USER bob\r\n");
  EXPECT_EQ(d.say("PASS pw with spaces \r\n"), "+OK Logged in.\r\n");
}

TEST(session, failed_logins_look_the_same) {
  fake_driver d;
  d.run();
  d.say("USER alice\r\n");
  std::string wrong_pw = d.say("PASS nope\r\n");
  d.say("USER nobody\r\n");
  std::string unknown = d.say("PASS secret\r\n");
  EXPECT_EQ(wrong_pw, "-ERR [AUTH] Authentication failed.\r\n");
  EXPECT_EQ(unknown, wrong_pw);
  EXPECT_EQ(d.s.state(), session_state::authorization);
  // USER is needed again after a failure.
  EXPECT_EQ(d.say("PASS secret\r\n"), "-ERR No user name given, use USER first.\r\n");
}

TEST(session, temporary_failure_and_in_use_codes) {
  fake_driver d;
  d.broken.insert("alice");
  d.run();
  d.say("USER alice\r\n");
  EXPECT_EQ(d.say("PASS secret\r\n"),
            "-ERR [SYS/TEMP] Authentication temporarily unavailable, try again later.\r\n");
  d.broken.clear();
  d.locked.insert("alice");
  d.say("USER alice\r\n");
  EXPECT_EQ(d.say("PASS secret\r\n"),
            "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n");
}

TEST(session, capa_lists_exactly_what_works) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say("capa\r\n"),
            "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            "AUTH-RESP-CODE\r\nUSER\r\nXTND XLIST\r\nIMPLEMENTATION Postern\r\n.\r\n");
  session_options opts;
  opts.implementation.clear();
  fake_driver quiet(opts);
  quiet.run();
  EXPECT_EQ(quiet.say("CAPA\r\n").find("IMPLEMENTATION"), std::string::npos);
}

class logged_in : public ::testing::Test {
 protected:
  void SetUp() override {
    d.run();
    ASSERT_EQ(d.say("USER alice\r\nPASS secret\r\n"), "+OK\r\n+OK Logged in.\r\n");
  }
  fake_driver d;
};

TEST_F(logged_in, list_and_uidl) {
  std::string list = d.say("LIST\r\n");
  EXPECT_EQ(list, "+OK scan listing follows\r\n1 " + std::to_string(d.infos[0].size) + "\r\n2 " +
                      std::to_string(d.infos[1].size) + "\r\n3 " + std::to_string(d.infos[2].size) +
                      "\r\n.\r\n");
  EXPECT_EQ(d.say("LIST 2\r\n"), "+OK 2 " + std::to_string(d.infos[1].size) + "\r\n");
  EXPECT_EQ(d.say("UIDL\r\n"),
            "+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n");
  EXPECT_EQ(d.say("uidl 3\r\n"), "+OK 3 uid-3\r\n");
}

TEST_F(logged_in, retr_stuffs_and_counts) {
  EXPECT_EQ(d.say("RETR 2\r\n"),
            "+OK 36 octets\r\nSubject: two\r\n\r\n..dot\r\nline2\r\nline3\r\n.\r\n");
  EXPECT_EQ(d.say("RETR 3\r\n"), "+OK 22 octets\r\nSubject: three\r\n\r\nbody\r\n.\r\n");
  EXPECT_EQ(d.say("LAST\r\n"), "+OK 3\r\n");
  EXPECT_EQ(d.s.stats().retr_count, 2u);
}

TEST_F(logged_in, top) {
  EXPECT_EQ(d.say("TOP 2 0\r\n"), "+OK\r\nSubject: two\r\n\r\n.\r\n");
  EXPECT_EQ(d.say("TOP 2 1\r\n"), "+OK\r\nSubject: two\r\n\r\n..dot\r\n.\r\n");
  EXPECT_EQ(d.say("TOP 2 99999999999\r\n"),
            "+OK\r\nSubject: two\r\n\r\n..dot\r\nline2\r\nline3\r\n.\r\n");
  EXPECT_EQ(d.say("TOP 2\r\n"), "-ERR TOP needs a message number and a line count.\r\n");
  EXPECT_EQ(d.say("TOP 2 -1\r\n"), "-ERR Invalid line count.\r\n");
  EXPECT_EQ(d.say("TOP 2 1 1\r\n"), "-ERR Too many arguments.\r\n");
}

struct bad_arg_case {
  std::string cmd;
  std::string reply;
};

class bad_args : public logged_in, public ::testing::WithParamInterface<bad_arg_case> {};

TEST_P(bad_args, answered_err_and_session_survives) {
  EXPECT_EQ(d.say(GetParam().cmd + "\r\n"), "-ERR " + GetParam().reply + "\r\n");
  EXPECT_EQ(d.say("NOOP\r\n"), "+OK\r\n");
}

INSTANTIATE_TEST_SUITE_P(
    table, bad_args,
    ::testing::Values(
        bad_arg_case{"RETR 0", "No such message."}, bad_arg_case{"RETR 4", "No such message."},
        bad_arg_case{"RETR -1", "Invalid message number."},
        bad_arg_case{"RETR +1", "Invalid message number."},
        bad_arg_case{"RETR abc", "Invalid message number."},
        bad_arg_case{"RETR 1x", "Invalid message number."},
        bad_arg_case{"RETR 99999999999999999999", "Invalid message number."},
        bad_arg_case{"RETR 18446744073709551615", "No such message."},
        bad_arg_case{"RETR", "Missing or empty argument."},
        bad_arg_case{"RETR 1 2", "Too many arguments."},
        bad_arg_case{"RETR  1", "Missing or empty argument."},
        bad_arg_case{"LIST 0", "No such message."},
        bad_arg_case{"UIDL x", "Invalid message number."},
        bad_arg_case{"DELE 7", "No such message."}, bad_arg_case{"STAT 1", "Too many arguments."},
        bad_arg_case{"USER bob", "Already logged in."},
        bad_arg_case{"STLS", "STLS is not allowed after login."},
        bad_arg_case{"XYZZY", "Unknown command."}, bad_arg_case{"", "Unknown command."}));

TEST_F(logged_in, dele_hides_message_and_rset_restores) {
  EXPECT_EQ(d.say("DELE 1\r\n"), "+OK Message 1 deleted.\r\n");
  EXPECT_EQ(d.say("DELE 1\r\n"), "-ERR Message is deleted.\r\n");
  EXPECT_EQ(d.say("RETR 1\r\n"), "-ERR Message is deleted.\r\n");
  EXPECT_EQ(d.say("LIST 1\r\n"), "-ERR Message is deleted.\r\n");
  EXPECT_EQ(d.say("UIDL\r\n"), "+OK unique-id listing follows\r\n2 uid-2\r\n3 uid-3\r\n.\r\n");
  EXPECT_EQ(d.say("STAT\r\n"),
            "+OK 2 " + std::to_string(d.infos[1].size + d.infos[2].size) + "\r\n");
  EXPECT_EQ(d.say("RSET\r\n").substr(0, 20), "+OK Maildrop has 3 m");
  EXPECT_EQ(d.say("STAT\r\n").substr(0, 6), "+OK 3 ");
}

TEST_F(logged_in, quit_commits_exactly_the_marks) {
  d.say("DELE 2\r\n");
  EXPECT_EQ(d.say("QUIT\r\n"), "+OK Logging out.\r\n");
  EXPECT_TRUE(d.closed);
  EXPECT_EQ(d.committed, (std::vector<bool>{false, true, false}));
  EXPECT_EQ(d.s.stats().marked_count, 1u);
}

TEST_F(logged_in, failed_commit_is_reported) {
  d.commit_fails = true;
  d.say("DELE 2\r\n");
  EXPECT_EQ(d.say("QUIT\r\n"), "-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n");
  EXPECT_TRUE(d.closed);
}

TEST_F(logged_in, eof_commits_nothing) {
  d.say("DELE 1\r\n");
  d.s.feed_eof();
  d.run();
  EXPECT_TRUE(d.closed);
  EXPECT_TRUE(d.committed.empty());
}

TEST_F(logged_in, pipelined_commands_answered_in_order) {
  std::string all = "STAT\r\nLIST 1\r\nTOP 1 0\r\nDELE 1\r\nNOOP\r\nQUIT\r\n";
  std::string whole;
  { whole = d.say(all); }
  fake_driver bytewise;
  bytewise.run();
  bytewise.say("USER alice\r\nPASS secret\r\n");
  std::string sent;
  for (char c : all) {
    sent += bytewise.say(std::string(1, c));
  }
  EXPECT_EQ(sent, whole);
  EXPECT_NE(whole.find("+OK Message 1 deleted.\r\n+OK\r\n+OK Logging out.\r\n"), std::string::npos);
}

// The replies of `commands` sent one at a time, after the same login as logged_in's.
std::string unpipelined_replies(const std::vector<std::string>& commands) {
  fake_driver one;
  one.run();
  one.say("USER alice\r\nPASS secret\r\n");
  std::string sent;
  for (const auto& c : commands) {
    sent += one.say(c);
  }
  EXPECT_EQ(one.yields, 0);
  return sent;
}

TEST_F(logged_in, yields_after_max_lines_per_turn_with_the_same_replies) {
  // N + 1 cheap commands of several kinds, one of them a RETR (a request step inside the turn).
  const std::vector<std::string> kinds = {"NOOP\r\n", "STAT\r\n",  "LIST 1\r\n",
                                          "UIDL\r\n", "XYZZY\r\n", "RETR 2\r\n"};
  std::vector<std::string> commands;
  std::string all;
  for (std::size_t i = 0; i <= limits::max_lines_per_turn; ++i) {
    commands.push_back(kinds[i % kinds.size()]);
    all += commands.back();
  }
  // Under max_bad_commands: the unknown commands must not end the session.
  ASSERT_LT(limits::max_lines_per_turn / kinds.size() + 1, limits::default_max_bad_commands);
  const std::string expected = unpipelined_replies(commands);
  const std::string first_n = unpipelined_replies({commands.begin(), commands.end() - 1});

  d.s.feed(all);
  std::string sent;
  step st = step::need_input;
  for (;;) {  // the fake driver's loop, stopping at the yield
    st = d.s.next();
    sent += d.s.output();
    d.s.output().clear();
    if (st != step::retrieve) {
      break;
    }
    d.s.retrieve_started(true);
    sent += d.s.output();
    d.s.output().clear();
    dot_encoder enc(d.s.retrieve_top_lines());
    std::string body;
    enc.encode(d.bodies[d.s.retrieve_index()], body);
    enc.finish(body);
    sent += body;
    d.s.retrieve_done(body.size());
  }
  ASSERT_EQ(st, step::yield);
  EXPECT_EQ(sent, first_n);  // exactly N commands answered, whole replies
  EXPECT_TRUE(d.s.has_buffered_line());
  sent += d.run();  // the last command, then need_input
  EXPECT_FALSE(d.closed);
  EXPECT_EQ(d.yields, 0);
  EXPECT_EQ(sent, expected);
}

TEST_F(logged_in, exactly_max_lines_per_turn_commands_need_no_yield) {
  std::string all;
  for (std::size_t i = 0; i < limits::max_lines_per_turn; ++i) {
    all += "NOOP\r\n";
  }
  d.s.feed(all);
  EXPECT_EQ(d.s.next(), step::need_input);
  d.s.output().clear();
  // The count starts again after need_input: another full batch needs no yield either.
  d.s.feed(all);
  EXPECT_EQ(d.s.next(), step::need_input);
}

TEST(session, yields_once_a_turn_holds_max_output_per_turn_of_replies) {
  fake_driver big;
  for (std::size_t i = 0; big.infos.size() < 1500; ++i) {
    big.infos.push_back({1000 + i, "a-long-unique-id-" + std::to_string(i)});
  }
  big.run();
  big.say("USER alice\r\nPASS secret\r\n");
  const std::string one = big.say("UIDL\r\n");
  ASSERT_LT(one.size(), limits::max_output_per_turn);
  const std::size_t per_turn = limits::max_output_per_turn / one.size() + 1;
  std::string all;
  for (std::size_t i = 0; i <= per_turn; ++i) {
    all += "UIDL\r\n";
  }
  big.s.feed(all);
  ASSERT_EQ(big.s.next(), step::yield);
  EXPECT_EQ(big.s.output().size(), per_turn * one.size());
  big.s.output().clear();
  EXPECT_EQ(big.s.next(), step::need_input);
  EXPECT_EQ(big.s.output(), one);
}

TEST_F(logged_in, has_buffered_line_tells_whether_a_command_is_waiting) {
  EXPECT_FALSE(d.s.has_buffered_line());
  d.s.feed("RETR 1\r\nRETR 2\r\nNO");
  EXPECT_TRUE(d.s.has_buffered_line());
  ASSERT_EQ(d.s.next(), step::retrieve);
  EXPECT_TRUE(d.s.has_buffered_line());  // RETR 2 is complete
  d.s.retrieve_started(true);
  d.s.retrieve_done(0);
  d.s.output().clear();
  ASSERT_EQ(d.s.next(), step::retrieve);
  EXPECT_FALSE(d.s.has_buffered_line());  // only "NO" left: the client must send more
  d.s.retrieve_started(true);
  d.s.retrieve_done(0);
  EXPECT_EQ(d.s.next(), step::need_input);
  d.s.feed("OP\n");
  EXPECT_TRUE(d.s.has_buffered_line());
  EXPECT_EQ(d.s.next(), step::need_input);
  EXPECT_FALSE(d.s.has_buffered_line());
}

TEST_F(logged_in, retrieve_failures_answer_by_what_the_store_said) {
  const struct {
    errc why;
    std::string_view reply;
  } rows[] = {
      {errc::not_found, "-ERR Message was deleted by another program.\r\n"},
      {errc::changed,
       "-ERR Message was changed by another program since it was listed; log in again to "
       "read it.\r\n"},
      {errc::permanent, "-ERR [SYS/PERM] Unable to read the message.\r\n"},
      {errc::temporary, "-ERR [SYS/TEMP] Unable to read the message, try again later.\r\n"},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(to_string(r.why));
    d.s.output().clear();
    d.s.feed("RETR 1\r\n");
    ASSERT_EQ(d.s.next(), step::retrieve);
    d.s.retrieve_started(false, r.why);
    EXPECT_EQ(d.s.output(), r.reply);
    EXPECT_EQ(d.s.next(), step::need_input);
  }
}

TEST(session, commands_in_wrong_state) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say("STAT\r\n"), "-ERR Command not valid before login.\r\n");
  EXPECT_EQ(d.say("PASS x\r\n"), "-ERR No user name given, use USER first.\r\n");
  EXPECT_EQ(d.say("USER\r\n"), "-ERR USER needs a user name.\r\n");
}

TEST(session, too_many_bad_commands_disconnects) {
  session_options opts;
  opts.max_bad_commands = 3;
  fake_driver d(opts);
  d.run();
  d.say("A\r\n");
  d.say("B\r\n");
  EXPECT_FALSE(d.closed);
  EXPECT_EQ(d.say("C\r\n"),
            "-ERR Unknown command.\r\n-ERR Too many bad commands, closing connection.\r\n");
  EXPECT_TRUE(d.closed);
}

TEST(session, too_many_failed_logins_disconnects) {
  fake_driver d;
  d.run();
  for (std::uint32_t i = 1; i < limits::max_failed_logins; ++i) {
    d.say("USER alice\r\n");
    EXPECT_EQ(d.say("PASS nope\r\n"), "-ERR [AUTH] Authentication failed.\r\n");
    EXPECT_FALSE(d.s.too_many_failed_logins());
  }
  EXPECT_FALSE(d.closed);
  d.say("USER alice\r\n");
  EXPECT_EQ(
      d.say("PASS nope\r\n"),
      "-ERR [AUTH] Authentication failed. Disconnected for too many authentication failures.\r\n");
  EXPECT_TRUE(d.s.too_many_failed_logins());
  EXPECT_TRUE(d.closed);
}

TEST(session, overlong_line_answered_and_session_survives) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say(std::string(10000, 'A') + "\r\nNOOP\r\n"),
            "-ERR Line too long.\r\n-ERR Command not valid before login.\r\n");
  EXPECT_EQ(d.say("QUIT\r\n"), "+OK Logging out.\r\n");
}

TEST(session, plaintext_refused_when_disallowed) {
  session_options opts;
  opts.user_pass_allowed = false;
  fake_driver d(opts);
  d.run();
  EXPECT_EQ(d.say("USER alice\r\n"),
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n");
  EXPECT_EQ(d.say("CAPA\r\n").find("USER\r\n"), std::string::npos);
}

}  // namespace
}  // namespace postern::pop3

namespace postern::pop3 {
namespace {

session_options tls_opts() {
  session_options o;
  o.stls_offered = true;
  o.sasl_mechanisms = {"PLAIN", "SCRAM-SHA-256"};
  return o;
}

TEST(session_tls, capa_offers_stls_and_sasl_until_tls) {
  fake_driver d(tls_opts());
  d.run();
  std::string capa = d.say("CAPA\r\n");
  EXPECT_NE(capa.find("STLS\r\n"), std::string::npos);
  EXPECT_NE(capa.find("SASL PLAIN SCRAM-SHA-256\r\n"), std::string::npos);
  EXPECT_EQ(d.say("STLS\r\n"), "+OK Begin TLS negotiation now.\r\n");
  EXPECT_EQ(d.tls_handshakes, 1);
  capa = d.say("CAPA\r\n");
  EXPECT_EQ(capa.find("STLS"), std::string::npos);
  EXPECT_NE(capa.find("SASL PLAIN\r\n"), std::string::npos);
  EXPECT_EQ(d.say("STLS\r\n"), "-ERR TLS is already active.\r\n");
}

TEST(session_tls, bytes_pipelined_after_stls_are_discarded) {
  fake_driver d(tls_opts());
  d.run();
  EXPECT_EQ(d.say("STLS\r\nCAPA\r\nUSER alice\r\n"), "+OK Begin TLS negotiation now.\r\n");
  EXPECT_EQ(d.say("NOOP\r\n"), "-ERR Command not valid before login.\r\n");
}

TEST(session_tls, user_given_before_stls_is_forgotten) {
  fake_driver d(tls_opts());
  d.run();
  d.say("USER alice\r\n");
  d.say("STLS\r\n");
  EXPECT_EQ(d.say("PASS secret\r\n"), "-ERR No user name given, use USER first.\r\n");
}

TEST(session_tls, failed_handshake_closes) {
  fake_driver d(tls_opts());
  d.tls_ok = false;
  d.run();
  d.say("STLS\r\n");
  EXPECT_TRUE(d.closed);
}

TEST(session_tls, required_mode_allows_only_capa_stls_quit) {
  auto o = tls_opts();
  o.tls_required = true;
  fake_driver d(o);
  d.run();
  EXPECT_EQ(d.say("USER alice\r\n"), "-ERR [AUTH] TLS is required: issue STLS first.\r\n");
  EXPECT_EQ(d.say("AUTH PLAIN\r\n"), "-ERR [AUTH] TLS is required: issue STLS first.\r\n");
  std::string capa = d.say("CAPA\r\n");
  EXPECT_EQ(capa.find("USER"), std::string::npos);
  EXPECT_EQ(capa.find("SASL"), std::string::npos);
  d.say("STLS\r\n");
  EXPECT_EQ(d.say("USER alice\r\nPASS secret\r\n"), "+OK\r\n+OK Logged in.\r\n");
}

TEST(session_tls, stls_not_offered) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say("STLS\r\n"), "-ERR STLS is not available.\r\n");
}

TEST(session_sasl, exchange_with_challenge_and_final_data) {
  fake_driver d(tls_opts());
  d.run();
  EXPECT_EQ(d.say("AUTH plain good\r\n"), "+ Y2g=\r\n");
  EXPECT_EQ(d.say("ok\r\n"), "+ Zmlu\r\n");
  EXPECT_EQ(d.say("\r\n"), "+OK Logged in.\r\n");
  EXPECT_EQ(d.sasl_log, (std::vector<std::string>{"start:PLAIN:good", "cont:PLAIN:ok"}));
}

TEST(session_sasl, no_initial_response_gets_empty_challenge) {
  fake_driver d(tls_opts());
  d.run();
  EXPECT_EQ(d.say("AUTH PLAIN\r\n"), "+ \r\n");
  EXPECT_EQ(d.say("good\r\n"), "+ Y2g=\r\n");
}

TEST(session_sasl, cancel_wrong_and_unknown) {
  fake_driver d(tls_opts());
  d.run();
  d.say("AUTH PLAIN good\r\n");
  EXPECT_EQ(d.say("*\r\n"), "-ERR [AUTH] Authentication cancelled.\r\n");
  EXPECT_EQ(d.say("AUTH PLAIN bad\r\n"), "-ERR [AUTH] Authentication failed.\r\n");
  EXPECT_EQ(d.say("AUTH CRAM-MD5\r\n"), "-ERR Unsupported authentication mechanism.\r\n");
  EXPECT_EQ(d.say("AUTH\r\n"), "+OK Mechanisms follow\r\nPLAIN\r\nSCRAM-SHA-256\r\n.\r\n");
  // a non-empty answer to the final data fails the login
  d.say("AUTH PLAIN good\r\n");
  d.say("ok\r\n");
  EXPECT_EQ(d.say("junk\r\n"), "-ERR [AUTH] Authentication failed.\r\n");
  EXPECT_EQ(d.s.state(), session_state::authorization);
}

TEST(session_sasl, overlong_response_ends_the_exchange) {
  fake_driver d(tls_opts());
  d.run();
  d.say("AUTH PLAIN good\r\n");
  EXPECT_EQ(d.say(std::string(20000, 'A') + "\r\n"),
            "-ERR [AUTH] Authentication failed: response too long or invalid.\r\n");
  EXPECT_EQ(d.say("AUTH PLAIN good\r\n"), "+ Y2g=\r\n");
}

TEST(session_sasl, long_continuation_lines_allowed) {
  fake_driver d(tls_opts());
  d.run();
  d.say("AUTH PLAIN good\r\n");
  EXPECT_EQ(d.say(std::string(5000, 'A') + "\r\n"), "-ERR [AUTH] Authentication failed.\r\n");
}

TEST(session_apop, greeting_and_login) {
  session_options o;
  o.apop_timestamp = "<1896.697170952@dbc.mtview.ca.us>";
  fake_driver d(o);
  EXPECT_EQ(d.run(), "+OK Postern ready. <1896.697170952@dbc.mtview.ca.us>\r\n");
  EXPECT_EQ(d.say("APOP alice 00000000000000000000000000000000\r\n"),
            "-ERR [AUTH] Authentication failed.\r\n");
  EXPECT_EQ(d.say("APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"), "+OK Logged in.\r\n");
}

TEST(session_apop, not_available_without_timestamp) {
  fake_driver d;
  d.run();
  EXPECT_EQ(d.say("APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"),
            "-ERR APOP is not available.\r\n");
}

}  // namespace
}  // namespace postern::pop3

namespace postern::pop3 {
namespace {

TEST(session_resume, starts_authenticated_without_greeting) {
  session_options o;
  o.resume_user = "alice";
  o.resume_method = "USER";
  fake_driver d(o);
  d.s.feed("STAT\r\n");
  EXPECT_EQ(d.run(), "+OK Logged in.\r\n+OK 3 " +
                         std::to_string(d.infos[0].size + d.infos[1].size + d.infos[2].size) +
                         "\r\n");
  EXPECT_EQ(d.s.login_method(), "USER");
}

TEST(session_resume, unprocessed_input_is_handed_over) {
  fake_driver d;
  d.run();
  d.s.feed("USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\n");
  EXPECT_EQ(d.s.next(), step::authenticate);
  EXPECT_EQ(d.s.take_unprocessed_input(), "STAT\r\nLIST\r\n");
}

}  // namespace
}  // namespace postern::pop3

namespace postern::pop3 {
namespace {

TEST(session_features, login_delay_and_expire_capabilities) {
  session_options o;
  o.login_delay_capability = "LOGIN-DELAY 900";
  o.expire_capability = "EXPIRE NEVER";
  fake_driver d(o);
  d.run();
  std::string capa = d.say("CAPA\r\n");
  EXPECT_NE(capa.find("\r\nLOGIN-DELAY 900\r\n"), std::string::npos);
  EXPECT_NE(capa.find("\r\nEXPIRE NEVER\r\n"), std::string::npos);
}

TEST(session_features, login_delay_refusal_code) {
  fake_driver d;
  d.run();
  d.say("USER alice\r\nPASS secret\r\n");
  // (the fake opens fine; exercise the reply through open_done directly)
  session s2({});
  s2.output().clear();
  s2.feed("USER a\r\nPASS b\r\n");
  EXPECT_EQ(s2.next(), step::authenticate);
  s2.auth_done(auth_status::ok);
  EXPECT_EQ(s2.next(), step::open_maildrop);
  s2.open_done(open_status::login_delay);
  EXPECT_EQ(s2.output(), "+OK\r\n-ERR [LOGIN-DELAY] Logged in too recently, try again later.\r\n");
}

TEST_F(logged_in, xtnd_xlist_all_and_one) {
  d.s.feed("XTND XLIST Subject\r\n");
  EXPECT_EQ(d.s.next(), step::xlist);
  EXPECT_EQ(d.s.xlist_header(), "Subject");
  EXPECT_EQ(d.s.xlist_messages(), (std::vector<std::size_t>{0, 1, 2}));
  d.s.xlist_done(true, {"Subject: one", "", ".Subject: dot"});
  EXPECT_EQ(d.run(), "+OK Header list follows\r\n1 Subject: one\r\n3 ..Subject: dot\r\n.\r\n");
  EXPECT_EQ(d.say("XTND XLIST Bad:Name\r\n"), "-ERR Invalid header name.\r\n");
  EXPECT_EQ(d.say("XTND XLIST Subject 9\r\n"), "-ERR No such message.\r\n");
  EXPECT_EQ(d.say("XTND XMIT\r\n"), "-ERR Unknown or disabled XTND command.\r\n");
}

TEST(session_features, xtnd_xmit_collects_and_limits) {
  session_options o;
  o.xtnd_xmit = true;
  o.xmit_max_size = 40;
  session s(o);
  s.output().clear();
  s.feed("XTND XMIT\r\n");
  EXPECT_EQ(s.next(), step::need_input);
  EXPECT_EQ(s.output(), "-ERR Command not valid before login.\r\n");
  s.output().clear();
  s.feed("USER a\r\nPASS b\r\n");
  ASSERT_EQ(s.next(), step::authenticate);
  s.auth_done(auth_status::ok);
  ASSERT_EQ(s.next(), step::open_maildrop);
  s.open_done(open_status::ok, {});
  s.output().clear();
  s.feed("XTND XMIT\r\nTo: x\r\n\r\n..dot\r\n.\r\n");
  ASSERT_EQ(s.next(), step::xmit);
  EXPECT_EQ(s.xmit_message(), "To: x\r\n\r\n.dot\r\n");
  s.xmit_done(true);
  EXPECT_EQ(s.next(), step::need_input);
  EXPECT_NE(s.output().find("+OK Message sent.\r\n"), std::string::npos);
  s.output().clear();
  s.feed("XTND XMIT\r\n" + std::string(60, 'x') + "\r\n.\r\nNOOP\r\n");
  EXPECT_EQ(s.next(), step::need_input);
  EXPECT_NE(s.output().find("-ERR Message too large, not sent.\r\n+OK\r\n"), std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Secret marking: every line the engine reads is reported with what of it may be shown.

struct recorded_line {
  std::string line;
  line_mark mark;
  // What a record may show: the shown prefix (the rest is secret).
  std::string shown() const { return line.substr(0, std::min(mark.shown, line.size())); }
};

struct line_recorder final : line_observer {
  std::vector<recorded_line> lines;
  void client_line(std::string_view line, const line_mark& mark) override {
    lines.push_back({std::string(line), mark});
  }
  // True when no line's shown part contains `secret`.
  bool hides(std::string_view secret) const {
    for (const auto& l : lines) {
      if (l.shown().find(secret) != std::string::npos) {
        return false;
      }
    }
    return true;
  }
};

session_options marked_opts(line_recorder& rec) {
  session_options o;
  o.lines = &rec;
  o.sasl_mechanisms = {"PLAIN", "LOGIN"};
  return o;
}

TEST(session_marks, pass_argument_and_mistyped_pass_are_secret) {
  line_recorder rec;
  fake_driver d(marked_opts(rec));
  d.run();
  d.say("USER alice\r\nPAS sec1\r\nPASS\tsec2\r\npass  sec3\r\nNOOP sec4\r\nsec5\r\n");
  ASSERT_EQ(rec.lines.size(), 6u);
  EXPECT_EQ(rec.lines[0].shown(), "USER alice");
  EXPECT_EQ(rec.lines[1].mark.shown, 0u);  // "PAS": not a verb the engine knows
  EXPECT_EQ(rec.lines[2].mark.shown, 0u);  // PASS<TAB>secret: one unknown word
  EXPECT_EQ(rec.lines[3].shown(), "pass");
  EXPECT_EQ(rec.lines[4].shown(), "NOOP");  // before login: the verb only
  EXPECT_EQ(rec.lines[5].mark.shown, 0u);   // a password typed as a command
  for (const char* s : {"sec1", "sec2", "sec3", "sec4", "sec5"}) {
    EXPECT_TRUE(rec.hides(s)) << s;
  }
  for (const auto& l : rec.lines) {
    EXPECT_EQ(l.mark.kind, line_kind::command);
    EXPECT_EQ(l.mark.reply, reply_shape::single);
  }
}

TEST(session_marks, apop_digest_and_auth_initial_response_are_secret) {
  line_recorder rec;
  session_options o = marked_opts(rec);
  o.apop_timestamp = "<1.2@h>";
  fake_driver d(std::move(o));
  d.run();
  d.say("APOP alice c4c9334bac560ecc979e58001b3e22fa\r\n");
  d.say("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
  d.say("AUTH AGFsaWNlAHNlY3JldA\r\n");
  ASSERT_EQ(rec.lines.size(), 3u);
  EXPECT_EQ(rec.lines[0].shown(), "APOP alice");
  EXPECT_EQ(rec.lines[1].shown(), "AUTH PLAIN");
  EXPECT_EQ(rec.lines[1].mark.reply, reply_shape::sasl);
  EXPECT_EQ(rec.lines[2].shown(), "AUTH");  // not a mechanism: maybe a response
  EXPECT_TRUE(rec.hides("c4c9334b"));
  EXPECT_TRUE(rec.hides("AGFsaWNl"));
}

TEST(session_marks, every_sasl_continuation_is_secret_but_cancel) {
  line_recorder rec;
  fake_driver d(marked_opts(rec));
  d.run();
  d.say("AUTH LOGIN\r\n");  // the fake mechanism challenges an empty start
  d.say("good\r\n");        // -> challenge "Y2g="
  d.say("*\r\n");
  d.say("AUTH PLAIN\r\n");
  d.say(std::string(limits::max_auth_line + 10, 'A') + "\r\n");  // too long: discarded
  ASSERT_EQ(rec.lines.size(), 5u);
  EXPECT_EQ(rec.lines[0].shown(), "AUTH LOGIN");
  EXPECT_EQ(rec.lines[1].mark.kind, line_kind::sasl_response);
  EXPECT_EQ(rec.lines[1].mark.shown, 0u);
  EXPECT_EQ(rec.lines[1].mark.reply, reply_shape::none);
  EXPECT_EQ(rec.lines[2].mark.kind, line_kind::sasl_response);
  EXPECT_EQ(rec.lines[2].shown(), "*");
  EXPECT_EQ(rec.lines[4].mark.kind, line_kind::discarded);
  EXPECT_EQ(rec.lines[4].mark.reply, reply_shape::none);
  EXPECT_TRUE(rec.hides("good"));
}

TEST(session_marks, base64_after_a_refused_auth_is_secret_before_and_after_login) {
  line_recorder rec;
  session_options o = marked_opts(rec);
  o.user_pass_allowed = false;
  o.sasl_mechanisms = {"CRAM-MD5"};
  fake_driver d(std::move(o));
  d.run();
  // PLAIN refused for policy, then an unknown mechanism: the answers sent anyway.
  EXPECT_NE(d.say("AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n").find("-ERR"), std::string::npos);
  d.say("AUTH NOSUCH\r\nYWxpY2U=\r\nc2VjcmV0\r\n");
  EXPECT_TRUE(rec.hides("AGFsaWNl"));
  EXPECT_TRUE(rec.hides("YWxpY2U"));
  EXPECT_TRUE(rec.hides("c2VjcmV0"));
  EXPECT_EQ(rec.lines[0].shown(), "AUTH PLAIN");
  EXPECT_EQ(rec.lines[2].shown(), "AUTH");

  line_recorder after;
  fake_driver in(marked_opts(after));
  in.run();
  in.say("USER alice\r\nPASS secret\r\n");
  in.say("LIST 1\r\nRETR 1\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nsecret\r\n");
  ASSERT_EQ(after.lines.size(), 7u);
  EXPECT_EQ(after.lines[2].shown(), "LIST 1");  // after login commands are shown whole
  EXPECT_EQ(after.lines[3].shown(), "RETR 1");
  EXPECT_EQ(after.lines[3].mark.reply, reply_shape::body);
  EXPECT_EQ(after.lines[5].mark.shown, 0u);
  EXPECT_EQ(after.lines[6].mark.shown, 0u);
  EXPECT_TRUE(after.hides("secret"));
}

TEST(session_marks, xmit_message_lines_are_marked_as_mail) {
  line_recorder rec;
  session_options o = marked_opts(rec);
  o.xtnd_xmit = true;
  fake_driver d(std::move(o));
  d.run();
  d.say("USER alice\r\nPASS secret\r\n");
  d.say("XTND XMIT\r\nTo: x@y\r\n\r\nbody\r\n.\r\n");
  ASSERT_EQ(rec.lines.size(), 7u);
  EXPECT_EQ(rec.lines[2].mark.kind, line_kind::command);
  for (std::size_t i = 3; i < 6; ++i) {
    EXPECT_EQ(rec.lines[i].mark.kind, line_kind::message);
    EXPECT_EQ(rec.lines[i].mark.reply, reply_shape::none);
  }
  EXPECT_EQ(rec.lines[6].line, ".");
  EXPECT_EQ(rec.lines[6].mark.reply, reply_shape::single);
}

}  // namespace
}  // namespace postern::pop3
