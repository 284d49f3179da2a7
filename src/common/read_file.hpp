// Reading a whole (small) file from a descriptor, with a size bound: configuration, bulletins,
// side files. Callers open and check the file themselves and word their own errors.
#pragma once

#include <cstddef>
#include <string>

namespace postern {

struct read_outcome {
  std::string data;
  int err = 0;             // errno of a failed read(); data is then incomplete
  bool too_large = false;  // more than the limit arrived; data is then incomplete
};

// Reads `fd` from its current offset to its end, retrying EINTR, and stops as soon as more than
// `limit` bytes have arrived.
read_outcome read_to_end(int fd, std::size_t limit);

}  // namespace postern
