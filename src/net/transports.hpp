// The transport factory of the accept pipeline: the one place that turns an admitted
// connection into a transport (TCP, TLS awaiting its handshake, or stdin/stdout), for every
// process mode and both sides of privilege separation.
#pragma once

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "net/tls.hpp"
#include "net/transport.hpp"

#include <asio/any_io_executor.hpp>
#include <asio/ip/tcp.hpp>

#include <memory>

namespace postern::net {

// A connected TCP socket: TLS from the first byte when `implicit_tls` (then `tls` must not be
// null), plain otherwise. Sets TCP_NODELAY: replies leave whole, never waiting for an ACK.
std::unique_ptr<transport> make_transport(asio::ip::tcp::socket socket, bool implicit_tls,
                                          const tls_server_context* tls);

// The same for a connected TCP socket given as a descriptor (fork and inetd modes).
result<std::unique_ptr<transport>> make_transport(const asio::any_io_executor& ex, unique_fd fd,
                                                  bool v6, bool implicit_tls,
                                                  const tls_server_context* tls);

// Input and output descriptors that are not a TCP socket (pipes, a UNIX socket): `out`
// invalid means `in` is used both ways.
result<std::unique_ptr<transport>> make_stdio_transport(const asio::any_io_executor& ex,
                                                        unique_fd in, unique_fd out);

}  // namespace postern::net
