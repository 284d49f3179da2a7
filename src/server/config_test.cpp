// Tests for config parsing, validation and printing, and for the demo setup.
#include "server/config.hpp"

#include <crypt.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_files.hpp"
#include "server/demo.hpp"

namespace postern::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Every field but source_path (which names where the text came from).
void expect_same_config(const config& a, const config& b) {
  ASSERT_EQ(a.listen.size(), b.listen.size());
  for (std::size_t i = 0; i < a.listen.size(); ++i) {
    EXPECT_EQ(a.listen[i].host, b.listen[i].host) << i;
    EXPECT_EQ(a.listen[i].port, b.listen[i].port) << i;
  }
  EXPECT_EQ(a.user, b.user);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.max_connections, b.max_connections);
  EXPECT_EQ(a.max_connections_per_ip, b.max_connections_per_ip);
  EXPECT_EQ(a.idle_timeout, b.idle_timeout);
  EXPECT_EQ(a.login_timeout, b.login_timeout);
  EXPECT_EQ(a.threads, b.threads);
  EXPECT_EQ(a.processes, b.processes);
  EXPECT_EQ(a.max_bad_commands, b.max_bad_commands);
  EXPECT_EQ(a.implementation_capability, b.implementation_capability);
  EXPECT_EQ(a.greeting, b.greeting);
  ASSERT_EQ(a.tls_listen.size(), b.tls_listen.size());
  for (std::size_t i = 0; i < a.tls_listen.size(); ++i) {
    EXPECT_EQ(a.tls_listen[i].host, b.tls_listen[i].host) << i;
    EXPECT_EQ(a.tls_listen[i].port, b.tls_listen[i].port) << i;
  }
  EXPECT_EQ(a.tls_cert, b.tls_cert);
  EXPECT_EQ(a.tls_key, b.tls_key);
  EXPECT_EQ(a.tls_chain, b.tls_chain);
  EXPECT_EQ(a.tls, b.tls);
  EXPECT_EQ(a.tls_min_version, b.tls_min_version);
  EXPECT_EQ(a.tls_ciphers, b.tls_ciphers);
  EXPECT_EQ(a.tls_ciphersuites, b.tls_ciphersuites);
  EXPECT_EQ(a.tls_groups, b.tls_groups);
  EXPECT_EQ(a.tls_client_ca, b.tls_client_ca);
  EXPECT_EQ(a.mail_location, b.mail_location);
  EXPECT_EQ(a.mbox_locking, b.mbox_locking);
  EXPECT_EQ(a.mbox_lock_timeout, b.mbox_lock_timeout);
  EXPECT_EQ(a.mbox_startup_recovery_timeout, b.mbox_startup_recovery_timeout);
  EXPECT_EQ(a.mbox_quoting, b.mbox_quoting);
  EXPECT_EQ(a.mbox_content_length, b.mbox_content_length);
  EXPECT_EQ(a.mbox_x_uidl, b.mbox_x_uidl);
  EXPECT_EQ(a.passdb, b.passdb);
  EXPECT_EQ(a.failure_delay, b.failure_delay);
  EXPECT_EQ(a.penalty_initial, b.penalty_initial);
  EXPECT_EQ(a.penalty_max, b.penalty_max);
  EXPECT_EQ(a.penalty_exempt_networks, b.penalty_exempt_networks);
  EXPECT_EQ(a.penalty_file, b.penalty_file);
  EXPECT_EQ(a.worker_threads, b.worker_threads);
  EXPECT_EQ(a.mechanisms, b.mechanisms);
  EXPECT_EQ(a.disable_plaintext_auth, b.disable_plaintext_auth);
  EXPECT_EQ(a.loopback_is_secure, b.loopback_is_secure);
  EXPECT_EQ(a.trusted_networks, b.trusted_networks);
  EXPECT_EQ(a.apop, b.apop);
  EXPECT_EQ(a.gssapi_keytab, b.gssapi_keytab);
  EXPECT_EQ(a.gssapi_service, b.gssapi_service);
  EXPECT_EQ(a.gssapi_hostname, b.gssapi_hostname);
  EXPECT_EQ(a.external_user, b.external_user);
  EXPECT_EQ(a.first_valid_uid, b.first_valid_uid);
  EXPECT_EQ(a.last_valid_uid, b.last_valid_uid);
  EXPECT_EQ(a.level, b.level);
  EXPECT_EQ(a.target, b.target);
  EXPECT_EQ(a.syslog_ident, b.syslog_ident);
}

std::string error_of(std::string_view text) {
  auto r = parse_config(text, "t.toml");
  if (r.ok()) {
    return "(no error)";
  }
  EXPECT_EQ(r.err().code(), errc::invalid);
  return r.err().message();
}

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-config-test") {}
};
using test::read_file;
using test::write_file;

// ---------------------------------------------------------------------------------------------
// Defaults and every key

TEST(config, empty_file_gives_defaults) {
  auto r = parse_config("", "empty.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  expect_same_config(*r, config{});
  EXPECT_EQ(r->source_path, "empty.toml");
}

TEST(config, empty_tables_and_comments_give_defaults) {
  auto r = parse_config("# nothing set\n[server]\n[mail]\n[auth]\n[tls]\n[log]\n", "t.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  expect_same_config(*r, config{});
}

struct key_case {
  std::string text;
  std::function<void(const config&)> check;
};

TEST(config, every_key_is_read) {
  const key_case cases[] = {
      {"[server]\nlisten = [\"10.0.0.1:1110\"]",
       [](const config& c) {
         ASSERT_EQ(c.listen.size(), 1u);
         EXPECT_EQ(c.listen[0].host, "10.0.0.1");
         EXPECT_EQ(c.listen[0].port, 1110);
       }},
      {"[server]\nuser = \"postern\"", [](const config& c) { EXPECT_EQ(c.user, "postern"); }},
      {"[server]\nuser = \"postern\"\ngroup = \"mail\"",
       [](const config& c) { EXPECT_EQ(c.group, "mail"); }},
      {"[server]\nmax_connections = 300",
       [](const config& c) { EXPECT_EQ(c.max_connections, 300u); }},
      {"[server]\nmax_connections_per_ip = 7",
       [](const config& c) { EXPECT_EQ(c.max_connections_per_ip, 7u); }},
      {"[server]\nidle_timeout = 900", [](const config& c) { EXPECT_EQ(c.idle_timeout, 900s); }},
      {"[server]\nthreads = 4", [](const config& c) { EXPECT_EQ(c.threads, 4u); }},
      {"[server]\nprocesses = 3", [](const config& c) { EXPECT_EQ(c.processes, 3u); }},
      {"[server]\nprocesses = \"auto\"", [](const config& c) { EXPECT_EQ(c.processes, 0u); }},
      {"[server]\nprocesses = 256", [](const config& c) { EXPECT_EQ(c.processes, 256u); }},
      {"[server]\nprocesses = 1\nprocess_model = \"fork\"",
       [](const config& c) { EXPECT_EQ(c.processes, 1u); }},
      {"", [](const config& c) { EXPECT_EQ(c.processes, 1u); }},
      {"[server]\nmax_bad_commands = 3",
       [](const config& c) { EXPECT_EQ(c.max_bad_commands, 3u); }},
      {"[server]\nimplementation_capability = false",
       [](const config& c) { EXPECT_FALSE(c.implementation_capability); }},
      {"[server]\ngreeting = \"POP3 at your service\"",
       [](const config& c) { EXPECT_EQ(c.greeting, "POP3 at your service"); }},
      {"[mail]\nlocation = \"maildir:/srv/mail/%u/Maildir\"",
       [](const config& c) { EXPECT_EQ(c.mail_location, "maildir:/srv/mail/%u/Maildir"); }},
      {"[mail]\nlocation = \"mbox:/var/mail/%u\"",
       [](const config& c) { EXPECT_EQ(c.mail_location, "mbox:/var/mail/%u"); }},
      {"[auth]\npassdb = \"passwd-file:/srv/users\"",
       [](const config& c) { EXPECT_EQ(c.passdb, "passwd-file:/srv/users"); }},
      {"[auth]\nfailure_delay = \"250ms\"",
       [](const config& c) { EXPECT_EQ(c.failure_delay, 250ms); }},
      {"[auth]\nworker_threads = 16", [](const config& c) { EXPECT_EQ(c.worker_threads, 16u); }},
      {"[log]\nlevel = \"debug\"", [](const config& c) { EXPECT_EQ(c.level, log_level::debug); }},
      {"[log]\nlevel = \"notice\"", [](const config& c) { EXPECT_EQ(c.level, log_level::notice); }},
      {"[log]\nlevel = \"warning\"",
       [](const config& c) { EXPECT_EQ(c.level, log_level::warning); }},
      {"[log]\nlevel = \"error\"", [](const config& c) { EXPECT_EQ(c.level, log_level::error); }},
      {"[log]\ntarget = \"stderr\"",
       [](const config& c) { EXPECT_EQ(c.target, log_target::stderr_); }},
      {"[log]\ntarget = \"syslog\"",
       [](const config& c) { EXPECT_EQ(c.target, log_target::syslog); }},
      {"[log]\nsyslog_ident = \"pop3d\"",
       [](const config& c) { EXPECT_EQ(c.syslog_ident, "pop3d"); }},
      // Other TOML spellings of the same tables.
      {"server.threads = 2", [](const config& c) { EXPECT_EQ(c.threads, 2u); }},
      {"log = { level = \"error\" }",
       [](const config& c) { EXPECT_EQ(c.level, log_level::error); }},
      // Boundaries.
      {"[server]\nthreads = 0", [](const config& c) { EXPECT_EQ(c.threads, 0u); }},
      {"[server]\nmax_connections = 1", [](const config& c) { EXPECT_EQ(c.max_connections, 1u); }},
      {"[auth]\nfailure_delay = 0", [](const config& c) { EXPECT_EQ(c.failure_delay, 0ms); }},
      {"[auth]\npenalty_initial = \"100ms\"\npenalty_max = \"1s\"\npenalty_exempt_networks = [\"10.0.0.0/8\"]",
       [](const config& c) {
         EXPECT_EQ(c.penalty_initial, 100ms);
         EXPECT_EQ(c.penalty_max, 1s);
         EXPECT_EQ(c.penalty_exempt_networks, std::vector<std::string>{"10.0.0.0/8"});
       }},
      {"[auth]\npenalty_max = 0", [](const config& c) { EXPECT_EQ(c.penalty_max, 0ms); }},
      {"[auth]\nfailure_delay = \"60s\"", [](const config& c) { EXPECT_EQ(c.failure_delay, 60s); }},
      {"[server]\nidle_timeout = \"1s\"", [](const config& c) { EXPECT_EQ(c.idle_timeout, 1s); }},
      {"[server]\nidle_timeout = \"24h\"", [](const config& c) { EXPECT_EQ(c.idle_timeout, 24h); }},
      {"[server]\nlogin_timeout = 0", [](const config& c) { EXPECT_EQ(c.login_timeout, 0s); }},
      {"[server]\nlogin_timeout = \"2m\"",
       [](const config& c) { EXPECT_EQ(c.login_timeout, 120s); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    auto r = parse_config(c.text, "t.toml");
    ASSERT_TRUE(r.ok()) << r.err().message();
    c.check(*r);
  }
}

TEST(config, missing_keys_keep_defaults) {
  auto r = parse_config("[server]\nthreads = 3\n", "t.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  config expected;
  expected.threads = 3;
  expect_same_config(*r, expected);
}

TEST(config, log_level_names) {
  EXPECT_STREQ(to_string(log_level::debug), "debug");
  EXPECT_STREQ(to_string(log_level::info), "info");
  EXPECT_STREQ(to_string(log_level::notice), "notice");
  EXPECT_STREQ(to_string(log_level::warning), "warning");
  EXPECT_STREQ(to_string(log_level::error), "error");
}

// ---------------------------------------------------------------------------------------------
// Durations

struct duration_case {
  const char* value;  // TOML value text for auth.failure_delay
  long long ms;       // expected, or -1 for an error
};

TEST(config, duration_forms) {
  const duration_case cases[] = {
      {"0", 0},
      {"5", 5000},
      {"\"0ms\"", 0},
      {"\"500ms\"", 500},
      {"\"1500ms\"", 1500},
      {"\"30s\"", 30000},
      {"\"1m\"", 60000},
      {"\"0h\"", 0},
      {"\"007s\"", 7000},
      {"-1", -1},
      {"1.5", -1},
      {"true", -1},
      {"\"\"", -1},
      {"\"10\"", -1},
      {"\"s\"", -1},
      {"\"10x\"", -1},
      {"\"10 s\"", -1},
      {"\" 10s\"", -1},
      {"\"10S\"", -1},
      {"\"-5s\"", -1},
      {"\"+5s\"", -1},
      {"\"1.5s\"", -1},
      {"\"1h30m\"", -1},
      {"\"10sec\"", -1},
      {"[10]", -1},
      {"\"99999999999999999999999s\"", -1},
      {"9223372036854775807", -1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.value);
    auto r = parse_config(std::string("[auth]\nfailure_delay = ") + c.value + "\n", "t.toml");
    if (c.ms < 0) {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.err().code(), errc::invalid);
      EXPECT_EQ(r.err().message().rfind("t.toml:2: auth.failure_delay: ", 0), 0u)
          << r.err().message();
    } else {
      ASSERT_TRUE(r.ok()) << r.err().message();
      EXPECT_EQ(r->failure_delay.count(), c.ms);
    }
  }
}

TEST(config, idle_timeout_units) {
  const duration_case cases[] = {
      {"1", 1000},         {"\"1000ms\"", 1000}, {"\"90s\"", 90000},
      {"\"10m\"", 600000}, {"\"2h\"", 7200000},  {"0", -1},
      {"\"999ms\"", -1},   {"\"1500ms\"", -1},   {"\"25h\"", -1},
      {"86401", -1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.value);
    auto r = parse_config(std::string("[server]\nidle_timeout = ") + c.value + "\n", "t.toml");
    if (c.ms < 0) {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.err().message().rfind("t.toml:2: server.idle_timeout: ", 0), 0u)
          << r.err().message();
    } else {
      ASSERT_TRUE(r.ok()) << r.err().message();
      EXPECT_EQ(std::chrono::milliseconds(r->idle_timeout).count(), c.ms);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Listen addresses

struct listen_case {
  const char* value;
  const char* host;  // expected canonical host, or nullptr for an error
  std::uint16_t port;
  const char* error = "";  // a part of the expected message
};

TEST(config, listen_forms) {
  const listen_case cases[] = {
      {"127.0.0.1:110", "127.0.0.1", 110},
      {"0.0.0.0:995", "0.0.0.0", 995},
      {"*:110", "0.0.0.0", 110},
      {"[::1]:110", "::1", 110},
      {"[::]:110", "::", 110},
      {"[2001:DB8:0:0::1]:2110", "2001:db8::1", 2110},
      {"[::ffff:192.0.2.1]:110", "::ffff:192.0.2.1", 110},
      {"127.0.0.1:0", "127.0.0.1", 0},
      {"127.0.0.1:65535", "127.0.0.1", 65535},
      {"localhost:110", nullptr, 0, "is a host name"},
      {"mail.example.org:110", nullptr, 0, "is a host name"},
      {"1.2.3.4", nullptr, 0, "missing \":PORT\""},
      {"1.2.3.4:99999", nullptr, 0, "port must be a number from 0 to 65535"},
      {"1.2.3.4:65536", nullptr, 0, "port must be"},
      {"1.2.3.4:", nullptr, 0, "port must be"},
      {"1.2.3.4:-1", nullptr, 0, "port must be"},
      {"1.2.3.4:+110", nullptr, 0, "port must be"},
      {"1.2.3.4: 110", nullptr, 0, "port must be"},
      {"1.2.3.4:110 ", nullptr, 0, "port must be"},
      {"[::1]110", nullptr, 0, "expected ':' and a port after ']'"},
      {"[::1:110", nullptr, 0, "missing ']'"},
      {"::1:110", nullptr, 0, "must be written in brackets"},
      {"[]:110", nullptr, 0, "not a numeric IPv6 address"},
      {"[1.2.3.4]:110", nullptr, 0, "not a numeric IPv6 address"},
      {"[localhost]:110", nullptr, 0, "not a numeric IPv6 address"},
      {"[fe80::1%eth0]:110", nullptr, 0, "not a numeric IPv6 address"},
      {":110", nullptr, 0, "missing address"},
      {"1.2.3:110", nullptr, 0, "not a numeric IPv4 address"},
      {"256.1.1.1:110", nullptr, 0, "not a numeric IPv4 address"},
      {"01.2.3.4:110", nullptr, 0, "not a numeric IPv4 address"},
      {"", nullptr, 0, "missing \":PORT\""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.value);
    auto r = parse_config(std::string("[server]\nlisten = [\"") + c.value + "\"]\n", "t.toml");
    if (c.host == nullptr) {
      ASSERT_FALSE(r.ok());
      const std::string& msg = r.err().message();
      EXPECT_EQ(msg.rfind("t.toml:2: server.listen: ", 0), 0u) << msg;
      EXPECT_NE(msg.find(c.error), std::string::npos) << msg;
    } else {
      ASSERT_TRUE(r.ok()) << r.err().message();
      ASSERT_EQ(r->listen.size(), 1u);
      EXPECT_EQ(r->listen[0].host, c.host);
      EXPECT_EQ(r->listen[0].port, c.port);
    }
  }
}

TEST(config, listen_several_and_element_lines) {
  auto r = parse_config(
      "[server]\nlisten = [\n  \"127.0.0.1:110\",\n  \"[::1]:110\",\n  \"*:0\",\n  \"*:0\",\n]\n",
      "t.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  ASSERT_EQ(r->listen.size(), 4u);
  EXPECT_EQ(r->listen[1].host, "::1");
  EXPECT_EQ(r->listen[3].port, 0);

  // The bad element's own line is reported.
  EXPECT_EQ(error_of("[server]\nlisten = [\n  \"127.0.0.1:110\",\n  \"localhost:110\",\n]\n"),
            "t.toml:4: server.listen: \"localhost:110\": \"localhost\" is a host name; use a "
            "numeric address (names are never resolved)");
  EXPECT_EQ(error_of("[server]\nlisten = [\n  \"127.0.0.1:110\",\n  \"127.0.0.1:110\",\n]\n"),
            "t.toml:4: server.listen: \"127.0.0.1:110\" is listed twice");
  EXPECT_EQ(error_of("[server]\nlisten = [\"*:110\", \"0.0.0.0:110\"]\n"),
            "t.toml:2: server.listen: \"0.0.0.0:110\" is listed twice");
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the file, the line and the key

struct error_case {
  const char* text;
  const char* message;  // the whole expected message
};

TEST(config, errors_name_file_line_and_key) {
  const error_case cases[] = {
      // Structure.
      {"[server]\nthreads = 1\n\n[srever]\n",
       "t.toml:4: srever: unknown table; the tables are [server], [mail], [auth], [tls], [pop3] "
       "and [log]"},
      {"[server]\nlisen = [\"*:110\"]\n",
       "t.toml:2: server.lisen: unknown key; did you mean listen?"},
      {"[server]\nidle_timout = 5\n",
       "t.toml:2: server.idle_timout: unknown key; did you mean idle_timeout?"},
      {"[server]\ncolour = 5\n", "t.toml:2: server.colour: unknown key"},
      {"[server]\npassdb = \"passwd-file:/x\"\n",
       "t.toml:2: server.passdb: unknown key; passdb belongs in [auth]"},
      {"[server.tls]\ncert = \"x\"\n", "t.toml:1: server.tls: unknown key"},
      {"\n\nthreads = 4\n",
       "t.toml:3: threads: unknown top-level key; threads belongs in [server]"},
      {"colour = 4\n",
       "t.toml:1: colour: unknown top-level key; settings go inside [server], [mail], [auth], "
       "[tls], [pop3] or [log]"},
      {"server = 4\n", "t.toml:1: server: must be a table ([server]), not an integer"},
      {"[[server]]\nthreads = 1\n", "t.toml:1: server: must be a table ([server]), not an array"},
      // Types.
      {"[server]\nthreads = \"4\"\n",
       "t.toml:2: server.threads: expected an integer, got a string"},
      {"[server]\nthreads = 4.0\n",
       "t.toml:2: server.threads: expected an integer, got a floating-point number"},
      {"[server]\nuser = 0\n", "t.toml:2: server.user: expected a string, got an integer"},
      {"[server]\nimplementation_capability = \"yes\"\n",
       "t.toml:2: server.implementation_capability: expected a boolean (true or false), got a "
       "string"},
      {"[server]\nlisten = \"127.0.0.1:110\"\n",
       "t.toml:2: server.listen: expected an array of strings such as [\"127.0.0.1:110\", "
       "\"[::1]:110\"], got a string"},
      {"[server]\nlisten = [110]\n",
       "t.toml:2: server.listen: expected an array of strings, found an integer"},
      {"[server]\nlisten = []\n",
       "t.toml:2: server.listen: must list at least one address (or set tls_listen or a [[server.listener]])"},
      {"[log]\nlevel = 1\n", "t.toml:2: log.level: expected a string, got an integer"},
      {"[auth]\nfailure_delay = 1979-05-27\n",
       "t.toml:2: auth.failure_delay: expected an integer (seconds) or a string such as \"500ms\", "
       "\"30s\", \"10m\" or \"1h\", got a date"},
      // Ranges.
      {"[server]\nmax_connections = 0\n",
       "t.toml:2: server.max_connections: must be from 1 to 1000000, not 0"},
      {"[server]\nmax_connections = 1000001\n",
       "t.toml:2: server.max_connections: must be from 1 to 1000000, not 1000001"},
      {"[server]\nmax_connections_per_ip = -1\n",
       "t.toml:2: server.max_connections_per_ip: must be from 1 to 1000000, not -1"},
      {"[server]\nthreads = 1025\n", "t.toml:2: server.threads: must be from 0 to 1024, not 1025"},
      {"[server]\nprocesses = 0\n", "t.toml:2: server.processes: must be from 1 to 256, not 0"},
      {"[server]\nprocesses = -4\n", "t.toml:2: server.processes: must be from 1 to 256, not -4"},
      {"[server]\nprocesses = 257\n", "t.toml:2: server.processes: must be from 1 to 256, not 257"},
      {"[server]\nprocesses = \"many\"\n",
       "t.toml:2: server.processes: \"many\" is not \"auto\" or a number of processes from 1 to 256"},
      {"[server]\nprocesses = 2.0\n",
       "t.toml:2: server.processes: expected an integer from 1 to 256 or \"auto\", got a floating-point "
       "number"},
      {"[server]\nprocesses = [2]\n",
       "t.toml:2: server.processes: expected an integer from 1 to 256 or \"auto\", got an array"},
      {"[server]\nmax_bad_commands = 0\n",
       "t.toml:2: server.max_bad_commands: must be from 1 to 10000, not 0"},
      {"[auth]\nworker_threads = 5000\n",
       "t.toml:2: auth.worker_threads: must be from 0 to 1024, not 5000"},
      {"\n\n\n\n\n\n\n\n\n\n[server]\nidle_timeout = 0\n",
       "t.toml:12: server.idle_timeout: must be at least 1 second"},
      {"[server]\nidle_timeout = \"1500ms\"\n",
       "t.toml:2: server.idle_timeout: must be a whole number of seconds"},
      {"[server]\nidle_timeout = \"2d\"\n",
       "t.toml:2: server.idle_timeout: \"2d\" is not a duration; write an integer (seconds) or a "
       "string such as \"500ms\", \"30s\", \"10m\" or \"1h\""},
      {"[server]\nidle_timeout = -5\n", "t.toml:2: server.idle_timeout: must not be negative"},
      {"[auth]\nfailure_delay = \"61s\"\n",
       "t.toml:2: auth.failure_delay: must be at most 60 seconds"},
      {"[auth]\npenalty_max = \"11m\"\n", "t.toml:2: auth.penalty_max: must be at most 10 minutes"},
      {"[auth]\npenalty_initial = 0\n",
       "t.toml:2: auth.penalty_initial: must be more than 0 (turn the penalty off with auth.penalty_max = 0)"},
      {"[auth]\npenalty_initial = \"20s\"\n",
       "t.toml: auth.penalty_max (\"15s\") is below auth.penalty_initial (\"20s\"); set penalty_max = 0 to turn the penalty off"},
      {"[auth]\npenalty_exempt_networks = [\"10.0.0.1/8\"]\n",
       "t.toml:2: auth.penalty_exempt_networks: \"10.0.0.1/8\" is not a numeric network (ADDRESS/PREFIX, e.g. \"192.0.2.0/24\")"},
      {"[auth]\npenalty_file = \"run/x\"\n",
       "t.toml:2: auth.penalty_file: \"run/x\": the path must be absolute"},
      {"[auth]\nfailure_delay = \"60001ms\"\n",
       "t.toml:2: auth.failure_delay: must be at most 60 seconds"},
      // Strings.
      {"[server]\ngreeting = \"\"\n", "t.toml:2: server.greeting: must not be empty"},
      {"[server]\ngreeting = \"two\\nlines\"\n",
       "t.toml:2: server.greeting: must be printable ASCII (no control characters or line breaks)"},
      {"[server]\ngreeting = \"caf\u00e9\"\n",
       "t.toml:2: server.greeting: must be printable ASCII (no control characters or line breaks)"},
      {"[server]\nuser = \"post ern\"\n",
       "t.toml:2: server.user: \"post ern\" is not a valid name (no spaces, ':', '/', ',' or "
       "control "
       "characters; \"\" keeps the current one)"},
      {"[server]\ngroup = \"-g\"\n",
       "t.toml:2: server.group: \"-g\" is not a valid name (no spaces, ':', '/', ',' or control "
       "characters; \"\" keeps the current one)"},
      {"[log]\nlevel = \"verbose\"\n",
       "t.toml:2: log.level: \"verbose\" is not one of \"debug\", \"info\", \"notice\", "
       "\"warning\", "
       "\"error\""},
      {"[log]\nlevel = \"INFO\"\n",
       "t.toml:2: log.level: \"INFO\" is not one of \"debug\", \"info\", \"notice\", \"warning\", "
       "\"error\""},
      {"[log]\ntarget = \"file\"\n",
       "t.toml:2: log.target: \"file\" is not one of \"syslog\", \"stderr\""},
      {"[log]\nsyslog_ident = \"\"\n",
       "t.toml:2: log.syslog_ident: \"\" must be 1 to 64 letters, digits, '.', '_' or '-'"},
      {"[log]\nsyslog_ident = \"pop 3\"\n",
       "t.toml:2: log.syslog_ident: \"pop 3\" must be 1 to 64 letters, digits, '.', '_' or '-'"},
      // passdb.
      {"[auth]\npassdb = \"ldap:/etc/ldap.conf\"\n",
       "t.toml:2: auth.passdb: \"ldap:/etc/ldap.conf\" is not a known password database "
       "(supported: \"passwd-file:PATH\", \"pam\")"},
      {"[auth]\npassdb = \"/etc/postern/users\"\n",
       "t.toml:2: auth.passdb: \"/etc/postern/users\" is not a known password database "
       "(supported: \"passwd-file:PATH\", \"pam\")"},
      {"[auth]\npassdb = \"passwd-file:\"\n",
       "t.toml:2: auth.passdb: passwd-file needs a path, e.g. \"passwd-file:/etc/postern/users\""},
      {"[auth]\npassdb = \"passwd-file:users\"\n",
       "t.toml:2: auth.passdb: \"passwd-file:users\": the passwd-file path must be absolute"},
      {"[auth]\npassdb = \"passwd-file:/etc/\\tusers\"\n",
       "t.toml:2: auth.passdb: the passwd-file path must not contain control characters"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(error_of(c.text), c.message);
  }
}

TEST(config, rejected_mail_location_names_key_and_line) {
  for (const char* loc : {"nonsense", "imap:/srv/mail", "maildir:"}) {
    SCOPED_TRACE(loc);
    std::string msg = error_of(std::string("# mail\n[mail]\nlocation = \"") + loc + "\"\n");
    EXPECT_EQ(msg.rfind("t.toml:3: mail.location: \"" + std::string(loc) + "\": ", 0), 0u) << msg;
  }
}

TEST(config, earliest_problem_in_the_file_is_reported) {
  // toml++ iterates keys alphabetically; the report must follow the file instead.
  EXPECT_EQ(error_of("[server]\nthreads = -1\nmax_connections = 0\n[auth]\nfailure_delay = 99\n"),
            "t.toml:2: server.threads: must be from 0 to 1024, not -1");
  EXPECT_EQ(
      error_of("[log]\nlevel = \"x\"\n[auth]\nworker_threads = -1\n"),
      "t.toml:2: log.level: \"x\" is not one of \"debug\", \"info\", \"notice\", \"warning\", "
      "\"error\"");
}

TEST(config, a_bad_value_keeps_the_parse_failing_even_if_later_keys_are_good) {
  auto r = parse_config("[server]\nthreads = -1\n[log]\nlevel = \"debug\"\n", "t.toml");
  EXPECT_FALSE(r.ok());
}

struct syntax_case {
  const char* text;
  const char* prefix;  // "file:line:column: "
};

TEST(config, syntax_errors_give_line_and_column) {
  const syntax_case cases[] = {
      {"[server]\nthreads = \n", "t.toml:2:"},
      {"[server]\nthreads = 1\nthreads = 2\n", "t.toml:3:"},
      {"[server\n", "t.toml:1:"},
      {"[server]\ngreeting = \"unterminated\n", "t.toml:2:"},
      {"[server]\n[server]\n", "t.toml:2:"},
      {"\n\n  = 5\n", "t.toml:3:"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    std::string msg = error_of(c.text);
    EXPECT_EQ(msg.rfind(c.prefix, 0), 0u) << msg;
    // line:column: description
    std::size_t after = std::string_view(c.prefix).size();
    ASSERT_GT(msg.size(), after);
    EXPECT_TRUE(msg[after] >= '1' && msg[after] <= '9') << msg;
    EXPECT_NE(msg.find(": ", after), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// TLS, SASL, the plaintext policy and mbox keys

// A [tls] table with the certificate and key that tls_listen, the strict modes, chain and
// client_ca need (three lines; the files are not read while parsing).
const std::string tls_files =
    "[tls]\ncert = \"/etc/postern/cert.pem\"\nkey = \"/etc/postern/key.pem\"\n";

const std::string supported_mechanisms =
    "(PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-256-PLUS, "
    "EXTERNAL, GSSAPI)";

// What docs/configuration.md and contrib/postern.toml promise.
TEST(config, defaults_of_tls_auth_and_mbox_keys) {
  const config c;
  EXPECT_TRUE(c.tls_listen.empty());
  EXPECT_EQ(c.tls_cert, "");
  EXPECT_EQ(c.tls_key, "");
  EXPECT_EQ(c.tls_chain, "");
  EXPECT_EQ(c.tls, tls_mode::ondemand);
  EXPECT_EQ(c.tls_min_version, "TLSv1.2");
  EXPECT_EQ(c.tls_ciphers, "");
  EXPECT_EQ(c.tls_ciphersuites, "");
  EXPECT_EQ(c.tls_groups, "");
  EXPECT_EQ(c.tls_client_ca, "");
  EXPECT_EQ(c.mechanisms, (std::vector<std::string>{"PLAIN", "LOGIN"}));
  EXPECT_TRUE(c.disable_plaintext_auth);
  EXPECT_TRUE(c.loopback_is_secure);
  EXPECT_TRUE(c.trusted_networks.empty());
  EXPECT_FALSE(c.apop);
  EXPECT_EQ(c.gssapi_keytab, "");
  EXPECT_EQ(c.gssapi_service, "pop");
  EXPECT_EQ(c.gssapi_hostname, "");
  EXPECT_EQ(c.external_user, "subject:CN");
  EXPECT_EQ(c.first_valid_uid, 500u);
  EXPECT_EQ(c.last_valid_uid, 0u);
  EXPECT_EQ(c.mbox_locking, (std::vector<std::string>{"dotlock", "fcntl"}));
  EXPECT_EQ(c.mbox_lock_timeout, 30s);
  EXPECT_EQ(c.mbox_startup_recovery_timeout, 30s);
  EXPECT_EQ(c.mbox_quoting, "mboxo");
  EXPECT_FALSE(c.mbox_content_length);
  EXPECT_FALSE(c.mbox_x_uidl);
}

TEST(config, tls_auth_and_mbox_keys_are_read) {
  using strings = std::vector<std::string>;
  const key_case cases[] = {
      // [server] tls_listen
      {"[server]\ntls_listen = []\n", [](const config& c) { EXPECT_TRUE(c.tls_listen.empty()); }},
      {"[server]\ntls_listen = [\"*:995\", \"[::]:995\", \"127.0.0.1:0\", \"127.0.0.1:0\"]\n" +
           tls_files,
       [](const config& c) {
         ASSERT_EQ(c.tls_listen.size(), 4u);
         EXPECT_EQ(c.tls_listen[0].host, "0.0.0.0");
         EXPECT_EQ(c.tls_listen[0].port, 995);
         EXPECT_EQ(c.tls_listen[1].host, "::");
         EXPECT_EQ(c.tls_listen[3].port, 0);
         EXPECT_EQ(c.listen.size(), 2u);  // the plain listeners keep their default
       }},
      // The same address may be plain in one list and TLS in the other only on another port.
      {"[server]\nlisten = [\"[2001:DB8::1]:110\"]\ntls_listen = [\"[2001:DB8::1]:995\"]\n" +
           tls_files,
       [](const config& c) {
         ASSERT_EQ(c.tls_listen.size(), 1u);
         EXPECT_EQ(c.tls_listen[0].host, "2001:db8::1");
       }},
      // [tls]
      {tls_files,
       [](const config& c) {
         EXPECT_EQ(c.tls_cert, "/etc/postern/cert.pem");
         EXPECT_EQ(c.tls_key, "/etc/postern/key.pem");
         EXPECT_EQ(c.tls, tls_mode::ondemand);
       }},
      {tls_files + "chain = \"/etc/postern/chain.pem\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_chain, "/etc/postern/chain.pem"); }},
      {tls_files + "client_ca = \"/etc/postern/clients.pem\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_client_ca, "/etc/postern/clients.pem"); }},
      {"[tls]\ncert = \"\"\nkey = \"\"\nchain = \"\"\nclient_ca = \"\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_cert, ""); }},
      {"[tls]\nmode = \"none\"\n", [](const config& c) { EXPECT_EQ(c.tls, tls_mode::none); }},
      {"[tls]\nmode = \"ondemand\"\n",
       [](const config& c) { EXPECT_EQ(c.tls, tls_mode::ondemand); }},
      {tls_files + "mode = \"none\"\n", [](const config& c) { EXPECT_EQ(c.tls, tls_mode::none); }},
      {tls_files + "mode = \"required\"\n",
       [](const config& c) { EXPECT_EQ(c.tls, tls_mode::required); }},
      {tls_files + "mode = \"connection\"\n",
       [](const config& c) { EXPECT_EQ(c.tls, tls_mode::connection); }},
      {"tls = { cert = \"/c.pem\", key = \"/k.pem\", mode = \"required\" }\n",
       [](const config& c) { EXPECT_EQ(c.tls, tls_mode::required); }},
      {"[tls]\nmin_version = \"TLSv1.2\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_min_version, "TLSv1.2"); }},
      {"[tls]\nmin_version = \"TLSv1.3\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_min_version, "TLSv1.3"); }},
      {"[tls]\nciphers = \"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"); }},
      {"[tls]\nciphersuites = \"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\"\n",
       [](const config& c) {
         EXPECT_EQ(c.tls_ciphersuites, "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
       }},
      {"[tls]\ngroups = \"X25519:P-256\"\n",
       [](const config& c) { EXPECT_EQ(c.tls_groups, "X25519:P-256"); }},
      // [auth]
      {"[auth]\nmechanisms = [\"SCRAM-SHA-256\", \"PLAIN\"]\n",
       [](const config& c) {
         EXPECT_EQ(c.mechanisms, (strings{"SCRAM-SHA-256", "PLAIN"}));
       }},
      {"[auth]\nmechanisms = []\n", [](const config& c) { EXPECT_TRUE(c.mechanisms.empty()); }},
      {"[auth]\ndisable_plaintext_auth = false\n",
       [](const config& c) { EXPECT_FALSE(c.disable_plaintext_auth); }},
      {"[auth]\nloopback_is_secure = false\n",
       [](const config& c) { EXPECT_FALSE(c.loopback_is_secure); }},
      {"[auth]\ntrusted_networks = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
       [](const config& c) {
         EXPECT_EQ(c.trusted_networks, (strings{"10.0.0.0/8", "2001:db8::/32"}));
       }},
      {"[auth]\napop = true\n", [](const config& c) { EXPECT_TRUE(c.apop); }},
      {"[auth]\ngssapi_keytab = \"/etc/postern/pop.keytab\"\n",
       [](const config& c) { EXPECT_EQ(c.gssapi_keytab, "/etc/postern/pop.keytab"); }},
      {"[auth]\ngssapi_service = \"pop3\"\n",
       [](const config& c) { EXPECT_EQ(c.gssapi_service, "pop3"); }},
      {"[auth]\ngssapi_hostname = \"mail.example.org\"\n",
       [](const config& c) { EXPECT_EQ(c.gssapi_hostname, "mail.example.org"); }},
      {"[auth]\nexternal_user = \"subject:CN\"\n",
       [](const config& c) { EXPECT_EQ(c.external_user, "subject:CN"); }},
      {"[auth]\nexternal_user = \"subject:emailAddress\"\n",
       [](const config& c) { EXPECT_EQ(c.external_user, "subject:emailAddress"); }},
      {"[auth]\nexternal_user = \"san:email\"\n",
       [](const config& c) { EXPECT_EQ(c.external_user, "san:email"); }},
      {"[auth]\nfirst_valid_uid = 1000\nlast_valid_uid = 59999\n",
       [](const config& c) {
         EXPECT_EQ(c.first_valid_uid, 1000u);
         EXPECT_EQ(c.last_valid_uid, 59999u);
       }},
      {"[auth]\nfirst_valid_uid = 100\nlast_valid_uid = 100\n",
       [](const config& c) { EXPECT_EQ(c.last_valid_uid, 100u); }},
      // [mail]
      {"[mail]\nmbox_locking = [\"flock\"]\n",
       [](const config& c) { EXPECT_EQ(c.mbox_locking, strings{"flock"}); }},
      {"[mail]\nmbox_locking = [\"fcntl\", \"dotlock\"]\n",
       [](const config& c) {
         EXPECT_EQ(c.mbox_locking, (strings{"fcntl", "dotlock"}));
       }},
      {"[mail]\nmbox_locking = [\"dotlock\", \"fcntl\", \"flock\"]\n",
       [](const config& c) {
         EXPECT_EQ(c.mbox_locking, (strings{"dotlock", "fcntl", "flock"}));
       }},
      {"[mail]\nmbox_lock_timeout = 1\n",
       [](const config& c) { EXPECT_EQ(c.mbox_lock_timeout, 1s); }},
      {"[mail]\nmbox_startup_recovery_timeout = \"0s\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_startup_recovery_timeout, 0s); }},
      {"[mail]\nmbox_lock_timeout = \"1000ms\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_lock_timeout, 1s); }},
      {"[mail]\nmbox_lock_timeout = \"45s\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_lock_timeout, 45s); }},
      {"[mail]\nmbox_lock_timeout = 600\n",
       [](const config& c) { EXPECT_EQ(c.mbox_lock_timeout, 600s); }},
      {"[mail]\nmbox_lock_timeout = \"10m\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_lock_timeout, 600s); }},
      {"[mail]\nmbox_quoting = \"mboxo\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_quoting, "mboxo"); }},
      {"[mail]\nmbox_quoting = \"mboxrd\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_quoting, "mboxrd"); }},
      {"[mail]\nmbox_quoting = \"none\"\n",
       [](const config& c) { EXPECT_EQ(c.mbox_quoting, "none"); }},
      {"[mail]\nmbox_content_length = true\n",
       [](const config& c) { EXPECT_TRUE(c.mbox_content_length); }},
      {"[mail]\nmbox_x_uidl = true\n", [](const config& c) { EXPECT_TRUE(c.mbox_x_uidl); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    auto r = parse_config(c.text, "t.toml");
    ASSERT_TRUE(r.ok()) << r.err().message();
    c.check(*r);
  }
}

struct rejection_case {
  std::string text;
  std::string message;  // the whole expected message
};

TEST(config, tls_auth_and_mbox_rejections_name_line_and_key) {
  const std::string path_chars = "the path must not contain control characters";
  const std::string not_a_word = " must be a single word without spaces, ':' or '/'";
  const std::string openssl_list = " must be an OpenSSL list without spaces, e.g. \"X25519:P-256\"";
  const std::string bad_network =
      " is not a numeric network (ADDRESS/PREFIX, e.g. \"192.0.2.0/24\")";
  const rejection_case cases[] = {
      // [server] tls_listen
      {"[server]\ntls_listen = \"*:995\"\n",
       "t.toml:2: server.tls_listen: expected an array of strings such as [\"127.0.0.1:110\", "
       "\"[::1]:110\"], got a string"},
      {"[server]\ntls_listen = [995]\n",
       "t.toml:2: server.tls_listen: expected an array of strings, found an integer"},
      {"[server]\ntls_listen = [\n  \"*:995\",\n  \"localhost:995\",\n]\n" + tls_files,
       "t.toml:4: server.tls_listen: \"localhost:995\": \"localhost\" is a host name; use a "
       "numeric address (names are never resolved)"},
      {"[server]\ntls_listen = [\"*:995\", \"0.0.0.0:995\"]\n" + tls_files,
       "t.toml:2: server.tls_listen: \"0.0.0.0:995\" is listed twice"},
      {"[server]\ntls_listen = [\"*\"]\n",
       "t.toml:2: server.tls_listen: \"*\": missing \":PORT\"; write ADDRESS:PORT, e.g. "
       "\"127.0.0.1:110\""},
      {"[server]\ntls_listen = [\"::1:995\"]\n",
       "t.toml:2: server.tls_listen: \"::1:995\": IPv6 addresses must be written in brackets, "
       "e.g. \"[::1]:110\""},
      // [tls] files
      {"[tls]\ncert = \"cert.pem\"\nkey = \"/k.pem\"\n",
       "t.toml:2: tls.cert: \"cert.pem\": the path must be absolute"},
      {"[tls]\ncert = \"/c.pem\"\nkey = \"./key.pem\"\n",
       "t.toml:3: tls.key: \"./key.pem\": the path must be absolute"},
      {tls_files + "chain = \"~/chain.pem\"\n",
       "t.toml:4: tls.chain: \"~/chain.pem\": the path must be absolute"},
      {tls_files + "\nclient_ca = \"ca.pem\"\n",
       "t.toml:5: tls.client_ca: \"ca.pem\": the path must be absolute"},
      {"[tls]\ncert = \"/etc/cert\\n.pem\"\n", "t.toml:2: tls.cert: " + path_chars},
      {"[tls]\nkey = \"/etc/key\\u007f\"\n", "t.toml:2: tls.key: " + path_chars},
      {"[tls]\nchain = 5\n", "t.toml:2: tls.chain: expected a string, got an integer"},
      {"[tls]\nclient_ca = [\"/a.pem\"]\n",
       "t.toml:2: tls.client_ca: expected a string, got an array"},
      // [tls] mode and protocol
      {tls_files + "mode = \"Required\"\n",
       "t.toml:4: tls.mode: \"Required\" is not one of \"none\", \"ondemand\", \"required\", "
       "\"connection\""},
      {"[tls]\nmode = \"starttls\"\n",
       "t.toml:2: tls.mode: \"starttls\" is not one of \"none\", \"ondemand\", \"required\", "
       "\"connection\""},
      {"[tls]\nmode = true\n", "t.toml:2: tls.mode: expected a string, got a boolean"},
      {"[tls]\nmin_version = \"TLSv1.1\"\n",
       "t.toml:2: tls.min_version: \"TLSv1.1\" is not one of \"TLSv1.2\", \"TLSv1.3\""},
      {"[tls]\nmin_version = \"tlsv1.3\"\n",
       "t.toml:2: tls.min_version: \"tlsv1.3\" is not one of \"TLSv1.2\", \"TLSv1.3\""},
      {"[tls]\nmin_version = \"1.3\"\n",
       "t.toml:2: tls.min_version: \"1.3\" is not one of \"TLSv1.2\", \"TLSv1.3\""},
      {"[tls]\nmin_version = 1.3\n",
       "t.toml:2: tls.min_version: expected a string, got a floating-point number"},
      {"[tls]\nciphers = \"HIGH !aNULL\"\n",
       "t.toml:2: tls.ciphers: \"HIGH !aNULL\"" + openssl_list},
      {"[tls]\nciphersuites = \"TLS_AES_128_GCM_SHA256\\t\"\n",
       "t.toml:2: tls.ciphersuites: \"TLS_AES_128_GCM_SHA256?\"" + openssl_list},
      {"[tls]\ngroups = \"X25519 P-256\"\n",
       "t.toml:2: tls.groups: \"X25519 P-256\"" + openssl_list},
      {"[tls]\ngroups = [\"X25519\"]\n", "t.toml:2: tls.groups: expected a string, got an array"},
      // [auth] mechanisms
      {"[auth]\nmechanisms = \"PLAIN\"\n",
       "t.toml:2: auth.mechanisms: expected an array of mechanism names such as [\"PLAIN\", "
       "\"SCRAM-SHA-256\"], got a string"},
      {"[auth]\nmechanisms = [\"PLAIN\", 1]\n",
       "t.toml:2: auth.mechanisms: expected an array of strings, found an integer"},
      {"[auth]\nmechanisms = [\n  \"PLAIN\",\n  \"XOAUTH2\",\n]\n",
       "t.toml:4: auth.mechanisms: \"XOAUTH2\" is not a supported mechanism " +
           supported_mechanisms},
      {"[auth]\nmechanisms = [\"DIGEST-MD5\"]\n",
       "t.toml:2: auth.mechanisms: \"DIGEST-MD5\" is not a supported mechanism " +
           supported_mechanisms},
      {"[auth]\nmechanisms = [\"\"]\n",
       "t.toml:2: auth.mechanisms: \"\" is not a supported mechanism " + supported_mechanisms},
      {"[auth]\nmechanisms = [\" PLAIN\"]\n",
       "t.toml:2: auth.mechanisms: \" PLAIN\" is not a supported mechanism " +
           supported_mechanisms},
      {"[auth]\nmechanisms = [\n  \"login\",\n  \"LOGIN\",\n]\n",
       "t.toml:4: auth.mechanisms: \"LOGIN\" is listed twice"},
      // [auth] plaintext policy and APOP
      {"[auth]\ndisable_plaintext_auth = \"yes\"\n",
       "t.toml:2: auth.disable_plaintext_auth: expected a boolean (true or false), got a string"},
      {"[auth]\nloopback_is_secure = 1\n",
       "t.toml:2: auth.loopback_is_secure: expected a boolean (true or false), got an integer"},
      {"[auth]\napop = \"true\"\n",
       "t.toml:2: auth.apop: expected a boolean (true or false), got a string"},
      {"[auth]\ntrusted_networks = \"10.0.0.0/8\"\n",
       "t.toml:2: auth.trusted_networks: expected an array of networks such as [\"10.0.0.0/8\", "
       "\"::1/128\"], got a string"},
      {"[auth]\ntrusted_networks = [8]\n",
       "t.toml:2: auth.trusted_networks: expected an array of strings, found an integer"},
      {"[auth]\ntrusted_networks = [\n  \"10.0.0.0/8\",\n  \"192.168.1.1/24\",\n]\n",
       "t.toml:4: auth.trusted_networks: \"192.168.1.1/24\"" + bad_network},
      // [auth] GSSAPI and EXTERNAL
      {"[auth]\ngssapi_keytab = \"pop.keytab\"\n",
       "t.toml:2: auth.gssapi_keytab: \"pop.keytab\": the path must be absolute"},
      {"[auth]\ngssapi_keytab = \"FILE:/etc/krb5.keytab\"\n",
       "t.toml:2: auth.gssapi_keytab: \"FILE:/etc/krb5.keytab\": the path must be absolute"},
      {"[auth]\ngssapi_service = \"pop 3\"\n",
       "t.toml:2: auth.gssapi_service: \"pop 3\"" + not_a_word},
      {"[auth]\ngssapi_service = \"pop/mail\"\n",
       "t.toml:2: auth.gssapi_service: \"pop/mail\"" + not_a_word},
      {"[auth]\ngssapi_service = 110\n",
       "t.toml:2: auth.gssapi_service: expected a string, got an integer"},
      {"[auth]\ngssapi_hostname = \"mail.example.org:110\"\n",
       "t.toml:2: auth.gssapi_hostname: \"mail.example.org:110\"" + not_a_word},
      {"[auth]\ngssapi_hostname = \"-mail\"\n",
       "t.toml:2: auth.gssapi_hostname: \"-mail\"" + not_a_word},
      {"[auth]\nfirst_valid_uid = 0\n",
       "t.toml:2: auth.first_valid_uid: must be from 1 to 4294967294, not 0"},
      {"[auth]\nlast_valid_uid = -1\n",
       "t.toml:2: auth.last_valid_uid: must be from 0 to 4294967294, not -1"},
      {"[auth]\nfirst_valid_uid = 1000\nlast_valid_uid = 999\n",
       "t.toml: auth.last_valid_uid (999) is below auth.first_valid_uid (1000): no uid could own "
       "mail (0 = no upper limit)"},
      {"[auth]\nexternal_user = \"subject:cn\"\n",
       "t.toml:2: auth.external_user: \"subject:cn\" is not a certificate field: "
       "\"subject:ATTRIBUTE\" (e.g. \"subject:CN\"), \"san:email\", \"san:dns\" or \"san:uri\""},
      {"[auth]\nexternal_user = \"CN\"\n",
       "t.toml:2: auth.external_user: \"CN\" is not a certificate field: "
       "\"subject:ATTRIBUTE\" (e.g. \"subject:CN\"), \"san:email\", \"san:dns\" or \"san:uri\""},
      {"[auth]\nexternal_user = \"\"\n",
       "t.toml:2: auth.external_user: \"\" is not a certificate field: "
       "\"subject:ATTRIBUTE\" (e.g. \"subject:CN\"), \"san:email\", \"san:dns\" or \"san:uri\""},
      // [mail] mbox
      {"[mail]\nmbox_locking = \"dotlock\"\n",
       "t.toml:2: mail.mbox_locking: expected an array such as [\"dotlock\", \"fcntl\"], got a "
       "string"},
      {"[mail]\nmbox_locking = []\n",
       "t.toml:2: mail.mbox_locking: must name at least one locking method"},
      {"[mail]\nmbox_locking = [true]\n",
       "t.toml:2: mail.mbox_locking: expected an array of strings, found a boolean"},
      {"[mail]\nmbox_locking = [\"lockf\"]\n",
       "t.toml:2: mail.mbox_locking: \"lockf\" is not one of \"dotlock\", \"fcntl\", \"flock\""},
      {"[mail]\nmbox_locking = [\"Dotlock\"]\n",
       "t.toml:2: mail.mbox_locking: \"Dotlock\" is not one of \"dotlock\", \"fcntl\", \"flock\""},
      {"[mail]\nmbox_locking = [\n  \"fcntl\",\n  \"dotlock\",\n  \"fcntl\",\n]\n",
       "t.toml:5: mail.mbox_locking: \"fcntl\" is listed twice"},
      {"[mail]\nmbox_lock_timeout = 0\n",
       "t.toml:2: mail.mbox_lock_timeout: must be whole seconds from 1s to 10m"},
      {"[mail]\nmbox_lock_timeout = \"999ms\"\n",
       "t.toml:2: mail.mbox_lock_timeout: must be whole seconds from 1s to 10m"},
      {"[mail]\nmbox_lock_timeout = \"1500ms\"\n",
       "t.toml:2: mail.mbox_lock_timeout: must be whole seconds from 1s to 10m"},
      {"[mail]\nmbox_lock_timeout = 601\n",
       "t.toml:2: mail.mbox_lock_timeout: must be whole seconds from 1s to 10m"},
      {"[mail]\nmbox_lock_timeout = \"1h\"\n",
       "t.toml:2: mail.mbox_lock_timeout: must be whole seconds from 1s to 10m"},
      {"[mail]\nmbox_lock_timeout = -1\n",
       "t.toml:2: mail.mbox_lock_timeout: must not be negative"},
      {"[mail]\nmbox_startup_recovery_timeout = \"11m\"\n",
       "t.toml:2: mail.mbox_startup_recovery_timeout: must be whole seconds from 0s (off) to 10m"},
      {"[mail]\nmbox_startup_recovery_timeout = \"500ms\"\n",
       "t.toml:2: mail.mbox_startup_recovery_timeout: must be whole seconds from 0s (off) to 10m"},
      {"[mail]\nmbox_lock_timeout = \"5 s\"\n",
       "t.toml:2: mail.mbox_lock_timeout: \"5 s\" is not a duration; write an integer (seconds) "
       "or a string such as \"500ms\", \"30s\", \"10m\" or \"1h\""},
      {"[mail]\nmbox_quoting = \"mboxcl2\"\n",
       "t.toml:2: mail.mbox_quoting: \"mboxcl2\" is not one of \"mboxo\", \"mboxrd\", \"none\""},
      {"[mail]\nmbox_quoting = \"MBOXRD\"\n",
       "t.toml:2: mail.mbox_quoting: \"MBOXRD\" is not one of \"mboxo\", \"mboxrd\", \"none\""},
      {"[mail]\nmbox_content_length = \"no\"\n",
       "t.toml:2: mail.mbox_content_length: expected a boolean (true or false), got a string"},
      // Keys in the wrong table, misspelt, or outside any table.
      {"[server]\ncert = \"/c.pem\"\n",
       "t.toml:2: server.cert: unknown key; cert belongs in [tls]"},
      {"[auth]\nclient_ca = \"/ca.pem\"\n",
       "t.toml:2: auth.client_ca: unknown key; client_ca belongs in [tls]"},
      {"[tls]\ntls_listen = []\n",
       "t.toml:2: tls.tls_listen: unknown key; tls_listen belongs in [server]"},
      {"[tls]\nmechanisms = []\n",
       "t.toml:2: tls.mechanisms: unknown key; mechanisms belongs in [auth]"},
      {"[mail]\ntrusted_networks = []\n",
       "t.toml:2: mail.trusted_networks: unknown key; trusted_networks belongs in [auth]"},
      {"[auth]\nmbox_quoting = \"mboxrd\"\n",
       "t.toml:2: auth.mbox_quoting: unknown key; mbox_quoting belongs in [mail]"},
      {"[tls]\nciphersuite = \"x\"\n",
       "t.toml:2: tls.ciphersuite: unknown key; did you mean ciphersuites?"},
      {"[tls]\nmin_versoin = \"TLSv1.3\"\n",
       "t.toml:2: tls.min_versoin: unknown key; did you mean min_version?"},
      {"[auth]\nmechanism = []\n",
       "t.toml:2: auth.mechanism: unknown key; did you mean mechanisms?"},
      {"[mail]\nmbox_lock_timout = 5\n",
       "t.toml:2: mail.mbox_lock_timout: unknown key; did you mean mbox_lock_timeout?"},
      {"[tls]\nverify_client = true\n", "t.toml:2: tls.verify_client: unknown key"},
      {"\ncert = \"/c.pem\"\n", "t.toml:2: cert: unknown top-level key; cert belongs in [tls]"},
      {"tls = 4\n", "t.toml:1: tls: must be a table ([tls]), not an integer"},
      {"[[tls]]\ncert = \"/c.pem\"\n", "t.toml:1: tls: must be a table ([tls]), not an array"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(error_of(c.text), c.message);
  }
}

struct network_case {
  const char* value;
  bool ok;
};

TEST(config, trusted_networks_forms) {
  const network_case cases[] = {
      {"10.0.0.0/8", true},
      {"192.0.2.0/24", true},
      {"192.0.2.7/32", true},
      {"192.0.2.7", true},  // a bare address is one host
      {"127.0.0.0/8", true},
      {"0.0.0.0/0", true},
      {"2001:db8::/32", true},
      {"2001:DB8::/32", true},
      {"fd00::/8", true},
      {"::1/128", true},
      {"::1", true},
      {"::/0", true},
      // Host bits set: almost always a typo for the network, so refused rather than masked.
      {"10.0.0.1/8", false},
      {"192.0.2.128/24", false},
      {"192.0.2.7/31", false},
      {"2001:db8::1/32", false},
      {"::1/127", false},
      // Prefix too long, missing or not a plain number.
      {"10.0.0.0/33", false},
      {"::/129", false},
      {"10.0.0.0/", false},
      {"10.0.0.0/-1", false},
      {"10.0.0.0/+8", false},
      {"10.0.0.0/8/8", false},
      {"10.0.0.0/255.0.0.0", false},
      // Names, ranges and other spellings.
      {"localhost", false},
      {"mail.example.org", false},
      {"mail.example.org/32", false},
      {"*", false},
      {"", false},
      {"10/8", false},
      {"10.0.0.0 /8", false},
      {" 10.0.0.0/8", false},
      {"10.0.0.0/8 ", false},
      {"10.0.0.0-10.0.0.255", false},
      {"[::1]/128", false},
      {"fe80::1%eth0", false},
      {"fe80::%eth0/64", false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.value);
    auto r =
        parse_config(std::string("[auth]\n\ntrusted_networks = [\"") + c.value + "\"]\n", "t.toml");
    if (c.ok) {
      ASSERT_TRUE(r.ok()) << r.err().message();
      // Kept as written; posternd parses it again when it starts.
      EXPECT_EQ(r->trusted_networks, std::vector<std::string>{c.value});
    } else {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.err().message(), "t.toml:3: auth.trusted_networks: \"" + std::string(c.value) +
                                       "\" is not a numeric network (ADDRESS/PREFIX, e.g. "
                                       "\"192.0.2.0/24\")");
    }
  }
  auto several = parse_config(
      "[auth]\ntrusted_networks = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"fd00::/8\", \"::1\"]\n",
      "t.toml");
  ASSERT_TRUE(several.ok()) << several.err().message();
  EXPECT_EQ(several->trusted_networks.size(), 4u);
}

TEST(config, mechanisms_are_case_insensitive_and_unique) {
  auto r = parse_config(
      "[auth]\nmechanisms = [\"scram-sha-256-plus\", \"Scram-Sha-256\", \"plain\", \"Login\", "
      "\"cram-MD5\", \"gssapi\"]\n",
      "t.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  // Upper case, in the order given (CAPA lists them in this order).
  EXPECT_EQ(r->mechanisms, (std::vector<std::string>{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN",
                                                     "LOGIN", "CRAM-MD5", "GSSAPI"}));
  EXPECT_NE(format_config(*r).find("\nmechanisms = [\"SCRAM-SHA-256-PLUS\", \"SCRAM-SHA-256\", "
                                   "\"PLAIN\", \"LOGIN\", \"CRAM-MD5\", \"GSSAPI\"]\n"),
            std::string::npos);

  // Every supported name, in any case.
  const char* names[] = {"PLAIN",       "LOGIN",         "CRAM-MD5",
                         "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS",
                         "EXTERNAL",    "GSSAPI"};
  for (const char* name : names) {
    for (bool lower : {false, true}) {
      std::string written = name;
      if (lower) {
        std::transform(written.begin(), written.end(), written.begin(),
                       [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
      }
      SCOPED_TRACE(written);
      auto one = parse_config("[auth]\nmechanisms = [\"" + written + "\"]\n" + tls_files +
                                  "client_ca = \"/etc/postern/clients.pem\"\n",
                              "t.toml");
      ASSERT_TRUE(one.ok()) << one.err().message();
      EXPECT_EQ(one->mechanisms, std::vector<std::string>{name});
    }
  }

  // Duplicates are found after upper-casing; the message names the upper-case form and the
  // unknown-name message the client's own spelling.
  EXPECT_EQ(error_of("[auth]\nmechanisms = [\"PLAIN\", \"plain\"]\n"),
            "t.toml:2: auth.mechanisms: \"PLAIN\" is listed twice");
  EXPECT_EQ(error_of("[auth]\nmechanisms = [\"Scram-Sha-1\", \"SCRAM-sha-1\"]\n"),
            "t.toml:2: auth.mechanisms: \"SCRAM-SHA-1\" is listed twice");
  EXPECT_EQ(error_of("[auth]\nmechanisms = [\"Xoauth2\"]\n"),
            "t.toml:2: auth.mechanisms: \"Xoauth2\" is not a supported mechanism " +
                supported_mechanisms);
  // -PLUS is its own mechanism, not a duplicate of the plain one.
  auto both =
      parse_config("[auth]\nmechanisms = [\"SCRAM-SHA-256-PLUS\", \"SCRAM-SHA-256\"]\n", "t.toml");
  ASSERT_TRUE(both.ok()) << both.err().message();
  EXPECT_EQ(both->mechanisms.size(), 2u);
}

// An empty key is unknown everywhere, and a one-letter slip within a table is suggested
// before a same-named key of another table (server.group exists, but [tls] has groups).
TEST(config, unknown_key_messages_prefer_the_same_table) {
  EXPECT_EQ(error_of("[server]\n\"\" = 1\n"), "t.toml:2: server.: unknown key");
  std::string top = error_of("\"\" = 1\n");
  EXPECT_EQ(top.rfind("t.toml:1: : unknown top-level key; settings go inside [server]", 0), 0u)
      << top;
  EXPECT_EQ(error_of("[tls]\ngroup = \"X25519\"\n"),
            "t.toml:2: tls.group: unknown key; did you mean groups?");
}

TEST(config, cross_key_rules) {
  const std::string external = "[auth]\nmechanisms = [\"PLAIN\", \"EXTERNAL\"]\n";
  const rejection_case cases[] = {
      // Implicit TLS listeners and the strict modes need a certificate.
      {"[server]\ntls_listen = [\"*:995\"]\n",
       "t.toml: server.tls_listen needs tls.cert and tls.key"},
      {"[server]\ntls_listen = [\"*:995\"]\n" + tls_files, ""},
      {"[server]\ntls_listen = []\n", ""},
      {"[tls]\nmode = \"required\"\n",
       "t.toml: tls.mode = \"required\" needs tls.cert and tls.key"},
      {"[tls]\nmode = \"connection\"\n",
       "t.toml: tls.mode = \"connection\" needs tls.cert and tls.key"},
      {tls_files + "mode = \"required\"\n", ""},
      {tls_files + "mode = \"connection\"\n", ""},
      // Worker processes are event mode's; fork mode has a process per session.
      {"[server]\nprocesses = 2\nprocess_model = \"fork\"\n",
       "t.toml: server.processes applies to event mode only; fork mode (server.process_model = "
       "\"fork\") runs one process per session, limited by server.max_children"},
      {"[server]\nprocesses = \"auto\"\nprocess_model = \"fork\"\n",
       "t.toml: server.processes applies to event mode only; fork mode (server.process_model = "
       "\"fork\") runs one process per session, limited by server.max_children"},
      {"[server]\nprocesses = 2\nprocess_model = \"event\"\n", ""},
      {"[tls]\nmode = \"none\"\n", ""},
      {"[tls]\nmode = \"ondemand\"\n", ""},  // the default: STLS appears once a cert is set
      // A certificate needs its key and the other way round.
      {"[tls]\ncert = \"/c.pem\"\n", "t.toml: tls.cert and tls.key must be set together"},
      {"[tls]\nkey = \"/k.pem\"\n", "t.toml: tls.cert and tls.key must be set together"},
      {"[tls]\ncert = \"/c.pem\"\nkey = \"\"\n",
       "t.toml: tls.cert and tls.key must be set together"},
      // Chain and client CAs belong to a certificate.
      {"[tls]\nchain = \"/chain.pem\"\n",
       "t.toml: tls.chain and tls.client_ca need tls.cert and tls.key"},
      {"[tls]\nclient_ca = \"/ca.pem\"\n",
       "t.toml: tls.chain and tls.client_ca need tls.cert and tls.key"},
      {tls_files + "chain = \"/chain.pem\"\nclient_ca = \"/ca.pem\"\n", ""},
      // EXTERNAL needs verified client certificates.
      {external,
       "t.toml: auth.mechanisms lists EXTERNAL, which needs tls.client_ca to verify client "
       "certificates"},
      {external + tls_files,
       "t.toml: auth.mechanisms lists EXTERNAL, which needs tls.client_ca to verify client "
       "certificates"},
      {"[auth]\nmechanisms = [\"external\"]\n" + tls_files,
       "t.toml: auth.mechanisms lists EXTERNAL, which needs tls.client_ca to verify client "
       "certificates"},
      {external + tls_files + "client_ca = \"/ca.pem\"\n", ""},
      // client_ca without EXTERNAL is fine: certificates are asked for, never required.
      {tls_files + "client_ca = \"/ca.pem\"\n", ""},
      // With several problems, the first rule in this order wins.
      {"[server]\ntls_listen = [\"*:995\"]\n[tls]\ncert = \"/c.pem\"\n",
       "t.toml: tls.cert and tls.key must be set together"},
      {"[server]\ntls_listen = [\"*:995\"]\n[tls]\nmode = \"required\"\nchain = \"/chain.pem\"\n",
       "t.toml: server.tls_listen needs tls.cert and tls.key"},
      {"[tls]\nmode = \"connection\"\nclient_ca = \"/ca.pem\"\n",
       "t.toml: tls.mode = \"connection\" needs tls.cert and tls.key"},
      {external + "[tls]\nclient_ca = \"/ca.pem\"\n",
       "t.toml: tls.chain and tls.client_ca need tls.cert and tls.key"},
      // A bad value is reported, with its line, before any rule across keys.
      {"[server]\ntls_listen = [\"localhost:995\"]\n",
       "t.toml:2: server.tls_listen: \"localhost:995\": \"localhost\" is a host name; use a "
       "numeric address (names are never resolved)"},
      {"[tls]\ncert = \"/c.pem\"\nmode = \"always\"\n",
       "t.toml:3: tls.mode: \"always\" is not one of \"none\", \"ondemand\", \"required\", "
       "\"connection\""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    auto r = parse_config(c.text, "t.toml");
    if (c.message.empty()) {
      EXPECT_TRUE(r.ok()) << r.err().message();
    } else {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.err().code(), errc::invalid);
      EXPECT_EQ(r.err().message(), c.message);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Files

TEST(config, load_reads_a_file) {
  temp_dir dir;
  fs::path p = dir / "postern.toml";
  write_file(p, "[server]\nthreads = 2\n");
  auto r = load_config(p.string());
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->threads, 2u);
  EXPECT_EQ(r->source_path, p.string());

  write_file(p, "[server]\n\nthreads = -2\n");
  auto bad = load_config(p.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), errc::invalid);
  EXPECT_EQ(bad.err().message(), p.string() + ":3: server.threads: must be from 0 to 1024, not -2");
}

TEST(config, load_missing_or_unreadable) {
  temp_dir dir;
  std::string missing = dir / "nope.toml";
  auto r = load_config(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::not_found);
  EXPECT_NE(r.err().message().find(missing), std::string::npos);
  EXPECT_EQ(r.err().cause(), std::errc::no_such_file_or_directory);

  auto d = load_config(dir.path());
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.err().code(), errc::temporary);
  EXPECT_NE(d.err().message().find(dir.path()), std::string::npos);

  if (::geteuid() != 0) {  // root reads anything
    fs::path p = dir / "secret.toml";
    write_file(p, "");
    ::chmod(p.c_str(), 0);
    auto u = load_config(p.string());
    ASSERT_FALSE(u.ok());
    EXPECT_EQ(u.err().code(), errc::temporary);
    EXPECT_EQ(u.err().cause(), std::errc::permission_denied);
  }
}

// ---------------------------------------------------------------------------------------------
// format_config

TEST(config, format_defaults_shows_every_key) {
  std::string text = format_config(config{});
  for (const char* key : {"[server]",
                          "listen = [\"127.0.0.1:110\", \"[::1]:110\"]",
                          "user = \"\"",
                          "group = \"\"",
                          "max_connections = 10000",
                          "max_connections_per_ip = 50",
                          "idle_timeout = \"10m\"",
                          "threads = 0",
                          "max_bad_commands = 20",
                          "implementation_capability = true",
                          "greeting = \"Postern ready.\"",
                          "tls_listen = []",
                          "[mail]",
                          "location = \"maildir:~/Maildir\"",
                          "mbox_locking = [\"dotlock\", \"fcntl\"]",
                          "mbox_lock_timeout = \"30s\"",
                          "mbox_quoting = \"mboxo\"",
                          "mbox_content_length = false",
                          "mbox_x_uidl = false",
                          "[auth]",
                          "passdb = \"passwd-file:/etc/postern/users\"",
                          "failure_delay = \"2s\"",
                          "worker_threads = 0",
                          "mechanisms = [\"PLAIN\", \"LOGIN\"]",
                          "disable_plaintext_auth = true",
                          "loopback_is_secure = true",
                          "trusted_networks = []",
                          "apop = false",
                          "gssapi_keytab = \"\"",
                          "gssapi_service = \"pop\"",
                          "gssapi_hostname = \"\"",
                          "external_user = \"subject:CN\"",
                          "[tls]",
                          "cert = \"\"",
                          "key = \"\"",
                          "chain = \"\"",
                          "mode = \"ondemand\"",
                          "min_version = \"TLSv1.2\"",
                          "ciphers = \"\"",
                          "ciphersuites = \"\"",
                          "groups = \"\"",
                          "client_ca = \"\"",
                          "[log]",
                          "level = \"info\"",
                          "target = \"syslog\"",
                          "syslog_ident = \"posternd\""}) {
    EXPECT_NE(("\n" + text).find("\n" + std::string(key) + "\n"), std::string::npos) << key << "\n"
                                                                                     << text;
  }
  // Tables in the order the documentation follows.
  auto at = [&](const char* table) { return text.find(std::string(table) + "\n"); };
  EXPECT_LT(at("[server]"), at("[mail]"));
  EXPECT_LT(at("[mail]"), at("[auth]"));
  EXPECT_LT(at("[auth]"), at("[tls]"));
  EXPECT_LT(at("[tls]"), at("[log]"));
  auto back = parse_config(text, "formatted.toml");
  ASSERT_TRUE(back.ok()) << back.err().message() << "\n" << text;
  expect_same_config(*back, config{});
}

TEST(config, format_round_trips) {
  std::vector<config> configs(4);
  {
    config& c = configs[1];
    c.source_path = "/etc/postern/postern.toml";
    c.listen = {{"0.0.0.0", 110}, {"::", 995}, {"2001:db8::7", 0}, {"10.1.2.3", 65535}};
    c.user = "postern";
    c.group = "mail";
    c.max_connections = 1;
    c.max_connections_per_ip = 1000000;
    c.idle_timeout = 90s;
    c.threads = 1024;
    c.max_bad_commands = 1;
    c.implementation_capability = false;
    c.greeting = "Say \"hi\" to C:\\POP3 { } [x] # not a comment";
    c.mail_location = "mbox:/var/mail/%u \"quoted\" \\ päth";
    c.passdb = "passwd-file:/etc/postern/us\"ers";
    c.failure_delay = 1500ms;
    c.worker_threads = 7;
    c.level = log_level::warning;
    c.target = log_target::stderr_;
    c.syslog_ident = "pop3-d.x_y";
  }
  configs[2].idle_timeout = 7200s;
  configs[2].failure_delay = 0ms;
  configs[2].level = log_level::debug;
  configs[3].idle_timeout = 61s;
  configs[3].failure_delay = 60000ms;
  configs[3].level = log_level::error;
  configs[3].source_path = "odd\nname.toml";  // must not break the comment line

  for (const config& c : configs) {
    std::string text = format_config(c);
    SCOPED_TRACE(text);
    auto back = parse_config(text, "again.toml");
    ASSERT_TRUE(back.ok()) << back.err().message();
    expect_same_config(*back, c);
    std::string again = format_config(*back);
    EXPECT_EQ(again.substr(again.find("[server]")), text.substr(text.find("[server]")));
  }
}

// Each boolean key of [pop3] is printed as it was set, both ways (a formatter that printed a
// constant would pass a round trip of the defaults).
TEST(config, format_prints_each_pop3_boolean_as_set) {
  for (const char* key :
       {"delete_expired", "dovecot_lock_session", "undelete", "xtnd_xlist", "xtnd_xmit"}) {
    for (const char* value : {"true", "false"}) {
      const std::string line = std::string(key) + " = " + value;
      auto c = parse_config("[pop3]\n" + line + "\n", "bools.toml");
      ASSERT_TRUE(c.ok()) << line << ": " << c.err().message();
      const std::string text = format_config(*c);
      const auto pop3 = text.find("\n[pop3]\n");
      ASSERT_NE(pop3, std::string::npos) << text;
      const auto next = text.find("\n[", pop3 + 1);
      EXPECT_NE(text.substr(pop3, next - pop3).find("\n" + line + "\n"), std::string::npos)
          << line << " missing from:\n"
          << text;
    }
  }
}

TEST(config, format_round_trips_tls_auth_and_mbox_keys) {
  config base;
  base.source_path = "/etc/postern/postern.toml";
  base.tls_listen = {{"0.0.0.0", 995}, {"::", 995}, {"2001:db8::7", 0}};
  base.tls_cert = "/etc/postern/tls/fullchain.pem";
  base.tls_key = "/etc/postern/tls/privkey.pem";
  base.tls_chain = "/etc/postern/tls/chain.pem";
  base.tls = tls_mode::required;
  base.tls_min_version = "TLSv1.3";
  base.tls_ciphers = "ECDHE+AESGCM:!aNULL";
  base.tls_ciphersuites = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  base.tls_groups = "X25519:secp384r1";
  base.tls_client_ca = "/etc/postern/tls/clients.pem";
  base.mbox_locking = {"flock", "dotlock"};
  base.mbox_lock_timeout = 90s;
  base.mbox_quoting = "mboxrd";
  base.mbox_content_length = true;
  base.mbox_x_uidl = true;
  base.mechanisms = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "EXTERNAL", "GSSAPI",
                     "CRAM-MD5",           "LOGIN",         "PLAIN"};
  base.disable_plaintext_auth = false;
  base.loopback_is_secure = false;
  base.trusted_networks = {"10.0.0.0/8", "2001:DB8::/32", "192.0.2.7"};
  base.apop = true;
  base.gssapi_keytab = "/etc/postern/pop.keytab";
  base.gssapi_service = "pop3";
  base.gssapi_hostname = "mail.example.org";
  base.external_user = "san:email";

  std::string text = format_config(base);
  for (const char* line : {
           "tls_listen = [\"0.0.0.0:995\", \"[::]:995\", \"[2001:db8::7]:0\"]",
           "mbox_locking = [\"flock\", \"dotlock\"]",
           "mbox_lock_timeout = \"90s\"",
           "mbox_quoting = \"mboxrd\"",
           "mbox_content_length = true",
           "mbox_x_uidl = true",
           "mechanisms = [\"SCRAM-SHA-256-PLUS\", \"SCRAM-SHA-256\", \"SCRAM-SHA-1\", "
           "\"EXTERNAL\", \"GSSAPI\", \"CRAM-MD5\", \"LOGIN\", \"PLAIN\"]",
           "disable_plaintext_auth = false",
           "loopback_is_secure = false",
           "trusted_networks = [\"10.0.0.0/8\", \"2001:DB8::/32\", \"192.0.2.7\"]",
           "apop = true",
           "gssapi_keytab = \"/etc/postern/pop.keytab\"",
           "gssapi_service = \"pop3\"",
           "gssapi_hostname = \"mail.example.org\"",
           "external_user = \"san:email\"",
           "cert = \"/etc/postern/tls/fullchain.pem\"",
           "key = \"/etc/postern/tls/privkey.pem\"",
           "chain = \"/etc/postern/tls/chain.pem\"",
           "mode = \"required\"",
           "min_version = \"TLSv1.3\"",
           "ciphers = \"ECDHE+AESGCM:!aNULL\"",
           "ciphersuites = \"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\"",
           "groups = \"X25519:secp384r1\"",
           "client_ca = \"/etc/postern/tls/clients.pem\"",
       }) {
    EXPECT_NE(text.find("\n" + std::string(line) + "\n"), std::string::npos) << line << "\n"
                                                                             << text;
  }

  // Every mode, every certificate field, the other quoting and locking choices, the limits
  // of the lock timeout and an empty mechanism list.
  std::vector<config> configs;
  for (tls_mode mode :
       {tls_mode::none, tls_mode::ondemand, tls_mode::required, tls_mode::connection}) {
    config c = base;
    c.tls = mode;
    configs.push_back(c);
  }
  for (const char* field : {"subject:CN", "subject:emailAddress", "san:email"}) {
    config c = base;
    c.external_user = field;
    configs.push_back(c);
  }
  {
    config c = base;
    c.mbox_quoting = "none";
    c.mbox_locking = {"fcntl"};
    c.mbox_lock_timeout = 1s;
    c.mechanisms = {};
    c.tls_min_version = "TLSv1.2";
    configs.push_back(c);
  }
  {
    config c = base;
    c.mbox_quoting = "mboxo";
    c.mbox_locking = {"dotlock", "fcntl", "flock"};
    c.mbox_lock_timeout = 600s;
    c.tls_listen = {};
    c.trusted_networks = {};
    configs.push_back(c);
  }
  for (const config& c : configs) {
    std::string formatted = format_config(c);
    SCOPED_TRACE(formatted);
    auto back = parse_config(formatted, "again.toml");
    ASSERT_TRUE(back.ok()) << back.err().message();
    expect_same_config(*back, c);
    EXPECT_EQ(format_config(*back).substr(format_config(*back).find("[server]")),
              formatted.substr(formatted.find("[server]")));
  }
}

TEST(config, contrib_example_is_valid_and_all_defaults) {
  // Found beside this source file; skipped when the tree is not where it was compiled.
  fs::path example = fs::path(__FILE__).parent_path() / ".." / ".." / "contrib" / "postern.toml";
  if (!fs::exists(example)) {
    GTEST_SKIP() << example << " not found";
  }
  auto r = load_config(example.string());
  ASSERT_TRUE(r.ok()) << r.err().message();
  expect_same_config(*r, config{});
  // It shows every key format_config prints.
  std::string text = read_file(example);
  std::istringstream formatted(format_config(config{}));
  for (std::string line; std::getline(formatted, line);) {
    if (!line.empty() && line[0] != '#') {
      EXPECT_NE(text.find("\n" + line + "\n"), std::string::npos) << line;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The key list (config_keys): every key printed back by format_config with its sample value

std::string with_dir(std::string_view sample) {
  std::string s(sample);
  for (auto at = s.find("@DIR@"); at != std::string::npos; at = s.find("@DIR@")) {
    s.replace(at, 5, "/srv/sample");
  }
  return s;
}

// A config text of `tables` (table -> key -> value), tables in the printed order.
std::string toml_of(
    const std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>>&
        tables) {
  std::string out;
  for (const auto& [table, keys] : tables) {
    out += "[" + table + "]\n";
    for (const auto& [k, v] : keys) {
      out += k + " = " + v + "\n";
    }
  }
  return out;
}

// The lines of `table` in format_config's output.
std::string printed_table(const std::string& text, const std::string& table) {
  auto head = text.find("[" + table + "]\n");
  if (head == std::string::npos) {
    return "";
  }
  auto end = text.find("\n[", head);
  return text.substr(head, end == std::string::npos ? std::string::npos : end - head);
}

const std::string listener_printed =
    "[[server.listener]]\naddress = \"127.0.0.1:2110\"\ntls = \"implicit\"\nproxy_protocol = true\n"
    "name = \"pop3s-sample\"\n";

// One key set to its sample, beside what other keys need: tls.cert and tls.key (the [tls]
// keys), server.proxy_trusted_networks (a listener with proxy_protocol).
std::string config_with(const config_key& k) {
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> tables{
      {"server", {{"proxy_trusted_networks", "[\"127.0.0.1\"]"}}},
      {"tls", {{"cert", "\"/srv/sample/cert.pem\""}, {"key", "\"/srv/sample/key.pem\""}}}};
  std::string value = with_dir(k.sample);
  auto table =
      std::find_if(tables.begin(), tables.end(), [&](const auto& t) { return t.first == k.table; });
  if (table == tables.end()) {
    tables.push_back({std::string(k.table), {}});
    table = tables.end() - 1;
  }
  auto& keys = table->second;
  auto same =
      std::find_if(keys.begin(), keys.end(), [&](const auto& kv) { return kv.first == k.key; });
  if (same != keys.end()) {
    same->second = value;
  } else {
    keys.push_back({std::string(k.key), value});
  }
  return toml_of(tables);
}

TEST(config_keys, every_key_has_a_sample_and_tables_are_the_parsers) {
  std::set<std::string> seen;
  for (const auto& k : config_keys()) {
    std::string dotted = std::string(k.table) + "." + std::string(k.key);
    EXPECT_FALSE(k.sample.empty()) << dotted << " has no sample value in key_samples";
    EXPECT_TRUE(seen.insert(dotted).second) << dotted << " listed twice";
  }
  EXPECT_GT(seen.size(), 80u);
}

TEST(config_keys, each_sample_is_printed_back_as_written) {
  for (const auto& k : config_keys()) {
    std::string text = config_with(k);
    SCOPED_TRACE(text);
    auto r = parse_config(text, "sample.toml");
    ASSERT_TRUE(r.ok()) << r.err().message();
    EXPECT_NE(format_config(config{}), format_config(*r)) << k.key << ": the sample is the default";
    std::string printed = format_config(*r);
    if (k.table == "server" && k.key == "listener") {
      EXPECT_NE(printed.find("\n" + listener_printed), std::string::npos) << printed;
    } else {
      std::string line = std::string(k.key) + " = " + with_dir(k.sample) + "\n";
      EXPECT_NE(("\n" + printed_table(printed, std::string(k.table))).find("\n" + line),
                std::string::npos)
          << "[" << k.table << "] " << line << "not in\n"
          << printed;
    }
    auto back = parse_config(printed, "printed.toml");
    ASSERT_TRUE(back.ok()) << back.err().message();
    std::string again = format_config(*back);
    EXPECT_EQ(again.substr(again.find("[server]")), printed.substr(printed.find("[server]")));
  }
}

TEST(config_keys, all_samples_together_round_trip) {
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> tables;
  for (const auto& k : config_keys()) {
    if (k.table == "server" && k.key == "process_model") {
      continue;  // fork mode and server.processes > 1 exclude each other
    }
    if (tables.empty() || tables.back().first != k.table) {
      tables.push_back({std::string(k.table), {}});
    }
    tables.back().second.push_back({std::string(k.key), with_dir(k.sample)});
  }
  std::string text = toml_of(tables);
  SCOPED_TRACE(text);
  auto r = parse_config(text, "all.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  std::string printed = format_config(*r);
  for (const auto& k : config_keys()) {
    if (k.key == "process_model") {
      continue;
    }
    if (k.key == "listener") {
      EXPECT_NE(printed.find("\n" + listener_printed), std::string::npos);
      continue;
    }
    std::string line = std::string(k.key) + " = " + with_dir(k.sample) + "\n";
    EXPECT_NE(("\n" + printed_table(printed, std::string(k.table))).find("\n" + line),
              std::string::npos)
        << "[" << k.table << "] " << line;
  }
  auto back = parse_config(printed, "printed.toml");
  ASSERT_TRUE(back.ok()) << back.err().message();
  std::string again = format_config(*back);
  EXPECT_EQ(again.substr(again.find("[server]")), printed.substr(printed.find("[server]")));
}

TEST(config, format_escapes_control_characters) {
  config c;
  c.mail_location = "maildir:/tmp/a\tb\x01";
  std::string text = format_config(c);
  EXPECT_NE(text.find("location = \"maildir:/tmp/a\\tb\\u0001\""), std::string::npos) << text;
}

// ---------------------------------------------------------------------------------------------
// Demo

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string header_of(const std::string& msg) { return msg.substr(0, msg.find("\n\n") + 1); }

// The value of "S=" or "W=" in a Maildir file name.
std::uintmax_t size_field(const std::string& name, const std::string& field) {
  auto p = name.find("," + field + "=");
  if (p == std::string::npos) {
    return 0;
  }
  return std::stoull(name.substr(p + field.size() + 2));
}

std::string base64_decode(std::string_view in) {
  std::string out;
  std::uint32_t buf = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else {
      continue;
    }
    buf = (buf << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buf >> bits) & 0xFF);
    }
  }
  return out;
}

// Decodes the "=?UTF-8?B?...?=" words of an unfolded header value.
std::string decode_b_words(const std::string& value) {
  std::string out;
  std::size_t pos = 0;
  while ((pos = value.find("=?UTF-8?B?", pos)) != std::string::npos) {
    auto end = value.find("?=", pos + 10);
    out += base64_decode(value.substr(pos + 10, end - pos - 10));
    pos = end + 2;
  }
  return out;
}

TEST(demo, prepares_a_loadable_config_and_maildrop) {
  temp_dir tmp;
  fs::path dir = tmp / "demo";
  auto r = prepare_demo(dir.string(), 2110);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(*r, (dir / "postern.toml").string());

  auto cfg = load_config(*r);
  ASSERT_TRUE(cfg.ok()) << cfg.err().message();
  ASSERT_EQ(cfg->listen.size(), 1u);
  EXPECT_EQ(cfg->listen[0].host, "127.0.0.1");
  EXPECT_EQ(cfg->listen[0].port, 2110);
  EXPECT_EQ(cfg->target, log_target::stderr_);
  EXPECT_EQ(cfg->level, log_level::info);
  EXPECT_EQ(cfg->failure_delay, 1s);
  EXPECT_EQ(cfg->passdb, "passwd-file:" + (dir / "users").string());
  EXPECT_EQ(cfg->mail_location, "maildir:" + (dir / "mail").string() + "/%u/Maildir");

  // users: one Dovecot passwd-file line whose hash verifies "demo".
  std::string users = read_file(dir / "users");
  const std::string prefix = "demo:{SHA512-CRYPT}$6$";
  ASSERT_EQ(users.rfind(prefix, 0), 0u) << users;
  ASSERT_EQ(users.back(), '\n');
  std::string hash = users.substr(19, users.find(':', 19) - 19);
  EXPECT_EQ(users.substr(19 + hash.size()), "::::::\n");
  auto data = std::make_unique<crypt_data>();
  const char* again = ::crypt_rn("demo", hash.c_str(), data.get(), sizeof(crypt_data));
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(hash, again);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "users").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  fs::path maildir = dir / "mail" / "demo" / "Maildir";
  EXPECT_TRUE(files_in(maildir / "tmp").empty());
  auto fresh = files_in(maildir / "new");
  auto seen = files_in(maildir / "cur");
  ASSERT_EQ(fresh.size(), 4u);
  ASSERT_EQ(seen.size(), 1u);
  std::string seen_name = seen[0].filename().string();
  EXPECT_EQ(seen_name.substr(seen_name.size() - 4), ":2,S");

  std::vector<fs::path> all = seen;
  all.insert(all.end(), fresh.begin(), fresh.end());
  bool saw_dots = false, saw_big = false, saw_alternative = false, saw_utf8 = false;
  std::set<std::string> ids;
  for (const auto& p : all) {
    SCOPED_TRACE(p.string());
    std::string name = p.filename().string();
    std::string text = read_file(p);
    EXPECT_EQ(text.find('\r'), std::string::npos);
    EXPECT_EQ(size_field(name, "S"), text.size());
    EXPECT_EQ(size_field(name, "W"),
              text.size() + static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')));
    EXPECT_EQ(fs::last_write_time(p).time_since_epoch().count() != 0, true);
    std::string h = header_of(text);
    for (const char* field : {"\nDate: ", "\nFrom: ", "\nTo: ", "\nSubject: ", "\nMessage-ID: <",
                              "\nMIME-Version: 1.0\n", "\nContent-Type: "}) {
      EXPECT_NE(("\n" + h).find(field), std::string::npos) << field;
    }
    auto id_at = h.find("Message-ID: ");
    ids.insert(h.substr(id_at, h.find('\n', id_at) - id_at));
    if (text.find("\n.\n") != std::string::npos && text.find("\n..\n") != std::string::npos) {
      saw_dots = true;
      EXPECT_EQ(text.substr(text.size() - 3), "\n.\n");
      EXPECT_NE(text.find("\n..This line"), std::string::npos);
    }
    if (text.size() >= 2 * 1024 * 1024) {
      saw_big = true;
      EXPECT_LT(text.size(), 3u * 1024 * 1024);
      EXPECT_NE(h.find("multipart/mixed"), std::string::npos);
      EXPECT_NE(text.find("Content-Transfer-Encoding: base64"), std::string::npos);
    }
    if (h.find("multipart/alternative") != std::string::npos) {
      saw_alternative = true;
      EXPECT_NE(text.find("text/plain"), std::string::npos);
      EXPECT_NE(text.find("text/html"), std::string::npos);
    }
    auto subject_at = h.find("\nSubject: =?UTF-8?B?");
    if (subject_at != std::string::npos) {
      saw_utf8 = true;
      std::string value = h.substr(subject_at + 10);
      if (const auto end = value.find('\n', value.find("?=")); end != std::string::npos) {
        value.resize(end);
      }
      EXPECT_EQ(decode_b_words(value), "Grüße aus Zürich ☕ – Café am Freitag?");
    }
  }
  EXPECT_EQ(ids.size(), all.size());
  EXPECT_TRUE(saw_dots);
  EXPECT_TRUE(saw_big);
  EXPECT_TRUE(saw_alternative);
  EXPECT_TRUE(saw_utf8);
}

TEST(demo, refresh_resets_the_maildrop) {
  temp_dir tmp;
  fs::path dir = tmp / "demo";
  ASSERT_TRUE(prepare_demo(dir.string(), 0).ok());
  fs::path maildir = dir / "mail" / "demo" / "Maildir";
  auto before_new = files_in(maildir / "new");
  auto before_cur = files_in(maildir / "cur");
  std::string before_users = read_file(dir / "users");

  // A client deleted a message, one arrived, the store left an index behind.
  fs::remove(before_new[0]);
  write_file(maildir / "new" / "1800000000.M9P9.host", "Subject: later\n\nhi\n");
  write_file(maildir / "postern-uidlist", "x");
  write_file(dir / "postern.toml", "garbage = [");

  auto r = prepare_demo(dir.string(), 1995);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(files_in(maildir / "new"), before_new);
  EXPECT_EQ(files_in(maildir / "cur"), before_cur);
  EXPECT_FALSE(fs::exists(maildir / "postern-uidlist"));
  auto cfg = load_config(*r);
  ASSERT_TRUE(cfg.ok()) << cfg.err().message();
  EXPECT_EQ(cfg->listen[0].port, 1995);
  EXPECT_EQ(read_file(dir / "users").rfind("demo:{SHA512-CRYPT}$6$", 0), 0u);
}

TEST(demo, accepts_an_empty_directory_and_relative_paths) {
  temp_dir tmp;
  ASSERT_TRUE(prepare_demo(tmp.path() + "/", 0).ok());
  EXPECT_TRUE(fs::exists(tmp / "postern.toml"));

  fs::path old_cwd = fs::current_path();
  fs::current_path(tmp.path());
  auto r = prepare_demo("sub/demo", 0);
  fs::current_path(old_cwd);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(*r, tmp / "sub/demo/postern.toml");
  auto cfg = load_config(*r);
  ASSERT_TRUE(cfg.ok()) << cfg.err().message();
  EXPECT_EQ(cfg->passdb, "passwd-file:" + tmp / "sub/demo/users");
}

TEST(demo, escapes_percent_and_colon_in_the_directory) {
  temp_dir tmp;
  fs::path dir = tmp / "100%demo:x";
  auto r = prepare_demo(dir.string(), 0);
  ASSERT_TRUE(r.ok()) << r.err().message();
  auto cfg = load_config(*r);
  ASSERT_TRUE(cfg.ok()) << cfg.err().message();
  EXPECT_EQ(cfg->mail_location, "maildir:" + tmp.path() + "/100%%demo::x/mail/%u/Maildir");
  EXPECT_EQ(cfg->passdb, "passwd-file:" + (dir / "users").string());
}

TEST(demo, refuses_a_directory_that_is_not_a_demo) {
  temp_dir tmp;
  write_file(tmp / "users", "someone:x:1000:1000::/home/someone:/bin/sh\n");
  auto r = prepare_demo(tmp.path(), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::invalid);
  EXPECT_NE(r.err().message().find(".postern-demo"), std::string::npos);
  EXPECT_EQ(read_file(tmp / "users"), "someone:x:1000:1000::/home/someone:/bin/sh\n");
  EXPECT_FALSE(fs::exists(tmp / "postern.toml"));

  write_file(tmp / "file", "x");
  auto f = prepare_demo(tmp / "file", 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.err().code(), errc::invalid);

  EXPECT_FALSE(prepare_demo("", 0).ok());
}

TEST(config, listener_tables) {
  auto r = parse_config(
      "[server]\ntls_listen = []\n[[server.listener]]\naddress = \"[::]:995\"\ntls = \"implicit\"\n"
      "name = \"pop3s-public\"\n[[server.listener]]\naddress = \"127.0.0.1:110\"\n"
      "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
      "t.toml");
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_TRUE(r->listen.empty());  // the tables replace the default listen addresses
  ASSERT_EQ(r->listeners.size(), 2u);
  EXPECT_EQ(r->listeners[0].address.host, "::");
  EXPECT_TRUE(r->listeners[0].implicit_tls);
  EXPECT_EQ(r->listeners[0].name, "pop3s-public");
  EXPECT_FALSE(r->listeners[1].implicit_tls);
  auto specs = listener_specs(*r);
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].port, 995);
  // Printed and read back, the same listeners.
  auto again = parse_config(format_config(*r), "again.toml");
  ASSERT_TRUE(again.ok()) << again.err().message();
  EXPECT_TRUE(again->listen.empty());
  ASSERT_EQ(again->listeners.size(), 2u);
  EXPECT_EQ(again->listeners[0].name, "pop3s-public");

  EXPECT_NE(
      error_of("[server]\n[[server.listener]]\ntls = \"implicit\"\n").find("needs an address"),
      std::string::npos);
  EXPECT_NE(error_of("[server]\n[[server.listener]]\naddress = \"*:110\"\ntls = \"yes\"\n")
                .find("expected \"none\" or \"implicit\""),
            std::string::npos);
  EXPECT_NE(error_of("[server]\n[[server.listener]]\naddress = \"*:110\"\nport = 1\n")
                .find("unknown key"),
            std::string::npos);
  EXPECT_NE(error_of("[server]\n[[server.listener]]\naddress = \"*:110\"\nname = \"a:b\"\n")
                .find("FileDescriptorName"),
            std::string::npos);
  EXPECT_NE(
      error_of("[server]\nlisten = [\"0.0.0.0:110\"]\n[[server.listener]]\naddress = \"*:110\"\n")
          .find("listed twice"),
      std::string::npos);
  EXPECT_NE(error_of("[server]\n[[server.listener]]\naddress = \"*:995\"\ntls = \"implicit\"\n")
                .find("needs tls.cert and tls.key"),
            std::string::npos);
}

TEST(config, inherited_socket_names) {
  std::vector<net::listener_spec> specs{{"0.0.0.0", 2995, {true, false}, "secure"}};
  net::listener_options plain{};
  EXPECT_TRUE(net::options_for_name(specs, "secure", plain).implicit_tls);
  EXPECT_TRUE(net::options_for_name(specs, "pop3s", plain).implicit_tls);
  EXPECT_TRUE(net::options_for_name(specs, "pop3s-v6", plain).implicit_tls);
  EXPECT_FALSE(net::options_for_name(specs, "pop3", plain).implicit_tls);
  EXPECT_FALSE(net::options_for_name(specs, "unknown", plain).implicit_tls);
  EXPECT_FALSE(net::options_for_name(specs, "pop3sx", plain).implicit_tls);
  net::listener_options connection{true, false};
  EXPECT_TRUE(net::options_for_name(specs, "pop3", connection).implicit_tls);
}

}  // namespace
}  // namespace postern::server
