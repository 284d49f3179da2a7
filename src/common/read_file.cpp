#include "common/read_file.hpp"

#include <cerrno>
#include <unistd.h>

namespace postern {

read_outcome read_to_end(int fd, std::size_t limit) {
  read_outcome out;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      out.err = errno;
      return out;
    }
    if (n == 0) {
      return out;
    }
    if (out.data.size() + static_cast<std::size_t>(n) > limit) {
      out.too_large = true;
      return out;
    }
    out.data.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace postern
