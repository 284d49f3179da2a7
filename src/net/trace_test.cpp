#include "net/trace.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <gtest/gtest.h>

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

std::vector<std::string> run(const std::vector<std::pair<char, std::string>>& script,
                             std::size_t chunk = 0, bool greeting = true) {
  protocol_redactor r(greeting);
  std::vector<std::string> out;
  for (const auto& [who, bytes] : script) {
    if (who == 'L') {
      r.set_logged_in();
      continue;
    }
    std::size_t step = chunk == 0 ? bytes.size() : chunk;
    for (std::size_t i = 0; i < bytes.size(); i += step) {
      std::string_view part = std::string_view(bytes).substr(i, step);
      if (who == 'C') {
        r.client_bytes(part, out);
      } else {
        r.server_bytes(part, out);
      }
    }
  }
  r.finish(out);
  return out;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) {
    s += l + "\n";
  }
  return s;
}

TEST(protocol_redactor, user_pass_session_whole_and_byte_by_byte) {
  const std::vector<std::pair<char, std::string>> script = {
      {'S', "+OK Postern ready.\r\n"},
      {'C', "CAPA\r\n"},
      {'S', "+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"},
      {'C', "USER alice\r\n"},
      {'S', "+OK\r\n"},
      {'C', "PASS s3cret-password\r\n"},
      {'L', ""},
      {'S', "+OK Logged in.\r\n"},
      {'C', "RETR 1\r\n"},
      {'S', "+OK 20 octets\r\nSubject: private\r\n\r\n..dot\r\n.\r\n"},
      {'C', "LIST\r\n"},
      {'S', "+OK\r\n1 20\r\n.\r\n"},
      {'C', "QUIT\r\n"},
      {'S', "+OK Logging out.\r\n"},
  };
  const std::vector<std::string> expected = {
      "S: +OK Postern ready.",
      "C: CAPA",
      "S: +OK",
      "S: USER",
      "S: SASL PLAIN",
      "S: .",
      "C: USER alice",
      "S: +OK",
      "C: PASS [redacted]",
      "S: +OK Logged in.",
      "C: RETR 1",
      "S: +OK 20 octets",
      "S: [message body: 27 octets]",
      "S: .",
      "C: LIST",
      "S: +OK",
      "S: 1 20",
      "S: .",
      "C: QUIT",
      "S: +OK Logging out.",
  };
  for (std::size_t chunk : {0u, 1u, 2u, 5u}) {
    auto out = run(script, chunk);
    EXPECT_EQ(out, expected) << "chunk " << chunk << "\n" << joined(out);
    EXPECT_EQ(joined(out).find("s3cret"), std::string::npos);
    EXPECT_EQ(joined(out).find("private"), std::string::npos);
  }
}

TEST(protocol_redactor, sasl_exchange_is_redacted_until_the_final_reply) {
  auto out = run({
      {'S', "+OK hi\r\n"},
      {'C', "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"},
      {'S', "-ERR [AUTH] Authentication failed.\r\n"},
      {'C', "AUTH LOGIN\r\n"},
      {'S', "+ VXNlcm5hbWU6\r\n"},
      {'C', "YWxpY2U=\r\n"},
      {'S', "+ UGFzc3dvcmQ6\r\n"},
      {'C', "c2VjcmV0\r\n"},
      {'L', ""},
      {'S', "+OK Logged in.\r\n"},
      {'C', "NOOP\r\n"},
      {'S', "+OK\r\n"},
  });
  const std::vector<std::string> expected = {
      "S: +OK hi",
      "C: AUTH PLAIN [redacted]",
      "S: -ERR [AUTH] Authentication failed.",
      "C: AUTH LOGIN",
      "S: + [challenge: 12 octets]",
      "C: [redacted]",
      "S: + [challenge: 12 octets]",
      "C: [redacted]",
      "S: +OK Logged in.",
      "C: NOOP",
      "S: +OK",
  };
  EXPECT_EQ(out, expected) << joined(out);
  // Cancel: "*" is shown, and the exchange ends with the -ERR.
  auto cancel = run({{'S', "+OK\r\n"}, {'C', "AUTH CRAM-MD5\r\n"}, {'S', "+ PDEyMz4=\r\n"},
                     {'C', "*\r\n"}, {'S', "-ERR cancelled\r\n"}, {'C', "USER bob\r\n"}});
  EXPECT_EQ(cancel.back(), "C: USER bob");
  EXPECT_EQ(cancel[3], "C: *");
}

TEST(protocol_redactor, apop_digest_and_pass_in_any_case) {
  auto out = run({{'S', "+OK <1.2@h>\r\n"},
                  {'C', "apop alice c4c9334bac560ecc979e58001b3e22fb\r\n"},
                  {'S', "-ERR no\r\n"},
                  {'C', "user bob\r\npass hunter2\r\n"},
                  {'S', "+OK\r\n-ERR [AUTH] no\r\n"}});
  std::string all = joined(out);
  EXPECT_NE(all.find("C: APOP alice [redacted]"), std::string::npos) << all;
  EXPECT_NE(all.find("C: PASS [redacted]"), std::string::npos) << all;
  EXPECT_EQ(all.find("c4c9334b"), std::string::npos);
  EXPECT_EQ(all.find("hunter2"), std::string::npos);
}

// Lines pipelined behind PASS are read before the login: their arguments are not shown.
TEST(protocol_redactor, pipelined_commands_keep_their_replies_apart) {
  auto out = run({{'S', "+OK\r\n"},
                  {'C', "USER a\r\nPASS p\r\nTOP 1 0\r\nUIDL\r\nLIST 1\r\nRETR 2\r\n"},
                  {'S', "+OK\r\n+OK in\r\n+OK\r\nSubject: x\r\n\r\n.\r\n"
                        "+OK\r\n1 abc\r\n.\r\n+OK 1 5\r\n-ERR no such message\r\n"}});
  const std::vector<std::string> expected = {
      "S: +OK",          "C: USER a",        "C: PASS [redacted]", "C: TOP [redacted]",
      "C: UIDL",         "C: LIST [redacted]", "C: RETR [redacted]", "S: +OK",
      "S: +OK in",       "S: +OK",           "S: [message body: 14 octets]",
      "S: .",            "S: +OK",           "S: 1 abc",           "S: .",
      "S: +OK 1 5",      "S: -ERR no such message",
  };
  EXPECT_EQ(out, expected) << joined(out);
}

TEST(protocol_redactor, xtnd_xmit_message_is_summarized_xlist_shown) {
  auto out = run({{'S', "+OK\r\n"},
                  {'L', ""},
                  {'C', "XTND XLIST Subject\r\n"},
                  {'S', "+OK Header list follows\r\n1 Subject: hi\r\n.\r\n"},
                  {'C', "XTND XMIT\r\n"},
                  {'S', "+OK Start sending\r\n"},
                  {'C', "To: x@y\r\n\r\nsecret body\r\n.\r\n"},
                  {'S', "+OK Message sent.\r\n"}});
  const std::vector<std::string> expected = {
      "S: +OK",
      "C: XTND XLIST Subject",
      "S: +OK Header list follows",
      "S: 1 Subject: hi",
      "S: .",
      "C: XTND XMIT",
      "S: +OK Start sending",
      "C: [message: 24 octets]",
      "C: .",
      "S: +OK Message sent.",
  };
  EXPECT_EQ(out, expected) << joined(out);
}

TEST(protocol_redactor, stls_discards_pipelined_expectations) {
  // CAPA pipelined after STLS is discarded by the engine; the next reply is for RETR.
  auto out = run({{'S', "+OK\r\n"},
                  {'C', "STLS\r\nCAPA\r\n"},
                  {'S', "+OK Begin TLS negotiation now.\r\n"},
                  {'L', ""},
                  {'C', "RETR 1\r\n"},
                  {'S', "+OK 5 octets\r\nabc\r\n.\r\n"}});
  EXPECT_EQ(out[out.size() - 2], "S: [message body: 5 octets]") << joined(out);
}

TEST(protocol_redactor, escapes_cuts_and_partial_lines) {
  std::string long_line = "NOOP " + std::string(2995, 'a');
  auto out = run({{'S', "+OK\r\n"},
                  {'L', ""},
                  {'C', "NOOP \x01\\x\r\n"},
                  {'S', "+OK\r\n"},
                  {'C', long_line + "\r\n"},
                  {'S', "-ERR too long\r\n"},
                  {'C', "PASS unterminated-secret"}});
  EXPECT_EQ(out[1], "C: NOOP \\x01\\x5Cx");
  EXPECT_EQ(out[3], "C: NOOP " + std::string(trace_max_line - 5, 'a') + " [+" +
                        std::to_string(3000 - trace_max_line) + " octets]");
  EXPECT_EQ(out.back(), "C: PASS [redacted]");
  // No greeting expected (a resumed session): the first server line answers the client.
  auto resumed = run({{'C', "LIST\r\n"}, {'S', "+OK\r\n1 5\r\n.\r\n"}}, 0, false);
  EXPECT_EQ(resumed.back(), "S: .");
  EXPECT_EQ(resumed[2], "S: 1 5");
}

// Client lines before login: only what cannot be a secret is shown.
TEST(protocol_redactor, mistyped_pass_before_login_is_redacted) {
  auto out = run({{'S', "+OK\r\n"},
                  {'C', "USER alice\r\n"},
                  {'S', "+OK\r\n"},
                  {'C', "PAS secret1\r\nPASSS secret2\r\npass  secret3\r\nPASS\tsecret4\r\n"},
                  {'S', "-ERR a\r\n-ERR b\r\n-ERR c\r\n-ERR d\r\n"},
                  {'C', "secret5\r\nNOOP secret6\r\n"},
                  {'S', "-ERR e\r\n+OK\r\n"}});
  const std::string all = joined(out);
  for (const char* s : {"secret1", "secret2", "secret3", "secret4", "secret5", "secret6"}) {
    EXPECT_EQ(all.find(s), std::string::npos) << s << "\n" << all;
  }
  EXPECT_NE(all.find("C: USER alice"), std::string::npos) << all;
  EXPECT_NE(all.find("C: PASS [redacted]"), std::string::npos) << all;
  EXPECT_NE(all.find("C: NOOP [redacted]"), std::string::npos) << all;
}

TEST(protocol_redactor, sasl_answer_after_a_refused_auth_is_redacted) {
  const std::string b64 = "AGFsaWNlAHNlY3JldA==";
  // Refused mechanism, refused for policy, answer pipelined or sent after the -ERR.
  auto out = run({{'S', "+OK\r\n"},
                  {'C', "AUTH PLAIN\r\n"},
                  {'S', "-ERR [AUTH] mechanism not available\r\n"},
                  {'C', b64 + "\r\n"},
                  {'S', "-ERR unknown command\r\n"},
                  {'C', "AUTH NOSUCHMECH\r\n" + b64 + "x\r\n"},
                  {'S', "-ERR no\r\n-ERR unknown command\r\n"},
                  {'C', "auth login\r\n"},
                  {'S', "-ERR no\r\n"},
                  {'C', "YWxpY2U=\r\nc2VjcmV0\r\n"},
                  {'S', "-ERR a\r\n-ERR b\r\n"}});
  const std::string all = joined(out);
  EXPECT_EQ(all.find("AGFsaWNl"), std::string::npos) << all;
  EXPECT_EQ(all.find("YWxpY2U"), std::string::npos) << all;
  EXPECT_EQ(all.find("c2VjcmV0"), std::string::npos) << all;
  EXPECT_NE(all.find("C: AUTH PLAIN"), std::string::npos) << all;
  // An initial response typed in place of the mechanism is not shown either.
  auto ir = run({{'S', "+OK\r\n"}, {'C', "AUTH AGFsaWNlAHNlY3JldA\r\n"}, {'S', "-ERR no\r\n"}});
  EXPECT_EQ(joined(ir).find("AGFsaWNl"), std::string::npos) << joined(ir);
}

TEST(protocol_redactor, lines_split_across_reads_and_after_stls_before_login) {
  for (std::size_t chunk : {1u, 3u, 7u}) {
    auto out = run({{'S', "+OK\r\n"},
                    {'C', "STLS\r\n"},
                    {'S', "+OK Begin TLS negotiation now.\r\n"},
                    {'C', "USER a\r\nPAS hunter2\r\nAUTH PLAIN\r\n"},
                    {'S', "+OK\r\n-ERR\r\n-ERR\r\n"},
                    {'C', "AGFsaWNlAHNlY3JldA==\r\n"}},
                   chunk);
    const std::string all = joined(out);
    EXPECT_EQ(all.find("hunter2"), std::string::npos) << all;
    EXPECT_EQ(all.find("AGFsaWNl"), std::string::npos) << all;
    EXPECT_NE(all.find("C: USER a"), std::string::npos) << all;
  }
}

TEST(protocol_redactor, transaction_commands_stay_readable_after_login) {
  protocol_redactor r;
  std::vector<std::string> out;
  r.server_bytes("+OK\r\n", out);
  r.client_bytes("USER a\r\nPASS p\r\n", out);
  r.server_bytes("+OK\r\n", out);
  r.set_logged_in();
  r.server_bytes("+OK Logged in.\r\n", out);
  r.client_bytes("LIST 1\r\nNOOP x\r\n", out);
  r.server_bytes("+OK 1 5\r\n+OK\r\n", out);
  EXPECT_EQ(out[out.size() - 4], "C: LIST 1") << joined(out);
  EXPECT_EQ(out[out.size() - 3], "C: NOOP x") << joined(out);
  // AUTH after login is refused; the answer a client sends anyway is not written.
  r.client_bytes("AUTH PLAIN\r\n", out);
  r.server_bytes("-ERR Already logged in.\r\n", out);
  r.client_bytes("AGFsaWNlAHNlY3JldA==\r\n", out);
  EXPECT_EQ(out.back(), "C: [redacted]") << joined(out);
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
        co_await say("+OK ready\r\n");
        co_await t.read_some(asio::buffer(buf), ec);  // USER
        co_await say("+OK\r\n");
        co_await t.read_some(asio::buffer(buf), ec);  // PASS
        if (login_ok) {
          t.set_user("alice");
          co_await say("+OK Logged in.\r\n");
        } else {
          co_await say("-ERR [AUTH] no\r\n");
        }
        co_await t.read_some(asio::buffer(buf), ec);  // QUIT
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
    EXPECT_EQ(traced_transport::unwrap(&tt), raw);
    session(tt, true);
    EXPECT_EQ(raw->written, "+OK ready\r\n+OK\r\n+OK Logged in.\r\n+OK bye\r\n");
    EXPECT_EQ(tt.telemetry_path(), t / "telemetry/alice/ab-c_d");
  }
  const std::string shared = slurp(t / "trace.log");
  EXPECT_NE(shared.find("2023-11-14T22:13:20.000Z ab+c/d C: USER alice\n"), std::string::npos)
      << shared;
  EXPECT_NE(shared.find("ab+c/d C: PASS [redacted]\n"), std::string::npos);
  EXPECT_EQ(shared.find("pw-one"), std::string::npos);
  // set_user() tells the redactor about the login: the arguments after it are shown.
  EXPECT_NE(shared.find("ab+c/d C: QUIT now\n"), std::string::npos) << shared;
  const std::string tele = slurp(t / "telemetry/alice/ab-c_d");
  EXPECT_EQ(tele, shared);  // the pre-login lines were kept and flushed at set_user
  struct stat st{};
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
