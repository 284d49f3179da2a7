// mapped_file: a read-only mapping of a byte range of an open file, handed out in pieces
// (message_reader::map_next). The pieces are populated before they are handed out, so
// encoding them takes no page faults; a piece can still fault with SIGBUS if the file is
// truncated meanwhile, so callers touch it only inside a mapped_access scope
// (common/mapped_access.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace postern {

class mapped_file {
 public:
  // Ranges shorter than this are read, not mapped: a mapping costs more than a copy.
  static constexpr std::uint64_t min_mapped_size = 1024 * 1024;

  // Maps [offset, offset + length) of `fd` (which may be closed afterwards). Null when the
  // range is shorter than min_mapped_size, larger than the address space, or mmap fails.
  static std::unique_ptr<mapped_file> map(int fd, std::uint64_t offset, std::uint64_t length);

  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;

  // The next up to `max` bytes of the range; empty at its end.
  std::span<const char> next(std::size_t max) noexcept;
  std::uint64_t remaining() const noexcept { return length_ - pos_; }

 private:
  mapped_file(char* base, std::size_t map_len, std::size_t skip, std::uint64_t length) noexcept
      : base_(base), map_len_(map_len), skip_(skip), length_(length) {}

  char* base_;           // the mapping, page-aligned
  std::size_t map_len_;  // its length
  std::size_t skip_;     // bytes before the range's start (offset rounded down to a page)
  std::uint64_t length_;
  std::uint64_t pos_ = 0;
};

}  // namespace postern
