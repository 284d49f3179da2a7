// Fuzz target: the mbox journal header decoder (src/store/mbox/journal.hpp,
// parse_journal_header). The input is parsed as it is, and once more with a valid "check"
// line (its SHA-256) and the blank line appended, so that the field checks are reached.
// Properties: no crash; an accepted header formats back to text that parses to the same
// header, within journal_header_size.
#include "fuzz/fuzz_check.hpp"
#include "fuzz/fuzz_seal.hpp"
#include "store/mbox/journal.hpp"

#include <string>

namespace mbox = postern::store::mbox;

namespace {

void check(std::string_view block) {
  const auto h = mbox::parse_journal_header(block);
  if (!h.ok()) {
    return;
  }
  const auto text = mbox::format_journal_header(*h);
  FUZZ_CHECK(text.ok() && text->size() <= mbox::journal_header_size);
  const auto again = mbox::parse_journal_header(*text);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->st == h->st && again->ino == h->ino && again->start == h->start);
  FUZZ_CHECK(again->old_size == h->old_size && again->new_size == h->new_size);
  FUZZ_CHECK(again->payload_size == h->payload_size);
  FUZZ_CHECK(again->prefix_digest == h->prefix_digest && again->gap_digest == h->gap_digest);
  FUZZ_CHECK(again->payload_digest == h->payload_digest);
  FUZZ_CHECK(again->cells_digest == h->cells_digest);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in);
  std::string sealed(in);
  sealed += "check " + postern::fuzz::sha256_hex(in) + "\n\n";
  check(sealed);
  return 0;
}
