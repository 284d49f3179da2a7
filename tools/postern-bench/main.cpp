// postern-bench: a load generator for POP3 servers (any server, loopback only).
//
//   postern-bench session --port 110 --user 'user%d' --users 64 --password secret --clients 32
//   postern-bench retr    --port 110 --user big --message 1 --duration 5
//   postern-bench retr    --port 110 --user cycle --cycle --pipeline 16
//   postern-bench idle    --port 110 --user 'idle%d' --users 1000 --clients 1000 --server-pid 42
//   postern-bench bigbox  --port 110 --user huge --count 3 --delete-last 10
//   postern-bench tls     --mode stls --port 110 ...
//   postern-bench serve   --port 8110 --messages 10 --message-size 4096   (a no-work server)
//
// Exit status: 0 when the run completed without a single error, 1 when errors were counted
// (wrong replies, octet mismatches, timeouts, refused connections...), 2 when the run could not
// start (bad options, a target that is not a loopback address, an unreadable --server-pid).
// Slow numbers never change the exit status.
#include "bench.hpp"
#include "system.hpp"

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <map>

namespace {

using namespace postern::bench;

void add_common_options(CLI::App& app, options& o) {
  app.add_option("-H,--host", o.host, "server address, numeric and loopback only")
      ->capture_default_str();
  app.add_option("-p,--port", o.port, "server port (default 110, or 995 for tls --mode pop3s)");
  app.add_option("-u,--user", o.user_pattern,
                 "login name; %d in it runs over --users numbers from --first-user")
      ->capture_default_str();
  app.add_option("-n,--users", o.users, "how many users the pattern names (default: --clients)");
  app.add_option("--first-user", o.first_user, "the first number put in for %d")
      ->capture_default_str();
  app.add_option("-P,--password", o.password, "password; %d in it is the user's number too")
      ->envname("POSTERN_BENCH_PASSWORD")
      ->capture_default_str();
  app.add_option("-c,--clients", o.clients,
                 "concurrent clients (session/tls 32, retr 1) or sessions to hold (idle 1000)");
  app.add_option("-d,--duration", o.duration_s,
                 "measurement window in seconds (idle: how long sessions are held)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--count", o.count,
                 "stop after this many sessions or RETRs instead (bigbox: iterations, default 3)")
      ->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup", o.warmup_s, "seconds of load before the window opens")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--timeout", o.timeout_s, "seconds one operation may take before it fails")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--cpu", o.cpu, "pin this process to the given CPU (sched_setaffinity)");
  app.add_option("--source-ips", o.source_ips,
                 "spread connections over 127.0.0.1..127.0.0.N (default: 1 per 25,000)");
  app.add_option("--output", o.format, "text, json (one line) or both")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, output_format>{{"text", output_format::text},
                                               {"json", output_format::json},
                                               {"both", output_format::both}}))
      ->option_text("text|json|both");
  app.add_flag_callback(
      "--json", [&o] { o.format = output_format::json; }, "same as --output json");
  app.add_option("--label", o.label, "a name carried into the output, e.g. the server's");
  app.add_flag("-q,--quiet", o.quiet, "text output without the warning details");
}

int run_main(int argc, char** argv) {
  options o;
  CLI::App app{"postern-bench: load generator for POP3 servers on loopback"};
  app.require_subcommand(1);
  add_common_options(app, o);

  auto* session = app.add_subcommand("session",
                                     "clients loop over full sessions (USER, PASS, STAT, UIDL, "
                                     "RETR 1, QUIT); sessions/s");
  auto* retr = app.add_subcommand("retr", "clients RETR one message, or all in turn; MB/s");
  retr->add_option("-m,--message", o.message, "message number to RETR; 0 cycles through all")
      ->capture_default_str();
  retr->add_flag_callback(
      "--cycle", [&o] { o.message = 0; }, "same as --message 0");
  retr->add_option("--pipeline", o.pipeline,
                   "RETRs each client keeps outstanding (RFC 2449 PIPELINING); only when the "
                   "server's CAPA lists PIPELINING, else one at a time")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1024}));
  auto* idle = app.add_subcommand(
      "idle", "open --clients authenticated sessions and hold them; server PSS per session");
  idle->add_option("--server-pid", o.server_pid, "read this process's PSS before and after");
  idle->add_flag_callback(
      "--no-children", [&o] { o.server_children = false; },
      "PSS of --server-pid alone, without its descendants");
  idle->add_option("--concurrency", o.concurrency, "sessions being opened at once")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  idle->add_option("--processes", o.processes,
                   "client processes holding the sessions (default: as many as the "
                   "open-file limit needs), each from its own source addresses")
      ->check(CLI::PositiveNumber);
  idle->add_option("--hold", o.duration_s, "seconds to hold the sessions (same as --duration)")
      ->check(CLI::PositiveNumber);
  auto* bigbox = app.add_subcommand(
      "bigbox", "time login+STAT, UIDL, LIST and QUIT on one huge maildrop, --count times");
  bigbox->add_option("--delete-last", o.delete_last,
                     "in the last iteration, DELE the last k messages before QUIT");
  auto* tls = app.add_subcommand("tls", "full sessions over TLS (pop3s or STLS); sessions/s");
  tls->add_option("--mode", o.tls, "pop3s (TLS from the start) or stls")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, tls_mode>{{"pop3s", tls_mode::pop3s}, {"stls", tls_mode::stls}}))
      ->option_text("pop3s|stls");
  std::uint64_t null_messages = 10;
  std::uint64_t null_size = 4096;
  auto* serve =
      app.add_subcommand("serve",
                         "be a POP3 server that does no work (messages in memory, any login): the "
                         "ceiling of what the machine and this client allow");
  serve->add_option("--messages", null_messages, "messages in every maildrop")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  serve->add_option("--message-size", null_size, "octets of each message, CRLF line ends")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  std::uint64_t null_processes = 1;
  serve
      ->add_option("--processes", null_processes,
                   "worker processes, each with its own SO_REUSEPORT listener and descriptor "
                   "limit (for holding more idle sessions than one process can)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  for (auto* sub : {session, retr, idle, bigbox, tls, serve}) {
    sub->fallthrough();
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (serve->parsed()) {
    if (o.port == 0) {
      o.port = 110;
    }
    if (o.cpu) {
      if (auto why = pin_to_cpu(*o.cpu); !why.empty()) {
        fmt::print(stderr, "postern-bench: --cpu {}: {}\n", *o.cpu, why);
        return 2;
      }
    }
    return run_null_server(o, null_messages, null_size, null_processes);
  }
  if (session->parsed()) {
    o.kind = scenario::session;
  } else if (retr->parsed()) {
    o.kind = scenario::retr;
  } else if (idle->parsed()) {
    o.kind = scenario::idle;
    o.warmup_s = 0;  // sessions are opened once and held
  } else if (bigbox->parsed()) {
    o.kind = scenario::bigbox;
    o.warmup_s = 0;  // the first login is the point
  } else {
    o.kind = scenario::tls;
    if (o.tls == tls_mode::none) {
      o.tls = tls_mode::pop3s;
    }
  }
  if (o.users == 0) {
    o.users = o.kind == scenario::bigbox ? 1 : o.clients;
    if (o.users == 0) {
      o.users = o.kind == scenario::idle ? 1000 : o.kind == scenario::retr ? 1 : 32;
    }
  }

  std::string error;
  if (!parse_target(o, error)) {
    fmt::print(stderr, "postern-bench: {}\n", error);
    return 2;
  }
  if (o.cpu) {
    if (auto why = pin_to_cpu(*o.cpu); !why.empty()) {
      fmt::print(stderr, "postern-bench: --cpu {}: {}\n", *o.cpu, why);
      return 2;
    }
  }

  result r;
  try {
    switch (o.kind) {
      case scenario::session:
      case scenario::tls:
        run_session(o, r);
        break;
      case scenario::retr:
        run_retr(o, r);
        break;
      case scenario::idle:
        run_idle(o, r);
        break;
      case scenario::bigbox:
        run_bigbox(o, r);
        break;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "postern-bench: {}\n", e.what());
    return 2;
  }

  if (o.format != output_format::json) {
    print_text(o, r);
  }
  if (o.format != output_format::text) {
    print_json(o, r);
  }
  return r.st.error_total() == 0 ? 0 : 1;
}

}  // namespace

// Whatever escapes (the option table's construction included) is reported, not left to
// std::terminate.
int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postern-bench: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "postern-bench: unknown exception\n");
  }
  return 2;
}
