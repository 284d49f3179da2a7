// Fuzz target: the mbox index decoder (src/store/mbox/index.hpp, decode_index). The input is
// decoded as it is, and once more with a valid trailer appended (its length and SHA-256), so
// that the field checks behind the checksum are reached.
// Properties: no crash; an accepted index has ordered offsets within the scanned size and
// legal UIDLs, re-encodes, and its encoding decodes to an index that encodes identically.
#include "fuzz/fuzz_check.hpp"
#include "fuzz/fuzz_seal.hpp"
#include "store/mbox/index.hpp"

#include <string>

namespace mbox = postern::store::mbox;

namespace {

void check(std::string_view bytes) {
  const auto d = mbox::decode_index(bytes);
  if (!d.ok()) {
    return;
  }
  FUZZ_CHECK(d->scan.scanned_size <= d->stamp.size);
  std::uint64_t prev_end = 0;
  for (const auto& m : d->scan.messages) {
    FUZZ_CHECK(m.separator >= prev_end);
    FUZZ_CHECK(m.separator <= m.content && m.content <= m.end && m.end <= m.extent_end);
    FUZZ_CHECK(m.extent_end <= d->scan.scanned_size);
    FUZZ_CHECK(mbox::is_legal_uidl(m.uidl));
    prev_end = m.extent_end;
  }
  const auto e1 = mbox::encode_index(*d);
  FUZZ_CHECK(e1.ok());
  const auto d2 = mbox::decode_index(*e1);
  FUZZ_CHECK(d2.ok());
  const auto e2 = mbox::encode_index(*d2);
  FUZZ_CHECK(e2.ok() && *e2 == *e1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in);
  std::string sealed(in);
  postern::fuzz::put_u64_le(sealed, size + 8 + 32);
  sealed += postern::fuzz::sha256_raw(sealed);
  check(sealed);
  return 0;
}
