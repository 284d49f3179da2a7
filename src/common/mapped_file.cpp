#include "common/mapped_file.hpp"

#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>
#include <limits>

namespace postern {

std::unique_ptr<mapped_file> mapped_file::map(int fd, std::uint64_t offset, std::uint64_t length) {
  if (length < min_mapped_size) {
    return nullptr;
  }
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t start = offset - offset % page;
  const std::uint64_t skip = offset - start;
  if (length > std::numeric_limits<std::size_t>::max() - skip ||
      start > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max())) {
    return nullptr;
  }
  const std::size_t map_len = static_cast<std::size_t>(skip + length);
  void* p = ::mmap(nullptr, map_len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) {
    return nullptr;
  }
  ::madvise(p, map_len, MADV_SEQUENTIAL);
  return std::unique_ptr<mapped_file>(
      new mapped_file(static_cast<char*>(p), map_len, static_cast<std::size_t>(skip), length));
}

mapped_file::~mapped_file() { ::munmap(base_, map_len_); }

std::span<const char> mapped_file::next(std::size_t max) noexcept {
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(max, length_ - pos_));
  char* first = base_ + skip_ + pos_;
  if (n > 0) {
#ifdef MADV_POPULATE_READ
    // Maps the piece's pages in one call instead of a fault per few pages. It fails (EFAULT)
    // when the file has shrunk: the access guard then sees the fault.
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto offset = reinterpret_cast<std::uintptr_t>(first) & (page - 1);
    ::madvise(first - offset, offset + n, MADV_POPULATE_READ);
#endif
  }
  pos_ += n;
  return {first, n};
}

}  // namespace postern
