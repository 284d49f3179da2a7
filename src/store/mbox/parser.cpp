#include "store/mbox/parser.hpp"

#include "common/digest.hpp"
#include "common/encoding.hpp"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace postern::store::mbox {

namespace {

constexpr std::string_view from_space = "From ";
constexpr std::size_t tail_window = 64;
constexpr std::string_view uidl_domain = "postern-mbox-uidl-1\n";

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) noexcept {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && blank(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && blank(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

std::string_view strip_line_end(std::string_view s) noexcept {
  if (!s.empty() && s.back() == '\n') {
    s.remove_suffix(1);
    if (!s.empty() && s.back() == '\r') {
      s.remove_suffix(1);
    }
  }
  return s;
}

// "Name: value" with Name compared case-insensitively to `lower_name`; the value trimmed.
std::optional<std::string_view> header_value(std::string_view line,
                                             std::string_view lower_name) noexcept {
  if (line.size() <= lower_name.size() || line[lower_name.size()] != ':' ||
      !ascii_iequals(line.substr(0, lower_name.size()), lower_name)) {
    return std::nullopt;
  }
  return trim(line.substr(lower_name.size() + 1));
}

bool one_of(std::string_view s, const std::array<std::string_view, 12>& names,
            std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    if (s == names[i]) {
      return true;
    }
  }
  return false;
}

// "Www Mmm dd hh:mm" at position i (day of month may be space-padded or one digit).
bool date_at(std::string_view s, std::size_t i) noexcept {
  static constexpr std::array<std::string_view, 12> days = {"Mon", "Tue", "Wed", "Thu",
                                                            "Fri", "Sat", "Sun"};
  static constexpr std::array<std::string_view, 12> months = {
      "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (i + 8 > s.size() || !one_of(s.substr(i, 3), days, 7) || s[i + 3] != ' ' ||
      !one_of(s.substr(i + 4, 3), months, 12) || s[i + 7] != ' ') {
    return false;
  }
  std::size_t j = i + 8;
  while (j < s.size() && s[j] == ' ') {
    ++j;
  }
  std::size_t digits = 0;
  while (j < s.size() && is_digit(s[j]) && digits < 3) {
    ++j;
    ++digits;
  }
  if (digits == 0 || digits > 2 || j >= s.size() || s[j] != ' ') {
    return false;
  }
  while (j < s.size() && s[j] == ' ') {
    ++j;
  }
  return j + 5 <= s.size() && is_digit(s[j]) && is_digit(s[j + 1]) && s[j + 2] == ':' &&
         is_digit(s[j + 3]) && is_digit(s[j + 4]);
}

struct line_view {
  std::uint64_t start = 0;
  std::uint64_t len = 0;  // with its line end
  std::string_view head;  // the first min(len, line_head_bytes) bytes
  bool has_lf = false;
  bool crlf = false;  // ends with CR LF
  char last = '\0';   // the last byte (len > 0)
};

}  // namespace

// -----------------------------------------------------------------------------------------

bool is_quoted_from(std::string_view head, quoting q) noexcept {
  if (head.size() > line_head_bytes) {
    head = head.substr(0, line_head_bytes);
  }
  switch (q) {
    case quoting::none:
      return false;
    case quoting::mboxo:
      return head.size() >= 6 && head[0] == '>' && head.substr(1, 5) == from_space;
    case quoting::mboxrd: {
      std::size_t run = 0;
      while (run < head.size() && head[run] == '>') {
        ++run;
      }
      return run > 0 && run + from_space.size() <= head.size() &&
             head.substr(run, from_space.size()) == from_space;
    }
  }
  return false;
}

bool looks_like_from_line(std::string_view line) noexcept {
  if (!line.starts_with(from_space)) {
    return false;
  }
  for (std::size_t i = from_space.size(); i + 8 <= line.size(); ++i) {
    if (line[i - 1] == ' ' && date_at(line, i)) {
      return true;
    }
  }
  return false;
}

bool is_legal_uidl(std::string_view s) noexcept {
  if (s.empty() || s.size() > 70) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x21 && u <= 0x7E;
  });
}

std::uint64_t fingerprint(std::string_view data) noexcept {
  std::uint64_t h = 14695981039346656037ULL;
  for (char c : data) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  return h;
}

// -----------------------------------------------------------------------------------------
// digester

struct digester::state {
  std::uint64_t seed = 0;
  XXH3_state_t* xxh = nullptr;

  explicit state(std::uint64_t s) : seed(s), xxh(XXH3_createState()) {
    if (xxh == nullptr) {
      throw std::bad_alloc();
    }
    XXH3_128bits_reset_withSeed(xxh, seed);
  }
  state(const state& other) : state(other.seed) { XXH3_copyState(xxh, other.xxh); }
  state& operator=(const state&) = delete;
  ~state() { XXH3_freeState(xxh); }
};

digester::digester(std::uint64_t seed) : state_(std::make_unique<state>(seed)) {}

digester::~digester() = default;

digester::digester(const digester& other) : state_(std::make_unique<state>(*other.state_)) {}

digester& digester::operator=(const digester& other) {
  if (this != &other) {
    state_->seed = other.state_->seed;
    XXH3_copyState(state_->xxh, other.state_->xxh);
  }
  return *this;
}

void digester::reset(std::uint64_t seed) {
  state_->seed = seed;
  XXH3_128bits_reset_withSeed(state_->xxh, seed);
}

void digester::update(std::string_view bytes) noexcept {
  if (!bytes.empty()) {
    XXH3_128bits_update(state_->xxh, bytes.data(), bytes.size());
  }
}

content_digest digester::digest() const noexcept {
  const XXH128_hash_t h = XXH3_128bits_digest(state_->xxh);
  return content_digest{h.low64, h.high64};
}

content_digest digest_of(std::string_view bytes, std::uint64_t seed) noexcept {
  const XXH128_hash_t h = XXH3_128bits_withSeed(bytes.data(), bytes.size(), seed);
  return content_digest{h.low64, h.high64};
}

// -----------------------------------------------------------------------------------------
// unquoter

void unquoter::emit_held(std::string& out) {
  out += '>';
  out.append(from_space.substr(0, matched_));
  checking_ = false;
  matched_ = 0;
  gt_run_ = 0;
}

void unquoter::filter(std::string_view in, std::string& out) {
  std::size_t i = 0;
  const std::size_t n = in.size();
  while (i < n) {
    if (checking_) {
      const char c = in[i];
      if (matched_ == 0 && c == '>' && q_ == quoting::mboxrd) {
        if (gt_run_ + 1 + from_space.size() > line_head_bytes) {
          emit_held(out);  // too long a run to be a quoted From line (the scanner agrees)
          continue;        // c is processed as an ordinary byte below
        }
        ++gt_run_;
        out += '>';  // every '>' but one is kept; which one is dropped does not matter
        ++i;
        continue;
      }
      if (c == from_space[matched_]) {
        ++matched_;
        ++i;
        if (matched_ == from_space.size()) {
          out.append(from_space);  // the held '>' is dropped
          checking_ = false;
          matched_ = 0;
          gt_run_ = 0;
          at_line_start_ = false;
        }
        continue;
      }
      emit_held(out);
      at_line_start_ = false;
      continue;  // c is processed as an ordinary byte
    }
    if (at_line_start_ && q_ != quoting::none && in[i] == '>') {
      checking_ = true;
      gt_run_ = 1;
      matched_ = 0;
      at_line_start_ = false;
      ++i;
      continue;
    }
    const void* lf = std::memchr(in.data() + i, '\n', n - i);
    if (lf == nullptr) {
      out.append(in.data() + i, n - i);
      at_line_start_ = false;
      return;
    }
    const std::size_t stop = static_cast<std::size_t>(static_cast<const char*>(lf) - in.data()) + 1;
    out.append(in.data() + i, stop - i);
    at_line_start_ = true;
    i = stop;
  }
}

void unquoter::finish(std::string& out) {
  if (checking_) {
    emit_held(out);
  }
}

// -----------------------------------------------------------------------------------------
// scanner

struct scanner::impl {
  enum class state { prefix, headers, body, trailer };

  parse_options opts;
  std::uint64_t total = 0;
  peek_fn peek;

  std::uint64_t pos = 0;  // bytes fed so far
  std::string tail;

  // The line being assembled across chunks.
  bool partial = false;
  std::uint64_t partial_start = 0;
  std::uint64_t partial_len = 0;
  std::string partial_head;
  char partial_last = '\0';
  char partial_before_last = '\0';

  state st = state::prefix;
  std::vector<message_span> msgs;
  std::unordered_set<std::string> used_uidls;
  // For a derived UIDL that collided: the suffix number to try next. Every smaller number was
  // found taken, and taken UIDLs stay taken, so k equal messages cost O(k) digests, not O(k^2)
  // (a sender can mail thousands of identical messages).
  std::unordered_map<std::string, std::uint64_t> next_suffix;
  std::function<bool(std::string_view)> taken_before;  // UIDLs of messages before the resume

  // Identity. `digest` holds the bytes [cur.separator, hashed_to) of the current message
  // (hashed lazily, from the chunk being fed). A line that spans chunks is known to be a
  // separator only when its end arrives; while it is pending, `before_line` holds the state
  // just before the line and `line_digest` the line's bytes alone.
  std::uint64_t seed = 0;
  digester digest;
  digester before_line;
  digester line_digest;
  bool line_pending = false;
  std::uint64_t hashed_to = 0;
  std::string_view chunk_data;  // the chunk being fed; it starts at `pos`

  // Adds the bytes up to x (in the chunk being fed) to the current message's digest.
  void catch_up(std::uint64_t x) noexcept {
    if (x > hashed_to) {
      digest.update(chunk_data.substr(static_cast<std::size_t>(hashed_to - pos),
                                      static_cast<std::size_t>(x - hashed_to)));
      hashed_to = x;
    }
  }

  bool is_taken(const std::string& uidl) const {
    return used_uidls.count(uidl) != 0 || (taken_before && taken_before(uidl));
  }

  // The current message.
  message_span cur;
  std::string from_line;
  std::optional<std::string> message_id;
  std::optional<std::string> date;
  std::optional<std::string> x_uidl;
  std::optional<std::uint64_t> content_length;
  std::string sample;
  std::uint64_t quoted_header_lines = 0;
  bool cl_active = false;
  std::uint64_t cl_end = 0;
  bool last_blank = false;
  std::uint64_t last_start = 0;
  std::size_t sample_before_last = 0;
  bool line_before_blank = false;  // the previous line of this extent, in any state

  static bool is_blank(const line_view& l) noexcept {
    return l.has_lf && (l.len == 1 || (l.len == 2 && l.crlf));
  }

  result<void> on_line(const line_view& l) {
    POSTERN_TRY(dispatch(l));
    line_before_blank = is_blank(l);
    return ok_result();
  }

  result<void> dispatch(const line_view& l) {
    if ((st == state::headers || st == state::body) && cl_active && l.start >= cl_end) {
      st = state::trailer;
    }
    const bool from = l.head.starts_with(from_space);
    switch (st) {
      case state::prefix:
        if (from) {
          start_message(l);
        }
        return ok_result();
      case state::trailer:
        if (from) {
          POSTERN_TRY(close_message(l.start));
          start_message(l);
        }
        return ok_result();
      case state::headers:
      case state::body:
        break;
    }
    if (from && !(cl_active && l.start < cl_end) && (last_blank || looks_like_from_line(l.head))) {
      POSTERN_TRY(close_message(l.start));
      start_message(l);
      return ok_result();
    }
    return content_line(l);
  }

  void start_message(const line_view& l) {
    if (l.start < hashed_to) {
      digest = line_digest;  // the line spanned chunks: its bytes are hashed already
    } else {
      hashed_to = l.start;  // bytes before the first message belong to no message
      digest.reset(seed);
    }
    cur = message_span{};
    cur.separator = l.start;
    cur.from_line_length = l.len;
    cur.content = l.start + l.len;
    cur.from_fingerprint =
        fingerprint(l.head.substr(0, std::min<std::size_t>(l.head.size(), fingerprint_bytes)));
    cur.unquote = opts.from_quoting != quoting::none;
    cur.dated_separator = looks_like_from_line(l.head);
    from_line.assign(strip_line_end(l.head));
    message_id.reset();
    date.reset();
    x_uidl.reset();
    content_length.reset();
    sample.clear();
    quoted_header_lines = 0;
    cl_active = false;
    cl_end = 0;
    last_blank = false;
    last_start = 0;
    sample_before_last = 0;
    st = state::headers;
  }

  result<void> content_line(const line_view& l) {
    std::uint64_t wire = l.len + ((l.has_lf && !l.crlf) ? 1 : 0);
    if (!l.has_lf && l.len > 0) {
      wire += l.last == '\r' ? 1 : 2;  // what dot_encoder::finish adds
    }
    if (cur.unquote && is_quoted_from(l.head, opts.from_quoting)) {
      --wire;
      if (st == state::headers) {
        ++quoted_header_lines;
      }
    }
    cur.size += wire;
    const bool blank = is_blank(l);
    sample_before_last = sample.size();
    if (st == state::headers) {
      if (blank) {
        st = state::body;
        POSTERN_TRY(check_content_length(l.start + l.len));
      } else {
        note_header(l.head);
      }
    } else if (sample.size() < uidl_body_bytes) {
      const std::size_t want = uidl_body_bytes - sample.size();
      sample.append(l.head.substr(0, std::min<std::size_t>(want, l.head.size())));
    }
    last_blank = blank;
    last_start = l.start;
    return ok_result();
  }

  void note_header(std::string_view head) {
    const std::string_view line = strip_line_end(head);
    if (line.empty()) {
      return;
    }
    const char c = ascii_lower(line[0]);
    if (c == 'c' && !content_length) {
      if (auto v = header_value(line, "content-length")) {
        std::uint64_t n = 0;
        bool ok = !v->empty() && v->size() <= 19;
        for (char d : *v) {
          ok = ok && is_digit(d);
          n = n * 10 + static_cast<std::uint64_t>(d - '0');
        }
        if (ok) {
          content_length = n;
        }
      }
    } else if (c == 'x' && !x_uidl) {
      if (auto v = header_value(line, "x-uidl")) {
        x_uidl = std::string(*v);
      }
    } else if (c == 'm' && !message_id) {
      if (auto v = header_value(line, "message-id")) {
        message_id = std::string(*v);
      }
    } else if (c == 'd' && !date) {
      if (auto v = header_value(line, "date")) {
        date = std::string(*v);
      }
    }
  }

  // At the end of the headers: does Content-Length point exactly at a boundary?
  result<void> check_content_length(std::uint64_t body_start) {
    if (!opts.honour_content_length || !content_length || *content_length > total ||
        body_start > total - *content_length) {
      return ok_result();
    }
    const std::uint64_t e = body_start + *content_length;
    bool valid = e == total;
    if (!valid) {
      auto bytes = peek(e - 1, 8);
      if (!bytes.ok()) {
        return std::move(bytes).err();
      }
      const std::string_view s = *bytes;
      if (!s.empty() && s[0] == '\n') {
        const std::string_view r = s.substr(1);
        valid = r.starts_with(from_space) || r.starts_with("\nFrom ") ||
                r.starts_with("\r\nFrom ") || (r == "\n" && e + 1 == total) ||
                (r == "\r\n" && e + 2 == total);
      }
    }
    if (valid) {
      cl_active = true;
      cl_end = e;
      if (cur.unquote) {
        cur.unquote = false;  // mboxcl2: delimited by length, never quoted
        cur.size += quoted_header_lines;
      }
    }
    return ok_result();
  }

  // Called before the separator line (or the end) is seen by on_line, so line_before_blank
  // still describes the extent's last line.
  result<void> close_message(std::uint64_t extent_end) {
    if (extent_end < hashed_to) {
      cur.digest = before_line.digest();  // the separator's line spanned chunks
    } else {
      catch_up(extent_end);
      cur.digest = digest.digest();
    }
    cur.extent_end = extent_end;
    cur.ends_with_blank_line = line_before_blank && extent_end > cur.content;
    if (cur.content > extent_end) {
      cur.content = extent_end;  // a From_ line without a line end at the end of the file
    }
    if (cl_active) {
      cur.end = cl_end;
    } else if (last_blank && last_start >= cur.content) {
      cur.end = last_start;  // the blank line before the separator belongs to the mbox
      cur.size -= 2;
      sample.resize(sample_before_last);
    } else {
      cur.end = extent_end;
    }
    POSTERN_TRY(assign_uidl());
    msgs.push_back(std::move(cur));
    cur = message_span{};
    return ok_result();
  }

  result<void> assign_uidl() {
    if (opts.use_x_uidl && x_uidl && is_legal_uidl(*x_uidl)) {
      if (!is_taken(*x_uidl)) {
        cur.uidl = *x_uidl;
        used_uidls.insert(cur.uidl);
        return ok_result();
      }
      cur.uidl_collided = true;
    }
    std::string input(uidl_domain);
    input += from_line;
    input += '\n';
    input += message_id.value_or("");
    input += '\n';
    input += date.value_or("");
    input += '\n';
    input += sample;
    auto derived = sha1_hex(input);
    if (!derived.ok()) {
      return std::move(derived).err();
    }
    std::string uidl = *derived;
    if (is_taken(uidl)) {
      cur.uidl_collided = true;
      std::uint64_t& n = next_suffix.try_emplace(*derived, 1).first->second;
      for (;; ++n) {
        auto next = sha1_hex(*derived + "#" + std::to_string(n));
        if (!next.ok()) {
          return std::move(next).err();
        }
        uidl = std::move(*next);
        if (!is_taken(uidl)) {
          ++n;
          break;
        }
      }
    }
    cur.uidl = uidl;
    used_uidls.insert(std::move(uidl));
    return ok_result();
  }

  result<void> feed(std::string_view chunk) {
    chunk_data = chunk;
    POSTERN_TRY(feed_lines(chunk));
    if (partial) {  // the chunk ends inside a line: hash its bytes both ways
      if (!line_pending) {
        catch_up(partial_start);
        before_line = digest;
        line_digest.reset(seed);
        line_pending = true;
      }
      const std::string_view rest =
          chunk.substr(static_cast<std::size_t>(std::max(partial_start, pos) - pos));
      digest.update(rest);
      line_digest.update(rest);
      hashed_to = pos + chunk.size();
    } else {
      catch_up(pos + chunk.size());
    }
    chunk_data = {};
    pos += chunk.size();
    if (chunk.size() >= tail_window) {
      tail.assign(chunk.substr(chunk.size() - tail_window));
    } else {
      tail.append(chunk);
      if (tail.size() > tail_window) {
        tail.erase(0, tail.size() - tail_window);
      }
    }
    return ok_result();
  }

  result<void> feed_lines(std::string_view chunk) {
    const char* p = chunk.data();
    const std::size_t n = chunk.size();
    std::size_t i = 0;
    while (i < n) {
      const void* lf = std::memchr(p + i, '\n', n - i);
      const std::size_t stop =
          lf != nullptr ? static_cast<std::size_t>(static_cast<const char*>(lf) - p) + 1 : n;
      const std::string_view seg(p + i, stop - i);
      if (!partial && lf != nullptr) {
        line_view l;
        l.start = pos + i;
        l.len = seg.size();
        l.head = seg.substr(0, std::min(seg.size(), line_head_bytes));
        l.has_lf = true;
        l.crlf = seg.size() >= 2 && seg[seg.size() - 2] == '\r';
        l.last = '\n';
        POSTERN_TRY(on_line(l));
      } else {
        if (!partial) {
          partial = true;
          partial_start = pos + i;
          partial_len = 0;
          partial_head.clear();
          partial_last = '\0';
          partial_before_last = '\0';
        }
        if (partial_head.size() < line_head_bytes) {
          partial_head.append(seg.substr(0, line_head_bytes - partial_head.size()));
        }
        if (seg.size() >= 2) {
          partial_before_last = seg[seg.size() - 2];
        } else {
          partial_before_last = partial_last;
        }
        partial_last = seg.back();
        partial_len += seg.size();
        if (lf != nullptr) {
          partial = false;
          // The end of a line begun in an earlier chunk: its bytes go to both digests
          // before the line is judged (close_message and start_message pick one).
          digest.update(seg);
          line_digest.update(seg);
          hashed_to = pos + stop;
          line_view l;
          l.start = partial_start;
          l.len = partial_len;
          l.head = partial_head;
          l.has_lf = true;
          l.crlf = partial_len >= 2 && partial_before_last == '\r';
          l.last = '\n';
          POSTERN_TRY(on_line(l));
          line_pending = false;
        }
      }
      i = stop;
    }
    return ok_result();
  }

  result<scan_result> finish() {
    if (partial) {
      partial = false;
      line_view l;
      l.start = partial_start;
      l.len = partial_len;
      l.head = partial_head;
      l.has_lf = false;
      l.crlf = false;
      l.last = partial_last;
      POSTERN_TRY(on_line(l));
    }
    if (st != state::prefix) {
      POSTERN_TRY(close_message(pos));
    }
    line_pending = false;
    st = state::prefix;
    scan_result out;
    out.messages = std::move(msgs);
    out.scanned_size = pos;
    out.tail_fingerprint = fingerprint(tail);
    out.digest_seed = seed;
    return out;
  }
};

scanner::scanner(const parse_options& opts, std::uint64_t total_size, peek_fn peek,
                 resume_point from, std::uint64_t digest_seed)
    : impl_(std::make_unique<impl>()) {
  impl_->seed = digest_seed;
  impl_->hashed_to = from.offset;
  impl_->digest.reset(digest_seed);
  impl_->opts = opts;
  impl_->total = total_size;
  impl_->peek = std::move(peek);
  impl_->pos = from.offset;
  impl_->taken_before = std::move(from.taken);
}

scanner::~scanner() = default;

result<void> scanner::feed(std::string_view chunk) { return impl_->feed(chunk); }

result<scan_result> scanner::finish() { return impl_->finish(); }

result<scan_result> scan(std::string_view data, const parse_options& opts,
                         std::uint64_t digest_seed) {
  scanner s(
      opts, data.size(),
      [data](std::uint64_t offset, std::size_t n) -> result<std::string> {
        if (offset >= data.size()) {
          return std::string();
        }
        return std::string(data.substr(offset, n));
      },
      {}, digest_seed);
  POSTERN_TRY(s.feed(data));
  return s.finish();
}

}  // namespace postern::store::mbox
