// mapped_access: reading memory mapped from a file that may shrink under us.
//
// Touching a page of a file mapping past the file's end raises SIGBUS, and a Maildir or mbox
// file can be truncated by another program while a message is being sent. A mapped_access
// scope declares [begin, begin + size) of the calling thread as such a mapping: a SIGBUS on
// an address inside it replaces the faulting page with a zero-filled private page (so the
// access completes) and marks the scope faulted(). The caller must then throw away whatever
// it computed from the range. A SIGBUS anywhere else goes to the handler that was installed
// before (or the default action: the process dies, as without this).
//
// One scope per thread at a time; scopes are cheap (two thread-local stores). The process
// handler is installed by the first scope.
#pragma once

#include <cstddef>

namespace postern {

class mapped_access {
 public:
  mapped_access(const void* begin, std::size_t size) noexcept;
  ~mapped_access();
  mapped_access(const mapped_access&) = delete;
  mapped_access& operator=(const mapped_access&) = delete;

  // True when an access inside the range faulted: the bytes read from it are not the file's.
  bool faulted() const noexcept;
};

}  // namespace postern
