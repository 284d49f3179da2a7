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

// XTND XMIT: the largest message a client may submit (config: pop3.xmit_max_size). The
// message is held in memory until it is handed on, so the bound is what one session may pin.
inline constexpr std::uint32_t default_xmit_max_size = 10 * 1024 * 1024;

// A client may pipeline thousands of commands into one read (a 64 KiB read holds about 10,000
// NOOPs). The engine answers at most this many lines in a row, then returns step::yield and
// the driver lets the other sessions of its thread run before the next batch, so that one
// client's burst delays the others by one batch at a time, not by the whole read. A client
// that keeps a few commands outstanding never reaches it; the price for a flood is one trip
// through the event loop per batch.
inline constexpr std::size_t max_lines_per_turn = 64;

// The same for reply bytes: once a turn's replies reach this size (long LIST/UIDL listings of a
// large maildrop), the engine yields and the driver sends them before the next batch. Memory
// per session stays at about this plus one reply however many commands a read brought.
inline constexpr std::size_t max_output_per_turn = 64 * 1024;

// The engine's reply buffer is reserved once at this size: the greeting and the one-line
// replies (RFC 2449 section 4: at most 512 octets, nearly all far shorter) then never
// allocate; multi-line listings grow it.
inline constexpr std::size_t initial_reply_reserve = 256;

// An input buffer emptied after holding more than this (a long AUTH line, a pipelined burst)
// is released, so that an idle session keeps little memory; below it, it is kept for reuse.
inline constexpr std::size_t idle_input_keep = 4096;

// A PROXY listener waits this long for the front end's header before it closes the
// connection (Dovecot's haproxy_timeout is 3s too). HAProxy and nginx send the header with the
// connection's first segment, so a longer wait only lets a silent peer hold a slot.
inline constexpr std::chrono::seconds proxy_header_timeout{3};

}  // namespace postern::pop3::limits
