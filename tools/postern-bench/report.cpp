// Output of postern-bench: a human-readable report, or one JSON line for scripts.
#include "bench.hpp"

#include <fmt/core.h>

#include <cmath>
#include <cstdio>

namespace postern::bench {
namespace {

constexpr std::string_view scenario_names[] = {"session", "retr", "idle", "bigbox", "tls"};
constexpr std::string_view tls_names[] = {"none", "pop3s", "stls"};

std::string_view scenario_name(scenario s) { return scenario_names[static_cast<int>(s)]; }
std::string_view tls_name(tls_mode m) { return tls_names[static_cast<int>(m)]; }

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += fmt::format("\\u{:04x}", c);  // bytes, not text: keep the line ASCII
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

// A finite number for JSON (NaN and infinities are not JSON).
std::string num(double v, int decimals = 3) {
  if (!std::isfinite(v)) {
    return "null";
  }
  return fmt::format("{:.{}f}", v, decimals);
}

double per_second(double n, double s) { return s > 0 ? n / s : 0; }
double megabytes(double octets) { return octets / 1e6; }

double cpu_busy_pct(const result& r) {
  return r.window_s > 0 ? 100.0 * (r.cpu_user_s + r.cpu_sys_s) / r.window_s : 0;
}

std::string unit_name(scenario s) {
  switch (s) {
    case scenario::session:
    case scenario::tls:
      return "sessions";
    case scenario::retr:
      return "RETRs";
    case scenario::idle:
      return "sessions opened";
    case scenario::bigbox:
      return "iterations";
  }
  return "units";
}

std::string target_name(const options& o) {
  std::string error;
  if (auto ep = parse_target(o, error)) {
    const auto a = ep->address();
    return a.is_v6() ? fmt::format("[{}]:{}", a.to_string(), ep->port())
                     : fmt::format("{}:{}", a.to_string(), ep->port());
  }
  return o.host;
}

std::optional<double> kib_per_session(const idle_result& i) {
  if (!i.pss_before_kib || !i.pss_after_kib || i.alive == 0) {
    return std::nullopt;
  }
  return (static_cast<double>(*i.pss_after_kib) - static_cast<double>(*i.pss_before_kib)) /
         static_cast<double>(i.alive);
}

}  // namespace

void print_text(const options& o, const result& r) {
  const stats& st = r.st;
  std::string head = fmt::format("postern-bench {} -> {}", scenario_name(o.kind), target_name(o));
  if (o.tls != tls_mode::none) {
    head += fmt::format(" ({}, server certificate not verified)", tls_name(o.tls));
  }
  if (!o.label.empty()) {
    head += fmt::format(" [{}]", o.label);
  }
  fmt::print("{}\n", head);
  if (o.kind == scenario::session || o.kind == scenario::tls || o.kind == scenario::retr) {
    fmt::print("  {} clients, {} users; {:.2f} s window after {:.1f} s warm-up\n", r.clients,
               r.users, r.window_s, o.warmup_s);
    fmt::print("  throughput  {} {}, {:.1f}/s\n", st.completed, unit_name(o.kind),
               per_second(static_cast<double>(st.completed), r.window_s));
    if (st.payload_octets > 0) {
      fmt::print("  payload     {:.2f} MB of RETR octets, {:.1f} MB/s (MB = 10^6 bytes)\n",
                 megabytes(static_cast<double>(st.payload_octets)),
                 per_second(megabytes(static_cast<double>(st.payload_octets)), r.window_s));
    }
  }
  if (o.kind == scenario::retr && o.pipeline > 1 && st.pipeline_depth > 0) {
    if (st.pipeline_depth >= o.pipeline) {
      fmt::print(
          "  pipeline    {} RETRs outstanding per client (latency: each reply's own "
          "wait, from its sending or the previous reply's end)\n",
          o.pipeline);
    } else {
      fmt::print(
          "  pipeline    none: {} requested, but the server does not advertise "
          "PIPELINING, so one RETR at a time\n",
          o.pipeline);
    }
  }
  if (r.idle) {
    const idle_result& i = *r.idle;
    fmt::print(
        "  sessions    {} requested, {} authenticated in {:.2f} s ({:.0f}/s), {} still "
        "answering NOOP after {:.1f} s held\n",
        i.requested, i.established, i.setup_s,
        per_second(static_cast<double>(i.established), i.setup_s), i.alive, i.hold_s);
    if (i.client_processes > 1) {
      fmt::print(
          "  clients     {} processes, each from its own source "
          "addresses\n",
          i.client_processes);
    }
    if (i.limit_by_fds != 0) {
      fmt::print("  limited     by RLIMIT_NOFILE to {} sessions per process\n", i.limit_by_fds);
    }
    if (i.pss_before_kib && i.pss_after_kib) {
      fmt::print("  server PSS  {} KiB before ({} processes), {} KiB held ({} processes)\n",
                 *i.pss_before_kib, i.processes_before, *i.pss_after_kib, i.processes_after);
      if (auto k = kib_per_session(i)) {
        fmt::print("  per session {:.1f} KiB\n", *k);
      }
    }
  }
  if (!r.bigbox.empty()) {
    fmt::print("  {:>4} {:>9} {:>12} {:>13} {:>9} {:>9} {:>13} {:>9}\n", "#", "messages", "octets",
               "login+STAT ms", "UIDL ms", "LIST ms", "DELE ms", "QUIT ms");
    for (std::size_t k = 0; k < r.bigbox.size(); ++k) {
      const auto& b = r.bigbox[k];
      const std::string dele =
          b.deleted > 0 ? fmt::format("{:.2f} ({})", b.dele_ms, b.deleted) : std::string("-");
      fmt::print("  {:>4} {:>9} {:>12} {:>13.2f} {:>9.2f} {:>9.2f} {:>13} {:>9.2f}\n", k + 1,
                 b.messages, b.octets, b.login_stat_ms, b.uidl_ms, b.list_ms, dele, b.quit_ms);
    }
  }
  const std::uint64_t total = st.error_total();
  if (total == 0) {
    fmt::print("  errors      none\n");
  } else {
    std::string kinds;
    for (std::size_t f = 1; f < fault_count; ++f) {
      if (st.errors[f] > 0) {
        kinds += fmt::format("{}{} {}", kinds.empty() ? "" : ", ",
                             fault_name(static_cast<fault>(f)), st.errors[f]);
      }
    }
    fmt::print("  errors      {} ({})\n", total, kinds);
  }
  bool any = false;
  for (std::size_t k = 0; k < op_count; ++k) {
    const histogram& h = st.latency[k];
    if (h.count() == 0) {
      continue;
    }
    if (!any) {
      fmt::print("  latency     {:<11} {:>9} {:>10} {:>10} {:>10}\n", "", "count", "p50 ms",
                 "p99 ms", "max ms");
      any = true;
    }
    fmt::print("              {:<11} {:>9} {:>10.3f} {:>10.3f} {:>10.3f}\n",
               op_name(static_cast<op>(k)), h.count(), h.percentile_ns(0.5) / 1e6,
               h.percentile_ns(0.99) / 1e6, static_cast<double>(h.max_ns()) / 1e6);
  }
  fmt::print("  client CPU  user {:.2f} s + system {:.2f} s = {:.0f}% of one core\n", r.cpu_user_s,
             r.cpu_sys_s, cpu_busy_pct(r));
  if (cpu_busy_pct(r) > 90 &&
      (o.kind == scenario::session || o.kind == scenario::tls || o.kind == scenario::retr)) {
    fmt::print(
        "  note        the client was nearly saturated: the server may be faster than "
        "measured\n");
  }
  for (const auto& w : st.warnings) {
    if (!o.quiet) {
      fmt::print("  warning     {}\n", w);
    }
  }
  if (st.warnings_dropped > 0 && !o.quiet) {
    fmt::print("  warning     ... and {} more\n", st.warnings_dropped);
  }
  std::fflush(stdout);
}

void print_json(const options& o, const result& r) {
  const stats& st = r.st;
  std::string j = "{\"tool\":\"postern-bench\",\"format\":1";
  j += fmt::format(",\"scenario\":{},\"label\":{},\"target\":{},\"tls\":{}",
                   json_string(scenario_name(o.kind)), json_string(o.label),
                   json_string(target_name(o)), json_string(tls_name(o.tls)));
  if (o.tls != tls_mode::none) {
    j += ",\"tls_verify\":false";
  }
  j += fmt::format(",\"clients\":{},\"users\":{},\"warmup_s\":{},\"window_s\":{}", r.clients,
                   r.users, num(o.warmup_s, 3), num(r.window_s, 4));
  if (o.kind == scenario::retr) {
    j += fmt::format(",\"message\":{},\"pipeline_requested\":{},\"pipeline_depth\":{}", o.message,
                     o.pipeline, st.pipeline_depth);
  }
  const double mb = megabytes(static_cast<double>(st.payload_octets));
  j += fmt::format(",\"completed\":{},\"per_s\":{},\"payload_octets\":{},\"mb_per_s\":{}",
                   st.completed, num(per_second(static_cast<double>(st.completed), r.window_s), 2),
                   st.payload_octets, num(per_second(mb, r.window_s), 2));
  j += ",\"latency_us\":{";
  bool first = true;
  for (std::size_t k = 0; k < op_count; ++k) {
    const histogram& h = st.latency[k];
    if (h.count() == 0) {
      continue;
    }
    j += fmt::format("{}\"{}\":{{\"n\":{},\"p50\":{},\"p99\":{},\"max\":{}}}", first ? "" : ",",
                     op_name(static_cast<op>(k)), h.count(), num(h.percentile_ns(0.5) / 1e3, 1),
                     num(h.percentile_ns(0.99) / 1e3, 1),
                     num(static_cast<double>(h.max_ns()) / 1e3, 1));
    first = false;
  }
  j += fmt::format("}},\"errors\":{{\"total\":{}", st.error_total());
  for (std::size_t f = 1; f < fault_count; ++f) {
    if (st.errors[f] > 0) {
      j += fmt::format(",\"{}\":{}", fault_name(static_cast<fault>(f)), st.errors[f]);
    }
  }
  j += "}";
  if (r.idle) {
    const idle_result& i = *r.idle;
    j += fmt::format(
        ",\"idle\":{{\"requested\":{},\"established\":{},\"alive\":{},"
        "\"setup_s\":{},\"hold_s\":{},\"fd_limited\":{},\"client_processes\":{}",
        i.requested, i.established, i.alive, num(i.setup_s), num(i.hold_s), i.limit_by_fds,
        i.client_processes);
    if (i.pss_before_kib && i.pss_after_kib) {
      j += fmt::format(
          ",\"pss_before_kib\":{},\"pss_after_kib\":{},\"processes_before\":{},"
          "\"processes_after\":{}",
          *i.pss_before_kib, *i.pss_after_kib, i.processes_before, i.processes_after);
      if (auto k = kib_per_session(i)) {
        j += fmt::format(",\"kib_per_session\":{}", num(*k, 2));
      }
    }
    j += "}";
  }
  if (o.kind == scenario::bigbox) {
    j += ",\"iterations\":[";
    for (std::size_t k = 0; k < r.bigbox.size(); ++k) {
      const auto& b = r.bigbox[k];
      j += fmt::format(
          "{}{{\"messages\":{},\"octets\":{},\"login_stat_ms\":{},\"uidl_ms\":{},"
          "\"list_ms\":{},\"deleted\":{},\"dele_ms\":{},\"quit_ms\":{}}}",
          k == 0 ? "" : ",", b.messages, b.octets, num(b.login_stat_ms), num(b.uidl_ms),
          num(b.list_ms), b.deleted, num(b.dele_ms), num(b.quit_ms));
    }
    j += "]";
  }
  j += fmt::format(",\"cpu\":{{\"user_s\":{},\"sys_s\":{},\"busy_pct\":{}}}", num(r.cpu_user_s),
                   num(r.cpu_sys_s), num(cpu_busy_pct(r), 1));
  j += ",\"warnings\":[";
  for (std::size_t k = 0; k < st.warnings.size(); ++k) {
    j += (k == 0 ? "" : ",") + json_string(st.warnings[k]);
  }
  j += "]}";
  fmt::print("{}\n", j);
  std::fflush(stdout);
}

}  // namespace postern::bench
