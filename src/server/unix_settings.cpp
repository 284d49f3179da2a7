#include "server/unix_settings.hpp"

#include "common/parse.hpp"


#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

namespace postern::server {

result<unix_settings> unix_settings_from(const config& cfg) {
  unix_settings us = cfg.unix;
  us.passdb = cfg.passdb;
  return us;
}

result<void> apply_address_family(config& cfg, address_family family) {
  if (family == address_family::any) {
    return {};
  }
  auto keep = [&](const listen_address& a) {
    bool v6 = a.host.find(':') != std::string::npos;
    return family == address_family::ipv6 ? v6 : !v6;
  };
  auto filter = [&](std::vector<listen_address>& list) {
    list.erase(std::remove_if(list.begin(), list.end(), [&](const listen_address& a) { return !keep(a); }),
               list.end());
  };
  filter(cfg.listen);
  filter(cfg.tls_listen);
  if (cfg.listen.empty()) {
    return error(errc::invalid, std::string("server.listen has no ") +
                                    (family == address_family::ipv6 ? "IPv6" : "IPv4") +
                                    " address for the chosen address family");
  }
  return {};
}

}  // namespace postern::server
