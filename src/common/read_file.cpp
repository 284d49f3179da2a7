#include "common/read_file.hpp"

#include <unistd.h>
#include <cerrno>

#include <string>

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

result<std::size_t> pread_upto(int fd, char* buf, std::size_t n, std::uint64_t off,
                               std::string_view who, std::string_view what) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, buf + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      const int err = errno;
      if (err == EINTR) {
        continue;
      }
      return error::from_errno(err, std::string(who) + ": read " + std::string(what));
    }
    if (r == 0) {
      break;
    }
    got += static_cast<std::size_t>(r);
  }
  return got;
}

result<void> pread_full(int fd, char* buf, std::size_t n, std::uint64_t off, std::string_view who,
                        std::string_view what) {
  auto got = pread_upto(fd, buf, n, off, who, what);
  if (!got) {
    return std::move(got).err();
  }
  if (*got < n) {
    return error(errc::temporary,
                 std::string(who) + ": " + std::string(what) + " shrank while in use");
  }
  return ok_result();
}

}  // namespace postern
