// Message digests as lower-case hex text, through OpenSSL's EVP interface. Thread-safe.
#pragma once

#include "common/result.hpp"

#include <string>
#include <string_view>

namespace postern {

// The SHA-1 of `data` in lower-case hex (40 characters): the derived UIDLs of Maildir and mbox
// messages, so its output is part of what clients have stored and must never change.
// Errors: errc::temporary when OpenSSL cannot compute it (no SHA-1 in the loaded provider).
[[nodiscard]] result<std::string> sha1_hex(std::string_view data);

}  // namespace postern
