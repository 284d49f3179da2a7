#include "common/result.hpp"

namespace postern {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::ok:
      return "ok";
    case errc::temporary:
      return "temporary failure";
    case errc::permanent:
      return "permanent failure";
    case errc::in_use:
      return "in use";
    case errc::not_found:
      return "not found";
    case errc::invalid:
      return "invalid";
    case errc::denied:
      return "denied";
    case errc::changed:
      return "changed since listed";
  }
  return "unknown";
}

std::string error::message() const {
  if (!cause_) {
    return context_;
  }
  return context_ + ": " + cause_.message();
}

}  // namespace postern
