#include "store/maildir/maildir.hpp"

#include "common/line_ends.hpp"
#include "common/test_files.hpp"
#include "store/maildir/index.hpp"

#include <gtest/gtest.h>

#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace postern::store::maildir {
namespace {

namespace fs = std::filesystem;
using namespace std::literals;

// ---------------------------------------------------------------------------------------
// I/O-free helpers.

TEST(parse_name, table) {
  struct row {
    std::string_view name;
    std::string_view base;
    std::optional<std::string_view> info;
    std::optional<std::uint64_t> timestamp;
    std::optional<std::uint64_t> wire;
    std::optional<std::uint64_t> physical;
  };
  const std::vector<row> rows = {
      {"1700000000.M1P2.host", "1700000000.M1P2.host", std::nullopt, 1700000000, {}, {}},
      {"1700000000.M1P2.host:2,S", "1700000000.M1P2.host", "2,S", 1700000000, {}, {}},
      {"1700000000.M1P2.host,S=120,W=124:2,", "1700000000.M1P2.host,S=120,W=124", "2,", 1700000000,
       124, 120},
      {"1.x,W=5,S=4", "1.x,W=5,S=4", std::nullopt, 1, 5, 4},
      {"1.x,W=0", "1.x,W=0", std::nullopt, 1, 0, {}},
      {"1.x,W=12a,S=10", "1.x,W=12a,S=10", std::nullopt, 1, {}, 10},  // malformed W
      {"1.x,W=,S=10", "1.x,W=,S=10", std::nullopt, 1, {}, 10},        // empty W
      {"1.x,W=+5", "1.x,W=+5", std::nullopt, 1, {}, {}},              // sign
      {"1.x,W= 5", "1.x,W= 5", std::nullopt, 1, {}, {}},              // space
      {"1.x,W=5,W=5", "1.x,W=5,W=5", std::nullopt, 1, {}, {}},        // repeated
      {"1.x,W=99999999999999999999", "1.x,W=99999999999999999999", std::nullopt, 1, {}, {}},
      {"1.x,w=5", "1.x,w=5", std::nullopt, 1, {}, {}},  // case matters
      {"1.x,XW=5", "1.x,XW=5", std::nullopt, 1, {}, {}},
      {"1.x:2,W=5", "1.x", "2,W=5", 1, {}, {}},  // fields are in the base
      {"abc.def", "abc.def", std::nullopt, {}, {}, {}},
      {"123", "123", std::nullopt, {}, {}, {}},  // no "SECONDS."
      {".123.x", ".123.x", std::nullopt, {}, {}, {}},
      {"12a.x", "12a.x", std::nullopt, {}, {}, {}},
      {"-1.x", "-1.x", std::nullopt, {}, {}, {}},
      {":2,S", "", "2,S", {}, {}, {}},
      {"1.x:", "1.x", "", 1, {}, {}},
      {"", "", std::nullopt, {}, {}, {}},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.name));
    const name_parts p = parse_name(r.name);
    EXPECT_EQ(p.base, r.base);
    EXPECT_EQ(p.info, r.info);
    EXPECT_EQ(p.timestamp, r.timestamp);
    EXPECT_EQ(p.wire_size, r.wire);
    EXPECT_EQ(p.physical_size, r.physical);
  }
}

TEST(cur_name, table) {
  struct row {
    std::string_view name;
    bool seen;
    std::string_view want;
  };
  const std::vector<row> rows = {
      {"1.x", false, "1.x:2,"},
      {"1.x", true, "1.x:2,S"},
      {"1.x,S=3,W=4", true, "1.x,S=3,W=4:2,S"},
      {"1.x:2,", false, "1.x:2,"},
      {"1.x:2,", true, "1.x:2,S"},
      {"1.x:2,F", true, "1.x:2,FS"},
      {"1.x:2,T", true, "1.x:2,ST"},
      {"1.x:2,DFRT", true, "1.x:2,DFRST"},
      {"1.x:2,S", true, "1.x:2,S"},
      {"1.x:2,RS", true, "1.x:2,RS"},
      {"1.x:2,a", true, "1.x:2,Sa"},     // keywords (lower case) sort after
      {"1.x:2,TF", false, "1.x:2,TF"},   // untouched when nothing is added
      {"1.x:2,TFF", true, "1.x:2,FST"},  // rewritten sorted, without repeats
      {"1.x:1,foo", true, "1.x:1,foo"},  // unknown info semantics: left alone
      {"1.x:", true, "1.x:"},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(std::string(r.name) + (r.seen ? " seen" : ""));
    EXPECT_EQ(cur_name(r.name, r.seen), r.want);
  }
}

TEST(uidl_for_base, table) {
  EXPECT_EQ(*uidl_for_base("1700000000.M1P2.host,S=1,W=2"), "1700000000.M1P2.host,S=1,W=2");
  EXPECT_EQ(*uidl_for_base("!~"), "!~");
  EXPECT_EQ(*uidl_for_base(std::string(70, 'x')), std::string(70, 'x'));
  // Hashed: too long, a space, a non-ASCII byte, empty, a control byte.
  EXPECT_EQ(*uidl_for_base(std::string(71, '0')), "e82836a3ffb6686ac7273db7c9580dfee35b7589");
  EXPECT_EQ(*uidl_for_base("hello world"), "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed");
  EXPECT_EQ(*uidl_for_base("caf\xc3\xa9.1"), "2aea54355e333193341242ddf4e3a61219f7f0df");
  EXPECT_EQ(*uidl_for_base(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  EXPECT_EQ(uidl_for_base("a\x7f").value().size(), 40U);
}

TEST(uidl_for_base, every_byte_at_every_position) {
  // 40 octets: two 16-byte blocks and a tail, so every position of the block check and of
  // the byte loop sees every byte value.
  for (std::size_t pos = 0; pos < 40; ++pos) {
    for (int b = 0; b < 256; ++b) {
      std::string base(40, 'x');
      base[pos] = static_cast<char>(b);
      const bool legal = b >= 0x21 && b <= 0x7E;
      const auto uidl = uidl_for_base(base);
      ASSERT_TRUE(uidl.ok());
      ASSERT_EQ(*uidl == base, legal) << "byte " << b << " at " << pos;
    }
  }
}

// ---------------------------------------------------------------------------------------
// On a real file system.

class maildir_test : public testing::Test {
 protected:
  // The temp_dir undoes chmods made by tests when it removes the tree.
  void SetUp() override { md_ = root_ / "Maildir"; }

  void make_maildir() {
    for (const char* sub : {"cur", "new", "tmp"}) {
      fs::create_directories(md_ / sub);
    }
  }

  void put(const std::string& rel, std::string_view content) {
    make_maildir();
    std::ofstream out(md_ / rel, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    ASSERT_TRUE(out.good()) << rel;
  }

  std::unique_ptr<maildrop> must_open() {
    auto r = open(md_.string());
    EXPECT_TRUE(r.ok()) << r.err().message();
    if (!r.ok()) {
      return nullptr;
    }
    return std::move(r).value();
  }

  std::vector<std::string> names_in(const char* sub) const {
    std::vector<std::string> out;
    for (const auto& ent : fs::directory_iterator(md_ / sub)) {
      out.push_back(ent.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  static std::string read_all(message_reader& reader, std::size_t chunk = 7) {
    std::string out;
    std::vector<char> buf(chunk);
    for (;;) {
      auto n = reader.read(buf);
      EXPECT_TRUE(n.ok()) << n.err().message();
      if (!n.ok() || *n == 0) {
        return out;
      }
      out.append(buf.data(), *n);
    }
  }

  static std::vector<std::string> uidls(const maildrop& drop) {
    std::vector<std::string> out;
    for (const auto& m : drop.messages()) {
      out.push_back(m.uidl);
    }
    return out;
  }

  static std::vector<bool> marks(std::size_t n, std::initializer_list<std::size_t> deleted) {
    std::vector<bool> out(n, false);
    for (std::size_t i : deleted) {
      out.at(i) = true;
    }
    return out;
  }

  static result<commit_stats> commit(maildrop& drop, const std::vector<bool>& deleted) {
    // std::vector<bool> is packed: hand the maildrop a real array of bool.
    const std::unique_ptr<bool[]> flags(new bool[deleted.size() + 1]);
    std::copy(deleted.begin(), deleted.end(), flags.get());
    return drop.commit(std::span<const bool>(flags.get(), deleted.size()));
  }

  // Runs `fn` without root's power to ignore permissions: in a child process as nobody when
  // the tests run as root (the temp tree is handed to nobody first). True if `fn` did.
  bool run_unprivileged(const std::function<bool()>& fn) {
    if (::geteuid() != 0) {
      return fn();
    }
    constexpr uid_t nobody = 65534;
    for (const auto& ent : fs::recursive_directory_iterator(root_)) {
      EXPECT_EQ(::lchown(ent.path().c_str(), nobody, nobody), 0);
    }
    EXPECT_EQ(::chown(root_.c_str(), nobody, nobody), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(nobody) != 0 || ::setuid(nobody) != 0) {
        ::_exit(2);
      }
      ::_exit(fn() ? 0 : 1);
    }
    int status = 0;
    EXPECT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  test::temp_dir tmp_{"postern-maildir-test"};
  fs::path root_{tmp_.path()};
  fs::path md_;
};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST_F(maildir_test, creates_missing_maildir_and_parents) {
  md_ = root_ / "a" / "b" / "Maildir";
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_TRUE(drop->messages().empty());
  for (const char* sub : {"cur", "new", "tmp"}) {
    EXPECT_TRUE(fs::is_directory(md_ / sub)) << sub;
    EXPECT_EQ(mode_of(md_ / sub), 0700U) << sub;
  }
  EXPECT_EQ(mode_of(md_), 0700U);
  EXPECT_EQ(mode_of(root_ / "a"), 0700U);
  EXPECT_EQ(mode_of(md_ / std::string(lock_file_name)), 0600U);
  auto stats = commit(*drop, {});
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->deleted, 0U);
  EXPECT_EQ(stats->left, 0U);
}

TEST_F(maildir_test, completes_a_maildir_missing_subdirectories) {
  fs::create_directories(md_ / "cur");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_TRUE(fs::is_directory(md_ / "new"));
  EXPECT_TRUE(fs::is_directory(md_ / "tmp"));
}

TEST_F(maildir_test, existing_empty_maildir) {
  make_maildir();
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_TRUE(drop->messages().empty());
}

TEST_F(maildir_test, path_that_is_not_a_directory_is_a_permanent_error) {
  { std::ofstream(root_ / "file") << "x"; }
  auto r = open((root_ / "file").string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  auto under = open((root_ / "file" / "Maildir").string());
  ASSERT_FALSE(under.ok());
  EXPECT_EQ(under.err().code(), errc::permanent);
  auto empty = open("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.err().code(), errc::invalid);
}

TEST_F(maildir_test, listing_order_and_what_is_skipped) {
  put("cur/1700000002.b.host:2,S", "b\n");
  put("new/1700000001.a.host", "a\n");
  put("cur/1700000001.0.host:2,", "0\n");
  put("cur/999.z.host:2,", "z\n");
  put("new/10.m.host", "m\n");
  put("new/9.m.host", "m\n");
  put("new/noprefix", "n\n");
  put("cur/abc.def:2,", "n\n");
  put("new/.hidden", "h\n");
  put("cur/.1.hidden:2,", "h\n");
  put("tmp/1.tmp.host", "t\n");
  fs::create_directories(md_ / "cur" / "1.subdir");
  fs::create_symlink(md_ / "new" / "9.m.host", md_ / "new" / "1.symlink");
  ASSERT_EQ(::mkfifo((md_ / "new" / "1.fifo").c_str(), 0600), 0);

  auto drop = must_open();
  ASSERT_TRUE(drop);
  const std::vector<std::string> want = {
      "9.m.host",          "10.m.host",         "999.z.host", "1700000001.0.host",
      "1700000001.a.host", "1700000002.b.host", "abc.def",    "noprefix",
  };
  EXPECT_EQ(uidls(*drop), want);
  for (const auto& m : drop->messages()) {
    EXPECT_EQ(m.size, 3U) << m.uidl;
  }
}

TEST_F(maildir_test, wire_size_from_w_field_without_reading) {
  // The contents disagree with W= on purpose: only W= can produce these sizes.
  put("new/1700000000.M1P1.host,W=1234", "tiny\n");
  put("cur/1700000001.M1P1.host,S=500,W=512:2,S", "short\n");
  put("new/1700000002.M1P1.host,S=10,W=0", "a\n");   // W < S: read the file
  put("new/1700000003.M1P1.host,S=10,W=21", "b\n");  // W > 2*S: read the file
  put("new/1700000004.M1P1.host,W=12x", "c\n");      // malformed: read the file
  put("new/1700000005.M1P1.host,S=99", "d\n");       // S alone: read the file
  auto drop = must_open();
  ASSERT_TRUE(drop);
  const auto msgs = drop->messages();
  ASSERT_EQ(msgs.size(), 6U);
  EXPECT_EQ(msgs[0].size, 1234U);
  EXPECT_EQ(msgs[1].size, 512U);
  EXPECT_EQ(msgs[2].size, 3U);
  EXPECT_EQ(msgs[3].size, 3U);
  EXPECT_EQ(msgs[4].size, 3U);
  EXPECT_EQ(msgs[5].size, 3U);
}

TEST_F(maildir_test, w_field_is_used_even_when_the_file_cannot_be_read) {
  put("new/1700000000.M1P1.host,W=77", "x\n");
  fs::permissions(md_ / "new" / "1700000000.M1P1.host,W=77", fs::perms::none);
  const std::string path = md_.string();
  EXPECT_TRUE(run_unprivileged([&path] {
    auto r = open(path);
    return r.ok() && (*r)->messages().size() == 1 && (*r)->messages()[0].size == 77;
  }));
}

TEST_F(maildir_test, counts_bare_lfs) {
  const std::string block(64 * 1024 - 1, 'x');
  struct row {
    std::string name;
    std::string content;
    std::uint64_t want;
  };
  const std::vector<row> rows = {
      {"1.lf", "a\nb\n", 6},
      {"2.crlf", "a\r\nb\r\n", 6},
      {"3.mixed", "a\r\nb\nc\r\n", 9},
      // The CRLF the dot encoder adds to an unterminated last line is sent, so counted.
      {"4.no-final-newline", "Subject: x\n\nbody", 20},
      {"5.no-final-newline-crlf", "Subject: x\r\n\r\nbody", 20},
      {"6.empty", "", 0},
      {"7.only-lf", "\n", 2},
      {"8.only-cr", "\r", 2},  // the encoder adds only the LF
      {"9.cr-cr-lf", "\r\r\n", 3},
      {"10.lf-cr", "\n\r", 4},
      {"11.blank-lines", "a\n\n\n", 7},
      {"12.dot-start", ".hello\n..\n.\n", 15},
      // CR as the last byte of one 64 KiB read and LF as the first of the next.
      {"13.cr-at-boundary", block + "\r\n", block.size() + 2},
      {"14.lf-at-boundary", block + "x\n", block.size() + 3},
      {"15.big", std::string(200000, 'y') + "\n" + std::string(70000, 'z') + "\r\n",
       270000 + 2 + 2},
  };
  for (const auto& r : rows) {
    put("new/" + r.name, r.content);
  }
  auto drop = must_open();
  ASSERT_TRUE(drop);
  const auto msgs = drop->messages();
  ASSERT_EQ(msgs.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].name);
    EXPECT_EQ(msgs[i].uidl, rows[i].name);
    EXPECT_EQ(msgs[i].size, rows[i].want);
  }
}

TEST_F(maildir_test, message_starting_with_dot_is_stored_and_read_raw) {
  const std::string content = ".hello\r\n..\r\n.\r\nend";
  put("new/1700000000.dot.host", content);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_EQ(drop->messages().size(), 1U);
  // No byte-stuffing counted; the CRLF ending the unterminated last line is.
  EXPECT_EQ(drop->messages()[0].size, content.size() + 2);
  auto reader = drop->open_message(0, false);
  ASSERT_TRUE(reader.ok()) << reader.err().message();
  EXPECT_EQ(read_all(**reader), content);
  EXPECT_EQ(read_all(**reader), "");  // stays at end
}

// The wire size is counted in reads of at most 1 MiB: a CRLF split by a read boundary (the
// CR ends one read, the LF starts the next) is one line end, not a CR and a bare LF. The
// same CRLF elsewhere, and a bare LF at the boundary, for contrast.
TEST_F(maildir_test, wire_size_of_a_crlf_split_by_a_read_boundary) {
  constexpr std::size_t read_size = std::size_t{1} << 20;
  for (const std::size_t lf_at : {read_size, read_size - 1, read_size + 1}) {
    std::string content(read_size + 4096, 'x');
    for (std::size_t i = 999; i < content.size(); i += 1000) {
      content[i] = '\n';  // bare LF line ends: each is counted as one more octet
    }
    content[lf_at - 1] = '\r';
    content[lf_at] = '\n';
    content.back() = '\n';
    std::uint64_t bare = 0;
    for (std::size_t i = 0; i < content.size(); ++i) {
      bare += content[i] == '\n' && (i == 0 || content[i - 1] != '\r') ? 1 : 0;
    }
    const std::string name = "cur/" + std::to_string(lf_at) + ".big:2,S";
    put(name, content);
    auto drop = must_open();
    fs::remove(md_ / name);  // each round lists one message
    ASSERT_TRUE(drop);
    ASSERT_EQ(drop->messages().size(), 1U);
    EXPECT_EQ(drop->messages()[0].size, content.size() + bare) << "LF at " << lf_at;
  }
}

TEST_F(maildir_test, reads_in_chunks_of_any_size) {
  std::string content;
  for (int i = 0; i < 5000; ++i) {
    content += "line " + std::to_string(i) + "\n";
  }
  put("cur/1.a:2,S", content);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  for (std::size_t chunk : {1UL, 3UL, 4096UL, 65536UL, 1UL << 20}) {
    auto reader = drop->open_message(0, false);
    ASSERT_TRUE(reader.ok());
    EXPECT_EQ(read_all(**reader, chunk), content) << chunk;
  }
}

// Reads `reader` to its end: `first` bytes through read(), then through map_next() when it
// offers a mapping (`mapped` tells whether it did).
std::string read_then_map(message_reader& reader, std::size_t first, bool& mapped) {
  std::string out(first, '\0');
  auto n = reader.read(std::span<char>(out.data(), out.size()));
  EXPECT_TRUE(n.ok());
  out.resize(n.ok() ? *n : 0);
  auto view = reader.map_next(100000);
  EXPECT_TRUE(view.ok());
  mapped = view.ok() && view->has_value();
  while (view.ok() && view->has_value() && !(*view)->empty()) {
    out.append((*view)->data(), (*view)->size());
    view = reader.map_next(100000);
  }
  if (!mapped) {
    std::vector<char> buf(65536);
    for (;;) {
      auto r = reader.read(buf);
      EXPECT_TRUE(r.ok());
      if (!r.ok() || *r == 0) {
        break;
      }
      out.append(buf.data(), *r);
    }
  }
  return out;
}

TEST_F(maildir_test, large_message_is_mapped_after_the_first_read_small_one_is_not) {
  std::string big;
  for (int i = 0; big.size() < 3 * 1024 * 1024; ++i) {
    big += (i % 5 == 0 ? ".line " : "line ") + std::to_string(i) + "\n";
  }
  put("cur/1.big:2,S", big);
  put("cur/2.small:2,S", "Subject: small\n\nbody\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_EQ(drop->messages().size(), 2U);
  auto reader = drop->open_message(0, true);
  ASSERT_TRUE(reader.ok());
  bool mapped = false;
  EXPECT_EQ(read_then_map(**reader, 131072, mapped), big);
  EXPECT_TRUE(mapped);
  auto small = drop->open_message(1, true);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(read_then_map(**small, 5, mapped), "Subject: small\n\nbody\n");
  EXPECT_FALSE(mapped);
}

TEST_F(maildir_test, uidl_from_base_name_and_hashed_fallback) {
  put("cur/1700000000.M1P2.host,S=2,W=2:2,S", "a\n");
  put("new/1700000001.M1P2.host,S=2,W=2", "b\n");
  put("new/1700000002." + std::string(70, 'L'), "c\n");
  put("new/1700000003.sp ace", "d\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  const auto u = uidls(*drop);
  ASSERT_EQ(u.size(), 4U);
  EXPECT_EQ(u[0], "1700000000.M1P2.host,S=2,W=2");  // flags are not part of the UIDL
  EXPECT_EQ(u[1], "1700000001.M1P2.host,S=2,W=2");
  EXPECT_EQ(u[2], *uidl_for_base("1700000002." + std::string(70, 'L')));
  EXPECT_EQ(u[2].size(), 40U);
  EXPECT_EQ(u[3], *uidl_for_base("1700000003.sp ace"));
  EXPECT_EQ(u[3].size(), 40U);
}

TEST_F(maildir_test, uidls_are_stable_across_sessions_and_flag_changes) {
  put("new/1700000000.a.host", "a\n");
  put("new/1700000001." + std::string(80, 'b'), "b\n");
  std::vector<std::string> before;
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    before = uidls(*drop);
    ASSERT_TRUE(drop->open_message(0, true).ok());
    ASSERT_TRUE(drop->open_message(1, true).ok());
    ASSERT_TRUE(commit(*drop, marks(2, {})).ok());
  }
  EXPECT_TRUE(names_in("new").empty());
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), before);
}

TEST_F(maildir_test, duplicate_base_names_get_unique_uidls) {
  put("cur/100.dup:2,S", "first\n");
  put("new/100.dup", "second\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  const auto u = uidls(*drop);
  ASSERT_EQ(u.size(), 2U);
  // Same timestamp and base: ordered by full name, so new/100.dup comes first.
  EXPECT_EQ(u[0], "100.dup");
  EXPECT_EQ(u[1], "11a1a78b916e6d86fa709cf5dcd2b8e913aef0c8");  // SHA-1 of "cur/100.dup:2,S"
  EXPECT_EQ(drop->messages()[0].size, 8U);
  EXPECT_EQ(drop->messages()[1].size, 7U);
}

TEST_F(maildir_test, duplicate_base_names_are_never_confused_at_commit) {
  put("cur/100.dup:2,", "cur copy\n");
  put("new/100.dup", "new copy\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_EQ(drop->messages().size(), 2U);
  // The kept new/ copy would be renamed onto cur/100.dup:2, which holds the other message:
  // it must be left where it is instead of replacing it.
  auto stats = commit(*drop, marks(2, {}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"100.dup:2,"});
  EXPECT_EQ(names_in("new"), std::vector<std::string>{"100.dup"});
  EXPECT_EQ(stats->left, 2U);
}

TEST_F(maildir_test, second_open_in_the_same_process_is_in_use) {
  put("new/1.a", "a\n");
  auto first = must_open();
  ASSERT_TRUE(first);
  auto second = open(md_.string());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.err().code(), errc::in_use);
  first.reset();
  auto third = open(md_.string());
  ASSERT_TRUE(third.ok()) << third.err().message();
  EXPECT_EQ((*third)->messages().size(), 1U);
}

TEST_F(maildir_test, lock_held_by_another_process_is_released_by_kill_9) {
  make_maildir();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    auto r = open(md_.string());
    const char c = r.ok() ? '1' : '0';
    if (::write(ready[1], &c, 1) != 1) {
      ::_exit(1);
    }
    for (;;) {
      ::pause();
    }
  }
  // Kills and reaps the child on every way out of this test.
  struct reaper {
    pid_t pid;
    ~reaper() {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } child{pid};
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(c, '1');
  auto blocked = open(md_.string());
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.err().code(), errc::in_use);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  child.pid = -1;
  EXPECT_TRUE(WIFSIGNALED(status));
  auto after = open(md_.string());
  EXPECT_TRUE(after.ok()) << after.err().message();
}

TEST_F(maildir_test, symlinked_lock_file_is_refused) {
  make_maildir();
  fs::create_symlink(root_ / "elsewhere", md_ / std::string(lock_file_name));
  auto r = open(md_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  EXPECT_FALSE(fs::exists(root_ / "elsewhere"));
}

TEST_F(maildir_test, commit_deletes_only_marked_messages) {
  put("cur/1.a:2,S", "a\n");    // 3
  put("cur/2.b:2,", "bb\r\n");  // 4
  put("new/3.c", "ccc\n");      // 5
  put("new/4.d", "dddd\n");     // 6
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_EQ(drop->messages().size(), 4U);
  auto stats = commit(*drop, marks(4, {1, 3}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->deleted, 2U);
  EXPECT_EQ(stats->deleted_bytes, 4U + 6U);
  EXPECT_EQ(stats->left, 2U);
  EXPECT_EQ(stats->left_bytes, 3U + 5U);
  EXPECT_EQ(names_in("cur"), (std::vector<std::string>{"1.a:2,S", "3.c:2,"}));
  EXPECT_TRUE(names_in("new").empty());

  auto again = commit(*drop, marks(4, {}));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.err().code(), errc::invalid);
}

TEST_F(maildir_test, commit_with_wrong_number_of_marks_changes_nothing) {
  put("new/1.a", "a\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  auto r = commit(*drop, marks(2, {0}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::invalid);
  EXPECT_EQ(names_in("new"), std::vector<std::string>{"1.a"});
}

TEST_F(maildir_test, dropped_session_changes_nothing) {
  put("new/1.a", "a\n");
  put("cur/2.b:2,", "b\n");
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    ASSERT_TRUE(drop->open_message(0, true).ok());
  }  // destroyed without commit: a dropped connection
  EXPECT_EQ(names_in("new"), std::vector<std::string>{"1.a"});
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"2.b:2,"});
}

TEST_F(maildir_test, commit_moves_new_to_cur_with_s_only_when_retrieved) {
  put("new/1.retr", "a\n");
  put("new/2.top", "b\n");
  put("new/3.untouched", "c\n");
  put("new/4.retr-then-top", "d\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_TRUE(drop->open_message(0, true).ok());
  ASSERT_TRUE(drop->open_message(1, false).ok());
  ASSERT_TRUE(drop->open_message(3, true).ok());
  ASSERT_TRUE(drop->open_message(3, false).ok());  // TOP later does not unmark
  auto stats = commit(*drop, marks(4, {}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->left, 4U);
  EXPECT_EQ(names_in("cur"), (std::vector<std::string>{"1.retr:2,S", "2.top:2,", "3.untouched:2,",
                                                       "4.retr-then-top:2,S"}));
  EXPECT_TRUE(names_in("new").empty());
}

TEST_F(maildir_test, commit_adds_s_to_retrieved_cur_messages_in_flag_order) {
  put("cur/1.f:2,F", "1\n");
  put("cur/2.t:2,T", "2\n");
  put("cur/3.s:2,S", "3\n");
  put("cur/4.kw:2,a", "4\n");
  put("cur/5.not-retrieved:2,RT", "5\n");
  put("cur/6.noinfo", "6\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  for (std::size_t i : {0, 1, 2, 3}) {
    ASSERT_TRUE(drop->open_message(i, true).ok()) << i;
  }
  auto stats = commit(*drop, marks(6, {}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(names_in("cur"),
            (std::vector<std::string>{"1.f:2,FS", "2.t:2,ST", "3.s:2,S", "4.kw:2,Sa",
                                      "5.not-retrieved:2,RT", "6.noinfo:2,"}));
}

TEST_F(maildir_test, mail_delivered_during_the_session_is_untouched) {
  put("new/1.old", "old\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_EQ(drop->messages().size(), 1U);
  put("new/2.late", "late\n");
  put("cur/3.late:2,", "late too\n");
  auto stats = commit(*drop, marks(1, {0}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->deleted, 1U);
  EXPECT_EQ(stats->left, 0U);
  EXPECT_EQ(names_in("new"), std::vector<std::string>{"2.late"});
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"3.late:2,"});
}

TEST_F(maildir_test, open_message_after_an_external_flag_change) {
  put("cur/1700000000.a.host:2,", "hello\n");
  put("new/1700000001.b.host", "world\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  // Another MUA flags the first message and moves the second to cur/.
  fs::rename(md_ / "cur" / "1700000000.a.host:2,", md_ / "cur" / "1700000000.a.host:2,F");
  fs::rename(md_ / "new" / "1700000001.b.host", md_ / "cur" / "1700000001.b.host:2,T");
  auto r0 = drop->open_message(0, true);
  ASSERT_TRUE(r0.ok()) << r0.err().message();
  EXPECT_EQ(read_all(**r0), "hello\n");
  auto r1 = drop->open_message(1, false);
  ASSERT_TRUE(r1.ok()) << r1.err().message();
  EXPECT_EQ(read_all(**r1), "world\n");
  auto stats = commit(*drop, marks(2, {}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(names_in("cur"),
            (std::vector<std::string>{"1700000000.a.host:2,FS", "1700000001.b.host:2,T"}));
}

TEST_F(maildir_test, commit_follows_external_renames) {
  put("new/1.del", "a\n");
  put("cur/2.del:2,", "b\n");
  put("new/3.keep", "c\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_TRUE(drop->open_message(2, true).ok());
  fs::rename(md_ / "new" / "1.del", md_ / "cur" / "1.del:2,S");
  fs::rename(md_ / "cur" / "2.del:2,", md_ / "cur" / "2.del:2,F");
  fs::rename(md_ / "new" / "3.keep", md_ / "cur" / "3.keep:2,");
  auto stats = commit(*drop, marks(3, {0, 1}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->deleted, 2U);
  EXPECT_EQ(stats->left, 1U);
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"3.keep:2,S"});
  EXPECT_TRUE(names_in("new").empty());
}

TEST_F(maildir_test, vanished_message) {
  put("new/1.gone", "a\n");
  put("new/2.gone-too", "b\n");
  put("new/3.stays", "c\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  fs::remove(md_ / "new" / "1.gone");
  fs::remove(md_ / "new" / "2.gone-too");
  auto r = drop->open_message(0, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::not_found);
  EXPECT_NE(r.err().context().find("1.gone"), std::string::npos) << r.err().context();
  auto out_of_range = drop->open_message(3, false);
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_EQ(out_of_range.err().code(), errc::invalid);
  // Deleted by someone else counts as deleted; a vanished kept message is not "left".
  auto stats = commit(*drop, marks(3, {0}));
  ASSERT_TRUE(stats.ok()) << stats.err().message();
  EXPECT_EQ(stats->deleted, 1U);
  EXPECT_EQ(stats->left, 1U);
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"3.stays:2,"});
}

TEST_F(maildir_test, message_replaced_by_a_fifo_is_an_error_not_a_hang) {
  put("new/1.a", "a\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  fs::remove(md_ / "new" / "1.a");
  ASSERT_EQ(::mkfifo((md_ / "new" / "1.a").c_str(), 0600), 0);
  auto r = drop->open_message(0, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
}

TEST_F(maildir_test, message_replaced_by_a_symlink_is_not_followed) {
  put("new/1.a", "a\n");
  { std::ofstream(root_ / "secret") << "secret\n"; }
  auto drop = must_open();
  ASSERT_TRUE(drop);
  fs::remove(md_ / "new" / "1.a");
  fs::create_symlink(root_ / "secret", md_ / "new" / "1.a");
  auto r = drop->open_message(0, true);
  ASSERT_FALSE(r.ok());
}

TEST_F(maildir_test, unreadable_message_is_a_temporary_error) {
  put("new/1.a,W=3", "a\n");
  fs::permissions(md_ / "new" / "1.a,W=3", fs::perms::none);
  const std::string path = md_.string();
  EXPECT_TRUE(run_unprivileged([&path] {
    auto drop = open(path);
    if (!drop.ok() || (*drop)->messages().size() != 1) {
      return false;
    }
    auto r = (*drop)->open_message(0, true);
    return !r.ok() && r.err().code() == errc::temporary &&
           r.err().cause() == std::errc::permission_denied;
  }));
}

TEST_F(maildir_test, unreadable_message_without_w_is_listed_and_fails_only_its_retr) {
  put("new/1.a", "a\n");
  put("new/2.b", "bb\n");
  fs::permissions(md_ / "new" / "1.a", fs::perms::none);
  const std::string path = md_.string();
  EXPECT_TRUE(run_unprivileged([&path] {
    auto drop = open(path);
    if (!drop.ok() || (*drop)->messages().size() != 2 || (*drop)->messages()[0].size != 2 ||
        (*drop)->messages()[1].size != 4) {
      return false;
    }
    auto r = (*drop)->open_message(0, true);
    return !r.ok() && r.err().cause() == std::errc::permission_denied &&
           (*drop)->open_message(1, true).ok();
  }));
}

TEST_F(maildir_test, commit_error_reports_the_first_failure_and_keeps_going) {
  put("cur/1.a:2,", "a\n");
  put("new/2.b", "b\n");
  put("new/3.c", "c\n");
  const std::string path = md_.string();
  const fs::path cur = md_ / "cur";
  EXPECT_TRUE(run_unprivileged([&path, &cur] {
    auto drop = open(path);
    if (!drop.ok()) {
      return false;
    }
    // cur/ becomes read-only: the unlink and every move into cur/ fail; new/3.c's removal
    // still happens.
    fs::permissions(cur, fs::perms::owner_read | fs::perms::owner_exec);
    const bool del[3] = {true, false, true};
    auto r = (*drop)->commit(del);
    return !r.ok() && r.err().code() == errc::temporary &&
           r.err().context().find("unlink cur/1.a:2,") != std::string::npos &&
           fs::exists(cur / "1.a:2,") && fs::exists(fs::path(path) / "new" / "2.b") &&
           !fs::exists(fs::path(path) / "new" / "3.c");
  }));
}

TEST_F(maildir_test, unreadable_maildir_is_a_permanent_error) {
  make_maildir();
  fs::permissions(md_, fs::perms::none);
  const std::string path = md_.string();
  EXPECT_TRUE(run_unprivileged([&path] {
    auto drop = open(path);
    return !drop.ok() && drop.err().code() == errc::permanent;
  }));
}

// ---------------------------------------------------------------------------------------
// Bare LF counting and the index.

std::uint64_t naive_bare_lfs(std::string_view s, bool after_cr) {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const bool prev_cr = i == 0 ? after_cr : s[i - 1] == '\r';
    n += (s[i] == '\n' && !prev_cr) ? 1 : 0;
  }
  return n;
}

TEST(count_bare_lfs, table) {
  struct row {
    std::string_view data;
    bool after_cr;
    std::uint64_t want;
  };
  const std::vector<row> rows = {
      {"", false, 0},
      {"", true, 0},
      {"\n", false, 1},
      {"\n", true, 0},
      {"\r\n", false, 0},
      {"\r\r\n\n", false, 1},
      {"a\nb\r\nc\n", false, 2},
      {"\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n", false, 17},
      {"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", false, 0},
      {"0123456789abcde\r\n0123456789abcdef\n", false, 1},  // CR and LF across a 16-byte block
      {"0123456789abcdef\r", false, 0},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(testing::PrintToString(std::string(r.data)));
    EXPECT_EQ(count_bare_lfs(r.data, r.after_cr), r.want);
  }
}

TEST(count_bare_lfs, long_inputs_past_the_per_byte_counters) {
  // More than 255 blocks of 16 bytes with bare LFs, CRLFs and CR LF pairs falling across
  // block boundaries (the pattern is 18 bytes): the per-byte counters must be summed before
  // they overflow.
  std::string s;
  for (int i = 0; i < 2000; ++i) {
    s += "\n\n\r\nabc\n\rxyz0123\r";  // 3 bare LFs, then a CR
    s += "\n";                        // LF after that CR: not bare
  }
  EXPECT_EQ(count_bare_lfs(s, false), naive_bare_lfs(s, false));
  EXPECT_EQ(count_bare_lfs(s, false), 2000u * 3);
  const std::string all_lf(70000, '\n');
  EXPECT_EQ(count_bare_lfs(all_lf, false), 70000u);
  EXPECT_EQ(count_bare_lfs(all_lf, true), 69999u);
}

TEST(count_bare_lfs, matches_a_byte_loop_for_any_split) {
  std::mt19937 rng(12345);
  const char alphabet[] = {'\r', '\n', 'a', '.'};
  for (int round = 0; round < 300; ++round) {
    std::string s(rng() % 200, 'x');
    for (auto& c : s) {
      c = alphabet[rng() % 4];
    }
    const std::uint64_t want = naive_bare_lfs(s, false);
    // Whole, and split at a random point with the CR state carried over, as a reader does.
    EXPECT_EQ(count_bare_lfs(s, false), want);
    const std::size_t cut = s.empty() ? 0 : rng() % s.size();
    const std::string_view a = std::string_view(s).substr(0, cut);
    const std::string_view b = std::string_view(s).substr(cut);
    EXPECT_EQ(count_bare_lfs(a, false) + count_bare_lfs(b, !a.empty() && a.back() == '\r'), want)
        << s;
  }
}

using test::read_file;
using test::write_file;

dir_stamp stamp_path(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return dir_stamp{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                   static_cast<std::uint64_t>(st.st_size),
                   fs_time{st.st_mtim.tv_sec, st.st_mtim.tv_nsec},
                   fs_time{st.st_ctim.tv_sec, st.st_ctim.tv_nsec}};
}

std::uint64_t inode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return static_cast<std::uint64_t>(st.st_ino);
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) {
    ++n;
  }
  return n;
}

std::vector<std::uint64_t> sizes(const maildrop& drop) {
  std::vector<std::uint64_t> out;
  for (const auto& m : drop.messages()) {
    out.push_back(m.size);
  }
  return out;
}

class maildir_index_test : public maildir_test {
 protected:
  fs::path index_path() const { return md_ / std::string(index_file_name); }

  // A record of a file that was read to size it (a stat is recorded), as open writes one.
  static index_record sized(std::string_view name, std::uint64_t wire_size, std::uint64_t ino,
                            bool in_new) {
    index_record r{name, wire_size, ino, in_new};
    r.file_size = 2;
    r.ctime = fs_time{1, 0};
    r.stat_known = true;
    return r;
  }

  // Writes an index recording `records` under the directories' current stamps, listed at
  // `listed_after` nanoseconds after the later of their mtimes and ctimes.
  void write_index_now(const std::vector<index_record>& records, std::int64_t listed_after) {
    index_contents c;
    c.new_dir = stamp_path(md_ / "new");
    c.cur_dir = stamp_path(md_ / "cur");
    fs_time latest = std::max({c.new_dir.mtime, c.new_dir.ctime, c.cur_dir.mtime, c.cur_dir.ctime});
    latest.nsec += listed_after;
    latest.sec += latest.nsec / 1'000'000'000;
    latest.nsec %= 1'000'000'000;
    c.listed_at = latest;
    c.records = records;
    write_file(index_path(), encode_index(c));
  }
};

TEST_F(maildir_index_test, open_writes_an_index_with_every_message) {
  put("cur/1.a:2,S", "a\nb\n");
  put("new/2.b", "bb\r\n");
  must_open();
  ASSERT_TRUE(fs::exists(index_path()));
  EXPECT_EQ(mode_of(index_path()), 0600u);
  EXPECT_FALSE(fs::exists(md_ / std::string(index_temp_name)));
  const std::string bytes = read_file(index_path());
  const auto c = decode_index(bytes);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->records.size(), 2u);
  EXPECT_EQ(c->records[0].name, "1.a:2,S");
  EXPECT_EQ(c->records[0].wire_size, 6u);
  EXPECT_FALSE(c->records[0].in_new);
  EXPECT_EQ(c->records[0].ino, inode_of(md_ / "cur" / "1.a:2,S"));
  EXPECT_EQ(c->records[1].name, "2.b");
  EXPECT_EQ(c->records[1].wire_size, 4u);
  EXPECT_TRUE(c->records[1].in_new);
  EXPECT_EQ(c->new_dir, stamp_path(md_ / "new"));
  EXPECT_EQ(c->cur_dir, stamp_path(md_ / "cur"));
}

TEST_F(maildir_index_test, without_an_index_every_open_reads_and_none_is_kept) {
  put("cur/1.a:2,", "a\n");
  put("cur/2.b:2,", "b\n");
  const std::uint64_t ino = inode_of(md_ / "cur" / "1.a:2,");
  // A settled record that would be taken as it is (see the next test) is removed unread.
  write_index_now({index_record{"1.a:2,", 99, ino, false}}, 1);
  for (int i = 0; i < 2; ++i) {
    auto drop = open(md_.string(), {.use_index = false});
    ASSERT_TRUE(drop.ok()) << drop.err().message();
    EXPECT_EQ(uidls(**drop), (std::vector<std::string>{"1.a", "2.b"}));
    EXPECT_EQ(sizes(**drop), (std::vector<std::uint64_t>{3, 3}));
    EXPECT_FALSE(fs::exists(index_path()));
  }
}

TEST_F(maildir_index_test, settled_record_is_used_without_listing) {
  put("cur/1.a:2,", "a\n");
  put("cur/2.b:2,", "b\n");
  const std::uint64_t ino = inode_of(md_ / "cur" / "1.a:2,");
  // A record that lists only 1.a, with a size no file has: taken as it is, the directories
  // were not read.
  write_index_now({sized("1.a:2,", 99, ino, false)}, 1);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a"}));
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{99}));
}

TEST_F(maildir_index_test, size_of_a_file_that_could_not_be_read_is_not_reused) {
  put("cur/1.a:2,", "a\n");
  put("cur/2.b:2,", "b\n");
  const std::uint64_t ino = inode_of(md_ / "cur" / "1.a:2,");
  // A record without a stat and without ",W=": 1.a could not be read when it was listed
  // (its file size stood in). Its directory is read and the file sized again.
  write_index_now({index_record{"1.a:2,", 2, ino, false}}, 1);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a", "2.b"}));
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{3, 3}));
}

TEST_F(maildir_index_test, record_not_older_than_its_listing_is_not_trusted) {
  put("cur/1.a:2,", "a\n");
  put("cur/2.b:2,", "b\n");
  const std::uint64_t ino = inode_of(md_ / "cur" / "1.a:2,");
  // Same stamps, but listed in the same clock tick as the last change: the directory is
  // read (2.b appears); 1.a's size still comes from the index (same base name and inode).
  write_index_now({sized("1.a:2,", 99, ino, false)}, 0);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a", "2.b"}));
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{99, 3}));
}

TEST_F(maildir_index_test, changed_directory_is_read_and_sizes_need_the_same_inode) {
  put("cur/1.a:2,", "a\n");
  put("cur/2.b:2,", "b\n");
  const std::uint64_t ino1 = inode_of(md_ / "cur" / "1.a:2,");
  const std::uint64_t ino2 = inode_of(md_ / "cur" / "2.b:2,");
  write_index_now({sized("1.a:2,S", 50, ino1, false),      // renamed since: same base
                   sized("2.b:2,", 60, ino2 + 1, false)},  // another inode
                  1);
  put("new/3.c", "c\n");  // a delivery: new/ changes
  // cur/ too: its recorded stamp is cleared so it does not match.
  {
    const std::string bytes = read_file(index_path());
    auto d = decode_index(bytes);
    ASSERT_TRUE(d);
    d->cur_dir = dir_stamp{};
    write_file(index_path(), encode_index(*d));
  }
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a", "2.b", "3.c"}));
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{50, 3, 3}));
  // And the index now records what was read.
  const std::string bytes = read_file(index_path());
  const auto c = decode_index(bytes);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->records.size(), 3u);
  EXPECT_EQ(c->records[0].name, "1.a:2,");
  EXPECT_EQ(c->records[1].wire_size, 3u);
  EXPECT_EQ(c->records[2].name, "3.c");
}

TEST_F(maildir_index_test, delivery_and_external_changes_are_seen_on_the_next_open) {
  put("cur/1.a:2,", "a\n");
  put("new/2.b", "b\n");
  must_open().reset();
  put("new/3.c", "cc\n");
  fs::rename(md_ / "cur" / "1.a:2,", md_ / "cur" / "1.a:2,S");
  fs::remove(md_ / "new" / "2.b");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a", "3.c"}));
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{3, 4}));
}

TEST_F(maildir_index_test, change_right_after_a_listing_is_never_missed) {
  // Deliveries, flag changes and removals made at once after each open, within the same
  // clock tick as the listing more often than not: every next open must see them.
  put("cur/1.a:2,", "a\n");
  std::vector<std::string> want = {"1.a"};
  for (int i = 2; i < 150; ++i) {
    must_open().reset();
    const std::string base = std::to_string(i) + ".m";
    switch (i % 3) {
      case 0:
        put("new/" + base, "x\n");
        want.push_back(base);
        break;
      case 1:
        put("cur/" + base + ":2,", "x\n");
        want.push_back(base);
        break;
      default:
        fs::remove(md_ / "cur" / (want.back() + ":2,"));
        fs::remove(md_ / "new" / want.back());
        want.pop_back();
        break;
    }
    auto drop = must_open();
    ASSERT_TRUE(drop);
    std::vector<std::string> got = uidls(*drop);
    std::vector<std::string> expected = want;
    std::sort(got.begin(), got.end());
    std::sort(expected.begin(), expected.end());
    ASSERT_EQ(got, expected) << "after step " << i;
  }
}

TEST_F(maildir_index_test, commit_with_nothing_to_change_touches_no_directory) {
  put("cur/1.a:2,S", "a\n");
  put("cur/2.b:2,", "bb\n");
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_TRUE(drop->open_message(0, true).ok());  // already seen: its name stays
  // The Maildir moves away after the listing: a commit that must open it would fail.
  const fs::path moved = md_.string() + ".moved";
  fs::rename(md_, moved);
  auto r = commit(*drop, marks(2, {}));
  fs::rename(moved, md_);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->deleted, 0u);
  EXPECT_EQ(r->left, 2u);
  EXPECT_EQ(r->left_bytes, 7u);
  EXPECT_EQ(names_in("cur"), (std::vector<std::string>{"1.a:2,S", "2.b:2,"}));
}

TEST_F(maildir_index_test, commit_then_reopen_lists_what_is_left) {
  put("cur/1.a:2,", "a\n");
  put("new/2.b", "b\n");
  put("new/3.c", "c\n");
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    auto r = commit(*drop, marks(3, {0}));
    ASSERT_TRUE(r.ok()) << r.err().message();
  }
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"2.b", "3.c"}));
  EXPECT_EQ(names_in("cur"), (std::vector<std::string>{"2.b:2,", "3.c:2,"}));
}

TEST_F(maildir_index_test, commit_keeps_cur_names_and_completes_a_missing_info) {
  put("cur/1.a:2,F", "a\n");  // kept as it is
  put("cur/2.b", "b\n");      // no info: gains ":2,"
  put("cur/3.c:1,x", "c\n");  // an info Postern does not know: left alone
  put("cur/4.d:2,", "d\n");   // retrieved: gains S
  auto drop = must_open();
  ASSERT_TRUE(drop);
  ASSERT_TRUE(drop->open_message(3, true).ok());
  auto r = commit(*drop, marks(4, {}));
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(r->left, 4u);
  EXPECT_EQ(names_in("cur"), (std::vector<std::string>{"1.a:2,F", "2.b:2,", "3.c:1,x", "4.d:2,S"}));
}

TEST_F(maildir_index_test, corrupt_or_hostile_index_files_are_ignored) {
  put("cur/1.a:2,", "a\nb\n");
  put("new/2.b", "b\n");
  must_open().reset();
  const std::string good = read_file(index_path());
  ASSERT_FALSE(good.empty());
  const std::vector<std::string> bad = {
      "",
      good.substr(0, good.size() / 2),
      good.substr(0, good.size() - 1),
      good + "x",
      std::string(good.size(), '\0'),
      [&] {
        std::string s = good;
        s[s.size() / 2] = static_cast<char>(s[s.size() / 2] ^ 0x40);
        return s;
      }(),
  };
  for (const auto& b : bad) {
    write_file(index_path(), b);
    auto drop = must_open();
    ASSERT_TRUE(drop);
    EXPECT_EQ(uidls(*drop), (std::vector<std::string>{"1.a", "2.b"}));
    EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{6, 3}));
  }
  // A validly sealed index whose records are out of order is not ours either.
  write_index_now({index_record{"2.b", 7, inode_of(md_ / "new" / "2.b"), true},
                   index_record{"1.a:2,", 7, inode_of(md_ / "cur" / "1.a:2,"), false}},
                  1);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{6, 3}));
}

TEST_F(maildir_index_test, index_that_is_a_symlink_or_directory_is_not_followed) {
  put("cur/1.a:2,", "a\n");
  const fs::path target = root_ / "elsewhere";
  write_file(target, "keep");
  fs::create_symlink(target, index_path());
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{3}));
  }
  EXPECT_EQ(read_file(target), "keep");
  EXPECT_FALSE(fs::is_symlink(index_path()));  // replaced by rename, target untouched

  fs::remove(index_path());
  fs::create_directory(index_path());
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(sizes(*drop), (std::vector<std::uint64_t>{3}));
}

TEST_F(maildir_index_test, idle_maildrop_holds_only_its_lock) {
  put("cur/1.a:2,", "a\n");
  put("new/2.b", "b\n");
  const std::size_t before = open_fds();
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(open_fds(), before + 1);
  {
    auto reader = drop->open_message(1, true);
    ASSERT_TRUE(reader.ok());
    EXPECT_EQ(read_all(**reader), "b\n");
  }
  EXPECT_EQ(open_fds(), before + 1);
  auto r = commit(*drop, marks(2, {0}));
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(open_fds(), before + 1);
  drop.reset();
  EXPECT_EQ(open_fds(), before);
}

TEST_F(maildir_index_test, relative_path_keeps_naming_the_same_maildir) {
  put("new/1.a", "a\n");
  const fs::path old_cwd = fs::current_path();
  fs::current_path(root_);
  auto r = open("Maildir");
  fs::current_path("/");
  ASSERT_TRUE(r.ok()) << r.err().message();
  auto reader = (*r)->open_message(0, true);
  fs::current_path(old_cwd);
  ASSERT_TRUE(reader.ok()) << reader.err().message();
  EXPECT_EQ(read_all(**reader), "a\n");
}

// ---------------------------------------------------------------------------------------
// Trust: sizes verified at open_message, no symlink followed below the root, owners checked.

// The encoder sends message_wire_octets (pop3/dot_encoder_test.cpp pins that side).
TEST_F(maildir_index_test, wire_size_is_what_the_dot_encoder_sends) {
  const std::vector<std::string> bodies = test::line_end_samples();
  for (std::size_t i = 0; i < bodies.size(); ++i) {
    put("cur/" + std::to_string(100 + i) + ".m:2,S", bodies[i]);
  }
  for (int round = 0; round < 2; ++round) {  // read, then from the index
    auto drop = must_open();
    ASSERT_TRUE(drop);
    ASSERT_EQ(drop->messages().size(), bodies.size());
    for (std::size_t i = 0; i < bodies.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(drop->messages()[i].size, message_wire_octets(bodies[i]));
      auto reader = drop->open_message(i, false);
      ASSERT_TRUE(reader.ok()) << reader.err().message();
      EXPECT_EQ(read_all(**reader, 65536), bodies[i]);
    }
  }
  // The case of the issue: 33 octets stored without a final newline, 35 sent.
  EXPECT_EQ(message_wire_octets(std::string(32, 'x') + "y"), 35u);
}

// Rewrites `p` in place (same inode) with `content`.
void rewrite_in_place(const fs::path& p, std::string_view content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
}

TEST_F(maildir_index_test, message_rewritten_in_place_is_refused_once_then_listed_right) {
  const std::string small = "Subject: a\n\n" + std::string(266, 'a') + "\n";
  const std::string large =
      "Subject: a\n\n" + std::string(300, 'b') + "\n" + std::string(280, 'c') + "\n";
  put("cur/1.a:2,S", small);
  put("cur/2.b:2,S", "b\n");
  const std::uint64_t ino = inode_of(md_ / "cur" / "1.a:2,S");
  ASSERT_TRUE(must_open());  // indexed
  rewrite_in_place(md_ / "cur" / "1.a:2,S", large);
  ASSERT_EQ(inode_of(md_ / "cur" / "1.a:2,S"), ino);
  {
    // No directory changed: the listing is the index's, with the old size. RETR finds the
    // file is not what was sized, and refuses rather than send another byte count.
    auto drop = must_open();
    ASSERT_TRUE(drop);
    EXPECT_EQ(drop->messages()[0].size, message_wire_octets(small));
    auto r = drop->open_message(0, true);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::changed) << r.err().message();
    auto again = drop->open_message(0, true);  // the rest of the session: the same answer
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.err().code(), errc::changed);
    auto other = drop->open_message(1, true);
    ASSERT_TRUE(other.ok()) << other.err().message();
  }
  // The session that saw it corrected the index: the next one lists and sends the truth.
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(drop->messages()[0].size, message_wire_octets(large));
  auto r = drop->open_message(0, true);
  ASSERT_TRUE(r.ok()) << r.err().message();
  EXPECT_EQ(read_all(**r, 4096), large);
}

TEST_F(maildir_index_test, recreated_file_with_a_reused_inode_is_caught_at_open_message) {
  put("cur/1.a:2,S", "a new message\n");
  const fs::path f = md_ / "cur" / "1.a:2,S";
  const std::uint64_t ino = inode_of(f);
  // What the index held before the file was removed and re-created under the same name
  // with the same inode (ext4 reuses freed inodes): another size and ctime.
  index_record old{"1.a:2,S", 280, ino, false, 270, fs_time{1600000000, 1}, true};
  write_index_now({old}, 1);
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    EXPECT_EQ(drop->messages()[0].size, 280u);  // the window: this session's LIST
    auto r = drop->open_message(0, true);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::changed);
    auto stats = commit(*drop, marks(1, {}));
    ASSERT_TRUE(stats.ok()) << stats.err().message();
  }
  const std::string bytes = read_file(index_path());
  const auto c = decode_index(bytes);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->records.size(), 1u);
  EXPECT_EQ(c->records[0].wire_size, 15u);
  EXPECT_EQ(c->records[0].file_size, 14u);
  EXPECT_TRUE(c->records[0].stat_known);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_EQ(drop->messages()[0].size, 15u);
  ASSERT_TRUE(drop->open_message(0, true).ok());
}

TEST_F(maildir_index_test, renamed_file_with_the_same_content_is_served_and_reverified_once) {
  put("cur/1.a:2,", "a\n");
  const fs::path f = md_ / "cur" / "1.a:2,";
  ASSERT_TRUE(must_open());
  const auto before = decode_index(read_file(index_path()));
  ASSERT_TRUE(before && before->records.size() == 1 && before->records[0].stat_known);
  // Another MUA renames it back and forth: same inode and size, a new ctime.
  fs::rename(f, md_ / "cur" / "1.a:2,F");
  fs::rename(md_ / "cur" / "1.a:2,F", f);
  {
    auto drop = must_open();
    ASSERT_TRUE(drop);
    auto r = drop->open_message(0, false);
    ASSERT_TRUE(r.ok()) << r.err().message();
    EXPECT_EQ(read_all(**r), "a\n");
  }
  const auto after = decode_index(read_file(index_path()));
  ASSERT_TRUE(after && after->records.size() == 1);
  EXPECT_NE(after->records[0].ctime, before->records[0].ctime);
  EXPECT_EQ(after->records[0].wire_size, 3u);
}

TEST_F(maildir_test, w_field_that_the_file_contradicts_is_counted_at_open_message) {
  put("new/1.a,S=2,W=3", "a\n");   // right
  put("new/2.b,S=5,W=6", "bb\n");  // S= disagrees with the file: counted, size 4 != 6
  auto drop = must_open();
  ASSERT_TRUE(drop);
  EXPECT_TRUE(drop->open_message(0, true).ok());
  auto r = drop->open_message(1, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::changed);
}

TEST_F(maildir_test, symlinked_cur_is_refused_and_its_target_untouched) {
  make_maildir();
  const fs::path scratch = root_ / "scratch";
  fs::create_directories(scratch);
  { std::ofstream(scratch / "1.secret") << "secret\n"; }
  fs::remove(md_ / "cur");
  fs::create_directory_symlink(scratch, md_ / "cur");
  auto r = open(md_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  EXPECT_NE(r.err().message().find("symbolic link"), std::string::npos) << r.err().message();
  EXPECT_EQ(read_file(scratch / "1.secret"), "secret\n");
  EXPECT_EQ(fs::directory_iterator(scratch)->path().filename(), "1.secret");
}

TEST_F(maildir_test, symlinked_maildir_below_the_root_is_refused) {
  const fs::path scratch = root_ / "elsewhere";
  fs::create_directories(scratch / "cur");
  fs::create_directories(scratch / "new");
  { std::ofstream(scratch / "new" / "1.secret") << "secret\n"; }
  fs::create_directory_symlink(scratch, md_);
  auto r = open(md_.string(), {.root = root_.string()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  EXPECT_TRUE(fs::exists(scratch / "new" / "1.secret"));
  EXPECT_FALSE(fs::exists(scratch / std::string(lock_file_name)));
  // A symlink above the root is the administrator's: followed.
  const fs::path home = root_ / "home";
  fs::create_directories(root_ / "real-home");
  fs::create_directory_symlink(root_ / "real-home", home);
  fs::create_directories(root_ / "real-home" / "Maildir" / "new");
  { std::ofstream(root_ / "real-home" / "Maildir" / "new" / "1.m") << "m\n"; }
  auto ok = open((home / "Maildir").string(), {.root = home.string()});
  ASSERT_TRUE(ok.ok()) << ok.err().message();
  EXPECT_TRUE(fs::is_directory(root_ / "real-home" / "Maildir" / "cur"));
  auto reader = (*ok)->open_message(0, true);  // resolved beneath the symlinked root
  ASSERT_TRUE(reader.ok()) << reader.err().message();
  EXPECT_EQ(read_all(**reader), "m\n");
  ok->reset();
  // A component between the root and the Maildir is not.
  fs::create_directory_symlink(root_ / "real-home", root_ / "srv-link");
  auto mid = open((root_ / "srv-link" / "Maildir").string(), {.root = root_.string()});
  ASSERT_FALSE(mid.ok());
  EXPECT_EQ(mid.err().code(), errc::permanent);
  // A path outside its root is refused outright.
  auto outside = open((root_ / "x" / "Maildir").string(), {.root = (root_ / "y").string()});
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.err().code(), errc::invalid);
}

TEST_F(maildir_test, symlink_swapped_in_for_a_message_is_not_served_renamed_or_removed) {
  put("new/1.a", "a\n");
  put("new/2.b", "b\n");
  const fs::path scratch = root_ / "scratch";
  fs::create_directories(scratch);
  { std::ofstream(scratch / "target") << "secret\n"; }
  auto drop = must_open();
  ASSERT_TRUE(drop);
  for (const char* n : {"1.a", "2.b"}) {
    fs::remove(md_ / "new" / n);
    fs::create_symlink(scratch / "target", md_ / "new" / n);
  }
  auto r = drop->open_message(0, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  auto stats = commit(*drop, marks(2, {1}));  // DELE 2; 1 would move to cur/
  EXPECT_FALSE(stats.ok());
  EXPECT_TRUE(fs::is_symlink(md_ / "new" / "1.a"));
  EXPECT_TRUE(fs::is_symlink(md_ / "new" / "2.b"));
  EXPECT_EQ(read_file(scratch / "target"), "secret\n");
}

TEST_F(maildir_test, file_owned_by_another_uid_is_not_served_or_removed) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to give a file away";
  }
  put("new/1.a", "a\n");
  put("new/2.b", "b\n");
  ASSERT_EQ(::chown((md_ / "new" / "1.a").c_str(), 65534, 65534), 0);
  auto drop = must_open();
  ASSERT_TRUE(drop);
  auto r = drop->open_message(0, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  EXPECT_NE(r.err().message().find("uid 65534"), std::string::npos) << r.err().message();
  EXPECT_TRUE(drop->open_message(1, true).ok());
  auto stats = commit(*drop, marks(2, {0}));
  EXPECT_FALSE(stats.ok());
  EXPECT_TRUE(fs::exists(md_ / "new" / "1.a"));
  EXPECT_EQ(names_in("cur"), std::vector<std::string>{"2.b:2,S"});
}

TEST_F(maildir_test, maildir_owned_by_another_uid_is_refused) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to give a directory away";
  }
  make_maildir();
  ASSERT_EQ(::chown((md_ / "cur").c_str(), 65534, 65534), 0);
  auto r = open(md_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::permanent);
  ASSERT_EQ(::chown((md_ / "cur").c_str(), 0, 0), 0);
  ASSERT_EQ(::chown(md_.c_str(), 65534, 65534), 0);
  auto r2 = open(md_.string());
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.err().code(), errc::permanent);
}

}  // namespace
}  // namespace postern::store::maildir
