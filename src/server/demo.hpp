// A ready-to-run demo setup: a config, a one-user password file and a maildrop with a few
// realistic messages, all under one directory and usable by a non-root user.
//
// Not thread-safe with respect to the directory it writes: run it once, before the server
// starts, and not while a posternd serves the same directory.
#pragma once

#include <cstdint>
#include <string>

#include "common/result.hpp"

namespace postern::server {

// Creates, or refreshes, a demo under `dir` (made absolute against the current directory):
//   dir/postern.toml        listen 127.0.0.1:<port>, log to stderr at level info,
//                           failure_delay 1s, passdb and mail location pointing into dir
//   dir/users               Dovecot passwd-file: user "demo", password "demo" ({SHA512-CRYPT})
//   dir/mail/demo/Maildir/  five messages in new/ and cur/, reset to that initial content on
//                           every call (anything else in dir/mail/demo is removed)
//   dir/.postern-demo       marks dir as a demo directory
// `port` 0 lets the kernel choose the port at bind time.
//
// Returns the absolute path of the config file. Errors: errc::invalid when `dir` exists, is
// not empty and has no .postern-demo marker (so a mistyped path cannot overwrite someone's
// files), or when the path cannot be written into a valid config; errc::temporary (with the
// errno cause) for file-system failures. After an error the directory may be half-written;
// calling again repairs it.
result<std::string> prepare_demo(const std::string& dir, std::uint16_t port);

}  // namespace postern::server
