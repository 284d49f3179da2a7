// The Qualcomm pop3d extensions' I/O: reading one header field for XTND XLIST and handing a
// message to the local mail submission program for XTND XMIT. Both block: callers run them
// on the worker pool.
#pragma once

#include "common/result.hpp"
#include "store/maildrop.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace postern::net {

// Reads the header section of a message (at most 256 KiB) and returns the first field called
// `name` (case-insensitive) as "Name: value", continuation lines unfolded; "" if absent.
result<std::string> read_header_field(store::message_reader& reader, std::string_view name);

// Runs argv (absolute program path, no shell) with the message on its standard input (CRLF
// turned into LF, as sendmail expects), waits at most two minutes, and succeeds when it exits 0.
result<void> submit_message(const std::vector<std::string>& argv, std::string_view message_crlf);

}  // namespace postern::net
