#include "bench.hpp"
#include "system.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>

namespace postern::bench {
namespace {

constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

constexpr std::array<std::string_view, op_count> op_names = {
    "connect", "tls",  "stls", "user", "pass", "login_stat", "stat",
    "uidl",    "list", "retr", "dele", "noop", "quit",       "session",
};

constexpr std::size_t max_warnings = 20;
constexpr std::uint64_t max_warnings_per_fault = 3;
// How often the controller looks at deadlines when no phase change is due sooner.
constexpr auto sweep_interval = std::chrono::milliseconds(50);

bench_clock::duration seconds(double s) {
  return std::chrono::duration_cast<bench_clock::duration>(std::chrono::duration<double>(s));
}

}  // namespace

std::string_view op_name(op o) noexcept { return op_names[static_cast<std::size_t>(o)]; }

std::uint64_t user_set::count_of(const options& o) noexcept {
  if (o.user_pattern.find("%d") == std::string::npos) {
    return 1;
  }
  return std::max<std::uint64_t>(o.users, 1);
}

user_set::user_set(const options& o) {
  const std::uint64_t count = count_of(o);
  names_.reserve(count);
  user_.reserve(count);
  pass_.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    names_.push_back(expand(o.user_pattern, o.first_user + i));
    user_.emplace_back("USER " + names_.back());
    pass_.emplace_back("PASS " + expand(o.password, o.first_user + i));
  }
}

std::string user_set::expand(const std::string& pattern, std::uint64_t n) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'd') {
      out += std::to_string(n);
      ++i;
    } else if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == '%') {
      out += '%';
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

std::uint64_t stats::error_total() const noexcept {
  std::uint64_t n = 0;
  for (std::size_t i = 1; i < errors.size(); ++i) {
    n += errors[i];
  }
  return n;
}

run_control::run_control(asio::io_context& io, const options& o, stats& st)
    : io_(io), opts_(o), st_(st), timeout_(seconds(o.timeout_s)) {}

void run_control::record(op o, bench_clock::time_point start,
                         bench_clock::time_point end) noexcept {
  if (measuring_) {
    st_.latency[static_cast<std::size_t>(o)].record(end - start);
  }
}

void run_control::complete_unit() {
  if (measuring_) {
    ++st_.completed;
    unit_failed();
  }
}

void run_control::unit_failed() {
  if (!measuring_) {
    return;
  }
  ++attempts_;
  if (opts_.count && !unwindowed_ && attempts_ >= *opts_.count) {
    close_window();
  }
}

void run_control::count_error(fault f, std::string_view detail) {
  if (forced_close_ || phase_ == phase::done || f == fault::none) {
    return;  // our own doing: the drain deadline closed the connection
  }
  const auto n = ++st_.errors[static_cast<std::size_t>(f)];
  if (detail.empty()) {
    return;
  }
  if (n <= max_warnings_per_fault) {
    warn(fmt::format("{}: {}", fault_name(f), detail));
  } else {
    ++st_.warnings_dropped;
  }
}

void run_control::warn(std::string message) {
  if (st_.warnings.size() < max_warnings) {
    st_.warnings.push_back(std::move(message));
  } else {
    ++st_.warnings_dropped;
  }
}

void run_control::client_finished() {
  if (--active_clients_ > 0 || unwindowed_) {
    return;
  }
  if (phase_ == phase::warmup || phase_ == phase::measure) {
    close_window();
  }
  phase_ = phase::done;
  wake();
}

void run_control::open_window() {
  const cpu_time cpu = process_cpu_time();
  rusage_start_user_ = cpu.user_s;
  rusage_start_sys_ = cpu.sys_s;
  window_start_ = bench_clock::now();
  phase_ = phase::measure;
  measuring_ = true;
}

void run_control::close_window() {
  window_end_ = bench_clock::now();
  const cpu_time cpu = process_cpu_time();
  cpu_user_s_ = cpu.user_s - rusage_start_user_;
  cpu_sys_s_ = cpu.sys_s - rusage_start_sys_;
  measuring_ = false;
  phase_ = phase::drain;
  drain_deadline_ = window_end_ + timeout_;
  wake();
}

void run_control::wake() {
  if (timer_) {
    timer_->cancel();
  }
}

double run_control::window_s() const noexcept {
  const auto end = (phase_ == phase::measure) ? bench_clock::now() : window_end_;
  return std::chrono::duration<double>(end - window_start_).count();
}

void run_control::watch_signals() {
  signals_.emplace(io_, SIGINT, SIGTERM);
  signals_->async_wait([this](const std::error_code& ec, int) {
    if (ec) {
      return;  // cancelled: the run is over
    }
    interrupted_ = true;
    if (phase_ == phase::warmup || (phase_ == phase::measure && !unwindowed_)) {
      close_window();
    }
    if (on_interrupt_) {
      on_interrupt_();
    }
    // A second signal means "now".
    signals_->async_wait([](const std::error_code& again, int) {
      if (!again) {
        std::_Exit(130);
      }
    });
  });
}

void run_control::start() {
  warmup_end_ = bench_clock::now() + seconds(opts_.warmup_s);
  if (opts_.warmup_s <= 0) {
    open_window();
  }
  watch_signals();
  asio::co_spawn(io_, controller(), asio::detached);
}

void run_control::begin_unwindowed() {
  unwindowed_ = true;
  open_window();
  watch_signals();
  asio::co_spawn(io_, controller(), asio::detached);
}

void run_control::finish() {
  if (phase_ == phase::measure) {
    close_window();
  }
  phase_ = phase::done;
  wake();
}

asio::awaitable<void> run_control::controller() {
  timer_.emplace(io_);
  const auto duration = seconds(opts_.duration_s);
  for (;;) {
    const auto now = bench_clock::now();
    if (phase_ == phase::warmup && now >= warmup_end_) {
      open_window();
    }
    if (phase_ == phase::measure && !unwindowed_ && !opts_.count &&
        now >= window_start_ + duration) {
      close_window();
    }
    if (phase_ == phase::drain && now >= drain_deadline_ && !forced_close_) {
      forced_close_ = true;
      registry_.close_all();
    }
    registry_.sweep(now);
    if (phase_ == phase::done) {
      if (signals_) {
        std::error_code ignored;
        signals_->cancel(ignored);
      }
      break;
    }
    auto next = now + sweep_interval;
    if (phase_ == phase::warmup) {
      next = std::min(next, warmup_end_);
    } else if (phase_ == phase::measure && !unwindowed_ && !opts_.count) {
      next = std::min(next, window_start_ + duration);
    }
    timer_->expires_at(next);
    co_await timer_->async_wait(use_tuple);
  }
  timer_.reset();
}

}  // namespace postern::bench
