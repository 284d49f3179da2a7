// body_stream over a reader that hands out pieces of a real file mapping (common/mapped_file),
// as the Maildir and mbox readers do: the same bytes as the read path, and a truncation while
// streaming is a read error, not a short message.
#include "pop3/body_stream.hpp"

#include "common/mapped_file.hpp"
#include "common/test_files.hpp"
#include "common/unique_fd.hpp"
#include "pop3/dot_encoder.hpp"
#include "store/maildrop.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <optional>
#include <string>

namespace postern::pop3 {
namespace {

using test::sample_message;

// A reader over a real file that offers the mapping, as the Maildir reader does.
class mapping_reader final : public store::message_reader {
 public:
  explicit mapping_reader(const std::string& path)
      : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}
  result<std::size_t> read(std::span<char> buf) override {
    const ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
    if (n < 0) {
      return error(errc::temporary, "read");
    }
    pos_ += static_cast<std::uint64_t>(n);
    ++reads_;
    return static_cast<std::size_t>(n);
  }
  result<std::optional<std::span<const char>>> map_next(std::size_t max) override {
    if (!tried_) {
      tried_ = true;
      const off_t size = ::lseek(fd_.get(), 0, SEEK_END);
      map_ = mapped_file::map(fd_.get(), pos_, static_cast<std::uint64_t>(size) - pos_);
    }
    if (!map_) {
      return std::optional<std::span<const char>>{};
    }
    return std::optional<std::span<const char>>(map_->next(max));
  }
  int reads() const noexcept { return reads_; }
  bool mapped() const noexcept { return map_ != nullptr; }

 private:
  unique_fd fd_;
  std::uint64_t pos_ = 0;
  bool tried_ = false;
  int reads_ = 0;
  std::unique_ptr<mapped_file> map_;
};

std::string encode_reference(const std::string& msg, std::optional<std::uint64_t> lines) {
  dot_encoder enc(lines);
  std::string out;
  enc.encode(msg, out);
  enc.finish(out);
  return out;
}

TEST(body_stream_mapped, large_message_matches_the_read_path_exactly) {
  test::temp_dir dir;
  const std::string path = dir.path() + "/m";
  const std::string data = sample_message(5 * 1024 * 1024 + 77);
  test::write_file(path, data);
  for (const std::optional<std::uint64_t> lines :
       {std::optional<std::uint64_t>{}, std::optional<std::uint64_t>{40000}}) {
    mapping_reader reader(path);
    stream_buffer buf(64 * 1024);
    body_stream body(reader, buf, lines);
    std::string out;
    for (;;) {
      auto st = body.fill();
      ASSERT_TRUE(st.ok()) << st.err().message();
      out += buf.output();
      buf.clear_output();
      if (*st == body_stream::status::finished) {
        break;
      }
    }
    const std::string want = encode_reference(data, lines);
    EXPECT_EQ(out.size(), want.size());
    EXPECT_TRUE(out == want);
    EXPECT_TRUE(reader.mapped());
    EXPECT_EQ(reader.reads(), 1);  // the first read only; the rest came from the mapping
    dot_encoder body_only(lines);
    std::string body_bytes;
    body_only.encode(data, body_bytes);
    EXPECT_EQ(body.body_octets(), body_bytes.size());
  }
}

TEST(body_stream_mapped, truncation_while_streaming_is_a_read_error) {
  test::temp_dir dir;
  const std::string path = dir.path() + "/m";
  test::write_file(path, sample_message(4 * 1024 * 1024));
  mapping_reader reader(path);
  stream_buffer buf(64 * 1024);
  body_stream body(reader, buf);
  for (int i = 0; i < 2; ++i) {  // the first read, then the mapping
    auto st = body.fill();
    ASSERT_TRUE(st.ok());
    ASSERT_EQ(*st, body_stream::status::write_more);
    buf.clear_output();
  }
  ASSERT_TRUE(reader.mapped());
  ASSERT_EQ(::truncate(path.c_str(), 100 * 1024), 0);
  bool failed = false;
  for (int i = 0; i < 1000 && !failed; ++i) {
    auto st = body.fill();
    if (!st) {
      failed = true;
      EXPECT_NE(st.err().message().find("shrank"), std::string::npos);
      break;
    }
    ASSERT_EQ(*st, body_stream::status::write_more) << "a truncated message must not end";
    buf.clear_output();
  }
  EXPECT_TRUE(failed);
}

}  // namespace
}  // namespace postern::pop3
