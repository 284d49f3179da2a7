// Dropping root after the listeners are bound. This file runs as root.
#pragma once

#include "common/result.hpp"

#include <string>

namespace postern::server {

// When the process runs as root and `user` is not empty: switches to that user's uid, to
// `group` (or the user's primary group when empty) and to the user's supplementary groups,
// then verifies that root cannot be regained. When not root: succeeds if `user` is empty or
// already the current user. Errors: unknown user/group (errc::invalid), a failed switch
// (errc::permanent). The caller must not continue after an error.
result<void> drop_privileges(const std::string& user, const std::string& group);

}  // namespace postern::server
