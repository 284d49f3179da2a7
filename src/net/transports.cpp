#include "net/transports.hpp"

#include <unistd.h>

#include <cerrno>

namespace postern::net {

std::unique_ptr<transport> make_transport(asio::ip::tcp::socket socket, bool implicit_tls,
                                          const tls_server_context* tls) {
  std::error_code ignored;
  socket.set_option(asio::ip::tcp::no_delay(true), ignored);
  if (implicit_tls) {
    return std::make_unique<tls_transport>(std::move(socket), tls->current());
  }
  return std::make_unique<tcp_transport>(std::move(socket));
}

result<std::unique_ptr<transport>> make_transport(const asio::any_io_executor& ex, unique_fd fd,
                                                  bool v6, bool implicit_tls,
                                                  const tls_server_context* tls) {
  asio::ip::tcp::socket socket(ex);
  std::error_code ec;
  socket.assign(v6 ? asio::ip::tcp::v6() : asio::ip::tcp::v4(), fd.get(), ec);
  if (ec) {
    return error(errc::temporary, "cannot use the connection as a socket", ec);
  }
  (void)fd.release();  // the socket owns it now
  return make_transport(std::move(socket), implicit_tls, tls);
}

result<std::unique_ptr<transport>> make_stdio_transport(const asio::any_io_executor& ex,
                                                        unique_fd in, unique_fd out) {
  if (!out) {
    out.reset(::dup(in.get()));
    if (!out) {
      return error::from_errno(errno, "dup");
    }
  }
  return std::unique_ptr<transport>(
      std::make_unique<stdio_transport>(asio::posix::stream_descriptor(ex, in.release()),
                                        asio::posix::stream_descriptor(ex, out.release())));
}

}  // namespace postern::net
