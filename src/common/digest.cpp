#include "common/digest.hpp"

#include "common/encoding.hpp"

#include <openssl/evp.h>

#include <array>

namespace postern {

result<std::string> sha1_hex(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha1(), nullptr) != 1) {
    return error(errc::temporary, "SHA-1 digest unavailable");
  }
  std::string out;
  append_hex(out, {md.data(), len});
  return out;
}

}  // namespace postern
