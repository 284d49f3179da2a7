// Fuzz target: the Maildir index decoder (src/store/maildir/index.hpp, decode_index). The
// input is decoded as it is, and once more with a valid trailer appended (body length, XXH64,
// "PSTNEND1"), so that the field checks behind the checksum are reached.
// Properties: no crash; both decode_index forms agree; an accepted index holds only names
// the format allows, and encodes back to exactly the bytes decoded.
#include "fuzz/fuzz_check.hpp"
#include "fuzz/fuzz_seal.hpp"
#include "store/maildir/index.hpp"

#include <string>

namespace maildir = postern::store::maildir;

namespace {

void check(std::string_view bytes) {
  const auto d = maildir::decode_index(bytes);
  maildir::index_contents head;
  std::size_t visited = 0;
  const bool ok = maildir::decode_index(bytes, head, [&](const maildir::index_record&) {
    ++visited;
    return true;
  });
  FUZZ_CHECK(ok == d.has_value());
  if (!d) {
    return;
  }
  FUZZ_CHECK(visited == d->records.size());
  for (const auto& r : d->records) {
    FUZZ_CHECK(!r.name.empty() && r.name.size() <= maildir::max_index_name_size);
    FUZZ_CHECK(r.name.front() != '.');
    FUZZ_CHECK(r.name.find('/') == std::string_view::npos);
    FUZZ_CHECK(r.name.find('\0') == std::string_view::npos);
    FUZZ_CHECK(r.wire_size <= maildir::max_index_wire_size);
  }
  FUZZ_CHECK(maildir::encode_index(*d) == bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in);
  std::string sealed(in);
  const std::uint64_t sum = maildir::index_checksum(sealed);
  postern::fuzz::put_u64_le(sealed, size);
  postern::fuzz::put_u64_le(sealed, sum);
  sealed += "PSTNEND1";
  check(sealed);
  return 0;
}
