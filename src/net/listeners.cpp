#include "net/listeners.hpp"

#include "common/log.hpp"
#include "net/source_limits.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace postern::net {
namespace {

std::string format_sockaddr(const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(sin6->sin6_port));
  }
  const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
  ::inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
  return std::string(text) + ":" + std::to_string(ntohs(sin->sin_port));
}

result<sockaddr_storage> local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return error::from_errno(errno, "getsockname", errc::permanent);
  }
  return ss;
}

result<sockaddr_storage> endpoint_of(const listener_spec& spec, std::uint16_t port) {
  sockaddr_storage ss{};
  if (spec.host.find(':') != std::string::npos) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    if (::inet_pton(AF_INET6, spec.host.c_str(), &sin6->sin6_addr) == 1) {
      return ss;
    }
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    if (::inet_pton(AF_INET, spec.host.c_str(), &sin->sin_addr) == 1) {
      return ss;
    }
  }
  return error(errc::invalid, "server.listen: bad address '" + spec.host + "'");
}

// One socket of the SO_REUSEPORT group of `spec` on `port`.
result<unique_fd> bind_one(const listener_spec& spec, std::uint16_t port, int backlog) {
  auto ss = endpoint_of(spec, port);
  if (!ss) {
    return std::move(ss).err();
  }
  const bool v6 = ss->ss_family == AF_INET6;
  auto fail = [&](int err) {
    return error(errc::permanent, "cannot listen on " + format_sockaddr(*ss),
                 std::error_code(err, std::generic_category()));
  };
  unique_fd fd(::socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    return fail(errno);
  }
  int one = 1;
  socklen_t len = v6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      (v6 && ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*ss), len) != 0 ||
      ::listen(fd.get(), backlog) != 0) {
    return fail(errno);
  }
  return fd;
}

const char* describe(const listener_options& o) {
  if (o.implicit_tls) {
    return o.proxy_protocol ? " (tls, proxy protocol)" : " (tls)";
  }
  return o.proxy_protocol ? " (proxy protocol)" : "";
}

result<void> bind_spec(const listener_spec& spec, int backlog,
                       std::vector<std::vector<listening_socket>>& out) {
  std::uint16_t port = spec.port;
  std::string where;
  for (auto& consumer : out) {
    auto fd = bind_one(spec, port, backlog);
    if (!fd) {
      return std::move(fd).err();
    }
    auto bound = local_address(fd->get());
    if (!bound) {
      return std::move(bound).err();
    }
    // Port 0: the other consumers join the port the kernel chose.
    port = ntohs(bound->ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&*bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&*bound)->sin_port);
    where = format_sockaddr(*bound);
    consumer.push_back({std::move(fd).value(), bound->ss_family, spec.options, where});
  }
  log::info("listening on {}{}", where, describe(spec.options));
  return {};
}

result<void> share_inherited(const std::vector<listener_spec>& specs, inherited_listener in,
                             const listener_options& plain,
                             std::vector<std::vector<listening_socket>>& out) {
  auto bound = local_address(in.fd.get());
  if (!bound) {
    return std::move(bound).err();
  }
  if (bound->ss_family != AF_INET && bound->ss_family != AF_INET6) {
    return error(errc::invalid,
                 "the socket systemd passed as '" + in.name + "' is not a TCP socket");
  }
  int flags = ::fcntl(in.fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(in.fd.get(), F_SETFL, flags | O_NONBLOCK) != 0 ||
      ::fcntl(in.fd.get(), F_SETFD, FD_CLOEXEC) != 0) {
    return error::from_errno(errno, "fcntl on the socket systemd passed as '" + in.name + "'",
                             errc::permanent);
  }
  auto options = options_for_name(specs, in.name, plain);
  std::string where = format_sockaddr(*bound);
  for (std::size_t i = 0; i < out.size(); ++i) {
    unique_fd fd(i + 1 == out.size() ? in.fd.release() : ::fcntl(in.fd.get(), F_DUPFD_CLOEXEC, 3));
    if (!fd) {
      return error::from_errno(errno, "dup", errc::permanent);
    }
    out[i].push_back({std::move(fd), bound->ss_family, options, where});
  }
  log::info("listening on {}{} (from systemd, name={})", where, describe(options), in.name);
  return {};
}

}  // namespace

listener_options options_for_name(const std::vector<listener_spec>& specs, const std::string& name,
                                  const listener_options& plain) {
  for (const auto& s : specs) {
    if (!s.name.empty() && s.name == name) {
      return s.options;
    }
  }
  if (name == "pop3s" || name.rfind("pop3s-", 0) == 0) {
    return {true, false};
  }
  return plain;
}

result<std::vector<std::vector<listening_socket>>> open_listeners(
    const std::vector<listener_spec>& specs, std::vector<inherited_listener> inherited,
    const listener_options& plain, std::size_t copies, int backlog) {
  std::vector<std::vector<listening_socket>> out(copies);
  if (inherited.empty()) {
    for (const auto& spec : specs) {
      POSTERN_TRY(bind_spec(spec, backlog, out));
    }
    return out;
  }
  std::vector<std::string> names;
  for (auto& in : inherited) {
    names.push_back(in.name);
    POSTERN_TRY(share_inherited(specs, std::move(in), plain, out));
  }
  for (const auto& spec : specs) {
    if (!spec.name.empty() && std::find(names.begin(), names.end(), spec.name) == names.end()) {
      log::warning("systemd passed no socket named '{}': that listener is not served", spec.name);
    }
  }
  return out;
}

namespace {

std::uint16_t port_of(const sockaddr_storage& ss) {
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port
                                        : reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
}

}  // namespace

stdin_connection inspect_stdin(const std::vector<listener_spec>& specs,
                               const listener_options& plain) {
  stdin_connection out;
  out.options = plain;
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  if (::getpeername(STDIN_FILENO, reinterpret_cast<sockaddr*>(&peer), &len) != 0 ||
      (peer.ss_family != AF_INET && peer.ss_family != AF_INET6)) {
    return out;
  }
  out.is_tcp = true;
  out.v6 = peer.ss_family == AF_INET6;
  out.peer = address_of(peer);
  auto local = local_address(STDIN_FILENO);
  if (!local) {
    return out;
  }
  auto local_addr = address_of(*local);
  for (const auto& spec : specs) {
    std::error_code ec;
    auto host = asio::ip::make_address(spec.host, ec);
    if (ec || spec.port != port_of(*local)) {
      continue;
    }
    if (host.is_unspecified() || canonical_address(host) == local_addr) {
      out.options = spec.options;
      break;
    }
  }
  return out;
}

}  // namespace postern::net
