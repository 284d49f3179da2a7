#include "common/unique_fd.hpp"

#include <unistd.h>

namespace postern {

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0) {
    ::close(fd_);  // close errors on a read-only or already-synced fd carry nothing to act on
  }
  fd_ = fd;
}

}  // namespace postern
