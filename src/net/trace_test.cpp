#include "net/trace.hpp"

#include <gtest/gtest.h>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace postern::net {
namespace {

namespace fs = std::filesystem;

// Records an exchange the way a traced session does: a real POP3 engine reads the client's
// bytes and marks each line; the server's bytes are what the engine (and a fake backend)
// answer. Password "good" and SASL answer "b2s=" succeed; a SASL start with no initial
// response is challenged.
class traced_exchange final : public pop3::line_observer {
 public:
  explicit traced_exchange(pop3::session_options o = {}) : engine_(with_lines(std::move(o), this)) {
    drain();
  }
  void client_line(std::string_view line, const pop3::line_mark& mark) override {
    redactor_.client_line(line, mark, out_);
  }
  // The client sends `bytes` (in pieces of `chunk` bytes; 0: at once).
  traced_exchange& say(std::string_view bytes, std::size_t chunk = 0) {
    const std::size_t n = chunk == 0 ? std::max<std::size_t>(bytes.size(), 1) : chunk;
    for (std::size_t i = 0; i < bytes.size(); i += n) {
      engine_.feed(bytes.substr(i, n));
      run();
    }
    return *this;
  }
  std::vector<std::string> finish() {
    engine_.feed_eof();
    run();
    redactor_.finish(out_);
    return out_;
  }

 private:
  static pop3::session_options with_lines(pop3::session_options o, pop3::line_observer* l) {
    o.lines = l;
    if (o.sasl_mechanisms.empty()) {
      o.sasl_mechanisms = {"PLAIN", "LOGIN"};
    }
    return o;
  }
  void drain() {
    redactor_.server_bytes(engine_.output(), out_);
    engine_.output().clear();
  }
  void run();

  protocol_redactor redactor_;
  std::vector<std::string> out_;
  pop3::session engine_;
  std::vector<store::message_info> infos_{{27, "u1"}, {5, "u2"}};
};

void traced_exchange::run() {
  for (;;) {
    const pop3::step st = engine_.next();
    drain();
    switch (st) {
      case pop3::step::need_input:
      case pop3::step::close:
        return;
      case pop3::step::yield:
        break;
      case pop3::step::authenticate:
        engine_.auth_done(engine_.take_password().view() == "good"
                              ? pop3::auth_status::ok
                              : pop3::auth_status::bad_credentials);
        break;
      case pop3::step::open_maildrop:
        engine_.open_done(pop3::open_status::ok, infos_);
        break;
      case pop3::step::sasl:
        if (engine_.sasl_is_start() && engine_.sasl_response().empty()) {
          engine_.sasl_challenge("VXNlcm5hbWU6");
        } else {
          engine_.sasl_done(engine_.sasl_response() == "b2s=" ? pop3::auth_status::ok
                                                              : pop3::auth_status::bad_credentials);
        }
        break;
      case pop3::step::retrieve:
        engine_.retrieve_started(true);
        drain();
        redactor_.server_bytes("Subject: private\r\n\r\n..dot\r\n.\r\n", out_);
        engine_.retrieve_done(27);
        break;
      case pop3::step::start_tls:
        engine_.tls_started(true, {true, {"PLAIN"}});
        break;
      case pop3::step::commit:
        engine_.commit_done(true);
        break;
      case pop3::step::xlist:
        engine_.xlist_done(
            true, std::vector<std::string>(engine_.xlist_messages().size(), "Subject: hi"));
        break;
      case pop3::step::xmit:
        engine_.xmit_done(true);
        break;
    }
  }
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) {
    s += l + "\n";
  }
  return s;
}

TEST(protocol_redactor, user_pass_session_whole_and_byte_by_byte) {
  const std::vector<std::string> expected = {
      "S: +OK Postern ready.",
      "C: USER alice",
      "S: +OK",
      "C: PASS [redacted]",
      "S: +OK Logged in.",
      "C: RETR 1",
      "S: +OK 27 octets",
      "S: [message body: 27 octets]",
      "S: .",
      "C: LIST",
      "S: +OK scan listing follows",
      "S: 1 27",
      "S: 2 5",
      "S: .",
      "C: QUIT",
      "S: +OK Logging out.",
  };
  for (std::size_t chunk : {0u, 1u, 2u, 5u}) {
    traced_exchange x;
    for (const char* line :
         {"USER alice\r\n", "PASS good\r\n", "RETR 1\r\n", "LIST\r\n", "QUIT\r\n"}) {
      x.say(line, chunk);
    }
    auto out = x.finish();
    EXPECT_EQ(out, expected) << "chunk " << chunk << "\n" << joined(out);
    EXPECT_EQ(joined(out).find("good"), std::string::npos);
    EXPECT_EQ(joined(out).find("private"), std::string::npos);
  }
}

TEST(protocol_redactor, sasl_exchange_is_redacted_until_the_final_reply) {
  traced_exchange x;
  auto out = x.say("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
                 .say("AUTH LOGIN\r\n")
                 .say("YWxpY2U=\r\n")
                 .say("AUTH LOGIN\r\n*\r\n")
                 .say("AUTH LOGIN\r\nb2s=\r\n")
                 .say("NOOP\r\n")
                 .finish();
  const std::vector<std::string> expected = {
      "S: +OK Postern ready.",
      "C: AUTH PLAIN [redacted]",
      "S: -ERR [AUTH] Authentication failed.",
      "C: AUTH LOGIN",
      "S: + [challenge: 12 octets]",
      "C: [redacted]",
      "S: -ERR [AUTH] Authentication failed.",
      "C: AUTH LOGIN",
      "C: *",
      "S: + [challenge: 12 octets]",
      "S: -ERR [AUTH] Authentication cancelled.",
      "C: AUTH LOGIN",
      "C: [redacted]",
      "S: + [challenge: 12 octets]",
      "S: +OK Logged in.",
      "C: NOOP",
      "S: +OK",
  };
  EXPECT_EQ(out, expected) << joined(out);
}

TEST(protocol_redactor, apop_digest_and_pass_in_any_case) {
  pop3::session_options o;
  o.apop_timestamp = "<1.2@h>";
  traced_exchange x(std::move(o));
  const std::string all =
      joined(x.say("apop alice c4c9334bac560ecc979e58001b3e22fb\r\nuser bob\r\npass hunter2\r\n")
                 .finish());
  EXPECT_NE(all.find("C: apop alice [redacted]"), std::string::npos) << all;
  EXPECT_NE(all.find("C: pass [redacted]"), std::string::npos) << all;
  EXPECT_EQ(all.find("c4c9334b"), std::string::npos);
  EXPECT_EQ(all.find("hunter2"), std::string::npos);
}

// Pipelined commands: each is written as the engine reads it, each reply as it is sent.
TEST(protocol_redactor, pipelined_commands_keep_their_replies_apart) {
  traced_exchange x;
  auto out = x.say("USER a\r\nPASS good\r\nTOP 1 0\r\nUIDL\r\nLIST 1\r\nRETR 3\r\n").finish();
  const std::vector<std::string> expected = {
      "S: +OK Postern ready.",
      "C: USER a",
      "C: PASS [redacted]",
      "S: +OK",
      "C: TOP 1 0",
      "S: +OK Logged in.",
      "S: +OK",
      "S: [message body: 27 octets]",
      "S: .",
      "C: UIDL",
      "C: LIST 1",
      "C: RETR 3",
      "S: +OK unique-id listing follows",
      "S: 1 u1",
      "S: 2 u2",
      "S: .",
      "S: +OK 1 27",
      "S: -ERR No such message.",
  };
  EXPECT_EQ(out, expected) << joined(out);
}

TEST(protocol_redactor, xtnd_xmit_message_is_summarized_xlist_shown) {
  pop3::session_options o;
  o.xtnd_xmit = true;
  traced_exchange x(std::move(o));
  auto out = x.say("USER a\r\nPASS good\r\n")
                 .say("XTND XLIST Subject\r\n")
                 .say("XTND XMIT\r\nTo: x@y\r\n\r\nsecret body\r\n.\r\n")
                 .finish();
  const std::string all = joined(out);
  EXPECT_NE(all.find("C: XTND XLIST Subject\nS: +OK"), std::string::npos) << all;
  EXPECT_NE(all.find("S: 1 Subject: hi\nS: 2 Subject: hi\nS: .\n"), std::string::npos) << all;
  EXPECT_NE(all.find("C: XTND XMIT\nC: [message: 24 octets]\nC: .\nS: +OK"), std::string::npos)
      << all;
  EXPECT_EQ(all.find("secret body"), std::string::npos) << all;
}

TEST(protocol_redactor, lines_after_stls_follow_the_engine) {
  // CAPA pipelined after STLS is discarded by the engine, so it is not written.
  pop3::session_options o;
  o.stls_offered = true;
  traced_exchange x(std::move(o));
  auto out =
      x.say("STLS\r\nCAPA\r\n").say("USER a\r\nPAS hunter2\r\nPASS good\r\nRETR 2\r\n", 3).finish();
  const std::string all = joined(out);
  EXPECT_EQ(all.find("CAPA"), std::string::npos) << all;
  EXPECT_EQ(all.find("hunter2"), std::string::npos) << all;
  EXPECT_EQ(out[out.size() - 2], "S: [message body: 27 octets]") << all;
}

TEST(protocol_redactor, escapes_cuts_and_discarded_lines) {
  traced_exchange x;
  auto out = x.say("USER a\r\n")
                 .say("PASS good\r\n")
                 .say("NOOP \x01\\x\r\n")
                 .say("NOOP " + std::string(2995, 'a') + "\r\n")
                 .say("PASS unterminated-secret")
                 .finish();
  EXPECT_EQ(out[5], "C: NOOP \\x01\\x5Cx") << joined(out);
  EXPECT_EQ(out[7], "C: [discarded]") << joined(out);
  EXPECT_EQ(joined(out).find("unterminated"), std::string::npos);
  // A line the engine allows longer than the trace shows (marked shown whole) is cut.
  protocol_redactor r;
  std::vector<std::string> cut;
  r.client_line(std::string(3000, 'b'), {pop3::line_kind::command, 3000, pop3::reply_shape::single},
                cut);
  EXPECT_EQ(cut[0], "C: " + std::string(trace_max_line, 'b') + " [+" +
                        std::to_string(3000 - trace_max_line) + " octets]");
  // No greeting expected (a resumed session): the first server line answers the client.
  protocol_redactor resumed(false);
  std::vector<std::string> rout;
  resumed.client_line("LIST", {pop3::line_kind::command, 4, pop3::reply_shape::multi}, rout);
  resumed.server_bytes("+OK\r\n1 5\r\n.\r\n", rout);
  EXPECT_EQ(rout.back(), "S: .");
  EXPECT_EQ(rout[2], "S: 1 5");
}

// Client lines before login: only what cannot be a secret is shown.
TEST(protocol_redactor, mistyped_pass_before_login_is_redacted) {
  traced_exchange x;
  const std::string all =
      joined(x.say("USER alice\r\n")
                 .say("PAS secret1\r\nPASSS secret2\r\npass  secret3\r\nPASS\tsecret4\r\n")
                 .say("secret5\r\nNOOP secret6\r\n")
                 .finish());
  for (const char* s : {"secret1", "secret2", "secret3", "secret4", "secret5", "secret6"}) {
    EXPECT_EQ(all.find(s), std::string::npos) << s << "\n" << all;
  }
  EXPECT_NE(all.find("C: USER alice"), std::string::npos) << all;
  EXPECT_NE(all.find("C: pass [redacted]"), std::string::npos) << all;
  EXPECT_NE(all.find("C: NOOP [redacted]"), std::string::npos) << all;
}

TEST(protocol_redactor, sasl_answer_after_a_refused_auth_is_redacted) {
  const std::string b64 = "AGFsaWNlAHNlY3JldA==";
  pop3::session_options o;
  o.user_pass_allowed = false;  // PLAIN and LOGIN refused for policy
  o.sasl_mechanisms = {"CRAM-MD5"};
  traced_exchange x(std::move(o));
  const std::string all = joined(x.say("AUTH PLAIN\r\n")
                                     .say(b64 + "\r\n")
                                     .say("AUTH NOSUCHMECH\r\n" + b64 + "x\r\n")
                                     .say("auth login\r\nYWxpY2U=\r\nc2VjcmV0\r\n")
                                     .say("AUTH AGFsaWNlAHNlY3JldA\r\n")
                                     .finish());
  EXPECT_EQ(all.find("AGFsaWNl"), std::string::npos) << all;
  EXPECT_EQ(all.find("YWxpY2U"), std::string::npos) << all;
  EXPECT_EQ(all.find("c2VjcmV0"), std::string::npos) << all;
  EXPECT_NE(all.find("C: AUTH PLAIN\n"), std::string::npos) << all;
}

TEST(protocol_redactor, transaction_commands_stay_readable_after_login) {
  traced_exchange x;
  auto out = x.say("USER a\r\nPASS good\r\n").say("LIST 1\r\nNOOP x\r\n").finish();
  EXPECT_EQ(out[out.size() - 4], "C: LIST 1") << joined(out);
  EXPECT_EQ(out[out.size() - 3], "C: NOOP x") << joined(out);
  // AUTH after login is refused; the answer a client sends anyway is not written.
  traced_exchange y;
  auto after = y.say("USER a\r\nPASS good\r\n")
                   .say("AUTH PLAIN\r\n")
                   .say("AGFsaWNlAHNlY3JldA==\r\n")
                   .finish();
  EXPECT_EQ(after[after.size() - 2], "C: [redacted]") << joined(after);
  EXPECT_EQ(joined(after).find("AGFsaWNl"), std::string::npos) << joined(after);
}

// ---------------------------------------------------------------------------------------
// traced_transport

class script_transport final : public transport {
 public:
  explicit script_transport(std::vector<std::string> reads) : reads_(std::move(reads)) {}
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer buf, std::error_code& ec) override {
    if (next_ >= reads_.size()) {
      ec = asio::error::eof;
      co_return 0;
    }
    const std::string& r = reads_[next_++];
    std::memcpy(buf.data(), r.data(), r.size());
    co_return r.size();
  }
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override {
    written.append(static_cast<const char*>(buf.data()), buf.size());
    ec = {};
    co_return;
  }
  void close() noexcept override { closed = true; }
  std::string written;
  bool closed = false;

 private:
  std::vector<std::string> reads_;
  std::size_t next_ = 0;
};

class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "postern-trace-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~temp_dir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs greeting, USER/PASS (login), then QUIT through a traced transport.
void session(traced_transport& t, bool login_ok) {
  asio::io_context io;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        std::error_code ec;
        char buf[256];
        auto say = [&](std::string s) -> asio::awaitable<void> {
          co_await t.write_all(asio::buffer(s), ec);
        };
        // What the engine reports of each line it reads (see pop3::line_mark).
        auto line = [&](std::size_t n, std::size_t shown) {
          std::string_view l(buf, n >= 2 ? n - 2 : 0);
          t.client_line(l, {pop3::line_kind::command, shown == 0 ? l.size() : shown,
                            pop3::reply_shape::single});
        };
        co_await say("+OK ready\r\n");
        const std::size_t user = co_await t.read_some(asio::buffer(buf), ec);
        line(user, 0);
        co_await say("+OK\r\n");
        const std::size_t pass = co_await t.read_some(asio::buffer(buf), ec);
        line(pass, 4);
        if (login_ok) {
          t.set_user("alice");
          co_await say("+OK Logged in.\r\n");
        } else {
          co_await say("-ERR [AUTH] no\r\n");
        }
        const std::size_t quit = co_await t.read_some(asio::buffer(buf), ec);
        line(quit, 0);
        co_await say("+OK bye\r\n");
      },
      asio::detached);
  io.run();
}

trace_settings settings_for(std::shared_ptr<trace_sink> sink, std::string telemetry,
                            std::string id) {
  trace_settings s;
  s.shared = std::move(sink);
  s.telemetry_dir = std::move(telemetry);
  s.session_id = std::move(id);
  s.clock = [] { return std::chrono::system_clock::time_point(std::chrono::seconds(1700000000)); };
  return s;
}

TEST(traced_transport, shared_file_and_telemetry_only_for_users_with_a_directory) {
  temp_dir t;
  auto sink = trace_sink::open(t / "trace.log");
  ASSERT_TRUE(sink.ok()) << sink.err().message();
  fs::create_directories(t / "telemetry/alice");
  std::vector<std::string> reads = {"USER alice\r\n", "PASS pw-one\r\n", "QUIT now\r\n"};
  {
    auto inner = std::make_unique<script_transport>(reads);
    auto* raw = inner.get();
    traced_transport tt(std::move(inner), settings_for(*sink, t / "telemetry", "ab+c/d"));
    EXPECT_EQ(tt.tls(), nullptr);  // asked through to the transport inside
    session(tt, true);
    EXPECT_EQ(raw->written, "+OK ready\r\n+OK\r\n+OK Logged in.\r\n+OK bye\r\n");
    EXPECT_EQ(tt.telemetry_path(), t / "telemetry/alice/ab-c_d");
  }
  const std::string shared = slurp(t / "trace.log");
  EXPECT_NE(shared.find("2023-11-14T22:13:20.000Z ab+c/d C: USER alice\n"), std::string::npos)
      << shared;
  EXPECT_NE(shared.find("ab+c/d C: PASS [redacted]\n"), std::string::npos);
  EXPECT_EQ(shared.find("pw-one"), std::string::npos);
  // After the login the engine marks whole commands as shown.
  EXPECT_NE(shared.find("ab+c/d C: QUIT now\n"), std::string::npos) << shared;
  const std::string tele = slurp(t / "telemetry/alice/ab-c_d");
  EXPECT_EQ(tele, shared);  // the pre-login lines were kept and flushed at set_user
  struct stat st {};
  ASSERT_EQ(::stat((t / "trace.log").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // bob has no directory; a failed login never writes telemetry.
  {
    traced_transport tt(std::make_unique<script_transport>(reads),
                        settings_for(nullptr, t / "telemetry", "s2"));
    session(tt, false);
    EXPECT_EQ(tt.telemetry_path(), "");
  }
  {
    std::vector<std::string> bob = {"USER bob\r\n", "PASS x\r\n", "QUIT\r\n"};
    traced_transport tt(std::make_unique<script_transport>(bob),
                        settings_for(nullptr, t / "telemetry", "s3"));
    session(tt, true);  // set_user("alice") in the helper: directory exists
    EXPECT_FALSE(tt.telemetry_path().empty());
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(t / "telemetry/alice"), fs::directory_iterator()),
            2);
}

TEST(traced_transport, replace_inner_and_unsafe_user_names) {
  temp_dir t;
  fs::create_directories(t / "telemetry");
  auto first = std::make_unique<script_transport>(std::vector<std::string>{});
  traced_transport tt(std::move(first), settings_for(nullptr, t / "telemetry", "s"));
  auto second = std::make_unique<script_transport>(std::vector<std::string>{});
  auto* raw2 = second.get();
  auto old = tt.replace_inner(std::move(second));
  EXPECT_NE(old.get(), nullptr);
  EXPECT_EQ(&tt.inner(), raw2);
  tt.set_user("..");  // never a path component
  EXPECT_EQ(tt.telemetry_path(), "");
  tt.close();
  EXPECT_TRUE(raw2->closed);
}

TEST(trace_sink, open_errors) {
  temp_dir t;
  EXPECT_FALSE(trace_sink::open(t / "no/such/dir/trace").ok());
  fs::create_directories(t / "dir");
  EXPECT_FALSE(trace_sink::open(t / "dir").ok());
  EXPECT_FALSE(trace_enabled(trace_settings{}));
}

}  // namespace
}  // namespace postern::net
