// idle_report: what an `idle` client process tells its parent, and how the parent adds it up.
//
// `idle` holds more sessions than one process has descriptors for by forking client
// processes, each holding a share. A child sends two frames up its pipe: "established" once
// its sessions are open (the parent then holds them all and measures the server), and its
// full report once they are released. A frame is a type byte, a 64-bit length and the
// payload; numbers travel in the machine's own byte order (parent and child are one binary on
// one machine). The reader checks every length against what is left, so a child that died
// halfway through a frame is an error, never a crash.
#pragma once

#include "bench.hpp"

#include <cstring>
#include <string>
#include <string_view>

namespace postern::bench {

class report_writer {
 public:
  void u64(std::uint64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void f64(double v) { out_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(std::string_view s) {
    u64(s.size());
    out_.append(s);
  }
  const std::string& bytes() const noexcept { return out_; }

 private:
  std::string out_;
};

class report_reader {
 public:
  explicit report_reader(std::string_view in) : in_(in) {}
  bool ok() const noexcept { return ok_; }
  bool at_end() const noexcept { return in_.empty(); }
  std::uint64_t u64() noexcept {
    std::uint64_t v = 0;
    take(&v, sizeof v);
    return v;
  }
  double f64() noexcept {
    double v = 0;
    take(&v, sizeof v);
    return v;
  }
  // A string of at most `max` bytes; longer ones fail the reader.
  std::string str(std::size_t max) {
    const std::uint64_t n = u64();
    if (!ok_ || n > max || n > in_.size()) {
      ok_ = false;
      return {};
    }
    std::string s(in_.substr(0, n));
    in_.remove_prefix(n);
    return s;
  }

 private:
  void take(void* out, std::size_t n) noexcept {
    if (!ok_ || in_.size() < n) {
      ok_ = false;
      return;
    }
    std::memcpy(out, in_.data(), n);
    in_.remove_prefix(n);
  }
  std::string_view in_;
  bool ok_ = true;
};

// Frame types.
inline constexpr char frame_established = 'E';
inline constexpr char frame_report = 'R';

// What one child measured.
struct child_report {
  stats st;
  std::uint64_t established = 0;
  std::uint64_t alive = 0;
  double setup_s = 0;
  double cpu_user_s = 0;
  double cpu_sys_s = 0;
};

inline constexpr std::size_t max_report_warning = 4096;
inline constexpr std::uint64_t max_report_warnings = 1000;

inline std::string encode_report(const child_report& r) {
  report_writer w;
  w.u64(r.established);
  w.u64(r.alive);
  w.f64(r.setup_s);
  w.f64(r.cpu_user_s);
  w.f64(r.cpu_sys_s);
  w.u64(r.st.completed);
  w.u64(r.st.payload_octets);
  for (const std::uint64_t n : r.st.errors) {
    w.u64(n);
  }
  for (const histogram& h : r.st.latency) {
    std::uint64_t buckets = 0;
    h.for_each_bucket([&](std::size_t, std::uint64_t) { ++buckets; });
    w.u64(h.max_ns());
    w.u64(buckets);
    h.for_each_bucket([&](std::size_t i, std::uint64_t n) {
      w.u64(i);
      w.u64(n);
    });
  }
  const std::size_t warnings = std::min<std::size_t>(r.st.warnings.size(), max_report_warnings);
  w.u64(warnings);
  for (std::size_t i = 0; i < warnings; ++i) {
    w.str(std::string_view(r.st.warnings[i]).substr(0, max_report_warning));
  }
  w.u64(r.st.warnings_dropped + (r.st.warnings.size() - warnings));
  return w.bytes();
}

// Fills `out` from `bytes`; false when they are not exactly one report.
inline bool decode_report(std::string_view bytes, child_report& out) {
  report_reader in(bytes);
  out = child_report{};
  out.established = in.u64();
  out.alive = in.u64();
  out.setup_s = in.f64();
  out.cpu_user_s = in.f64();
  out.cpu_sys_s = in.f64();
  out.st.completed = in.u64();
  out.st.payload_octets = in.u64();
  for (std::uint64_t& n : out.st.errors) {
    n = in.u64();
  }
  for (histogram& h : out.st.latency) {
    h.raise_max(in.u64());
    const std::uint64_t buckets = in.u64();
    for (std::uint64_t b = 0; b < buckets && in.ok(); ++b) {
      const std::uint64_t index = in.u64();
      const std::uint64_t n = in.u64();
      if (!in.ok() || !h.add_bucket(static_cast<std::size_t>(index), n)) {
        return false;
      }
    }
  }
  const std::uint64_t warnings = in.u64();
  if (!in.ok() || warnings > max_report_warnings) {
    return false;
  }
  for (std::uint64_t i = 0; i < warnings && in.ok(); ++i) {
    out.st.warnings.push_back(in.str(max_report_warning));
  }
  out.st.warnings_dropped = in.u64();
  return in.ok() && in.at_end();
}

// Adds `from` to `into`, keeping at most `max_warnings` warning texts.
inline void merge_stats(stats& into, const stats& from, std::size_t max_warnings) {
  for (std::size_t i = 0; i < into.latency.size(); ++i) {
    into.latency[i].merge(from.latency[i]);
  }
  for (std::size_t i = 0; i < into.errors.size(); ++i) {
    into.errors[i] += from.errors[i];
  }
  into.completed += from.completed;
  into.payload_octets += from.payload_octets;
  for (const std::string& w : from.warnings) {
    if (into.warnings.size() < max_warnings) {
      into.warnings.push_back(w);
    } else {
      ++into.warnings_dropped;
    }
  }
  into.warnings_dropped += from.warnings_dropped;
}

}  // namespace postern::bench
