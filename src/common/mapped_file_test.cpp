#include "common/mapped_file.hpp"

#include "common/mapped_access.hpp"
#include "common/test_files.hpp"
#include "common/unique_fd.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace postern {
namespace {

using test::sample_message;

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
    const mapped_access guard(piece.data(), piece.size());
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
  const mapped_access guard(piece.data(), piece.size());
  unsigned long sum = 0;
  for (std::size_t i = 0; i < piece.size(); i += 4096) {
    sum += static_cast<unsigned char>(static_cast<const volatile char*>(piece.data())[i]);
  }
  EXPECT_TRUE(guard.faulted());
  EXPECT_EQ(sum, 0u);  // the missing pages read as zeros
}

}  // namespace
}  // namespace postern
