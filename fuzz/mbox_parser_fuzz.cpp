// Fuzz target: the mbox parser (src/store/mbox/parser.hpp). The first byte picks the options
// (quoting, Content-Length, X-UIDL) and the chunk size; the rest is the mbox.
// Properties: the scan succeeds; offsets are ordered (separator < content <= end <=
// extent_end) and extents tile the file from the first separator to its end; UIDLs are legal
// and distinct; each size equals the wire octets of what the unquoter serves; feeding the
// scanner in chunks gives the same messages as scanning the whole buffer.
#include "common/line_ends.hpp"
#include "fuzz/fuzz_check.hpp"
#include "store/mbox/parser.hpp"

#include <set>
#include <string>

namespace mbox = postern::store::mbox;
using postern::result;
using postern::fuzz::cursor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cursor c(data, size);
  const std::uint8_t opt = c.byte();
  const std::size_t chunk = 1 + c.byte() % 97;
  const std::string_view in = c.rest();
  mbox::parse_options po;
  po.from_quoting = opt % 3 == 0   ? mbox::quoting::mboxo
                    : opt % 3 == 1 ? mbox::quoting::mboxrd
                                   : mbox::quoting::none;
  po.honour_content_length = (opt & 4) != 0;
  po.use_x_uidl = (opt & 8) != 0;
  const std::uint64_t seed = opt >> 4;

  auto r = mbox::scan(in, po, seed);
  FUZZ_CHECK(r.ok());
  FUZZ_CHECK(r->scanned_size == in.size());
  std::set<std::string> uidls;
  for (std::size_t i = 0; i < r->messages.size(); ++i) {
    const auto& m = r->messages[i];
    FUZZ_CHECK(m.separator < m.content && m.content <= m.end && m.end <= m.extent_end);
    FUZZ_CHECK(m.content - m.separator == m.from_line_length);
    FUZZ_CHECK(m.extent_end ==
               (i + 1 < r->messages.size() ? r->messages[i + 1].separator : in.size()));
    FUZZ_CHECK(mbox::is_legal_uidl(m.uidl));
    FUZZ_CHECK(uidls.insert(m.uidl).second);
    FUZZ_CHECK(m.digest ==
               mbox::digest_of(in.substr(m.separator, m.extent_end - m.separator), seed));
    mbox::unquoter u(m.unquote ? po.from_quoting : mbox::quoting::none);
    std::string served;
    for (std::uint64_t p = m.content; p < m.end; p += chunk) {
      u.filter(in.substr(p, std::min<std::uint64_t>(chunk, m.end - p)), served);
    }
    u.finish(served);
    FUZZ_CHECK(m.size == postern::message_wire_octets(served));
  }

  mbox::scanner s(
      po, in.size(),
      [in](std::uint64_t off, std::size_t n) -> result<std::string> {
        return std::string(in.substr(std::min<std::uint64_t>(off, in.size()), n));
      },
      {}, seed);
  for (std::size_t p = 0; p < in.size(); p += chunk) {
    FUZZ_CHECK(s.feed(in.substr(p, chunk)).ok());
  }
  auto f = s.finish();
  FUZZ_CHECK(f.ok());
  FUZZ_CHECK(f->messages.size() == r->messages.size());
  for (std::size_t i = 0; i < f->messages.size(); ++i) {
    const auto& a = f->messages[i];
    const auto& b = r->messages[i];
    FUZZ_CHECK(a.separator == b.separator && a.content == b.content && a.end == b.end);
    FUZZ_CHECK(a.size == b.size && a.uidl == b.uidl && a.digest == b.digest);
    FUZZ_CHECK(a.unquote == b.unquote && a.from_fingerprint == b.from_fingerprint);
  }
  FUZZ_CHECK(f->tail_fingerprint == r->tail_fingerprint);
  return 0;
}
