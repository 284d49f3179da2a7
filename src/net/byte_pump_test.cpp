#include "net/byte_pump.hpp"

#include "pop3/dot_encoder.hpp"

#include <gtest/gtest.h>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/this_coro.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace postern::net {
namespace {

// A client connection that takes each write in pieces of at most `piece` bytes, suspending
// between them (as a socket whose send buffer fills), and can fail after `fail_after` bytes.
class fake_transport final : public transport {
 public:
  explicit fake_transport(std::size_t piece) : piece_(piece) {}
  asio::awaitable<std::size_t> read_some(asio::mutable_buffer, std::error_code& ec) override {
    ec = asio::error::eof;
    co_return 0;
  }
  asio::awaitable<void> write_all(asio::const_buffer buf, std::error_code& ec) override {
    ++writes;
    std::string_view data(static_cast<const char*>(buf.data()), buf.size());
    while (!data.empty()) {
      if (written.size() >= fail_after) {
        ec = asio::error::broken_pipe;
        co_return;
      }
      const std::size_t n = std::min({piece_, data.size(), fail_after - written.size()});
      written.append(data.substr(0, n));
      data.remove_prefix(n);
      co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
    ec = {};
  }
  void close() noexcept override {}

  std::string written;
  std::size_t writes = 0;
  std::size_t fail_after = std::string::npos;

 private:
  std::size_t piece_;
};

// A stored message read in pieces of varying size; it can fail at an offset or be slow.
class fake_reader final : public store::message_reader {
 public:
  explicit fake_reader(std::string data, std::vector<std::size_t> sizes = {1 << 20})
      : data_(std::move(data)), sizes_(std::move(sizes)) {}
  result<std::size_t> read(std::span<char> buf) override {
    threads.push_back(std::this_thread::get_id());
    if (pos_ >= fail_at) {
      return error(errc::temporary, "disk on fire");
    }
    if (slow_reads > 0) {
      --slow_reads;
      std::this_thread::sleep_for(read_placement::slow_fill * 2);
    }
    std::size_t n = std::min({buf.size(), data_.size() - pos_, sizes_[next_++ % sizes_.size()]});
    std::memcpy(buf.data(), data_.data() + pos_, n);
    pos_ += n;
    return n;
  }

  std::size_t fail_at = std::string::npos;
  int slow_reads = 0;
  std::vector<std::thread::id> threads;

 private:
  std::string data_;
  std::vector<std::size_t> sizes_;
  std::size_t pos_ = 0;
  std::size_t next_ = 0;
};

std::string reference(std::string_view message, std::optional<std::uint64_t> top = std::nullopt) {
  pop3::dot_encoder enc(top);
  std::string out;
  enc.encode(message, out);
  enc.finish(out);
  return out;
}

// About 1 MiB of mail with every awkward byte: a CR at each multiple of the read sizes
// (16, 4096, 128 KiB: a CRLF split across reads), lines starting with '.', bare LFs, a
// CR not followed by LF, and long lines.
std::string awkward_message() {
  std::string m;
  std::mt19937 rng(7);
  while (m.size() < (1u << 20)) {
    switch (rng() % 6) {
      case 0:
        m += ".leading dot\r\n";
        break;
      case 1:
        m += "bare lf\n";
        break;
      case 2:
        m += "lone cr\rhere\r\n";
        break;
      case 3:
        m += std::string(rng() % 3000, 'x') + "\r\n";
        break;
      case 4:
        m += "..\r\n.\r\n";
        break;
      default:
        m += "plain line of text\r\n";
        break;
    }
  }
  for (std::size_t at : {std::size_t{16}, std::size_t{4096}, std::size_t{128 * 1024}}) {
    for (std::size_t i = at - 1; i + 1 < m.size(); i += at) {
      m[i] = '\r';
      m[i + 1] = '\n';
    }
  }
  m += "\r\n";
  return m;
}

struct pump_run {
  byte_pump::outcome outcome = byte_pump::outcome::write_failed;
  std::uint64_t body_octets = 0;
  std::size_t touches = 0;
  std::string read_error;
};

pump_run pump(fake_transport& t, pop3::stream_buffer& sb, fake_reader& r, read_placement& slow,
              std::optional<std::uint64_t> top = std::nullopt, bool may_hold = false) {
  asio::io_context io;
  asio::thread_pool workers(1);
  pump_run out;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        byte_pump p(t, sb, workers, slow);
        out.outcome = co_await p.run(r, top, may_hold, [&] { ++out.touches; });
        out.body_octets = p.body_octets();
        if (p.read_error()) {
          out.read_error = p.read_error()->message();
        }
      },
      asio::detached);
  io.run();
  workers.join();
  return out;
}

TEST(byte_pump, large_message_is_byte_exact_through_every_buffer_and_partial_writes) {
  const std::string msg = awkward_message();
  const std::string want = "+OK\r\n" + reference(msg);
  struct shape {
    std::size_t read, batch, piece;
    std::vector<std::size_t> reads;
  };
  for (const shape& s : {shape{16, 0, 7, {16, 3, 1, 16}}, shape{4096, 8192, 1000, {4096, 100}},
                         shape{pop3::stream_buffer::default_read_size, 0, 65536, {1 << 20}}}) {
    pop3::stream_buffer sb(s.read, s.batch);
    ASSERT_TRUE(sb.append("+OK\r\n"));
    fake_transport t(s.piece);
    fake_reader r(msg, s.reads);
    read_placement slow;
    slow.slow = s.read == 4096;  // this one on the worker pool
    auto got = pump(t, sb, r, slow);
    EXPECT_EQ(got.outcome, byte_pump::outcome::sent) << s.read;
    ASSERT_EQ(t.written.size(), want.size()) << s.read;
    EXPECT_TRUE(t.written == want) << "read size " << s.read;
    EXPECT_EQ(got.body_octets, want.size() - 5 - 3);  // no status line, no terminator
    EXPECT_EQ(got.touches, t.writes);                 // the deadline moved before each write
    EXPECT_GT(t.writes, 1u);
    EXPECT_TRUE(sb.output().empty());
  }
}

TEST(byte_pump, top_stops_after_its_lines) {
  const std::string msg = "Subject: x\r\n\r\n1\r\n.2\r\n3\r\n4\r\n";
  pop3::stream_buffer sb(16);
  fake_transport t(3);
  fake_reader r(msg, {5});
  read_placement slow;
  auto got = pump(t, sb, r, slow, 2);
  EXPECT_EQ(got.outcome, byte_pump::outcome::sent);
  EXPECT_EQ(t.written, reference(msg, 2));
  EXPECT_EQ(t.written, "Subject: x\r\n\r\n1\r\n..2\r\n.\r\n");
}

TEST(byte_pump, small_reply_is_held_for_the_next_pipelined_one) {
  pop3::stream_buffer sb;
  ASSERT_TRUE(sb.append("+OK\r\n"));
  fake_transport t(100);
  fake_reader r("hi\r\n");
  read_placement slow;
  auto got = pump(t, sb, r, slow, std::nullopt, true);
  EXPECT_EQ(got.outcome, byte_pump::outcome::held);
  EXPECT_EQ(t.writes, 0u);
  EXPECT_EQ(sb.output(), "+OK\r\nhi\r\n.\r\n");
}

TEST(byte_pump, read_and_write_failures_stop_the_reply) {
  const std::string msg = awkward_message();
  {
    pop3::stream_buffer sb(4096);
    fake_transport t(1000);
    fake_reader r(msg, {4096});
    r.fail_at = 100000;
    read_placement slow;
    auto got = pump(t, sb, r, slow);
    EXPECT_EQ(got.outcome, byte_pump::outcome::read_failed);
    EXPECT_NE(got.read_error.find("disk on fire"), std::string::npos);
    EXPECT_LT(t.written.size(), msg.size());
  }
  {
    pop3::stream_buffer sb(4096);
    fake_transport t(1000);
    t.fail_after = 50000;
    fake_reader r(msg, {4096});
    read_placement slow;
    auto got = pump(t, sb, r, slow);
    EXPECT_EQ(got.outcome, byte_pump::outcome::write_failed);
    EXPECT_EQ(t.written, ("" + reference(msg)).substr(0, 50000));
  }
}

TEST(byte_pump, a_slow_read_moves_the_reads_to_the_worker_pool_until_they_are_fast) {
  const std::string msg = awkward_message();
  const auto io_thread = std::this_thread::get_id();
  auto on_io = [&](std::thread::id id) { return id == io_thread; };
  {
    // One slow read: the blocks after it go to the worker until fast_to_clear of them were
    // fast there, then come back.
    pop3::stream_buffer sb(4096, 8192);
    fake_transport t(4096);
    fake_reader r(msg, {4096});
    r.slow_reads = 1;
    read_placement placement;
    auto got = pump(t, sb, r, placement);
    EXPECT_EQ(got.outcome, byte_pump::outcome::sent);
    EXPECT_TRUE(t.written == reference(msg));
    ASSERT_GT(r.threads.size(), 3u);
    EXPECT_TRUE(on_io(r.threads.front()));
    EXPECT_FALSE(on_io(r.threads[2]));  // the second block, two reads of 4096
    EXPECT_TRUE(std::any_of(r.threads.begin(), r.threads.end(), on_io));
    if (placement.moves == 1 && !placement.slow) {  // unless this machine stalled a later block
      EXPECT_TRUE(on_io(r.threads.back()));
    }
  }
  {
    // Reads that stay slow stay on the worker, and the placement is kept for the next reply.
    const std::string small(64 * 1024, 'x');
    pop3::stream_buffer sb(4096, 8192);
    fake_transport t(4096);
    fake_reader r(small, {4096});
    r.slow_reads = 1000;
    read_placement placement;
    pump(t, sb, r, placement);
    EXPECT_TRUE(placement.slow);
    EXPECT_TRUE(std::none_of(r.threads.begin() + 2, r.threads.end(), on_io));
    fake_reader next(small, {4096});
    pop3::stream_buffer sb2(4096, 8192);
    fake_transport t2(4096);
    pump(t2, sb2, next, placement);
    EXPECT_FALSE(on_io(next.threads.front()));  // the next reply starts on the worker
    EXPECT_TRUE(t2.written == reference(small));
  }
  {
    // Fast reads stay on the I/O thread (unless this machine stalled the test thread for
    // longer than slow_fill, which the placement then counts as a move).
    pop3::stream_buffer sb(4096, 8192);
    fake_transport t(4096);
    fake_reader r(msg, {4096});
    read_placement placement;
    pump(t, sb, r, placement);
    EXPECT_TRUE(on_io(r.threads.front()));
    if (placement.moves == 0) {
      EXPECT_TRUE(std::all_of(r.threads.begin(), r.threads.end(), on_io));
    }
  }
}

}  // namespace
}  // namespace postern::net
