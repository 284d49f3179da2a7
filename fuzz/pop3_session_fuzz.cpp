// Fuzz target: the POP3 protocol engine (src/pop3/session.hpp) fed arbitrary client bytes,
// with every request answered the way the input's bytes choose (success, each failure, SASL
// challenges, TLS up or failed, reads that fail). The first bytes choose the session options;
// after that the input interleaves answer choices, chunk sizes and client bytes.
// Properties: no crash; every request is answered and the engine either waits for input or
// closes within a bounded number of steps; whatever it sends is whole CRLF-terminated lines;
// deletion marks cover exactly the listed messages; after close it stays closed; a yield
// comes only while a whole command is buffered.
#include "fuzz/fuzz_check.hpp"
#include "pop3/dot_encoder.hpp"
#include "pop3/session.hpp"

#include <array>
#include <string>
#include <vector>

using namespace postern::pop3;
using postern::fuzz::cursor;
namespace store = postern::store;

namespace {

const std::vector<store::message_info>& infos() {
  static const std::vector<store::message_info> m = {
      {20, "uid-1"}, {0, "uid-2"}, {300, "a-very-long-but-legal-unique-id-0123456789"}};
  return m;
}
constexpr std::array<std::string_view, 3> bodies = {"Subject: a\n\nline 1\n.dot\n", "", "x\r\n"};

session_options options_from(cursor& c) {
  const std::uint8_t a = c.byte();
  session_options o;
  o.max_bad_commands = 1 + c.byte() % 8;
  o.user_pass_allowed = (a & 1) == 0;
  o.stls_offered = (a & 2) != 0;
  o.tls_required = (a & 4) != 0;
  if ((a & 8) != 0) {
    o.sasl_mechanisms = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"};
  }
  if ((a & 16) != 0) {
    o.apop_timestamp = "<1.2@fuzz>";
  }
  o.xtnd_xmit = (a & 32) != 0;
  o.xmit_max_size = 64;
  o.xtnd_xlist = (a & 64) != 0;
  if ((a & 128) != 0) {
    o.login_delay_capability = "LOGIN-DELAY 900";
    o.expire_capability = "EXPIRE NEVER";
  }
  return o;
}

// Answers the request `st`; the answer is chosen by the next input byte.
void answer(session& s, step st, cursor& c) {
  const std::uint8_t b = c.byte();
  switch (st) {
    case step::authenticate:
      (void)s.take_password();
      s.auth_done(static_cast<auth_status>(b % 3));
      break;
    case step::open_maildrop:
      s.open_done(static_cast<open_status>(b % 5), infos());
      break;
    case step::start_tls: {
      connection_policy p;
      p.user_pass_allowed = (b & 2) != 0;
      if ((b & 4) != 0) {
        p.sasl_mechanisms = {"PLAIN", "EXTERNAL"};
      }
      s.tls_started((b & 1) != 0, p);
      break;
    }
    case step::sasl:
      if (b % 3 == 0) {
        s.sasl_challenge((b & 4) != 0 ? "" : "Y2hhbGxlbmdl");
      } else {
        s.sasl_done(static_cast<auth_status>(b % 3), (b & 8) != 0 ? "dj1maW5hbA==" : "");
      }
      break;
    case step::retrieve: {
      FUZZ_CHECK(s.retrieve_index() < infos().size());
      if (b % 4 == 0) {
        s.retrieve_started(false, static_cast<postern::errc>(1 + b % 7));
        break;
      }
      s.retrieve_started(true);
      dot_encoder enc(s.retrieve_top_lines());
      std::string body;
      enc.encode(bodies[s.retrieve_index()], body);
      enc.finish(body);
      s.output() += body;
      s.retrieve_done(body.size());
      break;
    }
    case step::commit:
      FUZZ_CHECK(s.deletion_marks().size() == infos().size());
      s.commit_done((b & 1) != 0);
      break;
    case step::xlist:
      for (const std::size_t i : s.xlist_messages()) {
        FUZZ_CHECK(i < infos().size());
      }
      s.xlist_done((b & 1) != 0, std::vector<std::string>(s.xlist_messages().size(),
                                                          (b & 2) != 0 ? "X-A: b" : ""));
      break;
    case step::xmit:
      s.xmit_done((b & 1) != 0);
      break;
    case step::need_input:
    case step::yield:
    case step::close:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor c(data, size);
  session s(options_from(c));
  bool eof = false;
  // Every step either consumes input bytes or answers a request; a bounded count catches an
  // engine that loops without progress.
  const std::size_t max_steps = 8 * size + 64;
  for (std::size_t steps = 0;; ++steps) {
    FUZZ_CHECK(steps < max_steps);
    const step st = s.next();
    std::string& out = s.output();
    FUZZ_CHECK(out.empty() || out.ends_with("\r\n"));
    out.clear();
    if (st == step::close) {
      FUZZ_CHECK(s.next() == step::close);
      break;
    }
    if (st == step::yield) {
      FUZZ_CHECK(s.has_buffered_line());  // only while commands wait
      continue;
    }
    if (st != step::need_input) {
      answer(s, st, c);
      continue;
    }
    if (eof) {
      break;  // waiting for input that never comes: the driver's idle timeout ends it
    }
    const std::string_view rest = c.rest();
    if (rest.empty()) {
      s.feed_eof();
      eof = true;
      continue;
    }
    const std::size_t n = std::min<std::size_t>(rest.size(), 1 + c.byte() % 48);
    const std::string_view chunk = c.rest().substr(0, n);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
      c.byte();
    }
    s.feed(chunk);
  }
  return 0;
}
