// Fuzz target: Maildir file names (src/store/maildir/maildir.hpp: parse_name, cur_name,
// uidl_for_base). Properties: no crash; base and info split the name at its first ':';
// cur_name is idempotent and keeps the base; a name it changes gets a "2," info with
// sorted, unique flags (S among them with `seen`); the UIDL is legal (1..70 octets of 0x21..0x7E).
#include "fuzz/fuzz_check.hpp"
#include "store/maildir/maildir.hpp"
#include "store/mbox/parser.hpp"

#include <algorithm>
#include <string>

namespace maildir = postern::store::maildir;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) {
    return 0;
  }
  const bool seen = (data[0] & 1) != 0;
  const std::string_view name(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto p = maildir::parse_name(name);
  const std::size_t colon = name.find(':');
  FUZZ_CHECK(p.base == name.substr(0, colon));
  FUZZ_CHECK(p.info.has_value() == (colon != std::string_view::npos));
  if (p.info) {
    FUZZ_CHECK(*p.info == name.substr(colon + 1));
  }

  const std::string cur = maildir::cur_name(name, seen);
  FUZZ_CHECK(maildir::cur_name(cur, seen) == cur);
  const auto q = maildir::parse_name(cur);
  FUZZ_CHECK(q.base == p.base);
  FUZZ_CHECK(q.info.has_value());
  if (cur != name) {  // a name that changes ends in ":2," and sorted, unique flags
    FUZZ_CHECK(q.info->starts_with("2,"));
    const std::string_view flags = q.info->substr(2);
    FUZZ_CHECK(std::adjacent_find(flags.begin(), flags.end(), std::greater_equal<>()) ==
               flags.end());
    FUZZ_CHECK(!seen || flags.find('S') != std::string_view::npos);
  }

  const auto uidl = maildir::uidl_for_base(p.base);
  FUZZ_CHECK(uidl.ok() && postern::store::mbox::is_legal_uidl(*uidl));
  return 0;
}
