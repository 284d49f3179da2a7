#include "store/uidl_format.hpp"

#include "common/encoding.hpp"
#include "common/parse.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>

namespace postern::store {
namespace {

constexpr std::size_t max_sendable_uidl = 255;
// The largest field width a format may give (Dovecot's %Nx): wider than any UIDL Postern
// sends, so a width past it is a typo, refused at startup.
constexpr unsigned max_uidl_width = 255;

bool is_lwsp(char c) noexcept { return c == ' ' || c == '\t'; }

std::string to_hex(std::uint64_t v) {
  std::string out;
  do {
    out.insert(out.begin(), hex_digits[v & 0xF]);
    v >>= 4;
  } while (v != 0);
  return out;
}

// Dovecot's m_str_hex: str_to_ullong, 0 when the text is not a number.
std::string hex_of_text(std::string_view s) {
  auto v = parse_u64(s);
  return to_hex(v.value_or(0));
}

// One physical header line, as Dovecot's message_parse_header_next reports it.
struct header_line {
  std::string_view name;   // the field's name (for continuation lines, the field's)
  std::string_view value;  // after "Name:" and one blank; a continuation line whole
  bool continued = false;  // this line continues the previous field
  bool continues = false;  // the next line continues this field
};

// Calls f(header_line) for each line of the header section, until the empty line.
template <typename F>
void for_each_header_line(std::string_view header, F f) {
  std::vector<std::string_view> lines;
  while (!header.empty()) {
    auto nl = header.find('\n');
    std::string_view line = header.substr(0, nl);
    header.remove_prefix(nl == std::string_view::npos ? header.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    if (line.empty()) {
      break;  // end of the header section
    }
    lines.push_back(line);
  }
  std::string_view name;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    header_line h;
    h.continued = i > 0 && is_lwsp(line.front());
    h.continues = i + 1 < lines.size() && is_lwsp(lines[i + 1].front());
    if (h.continued) {
      h.name = name;
      h.value = line;
    } else {
      auto colon = line.find(':');
      if (colon == std::string_view::npos) {
        name = line;  // Dovecot: no ':', the whole line is the name
        h.name = name;
        h.value = {};
      } else {
        std::size_t end = colon;
        while (end > 0 && is_lwsp(line[end - 1])) {
          --end;
        }
        name = line.substr(0, end);
        h.name = name;
        h.value = line.substr(colon + 1);
        if (!h.value.empty() && is_lwsp(h.value.front())) {
          h.value.remove_prefix(1);
        }
      }
    }
    f(h);
  }
}

struct md5_ctx_deleter {
  void operator()(EVP_MD_CTX* c) const noexcept { EVP_MD_CTX_free(c); }
};

bool is_record_key(char c) noexcept { return c >= 'A' && c <= 'Z'; }

std::vector<std::string_view> split_blank(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') {
      ++i;
    }
    std::size_t start = i;
    while (i < s.size() && s[i] != ' ') {
      ++i;
    }
    if (i > start) {
      out.push_back(s.substr(start, i - start));
    }
  }
  return out;
}

std::optional<std::uint32_t> parse_u32(std::string_view s) {
  auto v = parse_u64(s);
  if (!v || *v > UINT32_MAX) {
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(*v);
}

std::string base_of(std::string_view filename) {
  return std::string(filename.substr(0, filename.find(':')));
}

// The size of the header section (through its empty line, LF or CRLF) when `s` holds its
// end, searching from `from`; nullopt when more bytes are needed.
std::optional<std::size_t> header_end(std::string_view s, std::size_t from) {
  for (std::size_t i = from; i < s.size(); ++i) {
    if (i != 0 && s[i - 1] != '\n') {
      continue;
    }
    if (s[i] == '\n') {
      return i + 1;
    }
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') {
      return i + 2;
    }
  }
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// uidl_format

result<uidl_format> uidl_format::parse(std::string_view spec) {
  uidl_format f;
  f.spec_ = std::string(spec);
  if (spec.empty()) {
    return error(errc::invalid, "uidl_format: empty");
  }
  std::string literal;
  for (std::size_t i = 0; i < spec.size(); ++i) {
    char c = spec[i];
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F) {
      return error(errc::invalid,
                   "uidl_format: byte " + std::to_string(i + 1) + " is not printable ASCII");
    }
    if (c != '%') {
      literal.push_back(c);
      continue;
    }
    piece p;
    std::size_t j = i + 1;
    if (j < spec.size() && spec[j] == '0') {
      p.zero_pad = true;
      ++j;
    }
    while (j < spec.size() && spec[j] >= '0' && spec[j] <= '9') {
      p.width = p.width * 10 + static_cast<unsigned>(spec[j] - '0');
      if (p.width > max_uidl_width) {
        return error(errc::invalid,
                     "uidl_format: width too large at byte " + std::to_string(i + 1));
      }
      ++j;
    }
    if (j < spec.size() && spec[j] == 'X') {
      p.hex = true;
      ++j;
    }
    if (j >= spec.size() || std::string_view("vumfg%").find(spec[j]) == std::string_view::npos) {
      return error(errc::invalid, "uidl_format: unknown variable at byte " + std::to_string(i + 1) +
                                      " (use %v, %u, %m, %f, %g or %%)");
    }
    if (spec[j] == '%' && !p.zero_pad && p.width == 0 && !p.hex) {
      literal.push_back('%');
      i = j;
      continue;
    }
    if (!literal.empty()) {
      f.pieces_.push_back(piece{0, std::move(literal)});
      literal.clear();
    }
    p.var = spec[j];
    f.pieces_.push_back(std::move(p));
    i = j;
  }
  if (!literal.empty()) {
    f.pieces_.push_back(piece{0, std::move(literal)});
  }
  return f;
}

bool uidl_format::uses(char var) const noexcept {
  return std::any_of(pieces_.begin(), pieces_.end(),
                     [var](const piece& p) { return p.var == var; });
}

std::string uidl_format::expand(const uidl_vars& vars) const {
  std::string out;
  for (const auto& p : pieces_) {
    if (p.var == 0) {
      out += p.literal;
      continue;
    }
    std::string value;
    switch (p.var) {
      case 'u':
        value = vars.uid ? std::to_string(*vars.uid) : std::string();
        break;
      case 'v':
        value = vars.uidvalidity ? std::to_string(*vars.uidvalidity) : std::string();
        break;
      case 'm':
        value = vars.md5;
        break;
      case 'f':
        value = vars.filename;
        break;
      case 'g':
        value = vars.guid;
        break;
      case '%':
        value = "%";
        break;
      default:
        break;
    }
    if (p.hex) {
      value = hex_of_text(value);
    }
    if (p.width == 0) {
      out += value;
    } else if (!p.zero_pad) {
      out += value.substr(0, p.width);  // Dovecot: a bare width truncates
    } else {
      if (value.size() < p.width) {
        out.append(p.width - value.size(), '0');
      }
      out += value;
    }
  }
  return out;
}

bool is_sendable_uidl(std::string_view s) noexcept {
  if (s.empty() || s.size() > max_sendable_uidl) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7E;
  });
}

// ---------------------------------------------------------------------------------------
// Headers

result<std::string> read_header_section(message_reader& reader, std::size_t limit) {
  std::string out;
  std::array<char, 4096> buf{};
  std::size_t scanned = 0;  // bytes of `out` already searched for the empty line
  for (;;) {
    auto n = reader.read(std::span<char>(buf.data(), buf.size()));
    if (!n) {
      return std::move(n).err();
    }
    if (*n == 0) {
      return out;
    }
    out.append(buf.data(), *n);
    if (auto end = header_end(out, scanned)) {
      out.resize(*end);
      return out;
    }
    // A '\r' at the very end may start the empty line: look at it again with the next bytes.
    scanned = out.size() - 1;
    if (out.size() >= limit) {
      out.resize(limit);
      return out;
    }
  }
}

std::optional<std::string> header_value(std::string_view header, std::string_view name) {
  std::optional<std::string> found;
  bool in_field = false;
  bool done = false;
  for_each_header_line(header, [&](const header_line& h) {
    if (done) {
      return;
    }
    if (!h.continued) {
      if (in_field) {
        done = true;
        return;
      }
      if (ascii_iequals(h.name, name)) {
        in_field = true;
        found = std::string(h.value);
      }
      return;
    }
    if (in_field) {
      *found += std::string(h.value);
    }
  });
  if (found) {
    while (!found->empty() && is_lwsp(found->back())) {
      found->pop_back();
    }
  }
  return found;
}

std::string header_md5_hex(std::string_view header) {
  std::unique_ptr<EVP_MD_CTX, md5_ctx_deleter> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_md5(), nullptr) != 1) {
    return {};
  }
  bool seen_received = false;
  for_each_header_line(header, [&](const header_line& h) {
    bool take = false;
    if (ascii_iequals(h.name, "Date") || ascii_iequals(h.name, "Message-ID")) {
      take = !seen_received;  // Received carries a more trusted date and id
    } else if (ascii_iequals(h.name, "Delivered-To") || ascii_iequals(h.name, "X-Delivery-ID")) {
      take = true;
    } else if (ascii_iequals(h.name, "Received")) {
      if (!seen_received) {
        take = true;
        if (!h.continues) {
          seen_received = true;  // only the first Received field
        }
      }
    }
    if (take && !h.value.empty()) {
      EVP_DigestUpdate(ctx.get(), h.value.data(), h.value.size());
    }
  });
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md.data(), &len) != 1) {
    return {};
  }
  std::string out;
  append_hex(out, {md.data(), len});
  return out;
}

// ---------------------------------------------------------------------------------------
// uidlist

result<uidlist> parse_uidlist(std::string_view text) {
  uidlist l;
  auto nl = text.find('\n');
  std::string_view header = text.substr(0, nl);
  text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
  if (!header.empty() && header.back() == '\r') {
    header.remove_suffix(1);
  }
  if (header.size() < 2 || header[0] < '0' || header[0] > '9' || header[1] != ' ') {
    return error(errc::invalid, "uidlist: bad header (no version)");
  }
  l.version = static_cast<unsigned>(header[0] - '0');
  auto fields = split_blank(header.substr(2));
  if (l.version == 1) {
    if (fields.size() < 2) {
      return error(errc::invalid, "uidlist: bad version 1 header");
    }
    l.uidvalidity = parse_u32(fields[0]).value_or(0);
    l.next_uid = parse_u32(fields[1]).value_or(0);
  } else if (l.version == 3) {
    for (auto f : fields) {
      switch (f[0]) {
        case 'V':
          l.uidvalidity = parse_u32(f.substr(1)).value_or(0);
          break;
        case 'N':
          l.next_uid = parse_u32(f.substr(1)).value_or(0);
          break;
        case 'G':
          l.mailbox_guid = std::string(f.substr(1));
          break;
        default:
          break;  // other header extensions are kept by Dovecot; we need none
      }
    }
  } else {
    return error(errc::invalid, "uidlist: unsupported version " + std::to_string(l.version));
  }
  if (l.uidvalidity == 0 || l.next_uid == 0) {
    return error(errc::invalid, "uidlist: broken header (uidvalidity or next uid is 0)");
  }
  std::uint32_t prev = 0;
  while (!text.empty()) {
    nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    auto sp = line.find(' ');
    if (sp == std::string_view::npos) {
      continue;
    }
    auto uid = parse_u32(line.substr(0, sp));
    if (!uid || *uid == 0 || *uid <= prev || *uid == UINT32_MAX) {
      continue;  // Dovecot: "UIDs not ordered" / invalid: dropped
    }
    std::string_view rest = line.substr(sp + 1);
    while (!rest.empty() && rest.front() == ' ') {
      rest.remove_prefix(1);
    }
    uidlist_record r;
    r.uid = *uid;
    std::string_view filename;
    if (l.version == 3) {
      while (!rest.empty() && rest.front() != ':') {
        auto end = rest.find(' ');
        std::string_view field = rest.substr(0, end);
        rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
        while (!rest.empty() && rest.front() == ' ') {
          rest.remove_prefix(1);
        }
        if (!is_record_key(field.front())) {
          continue;
        }
        if (field.front() == 'G') {
          r.guid = std::string(field.substr(1));
        } else if (field.front() == 'P') {
          r.pop3_uidl = std::string(field.substr(1));
        }
      }
      if (rest.empty()) {
        continue;  // no ":<filename>"
      }
      filename = rest.substr(1);
    } else {
      filename = rest;
    }
    if (filename.empty() || filename.find('/') != std::string_view::npos) {
      continue;
    }
    r.key = base_of(filename);
    if (r.key.empty()) {
      continue;
    }
    prev = r.uid;
    l.records.push_back(std::move(r));
  }
  if (l.next_uid <= prev) {
    l.next_uid = prev + 1;
  }
  return l;
}

std::string format_uidlist(const uidlist& l) {
  std::string out = "3 V" + std::to_string(l.uidvalidity) + " N" + std::to_string(l.next_uid);
  if (!l.mailbox_guid.empty()) {
    out += " G" + l.mailbox_guid;
  }
  if (!l.header_extensions.empty()) {
    out += " " + l.header_extensions;
  }
  out += '\n';
  for (const auto& r : l.records) {
    out += std::to_string(r.uid);
    if (!r.extensions.empty()) {
      out += " " + r.extensions;
    } else {
      if (!r.guid.empty()) {
        out += " G" + r.guid;
      }
      if (r.pop3_uidl) {
        out += " P" + *r.pop3_uidl;
      }
    }
    out += " :" + (r.filename.empty() ? r.key : r.filename) + "\n";
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// uid_assigner

uid_assigner::uid_assigner(std::optional<uidlist> legacy, std::optional<uidlist> own,
                           std::uint32_t fallback_uidvalidity) {
  const bool had_own = own.has_value();
  std::uint32_t next = 1;
  if (legacy) {
    for (auto& r : legacy->records) {
      legacy_.try_emplace(r.key, uid_entry{r.uid, r.guid, r.pop3_uidl});
      next = std::max(next, r.uid + 1);
    }
    next = std::max(next, legacy->next_uid);
  }
  if (own) {
    own_ = std::move(*own);
    for (auto& r : own_.records) {
      own_index_.try_emplace(r.key, uid_entry{r.uid, r.guid, r.pop3_uidl});
      next = std::max(next, r.uid + 1);
    }
    next = std::max(next, own_.next_uid);
  }
  if (legacy && legacy->uidvalidity != 0) {
    uidvalidity_ = legacy->uidvalidity;
  } else if (had_own && own_.uidvalidity != 0) {
    uidvalidity_ = own_.uidvalidity;
  } else {
    uidvalidity_ = fallback_uidvalidity != 0 ? fallback_uidvalidity : 1;
  }
  if (!legacy && !had_own) {
    changed_ = true;  // a new list: its uidvalidity must be recorded before anyone sees it
  }
  if (own_.uidvalidity != uidvalidity_) {
    own_.uidvalidity = uidvalidity_;
    changed_ = changed_ || had_own;
  }
  if (own_.next_uid != next) {
    own_.next_uid = next;
    changed_ = changed_ || had_own;
  }
}

std::optional<uid_entry> uid_assigner::lookup(std::string_view key) const {
  if (auto it = own_index_.find(key); it != own_index_.end()) {
    return it->second;
  }
  if (auto it = legacy_.find(key); it != legacy_.end()) {
    return it->second;
  }
  return std::nullopt;
}

uid_entry uid_assigner::lookup_or_assign(const std::string& key) {
  if (auto found = lookup(key)) {
    return *found;
  }
  uid_entry e;
  e.uid = own_.next_uid;
  if (own_.next_uid < UINT32_MAX - 1) {
    ++own_.next_uid;
  }
  own_.records.push_back(uidlist_record{e.uid, key, {}, std::nullopt});
  own_index_.emplace(key, e);
  changed_ = true;
  return e;
}

std::optional<uidlist> mbox_uidlist_from_headers(const std::vector<std::string>& native_uidls,
                                                 const std::vector<std::string>& headers) {
  if (headers.empty() || native_uidls.size() != headers.size()) {
    return std::nullopt;
  }
  auto base = header_value(headers[0], "X-IMAPbase");
  if (!base) {
    base = header_value(headers[0], "X-IMAP");
  }
  if (!base) {
    return std::nullopt;
  }
  auto f = split_blank(*base);
  if (f.size() < 2) {
    return std::nullopt;
  }
  auto validity = parse_u32(f[0]);
  auto last = parse_u32(f[1]);
  if (!validity || *validity == 0 || !last) {
    return std::nullopt;
  }
  uidlist l;
  l.uidvalidity = *validity;
  l.next_uid = *last + 1;
  std::uint32_t prev = 0;
  for (std::size_t i = 0; i < headers.size(); ++i) {
    auto v = header_value(headers[i], "X-UID");
    if (!v) {
      continue;
    }
    std::string_view s = *v;
    while (!s.empty() && is_lwsp(s.front())) {
      s.remove_prefix(1);
    }
    auto uid = parse_u32(s);
    if (!uid || *uid == 0 || *uid <= prev) {
      continue;
    }
    prev = *uid;
    l.records.push_back(uidlist_record{*uid, native_uidls[i], {}, std::nullopt});
  }
  if (l.next_uid <= prev) {
    l.next_uid = prev + 1;
  }
  return l;
}

}  // namespace postern::store
