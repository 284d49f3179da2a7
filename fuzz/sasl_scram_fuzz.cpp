// Fuzz target: the server side of SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS variants
// (src/auth/sasl.hpp, through GNU SASL) against the in-memory user database of
// fuzz_users.hpp.
// Input: an option byte, then
//   raw mode (option bit 4): the client's responses separated by '\n', base64-encoded by the
//     target (sent as they are with bit 5). The server's nonce is random, so no such input can
//     prove anything: an exchange must never succeed.
//   client mode: a flags byte, then fields separated by '\n': user name (a byte 0x80 + i
//     alone picks user i of the database), password (empty: the user's right one), client
//     nonce, authzid, an extension attribute for client-final, then further responses sent
//     after client-final. The target runs an RFC 5802 client with them (so that mutations
//     reach the proof check), tampering with the messages as the flags say.
//   option bits 0-1: SCRAM-SHA-1, SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-256-PLUS;
//   bit 2: the connection has tls-exporter data, bit 3: tls-unique data; bit 6: no initial
//   response (client-first goes in the second step).
// Properties: those of check_step (answers well formed, reasons given, no database secret
// shown that the client did not send); a success only with the user's right password, the
// nonce and proof untouched, the channel binding right, and no other authzid; an untouched
// exchange with the right password of a user with a usable secret succeeds, and the server's
// signature verifies; after the end every further step fails.
#include "fuzz/fuzz_sasl.hpp"

#include <openssl/hmac.h>

#include <charconv>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

using namespace postern;
using namespace postern::fuzz;

namespace {

constexpr std::string_view tls_exporter = "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";  // 32 x 0x5a
constexpr std::string_view tls_unique = "tls-unique-finished";

const auth::sasl_server& server() {
  static fuzz_passdb db;
  static const auto srv = [] {
    auth::sasl_settings s;
    s.mechanisms = {"SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"};
    s.hostname = "pop.example.org";
    s.salt_key = "fuzz-salt-key";
    auto r = auth::sasl_server::create(db, std::move(s));
    FUZZ_CHECK(r.ok());
    return std::move(r).value();
  }();
  return *srv;
}

std::string hmac(const EVP_MD* md, std::string_view key, std::string_view msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(md, key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out, &len);
  return {reinterpret_cast<const char*>(out), len};
}

std::string digest(const EVP_MD* md, std::string_view msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(msg.data(), msg.size(), out, &len, md, nullptr);
  return {reinterpret_cast<const char*>(out), len};
}

// PBKDF2 is most of the cost of an exchange: the client's side is remembered.
const std::string& salted_password(const EVP_MD* md, const std::string& password,
                                   const std::string& salt, int iterations) {
  static std::map<std::tuple<const EVP_MD*, std::string, std::string, int>, std::string> cache;
  if (cache.size() > 256) {
    cache.clear();
  }
  auto [it, fresh] = cache.try_emplace({md, password, salt, iterations});
  if (fresh) {
    it->second.assign(static_cast<std::size_t>(EVP_MD_get_size(md)), '\0');
    PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                      reinterpret_cast<const unsigned char*>(salt.data()),
                      static_cast<int>(salt.size()), iterations, md,
                      static_cast<int>(it->second.size()),
                      reinterpret_cast<unsigned char*>(it->second.data()));
  }
  return it->second;
}

// The value of attribute `a` ("a=value") in a SCRAM message, or nullopt.
std::optional<std::string> attr(std::string_view msg, char a) {
  while (!msg.empty()) {
    const auto comma = msg.find(',');
    const std::string_view item = msg.substr(0, comma);
    if (item.size() >= 2 && item[0] == a && item[1] == '=') {
      return std::string(item.substr(2));
    }
    if (comma == std::string_view::npos) {
      break;
    }
    msg.remove_prefix(comma + 1);
  }
  return std::nullopt;
}

std::vector<std::string_view> split(std::string_view s, std::size_t max_fields) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < max_fields) {
    const auto nl = s.find('\n');
    if (nl == std::string_view::npos) {
      break;
    }
    out.push_back(s.substr(0, nl));
    s.remove_prefix(nl + 1);
  }
  out.push_back(s);
  return out;
}

bool printable_nonce(std::string_view n) {
  if (n.empty()) {
    return false;
  }
  for (char c : n) {
    if (c < 0x21 || c > 0x7e || c == ',') {
      return false;
    }
  }
  return true;
}

// One exchange driven by the input; returns after its last step.
struct run {
  std::unique_ptr<auth::sasl_exchange> x;
  std::string said;  // everything the client sent, raw and decoded
  bool finished = false;
  bool succeeded = false;
  std::size_t steps = 0;
  auth::sasl_step last;

  void send(std::string_view wire, std::string_view plain) {
    said += '\n';
    said += wire;
    said += '\n';
    said += plain;
    last = x->step(wire);
    ++steps;
    check_step(last, *x, said);
    if (finished) {
      FUZZ_CHECK(last.status == auth::sasl_status::failure);
      return;
    }
    if (last.status != auth::sasl_status::challenge) {
      finished = true;
      succeeded = last.status == auth::sasl_status::success;
    }
    FUZZ_CHECK(finished || steps <= auth::max_sasl_steps);
  }
};

void raw_mode(run& r, std::string_view rest, bool as_is) {
  for (std::string_view line : split(rest, SIZE_MAX)) {
    r.send(as_is ? std::string(line) : b64(line), line);
  }
  FUZZ_CHECK(!r.succeeded);
}

struct client_choice {
  const fuzz_user* user = nullptr;  // a database user picked by index
  std::string name;
  std::string password;
  bool right_password = false;
};

void client_mode(run& r, cursor& c, std::uint8_t opt, std::string_view mech) {
  const std::uint8_t flags = c.byte();
  const auto f = split(c.rest(), 6);
  auto field = [&](std::size_t i) { return i < f.size() ? f[i] : std::string_view(); };
  const bool sha1 = mech.starts_with("SCRAM-SHA-1");
  const bool plus = mech.ends_with("-PLUS");
  const EVP_MD* md = sha1 ? EVP_sha1() : EVP_sha256();

  client_choice who;
  const auto& users = fuzz_users();
  if (field(0).size() == 1 && static_cast<unsigned char>(field(0)[0]) >= 0x80) {
    who.user = &users[(static_cast<unsigned char>(field(0)[0]) - 0x80U) % users.size()];
    who.name = who.user->name;
  } else {
    who.name = std::string(field(0));
    who.user = find_fuzz_user(who.name);
  }
  who.password =
      field(1).empty() && who.user != nullptr ? who.user->password : std::string(field(1));
  who.right_password = who.user != nullptr && fuzz_password_ok(*who.user, who.password);
  const std::string nonce(field(2).empty() ? std::string_view("fyko+d2lbbFgONRv9qkxdawL")
                                           : field(2));
  const std::string authzid(field(3));

  // gs2 header: flags bits 0-1 choose n, y, p=tls-exporter, p=tls-unique.
  static constexpr std::string_view cb_flags[] = {"n", "y", "p=tls-exporter", "p=tls-unique"};
  const std::string_view cb_flag = cb_flags[flags & 3];
  const bool tamper_cb = (flags & 4) != 0;      // bind other data than the channel's
  const bool tamper_nonce = (flags & 8) != 0;   // client-final names another nonce
  const bool tamper_proof = (flags & 16) != 0;  // flip a bit of the proof
  const bool with_ext = (flags & 32) != 0;      // an extension attribute in client-final
  const bool raw_name = (flags & 64) != 0;      // send the name as it is, without escapes

  std::string sname;
  for (char ch : who.name) {
    if (!raw_name && ch == ',') {
      sname += "=2C";
    } else if (!raw_name && ch == '=') {
      sname += "=3D";
    } else {
      sname += ch;
    }
  }
  const std::string gs2 =
      std::string(cb_flag) + "," + (authzid.empty() ? "" : "a=" + authzid) + ",";
  const std::string first_bare = "n=" + sname + ",r=" + nonce;
  const std::string first = gs2 + first_bare;
  if ((opt & 64) != 0) {
    r.send("", "");
  }
  if (r.finished) {
    return;
  }
  r.send(b64(first), first);
  if (r.finished) {
    FUZZ_CHECK(!r.succeeded);
    return;
  }
  const auto server_first = unb64(r.last.server_data_b64);
  FUZZ_CHECK(server_first.has_value());
  const auto combined = attr(*server_first, 'r');
  const auto salt = unb64(attr(*server_first, 's').value_or("?"));
  const auto iter = attr(*server_first, 'i');
  if (!(server_first->starts_with("r=") && combined && combined->starts_with(nonce) &&
        combined->size() > nonce.size() && salt && !salt->empty() && iter)) {
    // A client nonce with a comma or an unprintable byte, or a name or authzid sent with a
    // comma unescaped (the target never escapes the authzid), may be taken apart differently.
    FUZZ_CHECK(!printable_nonce(nonce) || authzid.find(',') != std::string::npos ||
               (raw_name && who.name.find(',') != std::string::npos));
    return;
  }
  int iterations = 0;
  (void)std::from_chars(iter->data(), iter->data() + iter->size(), iterations);
  FUZZ_CHECK(iterations >= 4096);

  std::string cb_data;
  if (cb_flag == "p=tls-exporter") {
    cb_data = tls_exporter;
  } else if (cb_flag == "p=tls-unique") {
    cb_data = tls_unique;
  }
  if (tamper_cb) {
    cb_data += 'x';
  }
  const std::string without_proof = "c=" + b64(gs2 + cb_data) + ",r=" + *combined +
                                    (tamper_nonce ? "x" : "") +
                                    (with_ext ? "," + std::string(field(4)) : "");
  const std::string& salted = salted_password(md, who.password, *salt, iterations);
  const std::string client_key = hmac(md, salted, "Client Key");
  const std::string auth_message = first_bare + "," + *server_first + "," + without_proof;
  const std::string signature = hmac(md, digest(md, client_key), auth_message);
  std::string proof = client_key;
  for (std::size_t i = 0; i < proof.size(); ++i) {
    proof[i] = static_cast<char>(proof[i] ^ signature[i]);
  }
  if (tamper_proof) {
    proof[flags % proof.size()] ^= 1;
  }
  const std::string final = without_proof + ",p=" + b64(proof);
  r.send(b64(final), final);

  // What a correct server must decide.
  const bool cb_ok =
      !tamper_cb && (plus ? cb_flag == "p=tls-exporter" && (opt & 4) != 0 : cb_flag == "n");
  const bool usable = who.user != nullptr &&
                      (who.user->stored.starts_with("{PLAIN}") ||
                       who.user->stored.starts_with(sha1 ? "{SCRAM-SHA-1}" : "{SCRAM-SHA-256}"));
  const bool name_plain = who.name.find_first_of(",=") == std::string::npos;
  const bool fits =
      b64(first).size() <= auth::max_sasl_response && b64(final).size() <= auth::max_sasl_response;
  const bool clean = fits && who.right_password && !tamper_nonce && !tamper_proof && !with_ext &&
                     (authzid.empty() || authzid == who.name) && printable_nonce(nonce);
  if (r.succeeded) {
    const fuzz_user* u = find_fuzz_user(r.last.user.name);
    FUZZ_CHECK(u != nullptr && fuzz_password_ok(*u, who.password));
    FUZZ_CHECK(!tamper_nonce && !tamper_proof);
    FUZZ_CHECK(authzid.empty() || authzid == r.last.user.name);
    FUZZ_CHECK(!name_plain || r.last.user.name == who.name);
    FUZZ_CHECK(plus ? cb_flag.starts_with("p=") && !tamper_cb : !cb_flag.starts_with("p="));
    const std::string server_key = hmac(md, salted, "Server Key");
    const auto server_final = unb64(r.last.server_data_b64);
    FUZZ_CHECK(server_final && *server_final == "v=" + b64(hmac(md, server_key, auth_message)));
  } else if (clean && usable && name_plain && cb_ok) {
    const bool a_correct_exchange_failed = true;
    FUZZ_CHECK(!a_correct_exchange_failed);
  }
  for (std::string_view more : split(field(5), SIZE_MAX)) {
    r.send(b64(more), more);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor c(data, size);
  const std::uint8_t opt = c.byte();
  static constexpr std::string_view mechs[] = {"SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                                               "SCRAM-SHA-256-PLUS"};
  const std::string_view mech = mechs[opt & 3];
  auth::sasl_channel ch;
  ch.secure = (opt & 12) != 0;
  if ((opt & 4) != 0) {
    ch.tls_exporter = tls_exporter;
  }
  if ((opt & 8) != 0) {
    ch.tls_unique = tls_unique;
  }
  auto started = server().start(mech, ch);
  const bool plus = mech.ends_with("-PLUS");
  if (!started.ok()) {
    FUZZ_CHECK(plus && (opt & 12) == 0);
    return 0;
  }
  FUZZ_CHECK(!plus || (opt & 12) != 0);
  run r;
  r.x = std::move(started).value();
  r.said = std::string(c.rest());
  if ((opt & 16) != 0) {
    raw_mode(r, c.rest(), (opt & 32) != 0);
  } else {
    client_mode(r, c, opt, mech);
  }
  return 0;
}
