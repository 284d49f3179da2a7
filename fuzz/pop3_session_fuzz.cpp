// Fuzz target: the POP3 protocol engine (src/pop3/session.hpp) fed arbitrary client bytes,
// with every request answered in each way the driver (src/net/session_driver.cpp) can answer
// it: scripted (success, each failure, SASL challenges, TLS up or failed, RETR/TOP failures
// with each store error) or for real: USER/PASS and APOP checked against the in-memory user
// database of fuzz_users.hpp, AUTH run through a real SASL exchange (PLAIN, LOGIN, CRAM-MD5,
// SCRAM-SHA-256) on it, the privilege-separation handoff (a new session resumed at the
// maildrop open with the input not yet processed).
// Input: an option byte (session options), a mode byte, a count byte n; the last n bytes of
// the input are the answer choices (used in turn, round and round; 0 when n is 0), the bytes
// between are the client's. Mode bits 0-2: max_bad_commands - 1; bits 3-4: how the client
// bytes arrive: in chunks whose sizes come from the answer choices, all at once, one byte at
// a time; bit 5: a greeting-less session resumed for user alice (privilege separation);
// bit 6: a line observer checks what each line may show.
// Properties: no crash; every request is answered and the engine either waits for input or
// closes within a bounded number of steps; whatever it sends is whole CRLF-terminated lines;
// requests name listed messages; deletion marks cover exactly the listed messages; after
// close it stays closed; a login answered for real names a user whose password the client
// sent; a line observer is told of every line, and a PASS or SASL answer is never shown; a
// yield comes only while a whole command is buffered.
#include "auth/apop.hpp"
#include "auth/sasl.hpp"
#include "common/encoding.hpp"
#include "fuzz/fuzz_check.hpp"
#include "fuzz/fuzz_users.hpp"
#include "pop3/dot_encoder.hpp"
#include "pop3/session.hpp"

#include <array>
#include <memory>
#include <string>
#include <vector>

using namespace postern::pop3;
using postern::fuzz::cursor;
namespace auth = postern::auth;
namespace store = postern::store;
namespace fz = postern::fuzz;

namespace {

const std::vector<store::message_info>& infos() {
  static const std::vector<store::message_info> m = {
      {20, "uid-1"}, {0, "uid-2"}, {300, "a-very-long-but-legal-unique-id-0123456789"}};
  return m;
}
constexpr std::array<std::string_view, 3> bodies = {"Subject: a\n\nline 1\n.dot\n", "", "x\r\n"};
constexpr std::string_view apop_stamp = "<1.2@fuzz>";

fz::fuzz_passdb& users() {
  static fz::fuzz_passdb db;
  return db;
}

const auth::sasl_server& sasl() {
  static const auto srv = [] {
    auth::sasl_settings s;
    s.mechanisms = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"};
    s.hostname = "pop.example.org";
    s.salt_key = "fuzz-salt-key";
    s.cram_md5_challenge_for_test = "<1896.697170952@postoffice.example.net>";
    auto r = auth::sasl_server::create(users(), std::move(s));
    FUZZ_CHECK(r.ok());
    return std::move(r).value();
  }();
  return *srv;
}

session_options options_from(std::uint8_t a, std::uint8_t mode) {
  session_options o;
  o.max_bad_commands = 1 + (mode & 7);
  o.user_pass_allowed = (a & 1) == 0;
  o.stls_offered = (a & 2) != 0;
  o.tls_required = (a & 4) != 0;
  if ((a & 8) != 0) {
    o.sasl_mechanisms = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"};
  }
  if ((a & 16) != 0) {
    o.apop_timestamp = apop_stamp;
  }
  o.xtnd_xmit = (a & 32) != 0;
  o.xmit_max_size = 64;
  o.xtnd_xlist = (a & 64) != 0;
  if ((a & 128) != 0) {
    o.login_delay_capability = "LOGIN-DELAY 900";
    o.expire_capability = "EXPIRE NEVER";
  }
  if ((mode & 32) != 0) {
    o.resume_user = "alice";
    o.resume_method = "PASS";
  }
  return o;
}

// Checks what the engine lets a record of the session show of each line.
// NOLINTNEXTLINE(cppcoreguidelines-virtual-class-destructor): final, never deleted through a base
class checking_observer final : public line_observer {
 public:
  void client_line(std::string_view line, const line_mark& mark) override {
    ++lines;
    FUZZ_CHECK(mark.shown <= line.size());
    if (mark.kind == line_kind::sasl_response) {
      FUZZ_CHECK(mark.shown == 0 || line == "*");
    }
    if (mark.kind == line_kind::discarded) {
      FUZZ_CHECK(mark.shown == 0);
    }
    if (mark.kind == line_kind::command && line.size() > 5 &&
        postern::ascii_iequals(line.substr(0, 5), "PASS ")) {
      FUZZ_CHECK(mark.shown <= 4);
    }
  }
  std::size_t lines = 0;
};

// The driver's side: the session, the answer choices, the real SASL exchange in progress.
struct driver {
  std::unique_ptr<session> s;
  session_options opts;
  std::string_view choices;
  std::size_t next_choice = 0;
  std::string_view client;  // the whole of the client's bytes, for the login checks
  std::unique_ptr<auth::sasl_exchange> exchange;
  bool handed_off = false;
  std::string account;     // the user a real SASL exchange logged in
  std::size_t listed = 0;  // messages of the maildrop opened

  std::uint8_t choice() {
    if (choices.empty()) {
      return 0;
    }
    return static_cast<std::uint8_t>(choices[next_choice++ % choices.size()]);
  }

  // A real login for `user` must come from a client that sent the user's password.
  void check_real_login(std::string_view user) const {
    const fz::fuzz_user* u = fz::find_fuzz_user(user);
    FUZZ_CHECK(u != nullptr && u->what == fz::fuzz_user::kind::normal);
    FUZZ_CHECK(client.find(u->password) != std::string_view::npos || s->login_method() != "USER");
  }

  void authenticate(std::uint8_t b) {
    postern::secret_string password = s->take_password();
    if (b % 4 != 3) {
      s->auth_done(static_cast<auth_status>(b % 3));
      return;
    }
    auth::verify_result v;
    if (s->login_method() == "APOP") {
      v = auth::verify_apop(users(), s->login_user(), s->apop_timestamp(), s->apop_digest());
    } else {
      v = users().verify(s->login_user(), password);
    }
    if (v.status == auth::verify_status::ok) {
      check_real_login(s->login_user());
    }
    s->auth_done(v.status == auth::verify_status::ok          ? auth_status::ok
                 : v.status == auth::verify_status::temporary ? auth_status::temporary_failure
                                                              : auth_status::bad_credentials);
  }

  void sasl_step(std::uint8_t b) {
    if (s->sasl_is_start()) {
      exchange.reset();
      account.clear();
      if (b % 4 == 3) {
        auth::sasl_channel ch;
        auto started = sasl().start(s->sasl_mechanism(), ch);
        if (!started.ok()) {
          s->sasl_done(auth_status::bad_credentials);
          return;
        }
        exchange = std::move(started).value();
      }
    }
    if (!exchange) {
      if (b % 3 == 0) {
        s->sasl_challenge((b & 4) != 0 ? "" : "Y2hhbGxlbmdl");
      } else {
        s->sasl_done(static_cast<auth_status>(b % 3), (b & 8) != 0 ? "dj1maW5hbA==" : "");
      }
      return;
    }
    const auth::sasl_step r = exchange->step(s->sasl_response());
    switch (r.status) {
      case auth::sasl_status::challenge:
        s->sasl_challenge(r.server_data_b64);
        return;
      case auth::sasl_status::success:
        FUZZ_CHECK(fz::find_fuzz_user(r.user.name) != nullptr);
        account = r.user.name;
        exchange.reset();
        s->sasl_done(auth_status::ok, r.server_data_b64);
        return;
      case auth::sasl_status::failure:
      case auth::sasl_status::temporary_failure:
        exchange.reset();
        s->sasl_done(r.status == auth::sasl_status::temporary_failure
                         ? auth_status::temporary_failure
                         : auth_status::bad_credentials);
        return;
    }
  }

  // The privilege-separation handoff: a session process resumes for the user at the open
  // (the driver names the account the login found; AUTH leaves login_user() empty).
  void hand_off() {
    session_options o = opts;
    o.resume_user = s->login_user().empty() ? account : std::string(s->login_user());
    if (o.resume_user.empty()) {
      o.resume_user = "alice";  // a scripted SASL success names nobody
    }
    o.resume_method = std::string(s->login_method());
    std::string rest = s->take_unprocessed_input();
    s = std::make_unique<session>(std::move(o));
    s->feed(rest);
    handed_off = true;
    FUZZ_CHECK(s->next() == step::open_maildrop);
  }

  void open_maildrop(std::uint8_t b) {
    if ((b & 64) != 0 && !handed_off && opts.resume_user.empty()) {
      hand_off();
    }
    static const std::vector<store::message_info> none;
    const auto& messages = (b & 8) != 0 ? none : infos();
    listed = messages.size();
    s->open_done(static_cast<open_status>(b % 5), messages);
  }

  void retrieve(std::uint8_t b) {
    FUZZ_CHECK(s->retrieve_index() < listed);
    if (b % 4 == 0) {
      s->retrieve_started(false, static_cast<postern::errc>(1 + (b >> 2) % 7));
      return;
    }
    s->retrieve_started(true);
    dot_encoder enc(s->retrieve_top_lines());
    std::string body;
    enc.encode(bodies[s->retrieve_index()], body);
    enc.finish(body);
    s->output() += body;
    s->retrieve_done(body.size());
  }

  // Answers the request `st`; the answer is chosen by the next choice byte.
  void answer(step st) {
    const std::uint8_t b = choice();
    switch (st) {
      case step::authenticate:
        authenticate(b);
        break;
      case step::open_maildrop:
        open_maildrop(b);
        break;
      case step::start_tls: {
        connection_policy p;
        p.user_pass_allowed = (b & 2) != 0;
        if ((b & 4) != 0) {
          p.sasl_mechanisms = {"PLAIN", "EXTERNAL"};
        }
        s->tls_started((b & 1) != 0, p);
        break;
      }
      case step::sasl:
        sasl_step(b);
        break;
      case step::retrieve:
        retrieve(b);
        break;
      case step::commit:
        FUZZ_CHECK(s->deletion_marks().size() == listed);
        s->commit_done((b & 1) != 0);
        break;
      case step::xlist:
        for (const std::size_t i : s->xlist_messages()) {
          FUZZ_CHECK(i < listed);
        }
        s->xlist_done((b & 1) != 0, std::vector<std::string>(s->xlist_messages().size(),
                                                             (b & 2) != 0 ? "X-A: b" : ""));
        break;
      case step::xmit:
        s->xmit_done((b & 1) != 0);
        break;
      case step::need_input:
      case step::yield:
      case step::close:
        break;
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor c(data, size);
  const std::uint8_t a = c.byte();
  const std::uint8_t mode = c.byte();
  const std::size_t n = std::min<std::size_t>(c.byte(), c.rest().size());
  std::string_view client = c.rest().substr(0, c.rest().size() - n);

  checking_observer observer;
  driver d;
  d.opts = options_from(a, mode);
  if ((mode & 64) != 0) {
    d.opts.lines = &observer;
  }
  d.choices = c.rest().substr(client.size());
  d.client = client;
  d.s = std::make_unique<session>(d.opts);
  const int feeding = (mode >> 3) & 3;  // 0, 3: chunks; 1: all at once; 2: byte by byte
  bool eof = false;
  // Every step either consumes input bytes or answers a request; a bounded count catches an
  // engine that loops without progress.
  const std::size_t max_steps = 8 * size + 64;
  for (std::size_t steps = 0;; ++steps) {
    FUZZ_CHECK(steps < max_steps);
    const step st = d.s->next();
    std::string& out = d.s->output();
    FUZZ_CHECK(out.empty() || out.ends_with("\r\n"));
    out.clear();
    if (st == step::close) {
      FUZZ_CHECK(d.s->next() == step::close);
      break;
    }
    if (st == step::yield) {
      FUZZ_CHECK(d.s->has_buffered_line());  // only while commands wait
      continue;
    }
    if (st != step::need_input) {
      d.answer(st);
      continue;
    }
    FUZZ_CHECK(!d.s->has_buffered_line());
    if (eof) {
      break;  // waiting for input that never comes: the driver's idle timeout ends it
    }
    if (client.empty()) {
      d.s->feed_eof();
      eof = true;
      continue;
    }
    std::size_t chunk = client.size();
    if (feeding == 2) {
      chunk = 1;
    } else if (feeding != 1) {
      chunk = std::min<std::size_t>(client.size(), 1 + d.choice() % 48);
    }
    d.s->feed(client.substr(0, chunk));
    client.remove_prefix(chunk);
  }
  return 0;
}
