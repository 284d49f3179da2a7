#include "pop3/body_stream.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace postern::pop3 {
namespace {

// Serves a message in reads of at most `max_read` bytes (short reads, like a pipe or a
// signal-interrupted read), optionally failing after `fail_after` bytes.
class fake_reader final : public store::message_reader {
 public:
  fake_reader(std::string data, std::size_t max_read, std::size_t fail_after = SIZE_MAX)
      : data_(std::move(data)), max_read_(max_read), fail_after_(fail_after) {}

  result<std::size_t> read(std::span<char> buf) override {
    ++reads_;
    if (pos_ >= fail_after_) {
      return error(errc::temporary, "injected read error");
    }
    std::size_t n = std::min({buf.size(), max_read_, data_.size() - pos_});
    std::memcpy(buf.data(), data_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  std::size_t reads() const noexcept { return reads_; }

 private:
  std::string data_;
  std::size_t max_read_;
  std::size_t fail_after_;
  std::size_t pos_ = 0;
  std::size_t reads_ = 0;
};

std::string reference(const std::string& msg, std::optional<std::uint64_t> lines) {
  dot_encoder enc(lines);
  std::string out;
  enc.encode(msg, out);
  enc.finish(out);
  return out;
}

// Streams the whole reply, collecting every write the driver would make.
std::vector<std::string> stream(stream_buffer& buf, fake_reader& reader,
                                std::optional<std::uint64_t> lines,
                                std::uint64_t* octets = nullptr) {
  std::vector<std::string> writes;
  body_stream body(reader, buf, lines);
  for (;;) {
    auto st = body.fill();
    EXPECT_TRUE(st.ok());
    if (!st) {
      break;
    }
    writes.emplace_back(buf.output());
    buf.clear_output();
    if (*st == body_stream::status::finished) {
      break;
    }
  }
  if (octets != nullptr) {
    *octets = body.body_octets();
  }
  return writes;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string s;
  for (const auto& p : parts) {
    s += p;
  }
  return s;
}

std::string sample_message(std::size_t lines) {
  std::string msg = "From: a@example.org\nSubject: test\n\n";
  for (std::size_t i = 0; i < lines; ++i) {
    msg += (i % 7 == 0) ? ".dotted line " : "plain line ";
    msg += std::to_string(i);
    msg += (i % 5 == 0) ? "\r\n" : "\n";
  }
  return msg;
}

TEST(body_stream, small_message_is_one_write_with_status_line) {
  stream_buffer buf(4096);
  const std::string msg = sample_message(20);
  ASSERT_TRUE(buf.append("+OK 123 octets\r\n"));
  fake_reader reader(msg, SIZE_MAX);
  auto writes = stream(buf, reader, std::nullopt);
  ASSERT_EQ(writes.size(), 1u);
  EXPECT_EQ(writes[0], "+OK 123 octets\r\n" + reference(msg, std::nullopt));
  EXPECT_EQ(reader.reads(), 2u);  // the message, then end of file
}

TEST(body_stream, large_message_in_bounded_writes_for_every_read_pattern) {
  const std::string msg = sample_message(5000);
  for (std::size_t read_size : {16, 17, 64, 1000, 4096, 65536}) {
    for (std::size_t max_read : {std::size_t{1}, std::size_t{3}, std::size_t{100}, SIZE_MAX}) {
      if (max_read < 100 && read_size > 1000) {
        continue;  // slow and adds nothing
      }
      stream_buffer buf(read_size);
      ASSERT_TRUE(buf.append("+OK\r\n"));
      fake_reader reader(msg, max_read);
      std::uint64_t octets = 0;
      auto writes = stream(buf, reader, std::nullopt, &octets);
      const std::string expected = reference(msg, std::nullopt);
      EXPECT_EQ(joined(writes), "+OK\r\n" + expected) << read_size << "/" << max_read;
      EXPECT_EQ(octets, expected.size() - 3);
      for (const auto& w : writes) {
        EXPECT_LE(w.size(), buf.output_capacity());
      }
    }
  }
}

TEST(body_stream, dot_and_crlf_on_every_read_boundary) {
  // Lines of every length up to 40 with CRLF, bare LF, leading dots and a bare CR, read in
  // every small size: every boundary position falls on every kind of byte.
  std::string msg;
  for (int len = 0; len < 40; ++len) {
    msg += std::string(static_cast<std::size_t>(len % 3), '.') +
           std::string(static_cast<std::size_t>(len), 'x');
    msg += (len % 2 == 0) ? "\r\n" : "\n";
    if (len % 9 == 0) {
      msg += "\r";
    }
  }
  const std::string expected = reference(msg, std::nullopt);
  for (std::size_t read_size = 16; read_size < 64; ++read_size) {
    for (std::size_t max_read = 1; max_read < 12; ++max_read) {
      stream_buffer buf(read_size);
      fake_reader reader(msg, max_read);
      EXPECT_EQ(joined(stream(buf, reader, std::nullopt)), expected)
          << read_size << "/" << max_read;
    }
  }
}

TEST(body_stream, batches_several_reads_into_one_write) {
  const std::string msg = sample_message(200000);
  for (std::size_t max_read : {SIZE_MAX, std::size_t{1000}, std::size_t{77}}) {
    stream_buffer buf(1024, 8192);
    EXPECT_EQ(buf.batch_size(), 8192u);
    ASSERT_TRUE(buf.append("+OK\r\n"));
    fake_reader reader(msg, max_read);
    auto writes = stream(buf, reader, std::nullopt);
    EXPECT_EQ(joined(writes), "+OK\r\n" + reference(msg, std::nullopt)) << max_read;
    ASSERT_GE(writes.size(), 2u);
    for (std::size_t i = 0; i + 1 < writes.size(); ++i) {
      EXPECT_GE(writes[i].size(), 8192u);
      EXPECT_LE(writes[i].size(), buf.output_capacity());
    }
    EXPECT_GT(reader.reads(), writes.size());  // reads of at most 1 KiB, writes of 8 KiB
  }
  EXPECT_EQ(stream_buffer(1024).batch_size(), 1024u);  // by default one read per write
  EXPECT_EQ(stream_buffer(1024, 16).batch_size(), 1024u);
}

TEST(body_stream, top_stops_reading_after_its_lines) {
  const std::string msg = sample_message(10000);
  for (std::uint64_t lines : {0u, 1u, 3u, 50u}) {
    stream_buffer buf(64);
    fake_reader reader(msg, SIZE_MAX);
    std::uint64_t octets = 0;
    const std::string expected = reference(msg, lines);
    EXPECT_EQ(joined(stream(buf, reader, lines, &octets)), expected);
    EXPECT_EQ(octets, expected.size() - 3);
    EXPECT_LT(reader.reads(), 100u) << "TOP must not read the whole message";
  }
}

TEST(body_stream, empty_message) {
  stream_buffer buf(64);
  fake_reader reader("", SIZE_MAX);
  EXPECT_EQ(joined(stream(buf, reader, std::nullopt)), ".\r\n");
}

TEST(body_stream, read_error_is_reported) {
  stream_buffer buf(64);
  fake_reader reader(sample_message(100), 10, 200);
  body_stream body(reader, buf);
  bool failed = false;
  for (int i = 0; i < 100 && !failed; ++i) {
    auto st = body.fill();
    if (!st) {
      failed = true;
      EXPECT_EQ(st.err().code(), errc::temporary);
      break;
    }
    ASSERT_EQ(*st, body_stream::status::write_more);
    buf.clear_output();
  }
  EXPECT_TRUE(failed);
}

TEST(body_stream, append_refuses_what_would_not_leave_room) {
  stream_buffer buf(64);
  EXPECT_FALSE(buf.append(std::string(buf.output_capacity(), 'x')));
  EXPECT_TRUE(buf.output().empty());
  EXPECT_TRUE(buf.append(std::string(32, 'x')));
  EXPECT_EQ(buf.output().size(), 32u);
  // Pending output at or above the read size: fill() hands it out before reading.
  EXPECT_TRUE(buf.append(std::string(32, 'y')));
  fake_reader reader("a\n", SIZE_MAX);
  body_stream body(reader, buf);
  auto st = body.fill();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, body_stream::status::write_more);
  EXPECT_EQ(reader.reads(), 0u);
  buf.clear_output();
  st = body.fill();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, body_stream::status::finished);
  EXPECT_EQ(buf.output(), "a\r\n.\r\n");
}

TEST(stream_buffer_pool, reuses_and_keeps_a_few) {
  stream_buffer_pool pool(64, 16, 3, 2);
  const stream_buffer* first = nullptr;
  {
    auto a = pool.acquire();
    first = &a.get();
    EXPECT_EQ(a.get().read_size(), 64u);
    EXPECT_TRUE(a.get().append("pending"));
    EXPECT_EQ(pool.large_in_use(), 1u);
  }
  EXPECT_EQ(pool.large_in_use(), 0u);
  EXPECT_EQ(pool.kept(), 1u);
  {
    auto b = pool.acquire();
    // cppcheck-suppress invalidLifetime ; `first` is the pool's buffer, which outlived `a`
    EXPECT_EQ(&b.get(), first);  // the same buffer again, no allocation
    EXPECT_TRUE(b.get().output().empty()) << "a returned buffer comes back empty";
  }
  {
    auto a = pool.acquire();
    auto b = pool.acquire();
    auto c = pool.acquire();
    EXPECT_EQ(pool.large_in_use(), 3u);
  }
  EXPECT_EQ(pool.kept(), 2u);  // at most `kept` stay
}

TEST(stream_buffer_pool, small_buffers_past_the_large_limit) {
  stream_buffer_pool pool(64, 16, 2, 2);
  auto a = pool.acquire();
  auto b = pool.acquire();
  auto c = pool.acquire();
  EXPECT_EQ(a.get().read_size(), 64u);
  EXPECT_EQ(b.get().read_size(), 64u);
  EXPECT_EQ(c.get().read_size(), 16u);
  EXPECT_EQ(pool.large_in_use(), 2u);
  {
    auto moved = std::move(c);  // a moved lease gives back once
    const std::string msg = sample_message(50);
    fake_reader reader(msg, SIZE_MAX);
    EXPECT_EQ(joined(stream(moved.get(), reader, std::nullopt)), reference(msg, std::nullopt));
  }
  EXPECT_EQ(pool.kept(), 0u);  // small ones are not kept
  EXPECT_EQ(pool.large_in_use(), 2u);
}

}  // namespace
}  // namespace postern::pop3
