#include "idle_report.hpp"

#include <gtest/gtest.h>

#include <chrono>

namespace postern::bench {
namespace {

using std::chrono::nanoseconds;

child_report sample() {
  child_report r;
  r.established = 16667;
  r.alive = 16660;
  r.setup_s = 4.5;
  r.cpu_user_s = 0.25;
  r.cpu_sys_s = 1.5;
  r.st.completed = 16667;
  r.st.payload_octets = 12345;
  r.st.errors[static_cast<std::size_t>(fault::timeout)] = 7;
  r.st.errors[static_cast<std::size_t>(fault::sys_temp)] = 2;
  for (std::uint64_t v = 1; v < 100000000; v = v * 3 + 1) {
    r.st.latency[static_cast<std::size_t>(op::connect)].record(nanoseconds(v));
  }
  r.st.latency[static_cast<std::size_t>(op::noop)].record(nanoseconds(42000));
  r.st.warnings = {"timeout: idle7 at PASS", std::string(10000, 'w')};
  r.st.warnings_dropped = 3;
  return r;
}

TEST(IdleReport, RoundTrip) {
  const child_report in = sample();
  child_report out;
  ASSERT_TRUE(decode_report(encode_report(in), out));
  EXPECT_EQ(out.established, in.established);
  EXPECT_EQ(out.alive, in.alive);
  EXPECT_DOUBLE_EQ(out.setup_s, in.setup_s);
  EXPECT_DOUBLE_EQ(out.cpu_sys_s, in.cpu_sys_s);
  EXPECT_EQ(out.st.completed, in.st.completed);
  EXPECT_EQ(out.st.payload_octets, in.st.payload_octets);
  EXPECT_EQ(out.st.errors, in.st.errors);
  for (std::size_t i = 0; i < op_count; ++i) {
    EXPECT_EQ(out.st.latency[i].count(), in.st.latency[i].count()) << i;
    EXPECT_EQ(out.st.latency[i].max_ns(), in.st.latency[i].max_ns()) << i;
    EXPECT_DOUBLE_EQ(out.st.latency[i].percentile_ns(0.5), in.st.latency[i].percentile_ns(0.5));
    EXPECT_DOUBLE_EQ(out.st.latency[i].percentile_ns(0.99), in.st.latency[i].percentile_ns(0.99));
  }
  ASSERT_EQ(out.st.warnings.size(), 2u);
  EXPECT_EQ(out.st.warnings[0], in.st.warnings[0]);
  EXPECT_EQ(out.st.warnings[1].size(), max_report_warning);  // long texts are cut
  EXPECT_EQ(out.st.warnings_dropped, 3u);
}

TEST(IdleReport, TruncatedOrPaddedReportsAreRejected) {
  const std::string bytes = encode_report(sample());
  child_report out;
  for (std::size_t n = 0; n < bytes.size(); n += 7) {
    EXPECT_FALSE(decode_report(std::string_view(bytes).substr(0, n), out)) << n;
  }
  EXPECT_FALSE(decode_report(bytes + "x", out));
}

TEST(IdleReport, BucketOutsideTheHistogramIsRejected) {
  child_report empty;
  const std::string good = encode_report(empty);
  // The same report with one bucket of a made-up index in the first histogram.
  const std::size_t head = 8 * (7 + fault_count);  // scalars and error counts
  std::string bad = good.substr(0, head);
  report_writer h;
  h.u64(1);         // max
  h.u64(1);         // one bucket
  h.u64(1u << 30);  // index
  h.u64(1);         // count
  bad += h.bytes();
  bad += good.substr(head + 16);
  EXPECT_FALSE(decode_report(bad, empty));
}

TEST(IdleReport, MergeAddsEverything) {
  stats total;
  const child_report a = sample();
  const child_report b = sample();
  merge_stats(total, a.st, 3);
  merge_stats(total, b.st, 3);
  EXPECT_EQ(total.completed, 2 * a.st.completed);
  EXPECT_EQ(total.errors[static_cast<std::size_t>(fault::timeout)], 14u);
  EXPECT_EQ(total.latency[static_cast<std::size_t>(op::connect)].count(),
            2 * a.st.latency[static_cast<std::size_t>(op::connect)].count());
  EXPECT_EQ(total.warnings.size(), 3u);
  EXPECT_EQ(total.warnings_dropped, 1u + 3u + 3u);
}

TEST(Histogram, MergeEqualsRecordingEverythingInOne) {
  histogram a;
  histogram b;
  histogram both;
  for (std::uint64_t v = 5; v < 50000000; v = v * 2 + 3) {
    ((v & 4) != 0 ? a : b).record(nanoseconds(v));
    both.record(nanoseconds(v));
  }
  a.merge(b);
  EXPECT_EQ(a.count(), both.count());
  EXPECT_EQ(a.max_ns(), both.max_ns());
  for (const double q : {0.1, 0.5, 0.9, 0.99, 1.0}) {
    EXPECT_DOUBLE_EQ(a.percentile_ns(q), both.percentile_ns(q)) << q;
  }
}

}  // namespace
}  // namespace postern::bench
