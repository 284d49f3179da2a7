// Protocol limits, each with its reason. Config may override the ones marked so.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace postern::pop3::limits {

// RFC 2449 section 4: "Commands MUST NOT exceed 255 octets in length including the
// terminating CRLF". A longer line is discarded up to its LF and answered -ERR.
inline constexpr std::size_t max_command_line = 255;

// RFC 5034 section 4: the 255-octet limit does not apply to AUTH continuation lines; GSSAPI
// tokens with Kerberos PACs can be large. Bounded all the same.
inline constexpr std::size_t max_auth_line = 16384;

// XTND XMIT message lines: RFC 5322 section 2.1.1 allows 998 octets plus CRLF; longer lines
// from sloppy clients are tolerated up to this bound.
inline constexpr std::size_t max_message_line = 8192;

// Dovecot disconnects after 20 bad commands (pop3-client.c); config may override.
inline constexpr std::uint32_t default_max_bad_commands = 20;

// Failed logins (USER/PASS, APOP, AUTH) per connection: the N-th failure is answered and the
// connection closed, in every mode. Each failure already costs auth.failure_delay; this bounds
// how many guesses one connection gets. 10 is what fork mode's privileged process allowed
// before; Dovecot's login processes likewise disconnect after repeated failures ("Disconnected
// (auth failed, N attempts)").
inline constexpr std::uint32_t max_failed_logins = 10;

// Chunk size for streaming a message: one read and one write per chunk, so a message of
// any size is served in constant memory.
inline constexpr std::size_t stream_chunk = 64 * 1024;

// A PROXY listener waits this long for the front end's header before it closes the
// connection (Dovecot's haproxy_timeout is 3s too). HAProxy and nginx send the header with the
// connection's first segment, so a longer wait only lets a silent peer hold a slot.
inline constexpr std::chrono::seconds proxy_header_timeout{3};

}  // namespace postern::pop3::limits
