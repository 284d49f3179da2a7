#include "store/mapped_file.hpp"

#include "common/test_files.hpp"
#include "common/unique_fd.hpp"
#include "pop3/body_stream.hpp"
#include "pop3/dot_encoder.hpp"
#include "pop3/mapped_access.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace postern::store {
namespace {

// A message of `size` bytes with LF line ends, lines starting with dots and long lines.
std::string sample_message(std::size_t size) {
  std::string s;
  s.reserve(size);
  for (std::size_t line = 0; s.size() < size; ++line) {
    if (line % 7 == 0) {
      s += ".dot-stuffed line\n";
    } else if (line % 11 == 0) {
      s += std::string(5000, 'x') + "\r\n";
    } else {
      s += "Line " + std::to_string(line) + " of the message body\n";
    }
  }
  s.resize(size);
  return s;
}

unique_fd open_ro(const std::string& path) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  return fd;
}

TEST(mapped_file, small_ranges_are_not_mapped) {
  test::temp_dir dir;
  const std::string path = dir.path() + "/m";
  test::write_file(path, std::string(4096, 'a'));
  auto fd = open_ro(path);
  EXPECT_EQ(mapped_file::map(fd.get(), 0, 4096), nullptr);
}

TEST(mapped_file, hands_out_the_range_in_pieces_from_an_unaligned_offset) {
  test::temp_dir dir;
  const std::string path = dir.path() + "/m";
  const std::string data = sample_message(3 * 1024 * 1024 + 123);
  test::write_file(path, data);
  auto fd = open_ro(path);
  const std::uint64_t offset = 4097 + 5;
  auto map = mapped_file::map(fd.get(), offset, data.size() - offset);
  ASSERT_NE(map, nullptr);
  fd.reset();  // the mapping outlives the descriptor
  std::string got;
  for (;;) {
    auto piece = map->next(100000);
    if (piece.empty()) {
      break;
    }
    EXPECT_LE(piece.size(), 100000u);
    const pop3::mapped_access guard(piece.data(), piece.size());
    got.append(piece.data(), piece.size());
    EXPECT_FALSE(guard.faulted());
  }
  EXPECT_EQ(got, data.substr(offset));
  EXPECT_EQ(map->remaining(), 0u);
}

TEST(mapped_access, a_truncated_file_faults_inside_the_scope_without_killing_us) {
  test::temp_dir dir;
  const std::string path = dir.path() + "/m";
  test::write_file(path, std::string(2 * 1024 * 1024, 'z'));
  auto fd = open_ro(path);
  auto map = mapped_file::map(fd.get(), 0, 2 * 1024 * 1024);
  ASSERT_NE(map, nullptr);
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  auto piece = map->next(1024 * 1024);
  ASSERT_EQ(piece.size(), 1024u * 1024u);
  const pop3::mapped_access guard(piece.data(), piece.size());
  unsigned long sum = 0;
  for (std::size_t i = 0; i < piece.size(); i += 4096) {
    sum += static_cast<unsigned char>(static_cast<const volatile char*>(piece.data())[i]);
  }
  EXPECT_TRUE(guard.faulted());
  EXPECT_EQ(sum, 0u);  // the missing pages read as zeros
}

// A reader over a real file that offers the mapping, as the Maildir reader does.
class mapping_reader final : public message_reader {
 public:
  explicit mapping_reader(const std::string& path) : fd_(open_ro(path)) {}
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
  pop3::dot_encoder enc(lines);
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
    pop3::stream_buffer buf(64 * 1024);
    pop3::body_stream body(reader, buf, lines);
    std::string out;
    for (;;) {
      auto st = body.fill();
      ASSERT_TRUE(st.ok()) << st.err().message();
      out += buf.output();
      buf.clear_output();
      if (*st == pop3::body_stream::status::finished) {
        break;
      }
    }
    const std::string want = encode_reference(data, lines);
    EXPECT_EQ(out.size(), want.size());
    EXPECT_TRUE(out == want);
    EXPECT_TRUE(reader.mapped());
    EXPECT_EQ(reader.reads(), 1);  // the first read only; the rest came from the mapping
    pop3::dot_encoder body_only(lines);
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
  pop3::stream_buffer buf(64 * 1024);
  pop3::body_stream body(reader, buf);
  for (int i = 0; i < 2; ++i) {  // the first read, then the mapping
    auto st = body.fill();
    ASSERT_TRUE(st.ok());
    ASSERT_EQ(*st, pop3::body_stream::status::write_more);
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
    ASSERT_EQ(*st, pop3::body_stream::status::write_more) << "a truncated message must not end";
    buf.clear_output();
  }
  EXPECT_TRUE(failed);
}

}  // namespace
}  // namespace postern::store
