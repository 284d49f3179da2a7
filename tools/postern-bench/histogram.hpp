// histogram: latency distribution in bounded memory, for postern-bench.
//
// Log-linear buckets over nanoseconds: exact below 128 ns, then 64 buckets per power of two, so
// any recorded value is reported within 0.8% of itself. The maximum is kept exactly. About 30
// KiB once the first value is recorded, nothing before. Not thread-safe: the benchmark records
// from its single event-loop thread.
#pragma once

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

namespace postern::bench {

class histogram {
 public:
  void record(std::chrono::nanoseconds d) noexcept {
    const std::uint64_t v = d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
    if (counts_.empty()) {
      counts_.assign(bucket_count, 0);
    }
    ++counts_[index_of(v)];
    ++count_;
    max_ = std::max(max_, v);
  }

  // Adds every value `other` recorded (the maxima combine exactly).
  void merge(const histogram& other) {
    if (other.count_ == 0) {
      return;
    }
    if (counts_.empty()) {
      counts_.assign(bucket_count, 0);
    }
    for (std::size_t i = 0; i < bucket_count; ++i) {
      counts_[i] += other.counts_[i];
    }
    count_ += other.count_;
    max_ = std::max(max_, other.max_);
  }

  // For sending a histogram to another process: f(index, count) for every non-empty bucket.
  template <typename F>
  void for_each_bucket(F&& f) const {
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      if (counts_[i] != 0) {
        f(i, counts_[i]);
      }
    }
  }
  // The receiving side: adds `n` values to bucket `index`; false when there is no such bucket.
  bool add_bucket(std::size_t index, std::uint64_t n) {
    if (index >= bucket_count) {
      return false;
    }
    if (counts_.empty()) {
      counts_.assign(bucket_count, 0);
    }
    counts_[index] += n;
    count_ += n;
    return true;
  }
  void raise_max(std::uint64_t v) noexcept { max_ = std::max(max_, v); }

  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t max_ns() const noexcept { return max_; }

  // The value below which a fraction q (0 < q <= 1) of the recorded values fall, in
  // nanoseconds; 0 when nothing was recorded.
  double percentile_ns(double q) const noexcept {
    if (count_ == 0) {
      return 0;
    }
    const auto rank = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        return std::min(midpoint_of(i), static_cast<double>(max_));
      }
    }
    return static_cast<double>(max_);
  }

 private:
  static constexpr int linear_bits = 7;  // values below 2^7 get a bucket each
  static constexpr std::size_t bucket_count = (64 - linear_bits + 2) * 64;

  static std::size_t index_of(std::uint64_t v) noexcept {
    if (v < (1u << linear_bits)) {
      return static_cast<std::size_t>(v);
    }
    const int e =
        static_cast<int>(std::bit_width(v)) - linear_bits;  // >= 1; v >> e lies in [64, 128)
    return static_cast<std::size_t>(e) * 64 + static_cast<std::size_t>(v >> e);
  }

  static double midpoint_of(std::size_t i) noexcept {
    if (i < (1u << linear_bits)) {
      return static_cast<double>(i);
    }
    const std::size_t e = i / 64 - 1;
    const std::size_t m = i - e * 64;
    const double lo = std::ldexp(static_cast<double>(m), static_cast<int>(e));
    return lo + std::ldexp(0.5, static_cast<int>(e));
  }

  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace postern::bench
