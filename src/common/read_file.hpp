// Reading files from a descriptor: a whole (small) file with a size bound (configuration,
// bulletins, side files), and positioned reads that retry EINTR and short reads (the stores).
// Callers open and check the file themselves.
#pragma once

#include "common/result.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace postern {

struct read_outcome {
  std::string data;
  int err = 0;             // errno of a failed read(); data is then incomplete
  bool too_large = false;  // more than the limit arrived; data is then incomplete
};

// Reads `fd` from its current offset to its end, retrying EINTR, and stops as soon as more than
// `limit` bytes have arrived.
read_outcome read_to_end(int fd, std::size_t limit);

// Reads up to n bytes at offset `off` into buf, retrying EINTR and short reads; fewer only at
// the end of the file. Errors: the read's errno, errc::temporary, context "<who>: read <what>"
// (`who` names the store, `what` the file).
[[nodiscard]] result<std::size_t> pread_upto(int fd, char* buf, std::size_t n, std::uint64_t off,
                                             std::string_view who, std::string_view what);

// Reads exactly n bytes at offset `off` into buf. Errors: as pread_upto, and errc::temporary
// "<who>: <what> shrank while in use" when the file ends first (someone truncated it).
[[nodiscard]] result<void> pread_full(int fd, char* buf, std::size_t n, std::uint64_t off,
                                      std::string_view who, std::string_view what);

}  // namespace postern
