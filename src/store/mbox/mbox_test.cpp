#include "store/mbox/mbox.hpp"

#include "common/line_ends.hpp"
#include "common/test_files.hpp"
#include "common/unique_fd.hpp"
#include "store/mbox/journal.hpp"
#include "store/mbox/parser.hpp"
#include "store/mbox/sync_trace_test.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

extern char** environ;

namespace postern::store::mbox {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace std::string_literals;

// ---------------------------------------------------------------------------------------
// Helpers.

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-mbox") {}
};
using test::append_file;
using test::read_file;
using test::write_file;

// What the client receives for `content`, minus byte-stuffing and ".CRLF", must equal the
// listed size: message_wire_octets (pop3/dot_encoder_test.cpp pins the encoder to it).
std::uint64_t encoder_size(std::string_view content) { return message_wire_octets(content); }

// The content of each message as a client gets it (unquoted), from an in-memory scan.
std::vector<std::string> served(std::string_view data, const scan_result& r, quoting q) {
  std::vector<std::string> out;
  for (const auto& m : r.messages) {
    unquoter u(m.unquote ? q : quoting::none);
    std::string s;
    // Byte by byte: the unquoter must not depend on chunk boundaries.
    for (std::uint64_t i = m.content; i < m.end; ++i) {
      u.filter(data.substr(i, 1), s);
    }
    u.finish(s);
    out.push_back(std::move(s));
  }
  return out;
}

std::string read_all(message_reader& r, std::size_t chunk) {
  std::string out;
  std::vector<char> buf(chunk);
  for (;;) {
    auto n = r.read(buf);
    EXPECT_TRUE(n.ok());
    if (!n.ok() || *n == 0) {
      return out;
    }
    out.append(buf.data(), *n);
  }
}

struct listing {
  std::vector<std::string> contents;
  std::vector<std::string> uidls;
  std::vector<std::uint64_t> sizes;
};

listing list_all(maildrop& m) {
  listing l;
  const auto msgs = m.messages();
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    auto r = m.open_message(i, true);
    EXPECT_TRUE(r.ok()) << r.err().message();
    if (!r.ok()) {
      continue;
    }
    l.contents.push_back(read_all(**r, 1 + (i * 13) % 100));
    l.uidls.push_back(msgs[i].uidl);
    l.sizes.push_back(msgs[i].size);
    EXPECT_EQ(msgs[i].size, encoder_size(l.contents.back())) << "message " << i + 1;
  }
  return l;
}

options fast_options() {
  options o;
  o.locking.timeout = 300ms;
  return o;
}

std::string msg(const std::string& from, const std::string& id, const std::string& body) {
  return "From " + from + " Mon Jan  1 00:00:00 2024\nMessage-ID: <" + id +
         "@example.org>\nSubject: " + id + "\n\n" + body + "\n";
}

// ---------------------------------------------------------------------------------------
// Parser: one row per edge case; every row is also fed in 1-byte and 3-byte chunks.

struct parse_row {
  std::string name;
  std::string data;
  std::vector<std::string> want;  // served contents
  quoting q = quoting::mboxo;
  bool content_length = false;
};

std::vector<parse_row> parse_rows() {
  return {
      {"empty file", "", {}},
      {"only garbage", "no separator here\nnor here\n", {}},
      {"one message",
       "From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nhello\n",
       {"Subject: x\n\nhello\n"}},
      {"two messages, blank line before separator belongs to the mbox",
       "From a\nS: 1\n\nb1\n\nFrom b\nS: 2\n\nb2\n\n",
       {"S: 1\n\nb1\n", "S: 2\n\nb2\n"}},
      {"only one blank line is the mbox's",
       "From a\n\nb1\n\n\n\nFrom b\n\nb2\n",
       {"\nb1\n\n\n", "\nb2\n"}},
      {"CRLF line ends",
       "From a\r\nS: 1\r\n\r\nb1\r\n\r\nFrom b\r\nS: 2\r\n\r\nb2\r\n\r\n",
       {"S: 1\r\n\r\nb1\r\n", "S: 2\r\n\r\nb2\r\n"}},
      {"mixed line ends",
       "From a\nS: 1\r\n\nb1\r\n\r\nFrom b\r\nS: 2\n\r\nb2\n",
       {"S: 1\r\n\nb1\r\n", "S: 2\n\r\nb2\n"}},
      {"no final newline", "From a\nS: 1\n\nlast line", {"S: 1\n\nlast line"}},
      {"no final newline after CR", "From a\nS: 1\n\nlast\r", {"S: 1\n\nlast\r"}},
      {"From_ line without line end at the end",
       "From a\nS: 1\n\nx\n\nFrom b",
       {"S: 1\n\nx\n", ""}},
      {"empty message between two", "From a\n\nFrom b\nS: 2\n\nx\n", {"", "S: 2\n\nx\n"}},
      {"garbage prefix is skipped", "junk\nmore junk\nFrom a\nS: 1\n\nx\n", {"S: 1\n\nx\n"}},
      {"garbage prefix, first From_ line after a non-blank line",
       "junk\nFrom a\nS: 1\n\nx\n",
       {"S: 1\n\nx\n"}},
      {"body From line without a date after text is not a separator",
       "From a\nS: 1\n\nhello\nFrom here on it is body\n",
       {"S: 1\n\nhello\nFrom here on it is body\n"}},
      {"From_ line with a date after text is a separator (missing blank line)",
       "From a\nS: 1\n\nhello\nFrom b@c Tue Feb 13 10:20:30 2024\nS: 2\n\ny\n",
       {"S: 1\n\nhello\n", "S: 2\n\ny\n"}},
      {"From line after a blank line is a separator",
       "From a\nS: 1\n\nhello\n\nFrom here\n",
       {"S: 1\n\nhello\n", ""}},
      {"mboxo unquotes one level",
       "From a\n\n>From x\n>>From y\n> From z\n>Fromage\n",
       {"\nFrom x\n>>From y\n> From z\n>Fromage\n"}},
      {"mboxrd unquotes one level of any depth",
       "From a\n\n>From x\n>>From y\n>>>From z\n> From w\n>>Fro\n",
       {"\nFrom x\n>From y\n>>From z\n> From w\n>>Fro\n"},
       quoting::mboxrd},
      {"quoting none serves as stored",
       "From a\n\n>From x\n>>From y\n",
       {"\n>From x\n>>From y\n"},
       quoting::none},
      {"quoted From at the very end without newline", "From a\n\n>From x", {"\nFrom x"}},
      {"partial quoted From at the end", "From a\n\n>Fro", {"\n>Fro"}, quoting::mboxrd},
      {"quoted From in CRLF", "From a\r\n\r\n>From x\r\n", {"\r\nFrom x\r\n"}},
      {"dot lines are sized before stuffing", "From a\n\n.\n..x\n.\n", {"\n.\n..x\n.\n"}},
      {"Content-Length ignored when off",
       "From a\nContent-Length: 14\n\nx\n\nFrom inner\ny\n\nFrom b\n\nz\n",
       {"Content-Length: 14\n\nx\n", "y\n", "\nz\n"}},
      {"Content-Length honoured when on and exact",
       "From a\nContent-Length: 16\n\nx\n\nFrom inner\ny\n\nFrom b\n\nz\n",
       {"Content-Length: 16\n\nx\n\nFrom inner\ny\n", "\nz\n"},
       quoting::mboxo,
       true},
      {"Content-Length to the end of file",
       "From a\nContent-Length: 16\n\nx\n\nFrom inner\ny\n",
       {"Content-Length: 16\n\nx\n\nFrom inner\ny\n"},
       quoting::mboxo,
       true},
      {"Content-Length pointing nowhere is ignored",
       "From a\nContent-Length: 5\n\nx\n\nFrom inner\ny\n",
       {"Content-Length: 5\n\nx\n", "y\n"},
       quoting::mboxo,
       true},
      {"Content-Length too large is ignored",
       "From a\nContent-Length: 999\n\nx\n",
       {"Content-Length: 999\n\nx\n"},
       quoting::mboxo,
       true},
      {"Content-Length delimited messages are not unquoted",
       "From a\n>From h\nContent-Length: 8\n\n>From x\n\nFrom b\n\n>From y\n",
       {">From h\nContent-Length: 8\n\n>From x\n", "\nFrom y\n"},
       quoting::mboxo,
       true},
      {"Content-Length 0",
       "From a\nContent-Length: 0\n\n\nFrom b\n\nz\n",
       {"Content-Length: 0\n\n", "\nz\n"},
       quoting::mboxo,
       true},
      {"Content-Length with CRLF boundary",
       "From a\r\nContent-Length: 3\r\n\r\nx\r\n\r\nFrom b\r\n\r\nz\r\n",
       {"Content-Length: 3\r\n\r\nx\r\n", "\r\nz\r\n"},
       quoting::mboxo,
       true},
      {"NUL bytes and 8-bit data pass", "From a\n\n\0\xff\xfe\n"s, {"\n\0\xff\xfe\n"s}},
  };
}

TEST(mbox_parser, table) {
  for (const auto& row : parse_rows()) {
    SCOPED_TRACE(row.name);
    parse_options po;
    po.from_quoting = row.q;
    po.honour_content_length = row.content_length;
    auto r = scan(row.data, po);
    ASSERT_TRUE(r.ok()) << r.err().message();
    EXPECT_EQ(r->scanned_size, row.data.size());
    const auto got = served(row.data, *r, row.q);
    EXPECT_EQ(got, row.want);
    ASSERT_EQ(got.size(), r->messages.size());
    std::set<std::string> uidls;
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(r->messages[i].size, encoder_size(got[i])) << "message " << i + 1;
      EXPECT_TRUE(is_legal_uidl(r->messages[i].uidl));
      uidls.insert(r->messages[i].uidl);
      // Extents tile the file from the first separator on.
      if (i + 1 < got.size()) {
        EXPECT_EQ(r->messages[i].extent_end, r->messages[i + 1].separator);
      } else {
        EXPECT_EQ(r->messages[i].extent_end, row.data.size());
      }
    }
    EXPECT_EQ(uidls.size(), got.size());

    // Same result whatever the chunking.
    for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{64}}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk));
      const std::string_view data = row.data;
      scanner s(po, data.size(), [data](std::uint64_t off, std::size_t n) -> result<std::string> {
        return std::string(data.substr(std::min<std::uint64_t>(off, data.size()), n));
      });
      for (std::size_t i = 0; i < data.size(); i += chunk) {
        ASSERT_TRUE(s.feed(data.substr(i, chunk)).ok());
      }
      auto c = s.finish();
      ASSERT_TRUE(c.ok());
      ASSERT_EQ(c->messages.size(), r->messages.size());
      for (std::size_t i = 0; i < c->messages.size(); ++i) {
        EXPECT_EQ(c->messages[i].content, r->messages[i].content);
        EXPECT_EQ(c->messages[i].end, r->messages[i].end);
        EXPECT_EQ(c->messages[i].size, r->messages[i].size);
        EXPECT_EQ(c->messages[i].uidl, r->messages[i].uidl);
        EXPECT_EQ(c->messages[i].from_fingerprint, r->messages[i].from_fingerprint);
        EXPECT_EQ(c->messages[i].digest, r->messages[i].digest);
      }
      EXPECT_EQ(c->tail_fingerprint, r->tail_fingerprint);
    }
  }
}

TEST(mbox_parser, long_lines_and_long_quote_runs) {
  // A line longer than line_head_bytes, and '>' runs right at the bound shared by the
  // scanner and the unquoter: sizes must always match what is served.
  for (std::size_t run : {std::size_t{1}, std::size_t{2}, line_head_bytes - 6, line_head_bytes - 5,
                          line_head_bytes - 4, line_head_bytes, line_head_bytes + 10}) {
    SCOPED_TRACE(run);
    const std::string data =
        "From a\n\n" + std::string(run, '>') + "From x\n" + std::string(5000, 'y') + "\n";
    for (quoting q : {quoting::mboxo, quoting::mboxrd}) {
      parse_options po;
      po.from_quoting = q;
      auto r = scan(data, po);
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->messages.size(), 1u);
      const auto got = served(data, *r, q);
      EXPECT_EQ(r->messages[0].size, encoder_size(got[0]));
      const bool unquoted = got[0].size() + 1 == r->messages[0].end - r->messages[0].content;
      EXPECT_EQ(unquoted, q == quoting::mboxrd ? run + 5 <= line_head_bytes : run == 1);
    }
  }
}

// Random mboxes built from the pieces parsers trip on; invariants checked for every option
// set: extents tile the file, sizes equal the encoder's output for what is served, and the
// chunking of the input changes nothing.
TEST(mbox_parser, randomized_invariants) {
  const std::vector<std::string> pieces = {
      "From a Mon Jan  1 00:00:00 2024",
      "From b",
      "From ",
      ">From x",
      ">>From y",
      ">Fro",
      "Content-Length: 0",
      "Content-Length: 7",
      "Content-Length: 12",
      "X-UIDL: u1",
      "Message-ID: <m@x>",
      ".",
      "..",
      "text",
      "",
      ">",
      "\r",
  };
  std::uint64_t seed = 12345;
  const auto next = [&seed] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::size_t>(seed >> 33);
  };
  for (int round = 0; round < 400; ++round) {
    std::string data;
    const std::size_t lines = next() % 30;
    for (std::size_t i = 0; i < lines; ++i) {
      data += pieces[next() % pieces.size()];
      if (i + 1 < lines || next() % 2 == 0) {
        data += next() % 3 == 0 ? "\r\n" : "\n";
      }
    }
    for (quoting q : {quoting::mboxo, quoting::mboxrd, quoting::none}) {
      for (bool cl : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "round " << round << " data " << ::testing::PrintToString(data));
        parse_options po;
        po.from_quoting = q;
        po.honour_content_length = cl;
        auto r = scan(data, po);
        ASSERT_TRUE(r.ok());
        const auto got = served(data, *r, q);
        std::uint64_t at = r->messages.empty() ? data.size() : r->messages[0].separator;
        std::set<std::string> uidls;
        for (std::size_t i = 0; i < r->messages.size(); ++i) {
          const auto& m = r->messages[i];
          EXPECT_EQ(m.separator, at);
          EXPECT_LE(m.separator, m.content);
          EXPECT_LE(m.content, m.end);
          EXPECT_LE(m.end, m.extent_end);
          EXPECT_EQ(data.compare(m.separator, 5, "From "), 0);
          EXPECT_EQ(m.size, encoder_size(got[i]));
          uidls.insert(m.uidl);
          at = m.extent_end;
        }
        EXPECT_EQ(at, data.size());
        EXPECT_EQ(uidls.size(), r->messages.size());
        const std::string_view dv = data;
        scanner sc(po, dv.size(), [dv](std::uint64_t off, std::size_t n) -> result<std::string> {
          return std::string(dv.substr(std::min<std::uint64_t>(off, dv.size()), n));
        });
        for (std::size_t i = 0; i < dv.size(); i += 5) {
          ASSERT_TRUE(sc.feed(dv.substr(i, 5)).ok());
        }
        auto c = sc.finish();
        ASSERT_TRUE(c.ok());
        ASSERT_EQ(c->messages.size(), r->messages.size());
        for (std::size_t i = 0; i < c->messages.size(); ++i) {
          EXPECT_EQ(c->messages[i].end, r->messages[i].end);
          EXPECT_EQ(c->messages[i].size, r->messages[i].size);
          EXPECT_EQ(c->messages[i].uidl, r->messages[i].uidl);
        }
      }
    }
  }
}

TEST(mbox_parser, looks_like_from_line) {
  EXPECT_TRUE(looks_like_from_line("From a@b Mon Jan  1 00:00:00 2024"));
  EXPECT_TRUE(looks_like_from_line("From a@b Tue Feb 13 10:20:30 2024\n"));
  EXPECT_TRUE(looks_like_from_line("From MAILER-DAEMON Sat Jul 27 03:26:47 1996 remote from x"));
  EXPECT_TRUE(looks_like_from_line("From u3 <u3@a.invalid> Mon Aug 12 14:43:33 1996"));
  EXPECT_TRUE(looks_like_from_line("From a Wed Mar 5 09:01 2024"));
  EXPECT_FALSE(looks_like_from_line("From here on, Mon Jan is fine"));
  EXPECT_FALSE(looks_like_from_line("From a Mon Jan  1"));
  EXPECT_FALSE(looks_like_from_line("Fromage Mon Jan  1 00:00:00 2024"));
  EXPECT_FALSE(looks_like_from_line("From a Mon Jan 123 00:00:00 2024"));
}

TEST(mbox_parser, uidl_rules) {
  const std::string a = "From a Mon Jan  1 00:00:00 2024\nX-UIDL: qpop-123\n\nx\n\n";
  const std::string b = "From b Mon Jan  1 00:00:01 2024\nX-UIDL: qpop-123\n\ny\n\n";
  const std::string bad = "From c Mon Jan  1 00:00:02 2024\nX-UIDL: has space\n\nz\n\n";
  const std::string toolong =
      "From d Mon Jan  1 00:00:03 2024\nx-uidl: " + std::string(71, 'u') + "\n\nw\n\n";
  const std::string dup = "From e Mon Jan  1 00:00:04 2024\n\nsame\n\n";
  parse_options x_uidl;
  x_uidl.use_x_uidl = true;
  auto r = scan(a + b + bad + toolong + dup + dup, x_uidl);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->messages.size(), 6u);
  EXPECT_EQ(r->messages[0].uidl, "qpop-123");  // X-UIDL wins
  EXPECT_NE(r->messages[1].uidl, "qpop-123");  // taken: derived instead
  EXPECT_EQ(r->messages[1].uidl.size(), 40u);
  EXPECT_EQ(r->messages[2].uidl.size(), 40u);  // illegal X-UIDL: derived
  EXPECT_EQ(r->messages[3].uidl.size(), 40u);
  EXPECT_NE(r->messages[4].uidl, r->messages[5].uidl);  // identical messages: still unique

  // X-UIDL is off by default: a sender could forge another message's UIDL.
  parse_options po;
  EXPECT_FALSE(po.use_x_uidl);
  EXPECT_FALSE(options{}.use_x_uidl);
  auto off = scan(a, po);
  ASSERT_TRUE(off.ok());
  EXPECT_NE(off->messages[0].uidl, "qpop-123");
  EXPECT_EQ(off->messages[0].uidl.size(), 40u);

  // Derived UIDLs ignore headers that MUAs rewrite and the message's position.
  const std::string m1 = "From x Mon Jan  1 00:00:00 2024\nMessage-ID: <1@x>\nDate: d\n\nbody\n\n";
  const std::string m1_flagged =
      "From x Mon Jan  1 00:00:00 2024\nStatus: RO\nX-Status: A\nMessage-ID: <1@x>\nDate: d\n\n"
      "body\n\n";
  auto alone = scan(m1, {});
  auto behind = scan(dup + m1_flagged, {});
  ASSERT_TRUE(alone.ok() && behind.ok());
  EXPECT_EQ(alone->messages[0].uidl, behind->messages[1].uidl);
}

// Five list posts: one sender, one second, one footer; bodies differ by one line.
std::string list_post(const std::string& text) {
  return "From list@example.org Mon Jan  1 00:00:00 2024\nSubject: post\n\n" + text +
         "\n-- \nthe list footer\n\n";
}

// A sender can mail thousands of identical messages: each gets the next free suffix of the
// shared derived UIDL, the same numbering as trying every suffix from 1 (which took time
// quadratic in their number), and an X-UIDL that took a suffixed value is skipped.
TEST(mbox_parser, identical_messages_take_consecutive_suffixes) {
  const std::string dup = "From e Mon Jan  1 00:00:04 2024\n\nsame\n\n";
  std::string data;
  constexpr std::size_t count = 4000;
  for (std::size_t i = 0; i < count; ++i) {
    data += dup;
  }
  auto r = scan(data, parse_options{});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->messages.size(), count);
  std::unordered_set<std::string> seen;
  for (const auto& m : r->messages) {
    EXPECT_TRUE(seen.insert(m.uidl).second) << m.uidl;
  }
  EXPECT_FALSE(r->messages[0].uidl_collided);
  EXPECT_TRUE(r->messages[1].uidl_collided);

  // Probing from 1 every time gives the same UIDLs: a file holding the third copy's value as
  // an X-UIDL on the first message moves the copies past it, as before.
  parse_options x_uidl;
  x_uidl.use_x_uidl = true;
  const std::string third = r->messages[2].uidl;
  auto moved = scan(
      "From x Mon Jan  1 00:00:00 2024\nX-UIDL: " + third + "\n\nx\n\n" + dup + dup + dup + dup,
      x_uidl);
  ASSERT_TRUE(moved.ok());
  ASSERT_EQ(moved->messages.size(), 5u);
  EXPECT_EQ(moved->messages[0].uidl, third);
  EXPECT_EQ(moved->messages[1].uidl, r->messages[0].uidl);
  EXPECT_EQ(moved->messages[2].uidl, r->messages[1].uidl);
  EXPECT_EQ(moved->messages[3].uidl, r->messages[3].uidl);  // the third's value is taken
  EXPECT_EQ(moved->messages[4].uidl, r->messages[4].uidl);
}

TEST(mbox_parser, identity_is_the_digest_of_the_whole_extent) {
  std::string data = "garbage\n\n";
  for (int i = 1; i <= 5; ++i) {
    data += list_post("Text " + std::to_string(i));
  }
  for (std::uint64_t seed : {std::uint64_t{0}, std::uint64_t{0x1234567890abcdefULL}}) {
    auto r = scan(data, {}, seed);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->messages.size(), 5u);
    EXPECT_EQ(r->digest_seed, seed);
    std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
    for (const auto& m : r->messages) {
      const std::string_view extent =
          std::string_view(data).substr(m.separator, m.extent_end - m.separator);
      EXPECT_EQ(m.digest, digest_of(extent, seed));
      digester d(seed);
      for (char c : extent) {
        d.update(std::string_view(&c, 1));
      }
      EXPECT_EQ(d.digest(), m.digest);
      seen.insert({m.digest.low, m.digest.high});
    }
    EXPECT_EQ(seen.size(), 5u);  // equal From_ lines and footers, five identities
  }
  // The seed changes every identity.
  EXPECT_NE(scan(data, {}, 1)->messages[0].digest, scan(data, {}, 2)->messages[0].digest);
  // A one-byte edit anywhere in an extent changes its identity (From_ line, header, body,
  // the blank line that ends it).
  const auto base = scan(data, {});
  const auto& m2 = base->messages[1];
  for (std::uint64_t at = m2.separator + 1; at < m2.extent_end; at += 7) {
    std::string edited = data;
    edited[at] = edited[at] == '\n' ? '\r' : static_cast<char>(edited[at] ^ 0x20);
    if (edited[at] == '\n') {
      continue;
    }
    auto r = scan(edited, {});
    ASSERT_TRUE(r.ok());
    if (r->messages.size() == base->messages.size() && r->messages[1].extent_end == m2.extent_end) {
      EXPECT_NE(r->messages[1].digest, m2.digest) << "edit at " << at;
    }
  }
}

TEST(mbox_parser, identity_does_not_depend_on_chunks_or_resuming) {
  // Lines longer than a chunk, separators split across chunks, no final newline.
  std::string data;
  for (int i = 1; i <= 6; ++i) {
    data += list_post(std::string(static_cast<std::size_t>(i) * 700, static_cast<char>('a' + i)));
  }
  data += "From last Mon Jan  1 00:00:00 2024\n\nunterminated";
  const auto whole = scan(data, {}, 77);
  ASSERT_TRUE(whole.ok());
  const std::string_view v = data;
  const auto peek = [v](std::uint64_t off, std::size_t n) -> result<std::string> {
    return std::string(v.substr(std::min<std::uint64_t>(off, v.size()), n));
  };
  for (std::size_t chunk : {std::size_t{1}, std::size_t{5}, std::size_t{64}, std::size_t{1000}}) {
    SCOPED_TRACE(chunk);
    for (std::size_t k : {std::size_t{0}, std::size_t{3}}) {
      const std::uint64_t from = whole->messages[k].separator;
      scanner s({}, data.size(), peek, resume_point{from, {}}, 77);
      for (std::size_t i = from; i < data.size(); i += chunk) {
        ASSERT_TRUE(s.feed(v.substr(i, std::min(chunk, data.size() - i))).ok());
      }
      auto r = s.finish();
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->messages.size(), whole->messages.size() - k);
      for (std::size_t i = 0; i < r->messages.size(); ++i) {
        EXPECT_EQ(r->messages[i].digest, whole->messages[k + i].digest) << i;
      }
    }
  }
}

TEST(mbox_unquoter, chunk_boundaries_everywhere) {
  const std::string in = ">From a\n>>From b\n>Fro\n>\n>>\nx>From c\n>From";
  // (">From" without the space at the very end is no quoted From line.)
  for (quoting q : {quoting::mboxo, quoting::mboxrd, quoting::none}) {
    unquoter whole(q);
    std::string want;
    whole.filter(in, want);
    whole.finish(want);
    for (std::size_t cut = 0; cut <= in.size(); ++cut) {
      unquoter u(q);
      std::string got;
      u.filter(std::string_view(in).substr(0, cut), got);
      u.filter(std::string_view(in).substr(cut), got);
      u.finish(got);
      EXPECT_EQ(got, want) << "cut " << cut;
    }
  }
  unquoter rd(quoting::mboxrd);
  std::string out;
  rd.filter(in, out);
  rd.finish(out);
  EXPECT_EQ(out, "From a\n>From b\n>Fro\n>\n>>\nx>From c\n>From");
}

// ---------------------------------------------------------------------------------------
// Journal header.

TEST(mbox_journal, header_round_trip_and_damage) {
  journal_header h;
  h.st = journal_header::state::trunc;
  h.ino = 42;
  h.start = 100;
  h.payload_size = 50;
  h.new_size = 150;
  h.old_size = 400;
  h.prefix_digest = std::string(64, 'a');
  h.gap_digest = std::string(64, 'b');
  h.cells_digest = std::string(64, 'd');
  h.payload_digest = std::string(64, 'c');
  auto text = format_journal_header(h);
  ASSERT_TRUE(text.ok());
  EXPECT_LT(text->size(), journal_header_size);
  std::string block = *text + std::string(journal_header_size - text->size(), '\0');
  auto p = parse_journal_header(block);
  ASSERT_TRUE(p.ok()) << p.err().message();
  EXPECT_EQ(p->st, h.st);
  EXPECT_EQ(p->ino, 42u);
  EXPECT_EQ(p->start, 100u);
  EXPECT_EQ(p->new_size, 150u);
  EXPECT_EQ(p->old_size, 400u);
  EXPECT_EQ(p->gap_digest, h.gap_digest);
  for (std::size_t i = 0; i < text->size(); ++i) {
    std::string damaged = block;
    damaged[i] = static_cast<char>(damaged[i] ^ 0x01);
    EXPECT_FALSE(parse_journal_header(damaged).ok()) << "flipped byte " << i;
  }
  EXPECT_FALSE(parse_journal_header(block.substr(0, text->size() - 2)).ok());
  h.new_size = 151;  // inconsistent with start + payload
  auto bad = format_journal_header(h);
  ASSERT_TRUE(bad.ok());
  EXPECT_FALSE(parse_journal_header(*bad).ok());
}

// ---------------------------------------------------------------------------------------
// The maildrop on real files.

class mbox_files : public ::testing::Test {
 protected:
  void SetUp() override { box_ = dir_.path() + "/user"; }

  // The journal's fault injection (journal.hpp), handed to every open through opts(): the
  // step-th fault point from now on exits the process (or runs `action`).
  void set_fault(int step, std::function<void()> action = {}) {
    faults_ = fault_countdown(step, copy_buffer_, std::move(action));
  }
  // The journal's copy buffer from now on; small values make more fault points.
  void set_copy_buffer(std::size_t bytes) {
    copy_buffer_ = bytes;
    faults_ = fault_countdown(0, bytes);
  }
  options opts() {
    options o = fast_options();
    o.faults = &faults_;
    return o;
  }

  std::string sample(int n) {
    std::string out;
    for (int i = 1; i <= n; ++i) {
      out += msg("sender" + std::to_string(i) + "@example.org", "m" + std::to_string(i),
                 "Body of message " + std::to_string(i) + ".\n>From quoted line\n.dot line");
      out += "\n";
    }
    return out;
  }

  std::unique_ptr<maildrop> open_ok() { return open_ok(opts()); }
  std::unique_ptr<maildrop> open_ok(const options& o) {
    auto m = open(box_, o);
    EXPECT_TRUE(m.ok()) << m.err().message();
    return m.ok() ? std::move(*m) : nullptr;
  }

  listing listing_now() {
    auto m = open_ok();
    if (!m) {
      return {};
    }
    return list_all(*m);
  }

  bool journal_files_left() const {
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      if (e.path().filename().string().find("postern-journal") != std::string::npos) {
        return true;
      }
    }
    return false;
  }

  temp_dir dir_;
  std::string box_;
  std::size_t copy_buffer_ = 0;
  fault_countdown faults_{0};
};

TEST_F(mbox_files, missing_file_or_directory_is_empty_and_creates_nothing) {
  auto m = open_ok();
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->messages().empty());
  auto stats = m->commit({});
  ASSERT_TRUE(stats.ok());
  EXPECT_TRUE(fs::is_empty(dir_.path()));
  auto gone = open(dir_.path() + "/no/such/dir/user", opts());
  ASSERT_TRUE(gone.ok());
  EXPECT_TRUE((*gone)->messages().empty());
  EXPECT_FALSE(open("relative/path", opts()).ok());
  EXPECT_FALSE(open("", opts()).ok());
}

TEST_F(mbox_files, empty_file_is_empty_maildrop) {
  write_file(box_, "");
  auto m = open_ok();
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->messages().empty());
  EXPECT_FALSE(fs::exists(box_ + ".lock"));  // spool lock released after the scan
}

TEST_F(mbox_files, lists_reads_and_sizes_match_the_encoder) {
  write_file(box_, "garbage before\n\n" + sample(4));
  auto m = open_ok();
  ASSERT_TRUE(m);
  const auto l = list_all(*m);
  ASSERT_EQ(l.contents.size(), 4u);
  EXPECT_EQ(l.contents[0],
            "Message-ID: <m1@example.org>\nSubject: m1\n\nBody of message 1.\nFrom quoted line\n"
            ".dot line\n");
  EXPECT_FALSE(m->open_message(4, false).ok());
}

TEST_F(mbox_files, second_session_is_in_use_and_spool_lock_is_not_held_meanwhile) {
  write_file(box_, sample(2));
  auto a = open_ok();
  ASSERT_TRUE(a);
  auto b = open(box_, opts());
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.err().code(), errc::in_use);
  // Delivery is not blocked while a session is open: no dotlock, no fcntl lock.
  EXPECT_FALSE(fs::exists(box_ + ".lock"));
  const pid_t child = ::fork();
  if (child == 0) {
    const int fd = ::open(box_.c_str(), O_RDWR);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    ::_exit(fd >= 0 && ::fcntl(fd, F_SETLK, &fl) == 0 ? 0 : 1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  a.reset();
  EXPECT_TRUE(open(box_, opts()).ok());
}

TEST_F(mbox_files, uidls_stable_across_sessions_and_deletions) {
  write_file(box_, sample(5));
  const auto before = listing_now();
  ASSERT_EQ(before.uidls.size(), 5u);
  EXPECT_EQ(listing_now().uidls, before.uidls);
  {
    auto m = open_ok();
    ASSERT_TRUE(m);
    const bool del[] = {true, false, true, false, false};
    auto s = m->commit(del);
    ASSERT_TRUE(s.ok()) << s.err().message();
    EXPECT_EQ(s->deleted, 2u);
    EXPECT_EQ(s->left, 3u);
    EXPECT_EQ(s->deleted_bytes, before.sizes[0] + before.sizes[2]);
  }
  const auto after = listing_now();
  EXPECT_EQ(after.uidls,
            (std::vector<std::string>{before.uidls[1], before.uidls[3], before.uidls[4]}));
  EXPECT_EQ(after.contents,
            (std::vector<std::string>{before.contents[1], before.contents[3], before.contents[4]}));
}

TEST_F(mbox_files, x_uidl_wins_only_when_turned_on) {
  write_file(box_, "From a Mon Jan  1 00:00:00 2024\nX-UIDL: 3f2a1b\n\nx\n\n" + sample(1));
  const auto l = listing_now();
  ASSERT_EQ(l.uidls.size(), 2u);
  EXPECT_NE(l.uidls[0], "3f2a1b");
  options on = opts();
  on.use_x_uidl = true;
  auto m = open_ok(on);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->messages()[0].uidl, "3f2a1b");
}

TEST_F(mbox_files, commit_deletes_exactly_the_marked_messages_byte_for_byte) {
  const std::string prefix = "junk line\n\n";
  std::vector<std::string> parts;
  for (int i = 1; i <= 5; ++i) {
    parts.push_back(msg("s" + std::to_string(i), "id" + std::to_string(i), "text") + "\n");
  }
  const auto join = [&](const std::vector<int>& keep) {
    std::string out = prefix;
    for (int i : keep) {
      out += parts[static_cast<std::size_t>(i)];
    }
    return out;
  };
  struct row {
    std::vector<bool> del;
    std::vector<int> keep;
  };
  const std::vector<row> rows = {
      {{false, false, false, false, false}, {0, 1, 2, 3, 4}},
      {{true, false, false, false, false}, {1, 2, 3, 4}},
      {{false, false, false, false, true}, {0, 1, 2, 3}},
      {{false, true, false, true, false}, {0, 2, 4}},
      {{true, true, true, true, true}, {}},
      {{false, false, true, true, true}, {0, 1}},
  };
  for (const auto& r : rows) {
    write_file(box_, join({0, 1, 2, 3, 4}));
    auto m = open_ok();
    ASSERT_TRUE(m);
    std::unique_ptr<bool[]> del(new bool[r.del.size()]);
    std::copy(r.del.begin(), r.del.end(), del.get());
    auto s = m->commit(std::span<const bool>(del.get(), r.del.size()));
    ASSERT_TRUE(s.ok()) << s.err().message();
    EXPECT_EQ(read_file(box_), join(r.keep));
    EXPECT_FALSE(m->commit(std::span<const bool>(del.get(), r.del.size())).ok());  // once
    m.reset();
    EXPECT_FALSE(journal_files_left());
    EXPECT_FALSE(fs::exists(box_ + ".lock"));
  }
}

TEST_F(mbox_files, randomized_commits_keep_exactly_the_unmarked_messages) {
  const std::vector<std::string> pieces = {"From a Mon Jan  1 00:00:00 2024",
                                           ">From x",
                                           ">>From y",
                                           "From here",
                                           "text",
                                           "",
                                           ".",
                                           "Subject: s",
                                           "\r"};
  std::uint64_t seed = 777;
  const auto next = [&seed] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::size_t>(seed >> 33);
  };
  for (int round = 0; round < 60; ++round) {
    SCOPED_TRACE(round);
    std::string data = next() % 4 == 0 ? "junk\n" : "";
    const std::size_t lines = 1 + next() % 40;
    for (std::size_t i = 0; i < lines; ++i) {
      data += i == 0 ? "From first Mon Jan  1 00:00:00 2024" : pieces[next() % pieces.size()];
      data += next() % 4 == 0 ? "\r\n" : "\n";
    }
    write_file(box_, data);
    const auto before = listing_now();
    std::unique_ptr<bool[]> del(new bool[before.contents.size() + 1]());
    std::vector<std::string> want;
    bool any = false;
    for (std::size_t i = 0; i < before.contents.size(); ++i) {
      del[i] = next() % 3 == 0;
      any = any || del[i];
      if (!del[i]) {
        want.push_back(before.contents[i]);
      }
    }
    {
      auto m = open_ok();
      ASSERT_TRUE(m);
      ASSERT_TRUE(m->commit(std::span<const bool>(del.get(), before.contents.size())).ok());
    }
    const auto after = listing_now();
    std::string marks;
    for (std::size_t i = 0; i < before.contents.size(); ++i) {
      marks += del[i] ? 'D' : '.';
    }
    EXPECT_EQ(after.contents, want) << ::testing::PrintToString(data) << " " << marks << " -> "
                                    << ::testing::PrintToString(read_file(box_));
    if (!any) {
      EXPECT_EQ(read_file(box_), data);
    }
    EXPECT_FALSE(journal_files_left());
  }
}

TEST_F(mbox_files, deletion_keeps_undated_separators_separating) {
  // b follows a without a blank line (allowed: b's From_ line is dated); "From weak" needs
  // the blank line that b's extent ends with. Deleting b must not merge "weak" into a.
  const std::string a = "From a Mon Jan  1 00:00:00 2024\nS: 1\n\nx\n";
  const std::string b = "From b Mon Jan  1 00:00:01 2024\nS: 2\n\ny\n\n";
  const std::string weak = "From weak\nS: 3\n\nz\n";
  write_file(box_, a + b + weak);
  const auto before = listing_now();
  ASSERT_EQ(before.contents.size(), 3u);
  {
    auto m = open_ok();
    const bool del[] = {false, true, false};
    ASSERT_TRUE(m->commit(del).ok());
  }
  EXPECT_EQ(read_file(box_), a + "\n" + weak);
  const auto after = listing_now();
  EXPECT_EQ(after.contents, (std::vector<std::string>{before.contents[0], before.contents[2]}));
  EXPECT_EQ(after.uidls, (std::vector<std::string>{before.uidls[0], before.uidls[2]}));
  EXPECT_EQ(after.sizes, (std::vector<std::uint64_t>{before.sizes[0], before.sizes[2]}));

  // The same for the first line of mail appended during the session.
  write_file(box_, a + b);
  auto m = open_ok();
  append_file(box_, weak);
  const bool del[] = {false, true};
  ASSERT_TRUE(m->commit(del).ok());
  m.reset();
  EXPECT_EQ(read_file(box_), a + "\n" + weak);
}

TEST_F(mbox_files, commit_with_nothing_deleted_writes_nothing) {
  write_file(box_, sample(2));
  struct stat before {};
  ASSERT_EQ(::stat(box_.c_str(), &before), 0);
  auto m = open_ok();
  const bool del[] = {false, false};
  ASSERT_TRUE(m->commit(del).ok());
  struct stat after {};
  ASSERT_EQ(::stat(box_.c_str(), &after), 0);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
}

TEST_F(mbox_files, mail_appended_after_open_survives_commit) {
  write_file(box_, sample(3));
  const std::string late = msg("late@example.org", "late", "arrived during the session") + "\n";
  auto m = open_ok();
  ASSERT_TRUE(m);
  append_file(box_, late);
  const bool del[] = {true, false, true};
  ASSERT_TRUE(m->commit(del).ok());
  m.reset();
  const auto l = listing_now();
  ASSERT_EQ(l.contents.size(), 2u);
  EXPECT_NE(l.contents[0].find("Subject: m2"), std::string::npos);
  EXPECT_NE(l.contents[1].find("arrived during the session"), std::string::npos);
}

TEST_F(mbox_files, changed_prefix_aborts_and_deletes_nothing) {
  write_file(box_, sample(3));
  auto m = open_ok();
  ASSERT_TRUE(m);
  // Another program rewrote the file (same inode), shifting the messages.
  std::string changed = "From x Mon Jan  1 00:00:00 2024\nStatus: RO\n\nnew\n\n" + sample(3);
  {
    std::ofstream f(box_, std::ios::binary | std::ios::in | std::ios::out);
    f.write(changed.data(), static_cast<std::streamsize>(changed.size()));
  }
  const bool del[] = {false, true, false};
  auto s = m->commit(del);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::temporary);
  EXPECT_EQ(read_file(box_), changed);
  EXPECT_FALSE(journal_files_left());
}

TEST_F(mbox_files, reading_a_rewritten_file_fails_cleanly) {
  write_file(box_, sample(2));
  auto m = open_ok();
  ASSERT_TRUE(m);
  write_file(box_, std::string(50, 'x') + sample(2));  // same inode, shifted (O_TRUNC)
  auto r = m->open_message(1, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::temporary);
}

// Issue 10, defect 1: list posts with equal From_ lines and footers; mutt deletes message 3
// in place and mail arrives; message 4's From_ line is then where message 5's is.
TEST_F(mbox_files, equal_from_lines_and_footers_never_serve_or_delete_the_wrong_message) {
  std::vector<std::string> posts;
  for (int i = 1; i <= 5; ++i) {
    posts.push_back(list_post("Text " + std::to_string(i)));
  }
  const auto join = [&](const std::vector<int>& which) {
    std::string out;
    for (int k : which) {
      out += posts[static_cast<std::size_t>(k - 1)];
    }
    return out;
  };
  const std::string late = msg("late@example.org", "late", "new mail");
  for (bool retr_first : {true, false}) {
    SCOPED_TRACE(retr_first ? "RETR 4, DELE 4, QUIT" : "DELE 4, QUIT");
    write_file(box_, join({1, 2, 3, 4, 5}));
    auto m = open_ok();
    ASSERT_TRUE(m);
    ASSERT_EQ(m->messages().size(), 5u);
    write_file(box_, join({1, 2, 4, 5}));  // same inode, truncated and rewritten
    append_file(box_, late);
    if (retr_first) {
      auto r = m->open_message(3, true);
      ASSERT_FALSE(r.ok()) << "served: " << read_all(**r, 100);
      EXPECT_EQ(r.err().code(), errc::temporary);
      EXPECT_NE(r.err().message().find("log in again"), std::string::npos) << r.err().message();
    }
    const bool del[] = {false, false, false, true, false};
    auto c = m->commit(del);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.err().code(), errc::temporary);
    m.reset();
    EXPECT_EQ(read_file(box_), join({1, 2, 4, 5}) + late);
    EXPECT_FALSE(journal_files_left());
    const auto l = listing_now();
    ASSERT_EQ(l.contents.size(), 5u);
    EXPECT_NE(l.contents[2].find("Text 4"), std::string::npos);
    EXPECT_NE(l.contents[3].find("Text 5"), std::string::npos);
  }
}

TEST_F(mbox_files, commit_verifies_every_message_it_moves_or_removes) {
  write_file(box_, sample(4));
  auto m = open_ok();
  ASSERT_TRUE(m);
  // A same-length edit in message 4 (a MUA toggling a flag): the update would move it.
  std::string edited = sample(4);
  edited.replace(edited.find("Body of message 4"), 4, "BODY");
  {
    std::ofstream f(box_, std::ios::binary | std::ios::in | std::ios::out);
    f.write(edited.data(), static_cast<std::streamsize>(edited.size()));
  }
  const bool del[] = {false, true, false, false};
  auto c = m->commit(del);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.err().code(), errc::temporary);
  m.reset();
  EXPECT_EQ(read_file(box_), edited);
  // An edit before the first deleted message does not stop the update.
  auto again = open_ok();
  ASSERT_TRUE(again);
  std::string edited2 = edited;
  edited2.replace(edited2.find("Body of message 1"), 4, "BODY");
  {
    std::ofstream f(box_, std::ios::binary | std::ios::in | std::ios::out);
    f.write(edited2.data(), static_cast<std::streamsize>(edited2.size()));
  }
  auto ok = again->commit(del);
  ASSERT_TRUE(ok.ok()) << ok.err().message();
  again.reset();
  EXPECT_EQ(listing_now().contents.size(), 3u);
}

TEST_F(mbox_files, replaced_file_aborts_commit) {
  write_file(box_, sample(2));
  auto m = open_ok();
  ASSERT_TRUE(m);
  const std::string other = dir_.path() + "/other";
  write_file(other, sample(2));
  fs::rename(other, box_);
  const bool del[] = {true, false};
  auto s = m->commit(del);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::temporary);
  EXPECT_EQ(read_file(box_), sample(2));
}

TEST_F(mbox_files, owner_group_and_mode_preserved) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to chown";
  }
  write_file(box_, sample(3));
  // The owner must be the mail owner (the session's uid); the group may be any.
  ASSERT_EQ(::chown(box_.c_str(), ::geteuid(), 4343), 0);
  ASSERT_EQ(::chmod(box_.c_str(), 0640), 0);
  struct stat before {};
  ASSERT_EQ(::stat(box_.c_str(), &before), 0);
  auto m = open_ok();
  const bool del[] = {false, true, false};
  ASSERT_TRUE(m->commit(del).ok());
  struct stat after {};
  ASSERT_EQ(::stat(box_.c_str(), &after), 0);
  EXPECT_EQ(after.st_uid, ::geteuid());
  EXPECT_EQ(after.st_gid, 4343u);
  EXPECT_EQ(after.st_mode & 07777, 0640u);
  EXPECT_EQ(after.st_ino, before.st_ino);
}

TEST_F(mbox_files, stale_dotlock_is_broken_and_live_one_respected) {
  write_file(box_, sample(2));
  // A dotlock left by a dead process: broken at once.
  const pid_t dead = ::fork();
  if (dead == 0) {
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(dead, &status, 0);
  write_file(box_ + ".lock", std::to_string(dead) + "\n");
  auto m = open_ok();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->messages().size(), 2u);
  EXPECT_FALSE(fs::exists(box_ + ".lock"));
  m.reset();
  // A live one (ours, as an MDA in this process would hold it): open waits, then in_use.
  write_file(box_ + ".lock", std::to_string(::getpid()) + "\n");
  auto busy = open(box_, opts());
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.err().code(), errc::in_use);
  fs::remove(box_ + ".lock");
  // At commit: a temporary failure, nothing deleted, the lock left alone.
  m = open_ok();
  ASSERT_TRUE(m);
  write_file(box_ + ".lock", std::to_string(::getpid()) + "\n");
  const bool del[] = {true, true};
  auto s = m->commit(del);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::temporary);
  EXPECT_EQ(read_file(box_), sample(2));
  EXPECT_TRUE(fs::exists(box_ + ".lock"));
  fs::remove(box_ + ".lock");
}

TEST_F(mbox_files, dotlockfile_holding_the_lock_blocks_the_update) {
  const char* bin = "/usr/bin/dotlockfile";
  if (::access(bin, X_OK) != 0) {
    GTEST_SKIP() << "dotlockfile (liblockfile-bin) is not installed";
  }
  write_file(box_, sample(2));
  auto m = open_ok();
  ASSERT_TRUE(m);
  // "dotlockfile -l -p LOCK sleep 3": holds the lock (with its own pid) while sleep runs.
  const std::string lock = box_ + ".lock";
  std::vector<const char*> argv = {bin, "-l", "-r", "0", "-p", lock.c_str(), "sleep", "3", nullptr};
  pid_t pid = 0;
  ASSERT_EQ(
      ::posix_spawn(&pid, bin, nullptr, nullptr, const_cast<char* const*>(argv.data()), environ),
      0);
  for (int i = 0; i < 2000 && !fs::exists(lock); ++i) {
    ::usleep(1000);
  }
  ASSERT_TRUE(fs::exists(lock));
  const bool del[] = {true, false};
  auto s = m->commit(del);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::temporary);
  EXPECT_EQ(read_file(box_), sample(2));
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_FALSE(fs::exists(lock));
}

TEST_F(mbox_files, full_disk_leaves_the_original_intact) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to mount a tmpfs";
  }
  const std::string mnt = dir_.path() + "/small";
  fs::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here";
  }
  struct unmounter {
    std::string path;
    ~unmounter() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  box_ = mnt + "/user";
  std::string data;
  for (int i = 0; i < 10; ++i) {
    data +=
        msg("s" + std::to_string(i), "big" + std::to_string(i), std::string(3800, 'a' + i)) + "\n";
  }
  write_file(box_, data);
  ASSERT_EQ(read_file(box_), data);
  auto m = open_ok();
  ASSERT_TRUE(m);
  std::unique_ptr<bool[]> del(new bool[10]());
  del[0] = true;
  auto s = m->commit(std::span<const bool>(del.get(), 10));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err().code(), errc::temporary);
  EXPECT_NE(s.err().message().find("No space"), std::string::npos) << s.err().message();
  m.reset();
  EXPECT_EQ(read_file(box_), data);
  for (const auto& e : fs::directory_iterator(mnt)) {
    EXPECT_EQ(e.path().filename().string().find("journal"), std::string::npos) << e.path();
  }
  EXPECT_FALSE(fs::exists(box_ + ".lock"));
  const auto l = listing_now();
  EXPECT_EQ(l.contents.size(), 10u);
}

TEST_F(mbox_files, damaged_journal_is_set_aside_and_the_mailbox_served_as_it_is) {
  write_file(box_, sample(2));
  write_file(dir_.path() + "/.user.postern-journal", std::string(2000, 'z'));
  ::chmod((dir_.path() + "/.user.postern-journal").c_str(), 0600);
  const auto l = listing_now();
  EXPECT_EQ(l.contents.size(), 2u);
  EXPECT_EQ(read_file(box_), sample(2));
  EXPECT_FALSE(fs::exists(dir_.path() + "/.user.postern-journal"));
}

TEST_F(mbox_files, leftover_half_written_journals_are_removed) {
  write_file(box_, sample(2));
  write_file(dir_.path() + "/.user.postern-journal.new", "half");
  write_file(dir_.path() + "/.user.postern-journal.trunc", "");
  const auto l = listing_now();
  EXPECT_EQ(l.contents.size(), 2u);
  EXPECT_FALSE(journal_files_left());
}

TEST_F(mbox_files, content_length_and_quoting_options_on_files) {
  const std::string body = "x\n\nFrom inner\n>From quoted\n";
  const std::string data =
      "From a Mon Jan  1 00:00:00 2024\nContent-Length: " + std::to_string(body.size()) + "\n\n" +
      body + "\n" + sample(1);
  write_file(box_, data);
  options o = opts();
  o.honour_content_length = true;
  {
    auto m = open_ok(o);
    ASSERT_TRUE(m);
    const auto l = list_all(*m);
    ASSERT_EQ(l.contents.size(), 2u);
    EXPECT_NE(l.contents[0].find("\n>From quoted\n"), std::string::npos);  // mboxcl2: as stored
  }
  o.honour_content_length = false;
  o.from_quoting = quoting::none;
  {
    auto m = open_ok(o);
    ASSERT_TRUE(m);
    const auto l = list_all(*m);
    ASSERT_EQ(l.contents.size(), 3u);
    EXPECT_NE(l.contents[2].find("\n>From quoted line\n"), std::string::npos);
  }
}

TEST_F(mbox_files, large_messages_stream_in_bounded_chunks) {
  std::string big = "From a Mon Jan  1 00:00:00 2024\nSubject: big\n\n";
  for (int i = 0; i < 20000; ++i) {
    big += (i % 7 == 0 ? ">From line " : "line ") + std::to_string(i) + (i % 3 ? "\r\n" : "\n");
  }
  big += std::string(300000, 'z') + "\n\n" + sample(1);
  write_file(box_, big);
  auto m = open_ok();
  ASSERT_TRUE(m);
  const auto l = list_all(*m);  // checks every size against the encoder
  ASSERT_EQ(l.contents.size(), 2u);
}

// A crashed update whose spool was then replaced, removed or rewritten by someone else must
// not be applied: its journal is set aside and the spool served as it is.
TEST_F(mbox_files, obsolete_journals_are_set_aside) {
  const std::string original = sample(4);
  const std::vector<bool> del = {false, true, false, false};
  for (const std::string how : {"replaced", "removed", "prefix changed"}) {
    SCOPED_TRACE(how);
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      fs::remove(e.path());
    }
    write_file(box_, original);
    set_copy_buffer(64);
    const pid_t pid = ::fork();
    if (pid == 0) {
      set_fault(12);  // past the commit point, inside the rewrite
      auto m = open(box_, opts());
      std::unique_ptr<bool[]> d(new bool[4]());
      d[1] = true;
      ::_exit(m.ok() && (*m)->commit(std::span<const bool>(d.get(), 4)).ok() ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), fault_exit_code_for_test);
    ASSERT_TRUE(fs::exists(dir_.path() + "/.user.postern-journal"));
    std::string now;
    if (how == "replaced") {
      write_file(dir_.path() + "/new", sample(2));
      fs::rename(dir_.path() + "/new", box_);
      now = sample(2);
    } else if (how == "removed") {
      fs::remove(box_);
    } else {
      now = "From z Mon Jan  1 00:00:00 2024\n\nprepended\n\n" + read_file(box_);
      write_file(box_, now);
    }
    auto m = open_ok();
    ASSERT_TRUE(m);
    if (how == "removed") {
      EXPECT_TRUE(m->messages().empty());
    } else {
      EXPECT_EQ(read_file(box_), now);
    }
    bool aside = false;
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      const std::string name = e.path().filename().string();
      aside = aside || name.starts_with(".user.postern-journal.obsolete-");
      EXPECT_NE(name, ".user.postern-journal");
    }
    EXPECT_TRUE(aside);
  }
}

// ---------------------------------------------------------------------------------------
// Crash safety: a forked child runs the commit and is killed (_exit) at fault point N, for
// every N; the next open must show either the old or the new state, every undeleted message
// exactly once.

class mbox_crash : public mbox_files {
 protected:
  // Runs `work` in a child with a fault at `step`; true if the child crashed there.
  bool crashed_at(int step, const std::function<int()>& work) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      set_fault(step);
      ::_exit(work());
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status));
    const int code = WEXITSTATUS(status);
    EXPECT_TRUE(code == 0 || code == fault_exit_code_for_test) << "child exit " << code;
    return code == fault_exit_code_for_test;
  }

  int commit_child(const std::vector<bool>& del) {
    auto m = open(box_, opts());
    if (!m.ok()) {
      return 10;
    }
    std::unique_ptr<bool[]> d(new bool[del.size()]);
    std::copy(del.begin(), del.end(), d.get());
    return (*m)->commit(std::span<const bool>(d.get(), del.size())).ok() ? 0 : 11;
  }

  int open_child() { return open(box_, opts()).ok() ? 0 : 12; }

  static std::multiset<std::string> as_set(const std::vector<std::string>& v) {
    return {v.begin(), v.end()};
  }
};

TEST_F(mbox_crash, crash_at_every_step_of_commit) {
  set_copy_buffer(256);
  const std::string original = "prefix junk\n\n" + sample(6);
  const std::vector<bool> del = {false, true, false, true, false, false};
  write_file(box_, original);
  const auto old_state = listing_now();
  ASSERT_EQ(old_state.contents.size(), 6u);
  std::vector<std::string> new_contents;
  for (std::size_t i = 0; i < del.size(); ++i) {
    if (!del[i]) {
      new_contents.push_back(old_state.contents[i]);
    }
  }
  int steps = 0;
  bool saw_old = false;
  bool saw_new = false;
  for (int step = 1; step < 500; ++step) {
    write_file(box_, original);
    const bool crashed = crashed_at(step, [&] { return commit_child(del); });
    const auto now = listing_now();
    EXPECT_FALSE(journal_files_left()) << "step " << step;
    if (now.contents == old_state.contents) {
      saw_old = true;
      EXPECT_EQ(read_file(box_), original) << "step " << step;
    } else {
      saw_new = true;
      EXPECT_EQ(now.contents, new_contents) << "step " << step;
    }
    if (!crashed) {
      steps = step;
      break;
    }
  }
  EXPECT_GT(steps, 15);
  EXPECT_TRUE(saw_old);
  EXPECT_TRUE(saw_new);
}

TEST_F(mbox_crash, crash_then_mail_delivered_before_recovery) {
  set_copy_buffer(256);
  const std::string original = sample(5);
  const std::vector<bool> del = {true, false, false, true, false};
  const std::string late = msg("late@example.org", "late", "delivered after the crash") + "\n";
  write_file(box_, original);
  const auto old_state = listing_now();
  std::vector<std::string> new_contents;
  for (std::size_t i = 0; i < del.size(); ++i) {
    if (!del[i]) {
      new_contents.push_back(old_state.contents[i]);
    }
  }
  int step = 1;
  for (; step < 500; ++step) {
    write_file(box_, original);
    const bool crashed = crashed_at(step, [&] { return commit_child(del); });
    // An MDA appends, having broken the dead child's dotlock.
    append_file(box_, late);
    const auto now = listing_now();
    ASSERT_FALSE(now.contents.empty()) << "step " << step;
    EXPECT_EQ(std::count_if(now.contents.begin(), now.contents.end(),
                            [](const std::string& c) {
                              return c.find("delivered after the crash") != std::string::npos;
                            }),
              1)
        << "step " << step;
    std::vector<std::string> without_late(now.contents.begin(), now.contents.end() - 1);
    EXPECT_TRUE(without_late == old_state.contents || without_late == new_contents)
        << "step " << step;
    EXPECT_FALSE(journal_files_left()) << "step " << step;
    if (!crashed) {
      break;
    }
  }
  EXPECT_GT(step, 15);
}

// A delivery agent that ignores our locks appends at every step of the update: its mail
// must survive (the truncation folds it in first).
TEST_F(mbox_crash, lockless_append_at_every_step) {
  set_copy_buffer(256);
  const std::string original = sample(5);
  const std::vector<bool> del = {false, true, false, true, false};
  const std::string late = msg("rude@example.org", "rude", "appended without locking") + "\n";
  write_file(box_, original);
  const auto old_state = listing_now();
  std::vector<std::string> new_contents;
  for (std::size_t i = 0; i < del.size(); ++i) {
    if (!del[i]) {
      new_contents.push_back(old_state.contents[i]);
    }
  }
  int step = 1;
  for (; step < 500; ++step) {
    write_file(box_, original);
    bool appended = false;
    auto m = open_ok();
    ASSERT_TRUE(m);
    set_fault(step, [&] {
      append_file(box_, late);
      appended = true;
    });
    std::unique_ptr<bool[]> d(new bool[del.size()]);
    std::copy(del.begin(), del.end(), d.get());
    ASSERT_TRUE(m->commit(std::span<const bool>(d.get(), del.size())).ok()) << "step " << step;
    set_fault(0);
    m.reset();
    if (!appended) {
      break;  // past the last fault point
    }
    const auto now = listing_now();
    ASSERT_FALSE(now.contents.empty());
    EXPECT_NE(now.contents.back().find("appended without locking"), std::string::npos)
        << "step " << step;
    EXPECT_EQ(std::vector<std::string>(now.contents.begin(), now.contents.end() - 1), new_contents)
        << "step " << step;
    EXPECT_FALSE(journal_files_left());
  }
  EXPECT_GT(step, 15);
}

TEST_F(mbox_crash, crash_during_recovery_too) {
  set_copy_buffer(512);
  const std::string original = sample(4);
  const std::vector<bool> del = {false, true, false, false};
  const std::string late = msg("late@example.org", "late", "delivered between crashes") + "\n";
  write_file(box_, original);
  const auto old_state = listing_now();
  std::vector<std::string> new_contents;
  for (std::size_t i = 0; i < del.size(); ++i) {
    if (!del[i]) {
      new_contents.push_back(old_state.contents[i]);
    }
  }
  int pairs = 0;
  for (int first = 1; first < 200; ++first) {
    write_file(box_, original);
    const bool crashed = crashed_at(first, [&] { return commit_child(del); });
    if (!crashed) {
      break;
    }
    const std::string after_first = read_file(box_);
    const bool journal = fs::exists(dir_.path() + "/.user.postern-journal");
    if (!journal) {
      continue;  // nothing for recovery to do
    }
    for (int second = 1; second < 200; ++second) {
      write_file(box_, after_first);
      write_file(dir_.path() + "/journal-backup",
                 read_file(dir_.path() + "/.user.postern-journal"));
      const bool with_late = second % 2 == 0;
      if (with_late) {
        append_file(box_, late);
      }
      const bool crashed2 = crashed_at(second, [&] { return open_child(); });
      ++pairs;
      const auto now = listing_now();
      std::vector<std::string> got = now.contents;
      if (with_late) {
        ASSERT_FALSE(got.empty());
        EXPECT_NE(got.back().find("delivered between crashes"), std::string::npos)
            << first << "/" << second;
        got.pop_back();
      }
      EXPECT_TRUE(got == old_state.contents || got == new_contents) << first << "/" << second;
      EXPECT_FALSE(journal_files_left()) << first << "/" << second;
      // Restore the journal for the next recovery crash point.
      fs::rename(dir_.path() + "/journal-backup", dir_.path() + "/.user.postern-journal");
      if (!crashed2) {
        fs::remove(dir_.path() + "/.user.postern-journal");
        break;
      }
    }
  }
  EXPECT_GT(pairs, 20);
}

// ---------------------------------------------------------------------------------------
// Fixtures from tests/fixtures/mbox: each is listed, read and sized consistently.

fs::path fixture_dir() { return test::source_path("tests/fixtures/mbox"); }

TEST_F(mbox_files, large_message_is_mapped_unless_it_needs_unquoting) {
  std::string body;
  for (int i = 0; body.size() < 2 * 1024 * 1024; ++i) {
    body += (i % 7 == 0 ? ".dot " : "text ") + std::to_string(i) + "\n";
  }
  body += ">From quoted\n" + body;
  write_file(box_, msg("a@example.org", "one", "x") + msg("b@example.org", "big", body));
  for (const quoting q : {quoting::none, opts().from_quoting}) {
    options o = opts();
    o.from_quoting = q;
    auto m = open_ok(o);
    ASSERT_TRUE(m);
    ASSERT_EQ(m->messages().size(), 2U);
    const listing want = list_all(*m);
    auto r = m->open_message(1, false);
    ASSERT_TRUE(r.ok());
    std::string got(4096, '\0');
    auto n = (*r)->read(std::span<char>(got.data(), got.size()));
    ASSERT_TRUE(n.ok());
    got.resize(*n);
    auto view = (*r)->map_next(65536);
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(view->has_value(), q == quoting::none);
    if (view->has_value()) {
      while (!(*view)->empty()) {
        got.append((*view)->data(), (*view)->size());
        view = (*r)->map_next(65536);
        ASSERT_TRUE(view.ok() && view->has_value());
      }
      std::vector<char> buf(16);
      auto rest = (*r)->read(buf);  // the mapping took the rest
      ASSERT_TRUE(rest.ok());
      EXPECT_EQ(*rest, 0U);
    } else {
      got += read_all(**r, 65536);
    }
    EXPECT_TRUE(got == want.contents.at(1));
  }
}

TEST_F(mbox_files, fixtures) {
  const fs::path dir = fixture_dir();
  if (!fs::exists(dir)) {
    GTEST_SKIP() << "fixtures not found at " << dir;
  }
  const std::map<std::string, std::size_t> want = {
      {"debian-spool.mbox", 3},     {"crlf.mbox", 2},   {"garbage-prefix.mbox", 2},
      {"no-final-newline.mbox", 2}, {"x-uidl.mbox", 2}, {"unquoted-from-in-body.mbox", 2},
      {"content-length.mbox", 3},   {"empty.mbox", 0},
  };
  for (const auto& [name, count] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(fs::exists(dir / name));
    fs::copy_file(dir / name, box_, fs::copy_options::overwrite_existing);
    const auto l = listing_now();
    EXPECT_EQ(l.contents.size(), count);
  }
}

}  // namespace
}  // namespace postern::store::mbox

// ---------------------------------------------------------------------------------------
// Recovery that cannot destroy, and side files out of other users' reach.

namespace postern::store::mbox {
namespace {

// What mutt does to the file as it finds it: deletes the first message with `gone`'s
// subject in place and adds a Status header to the first with `flagged`'s.
std::string mutt_edit(std::string data, const std::string& gone, const std::string& flagged) {
  const std::size_t at = data.find("Subject: " + gone + "\n");
  if (at != std::string::npos) {
    const std::size_t begin = data.rfind("From ", at);
    std::size_t end = data.find("\nFrom ", at);
    end = end == std::string::npos ? data.size() : end + 1;
    data.erase(begin, end - begin);
  }
  const std::string subject = "Subject: " + flagged + "\n";
  const std::size_t f = data.find(subject);
  if (f != std::string::npos) {
    data.insert(f + subject.size(), "Status: RO\n");
  }
  return data;
}

bool journal_pending(const std::string& dir) { return fs::exists(dir + "/.user.postern-journal"); }

int obsolete_journals(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    n += e.path().filename().string().starts_with(".user.postern-journal.obsolete-") ? 1 : 0;
  }
  return n;
}

// Defect 3: a crash mid-update, then mutt deletes a message in place and a delivery appends
// a larger one before the next login. Whatever the step, recovery must leave exactly what
// mutt and the delivery wrote: the deleted message stays deleted, the new one whole, the
// Status header kept, nothing appended.
TEST_F(mbox_crash, foreign_edits_after_a_crash_are_never_overwritten) {
  set_copy_buffer(256);
  std::string original;
  for (int i = 1; i <= 6; ++i) {
    original += msg("list@example.org", "m" + std::to_string(i),
                    std::string(600, static_cast<char>('a' + i)) + "\nfooter") +
                "\n";
  }
  const std::vector<bool> del = {false, true, false, false, false, false};
  const std::string late =
      msg("late@example.org", "late", "delivered after the crash " + std::string(3000, 'L')) + "\n";
  int pending = 0;
  int step = 1;
  for (; step < 2000; ++step) {
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      fs::remove(e.path());
    }
    write_file(box_, original);
    const bool crashed = crashed_at(step, [&] { return commit_child(del); });
    const bool was_pending = journal_pending(dir_.path());
    pending += was_pending ? 1 : 0;
    const std::string edited = mutt_edit(read_file(box_), "m4", "m5") + late;
    write_file(box_, edited);  // in place: same inode
    const auto now = listing_now();
    EXPECT_EQ(read_file(box_), edited) << "step " << step;
    EXPECT_FALSE(journal_pending(dir_.path())) << "step " << step;
    if (was_pending) {
      EXPECT_EQ(obsolete_journals(dir_.path()), 1) << "step " << step;
    }
    ASSERT_FALSE(now.contents.empty()) << "step " << step;
    EXPECT_NE(now.contents.back().find("delivered after the crash"), std::string::npos);
    if (!crashed) {
      break;
    }
  }
  EXPECT_GT(step, 15);
  EXPECT_GT(pending, 5);
}

// Without foreign edits, every crash point still completes (the cell checks accept a
// partly rewritten file), also when the rewrite was cut inside a 4 KiB page.
TEST_F(mbox_crash, partly_rewritten_pages_are_recognised) {
  set_copy_buffer(1000);  // not a multiple of the 4 KiB cells
  std::string original;
  for (int i = 1; i <= 8; ++i) {
    original += msg("s@example.org", "p" + std::to_string(i), std::string(3000, 'x')) + "\n";
  }
  const std::vector<bool> del = {true, false, false, false, false, false, false, false};
  write_file(box_, original);
  const auto old_state = listing_now();
  std::vector<std::string> new_contents(old_state.contents.begin() + 1, old_state.contents.end());
  int step = 1;
  for (; step < 2000; ++step) {
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      fs::remove(e.path());
    }
    write_file(box_, original);
    const bool crashed = crashed_at(step, [&] { return commit_child(del); });
    const auto now = listing_now();
    EXPECT_TRUE(now.contents == old_state.contents || now.contents == new_contents)
        << "step " << step;
    EXPECT_EQ(obsolete_journals(dir_.path()), 0) << "step " << step;
    if (!crashed) {
      break;
    }
  }
  EXPECT_GT(step, 20);
}

// Journals nobody may trust: never followed, never blocking, set aside; the mailbox is
// served as it is.
TEST_F(mbox_files, untrusted_journals_are_set_aside) {
  const std::string journal = dir_.path() + "/.user.postern-journal";
  const std::string target = dir_.path() + "/target";
  for (const std::string kind : {"fifo", "symlink", "world-writable", "other owner", "forged"}) {
    SCOPED_TRACE(kind);
    if (kind == "other owner" && ::geteuid() != 0) {
      continue;
    }
    for (const auto& e : fs::directory_iterator(dir_.path())) {
      fs::remove(e.path());
    }
    write_file(box_, sample(3));
    write_file(target, sample(1));
    if (kind == "fifo") {
      ASSERT_EQ(::mkfifo(journal.c_str(), 0600), 0);
    } else if (kind == "symlink") {
      fs::create_symlink(target, journal);
    } else {
      // A well-formed journal for another file: start 0, payload replacing everything.
      journal_header h;
      h.st = journal_header::state::redo;
      struct stat st {};
      ::stat(box_.c_str(), &st);
      h.ino = st.st_ino;
      h.start = 0;
      h.old_size = static_cast<std::uint64_t>(st.st_size);
      const std::string payload = "From evil Mon Jan  1 00:00:00 2024\n\nforged\n";
      h.payload_size = payload.size();
      h.new_size = payload.size();
      h.prefix_digest = std::string(64, '0');
      h.gap_digest = std::string(64, '0');
      h.payload_digest = std::string(64, '0');
      h.cells_digest = std::string(64, '0');
      auto text = format_journal_header(h);
      ASSERT_TRUE(text.ok());
      write_file(journal, *text + std::string(journal_header_size - text->size(), '\0') + payload);
      ::chmod(journal.c_str(), kind == "world-writable" ? 0666 : 0600);
      if (kind == "other owner") {
        ASSERT_EQ(::chown(journal.c_str(), 65534, 65534), 0);
      }
    }
    const auto l = listing_now();
    EXPECT_EQ(l.contents.size(), 3u);
    EXPECT_EQ(read_file(box_), sample(3));
    EXPECT_EQ(read_file(target), sample(1));
    EXPECT_FALSE(fs::exists(journal) || fs::is_symlink(journal));
    EXPECT_EQ(obsolete_journals(dir_.path()), 1);
  }
}

// A spool whose directory others can write: its side files go to the state directory; the
// files other users plant beside the spool are neither read nor obeyed.
TEST_F(mbox_files, shared_directory_keeps_state_elsewhere) {
  const std::string spool_dir = dir_.path() + "/spool";
  fs::create_directory(spool_dir);
  ASSERT_EQ(::chmod(spool_dir.c_str(), 01777), 0);
  const std::string box = spool_dir + "/user";
  write_file(box, sample(3));
  options o = opts();
  auto refused = open(box, o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.err().code(), errc::permanent);
  EXPECT_NE(refused.err().message().find("mbox_state_dir"), std::string::npos)
      << refused.err().message();

  // Planted: a forged journal, a FIFO index, a session lock someone holds.
  write_file(spool_dir + "/.user.postern-journal", std::string(3000, 'z'));
  ASSERT_EQ(::mkfifo((spool_dir + "/.user.postern-index").c_str(), 0666), 0);
  write_file(spool_dir + "/.user.postern-session", "");
  unique_fd held(::open((spool_dir + "/.user.postern-session").c_str(), O_RDWR));
  ASSERT_EQ(::flock(held.get(), LOCK_EX), 0);
  o.state_dir = dir_.path() + "/state";
  {
    auto m = open(box, o);
    ASSERT_TRUE(m.ok()) << m.err().message();
    const auto l = list_all(**m);
    EXPECT_EQ(l.contents.size(), 3u);
    std::unique_ptr<bool[]> d(new bool[3]());
    d[0] = true;
    ASSERT_TRUE((*m)->commit(std::span<const bool>(d.get(), 3)).ok());
  }
  held.reset();
  struct stat st {};
  ASSERT_EQ(::stat(o.state_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_TRUE(fs::exists(o.state_dir + "/.user.postern-session"));
  EXPECT_EQ(read_file(spool_dir + "/.user.postern-journal"), std::string(3000, 'z'));
  auto again = open(box, o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->messages().size(), 2u);

  // A state directory others can write is refused.
  const std::string loose = dir_.path() + "/loose";
  fs::create_directory(loose);
  ::chmod(loose.c_str(), 0777);
  again->reset();
  o.state_dir = loose;
  auto bad = open(box, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), errc::permanent);
}

TEST_F(mbox_files, spool_of_another_owner_is_refused) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to give the spool to another user";
  }
  write_file(box_, sample(2));
  ASSERT_EQ(::chown(box_.c_str(), 65534, 65534), 0);
  auto m = open(box_, opts());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.err().code(), errc::permanent);
  EXPECT_NE(m.err().message().find("uid 65534"), std::string::npos) << m.err().message();
}

// recover_pending completes an interrupted update without a session.
// Durability order (docs/mbox.md): the rewritten bytes are synced into the spool before the
// trunc journal that records them as in place is renamed over the redo journal; otherwise a
// power cut after the rename could leave a journal that no longer redoes a half-written
// spool. Returns how many such renames `trace` holds; fails for one without that sync.
ino_t file_ino(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

int expect_spool_synced_before_trunc_rename(const std::vector<test::sync_event>& trace, ino_t spool,
                                            const side_files& names, const std::string& what) {
  int renames = 0;
  bool synced = false;  // since the trace began or the last rename
  for (const auto& e : trace) {
    if (e.what == test::sync_event::kind::fsync) {
      synced = synced || e.ino == spool;
      continue;
    }
    if (e.from == names.journal_trunc && e.to == names.journal) {
      ++renames;
      EXPECT_TRUE(synced) << what << ": trunc journal renamed before the spool was synced";
    }
    synced = false;
  }
  return renames;
}

TEST_F(mbox_crash, commit_syncs_the_spool_before_the_trunc_journal) {
  write_file(box_, sample(5));
  auto m = open_ok();
  ASSERT_TRUE(m);
  const bool del[] = {false, true, false, true, false};
  test::sync_trace_start();
  const bool ok = m->commit(del).ok();
  const auto trace = test::sync_trace_stop();
  ASSERT_TRUE(ok);
  EXPECT_EQ(expect_spool_synced_before_trunc_rename(trace, file_ino(box_), side_files_for("user"),
                                                    "commit"),
            1);
}

// The same order when recovery replays a redo journal left by a crash at any step.
TEST_F(mbox_crash, replay_syncs_the_spool_before_the_trunc_journal) {
  set_copy_buffer(64);
  const std::string original = sample(4);
  int replays = 0;
  for (int step = 1; step < 200; ++step) {
    write_file(box_, original);
    if (!crashed_at(step, [&] { return commit_child({false, true, false, false}); })) {
      break;
    }
    test::sync_trace_start();
    auto r = recover_pending(box_, opts());
    const auto trace = test::sync_trace_stop();
    ASSERT_TRUE(r.ok()) << r.err().message();
    replays += expect_spool_synced_before_trunc_rename(
        trace, file_ino(box_), side_files_for("user"), "replay after step " + std::to_string(step));
  }
  EXPECT_GT(replays, 0) << "no crash left a redo journal to replay";
}

TEST_F(mbox_crash, recover_pending_completes_an_update) {
  set_copy_buffer(64);
  write_file(box_, sample(4));
  const auto old_state = listing_now();
  ASSERT_TRUE(crashed_at(14, [&] { return commit_child({false, true, false, false}); }));
  ASSERT_TRUE(journal_pending(dir_.path()));
  auto r = recover_pending(box_, opts());
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->outcome, recovery_outcome::completed);
  EXPECT_FALSE(journal_pending(dir_.path()));
  const auto now = listing_now();
  ASSERT_EQ(now.contents.size(), 3u);
  EXPECT_EQ(now.contents[1], old_state.contents[2]);
  auto again = recover_pending(box_, opts());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->outcome, recovery_outcome::nothing);
}

}  // namespace
}  // namespace postern::store::mbox
