#include "store/mbox/index.hpp"

#include "common/test_files.hpp"
#include "common/unique_fd.hpp"
#include "store/mbox/journal.hpp"
#include "store/mbox/mbox.hpp"
#include "store/mbox/parser.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace postern::store::mbox {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;

struct temp_dir : test::temp_dir {
  temp_dir() : test::temp_dir("postern-mbox-index") {}
};
using test::append_file;
using test::read_file;
using test::write_file;

fs::path fixture_dir() { return test::source_path("tests/fixtures/mbox"); }

std::string msg(const std::string& from, const std::string& id, const std::string& body) {
  return "From " + from + " Mon Jan  1 00:00:00 2024\nMessage-ID: <" + id +
         "@example.org>\nSubject: " + id + "\n\n" + body + "\n";
}

// Every fixture and the parser's edge cases (the inputs of mbox_test.cpp's table).
std::vector<std::pair<std::string, std::string>> inputs() {
  std::vector<std::pair<std::string, std::string>> out = {
      {"two", "From a\nS: 1\n\nb1\n\nFrom b\nS: 2\n\nb2\n\n"},
      {"crlf", "From a\r\nS: 1\r\n\r\nb1\r\n\r\nFrom b\r\nS: 2\r\n\r\nb2\r\n\r\n"},
      {"mixed", "From a\nS: 1\r\n\nb1\r\n\r\nFrom b\r\nS: 2\n\r\nb2\n"},
      {"no final newline", "From a\nS: 1\n\nlast line"},
      {"From_ line at the end", "From a\nS: 1\n\nx\n\nFrom b"},
      {"empty message", "From a\n\nFrom b\nS: 2\n\nx\n"},
      {"garbage prefix", "junk\nFrom a\nS: 1\n\nx\n"},
      {"undated body From", "From a\nS: 1\n\nhello\nFrom here on it is body\n"},
      {"dated, no blank", "From a\nS: 1\n\nhello\nFrom b@c Tue Feb 13 10:20:30 2024\nS: 2\n\ny\n"},
      {"quoting", "From a\n\n>From x\n>>From y\n> From z\n>Fromage\n"},
      {"content-length", "From a\nContent-Length: 16\n\nx\n\nFrom inner\ny\n\nFrom b\n\nz\n"},
      {"duplicates", msg("a@b", "same", "body") + "\n" + msg("a@b", "same", "body") + "\n" +
                         msg("c@d", "other", "x")},
      {"x-uidl dup", "From a\nX-UIDL: u1\n\nx\n\nFrom b\nX-UIDL: u1\n\ny\n\nFrom c\n\nz\n"},
      {"8-bit", "From a\n\n\0\xff\xfe\n"s},
      // Deleting b gives "From weak" a non-blank predecessor: the update inserts a blank line.
      {"undated after deletion",
       "From a Mon Jan  1 00:00:00 2024\nS: 1\n\nx\nFrom b Mon Jan  1 00:00:01 2024\nS: 2\n\n"
       "y\n\nFrom weak\nS: 3\n\nz\nFrom c Mon Jan  1 00:00:02 2024\nS: 4\n\nw\n"},
  };
  std::string many;
  for (int i = 1; i <= 12; ++i) {
    many += msg("s" + std::to_string(i) + "@example.org", "m" + std::to_string(i),
                "Body " + std::to_string(i) + "\n>From quoted\n" + std::string(i * 40, 'x')) +
            (i % 3 == 0 ? "" : "\n");
  }
  out.emplace_back("many", many);
  const fs::path dir = fixture_dir();
  if (fs::exists(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".mbox") {
        out.emplace_back(e.path().filename().string(), read_file(e.path().string()));
      }
    }
  }
  return out;
}

std::vector<parse_options> all_options() {
  std::vector<parse_options> out;
  for (quoting q : {quoting::mboxo, quoting::mboxrd, quoting::none}) {
    for (bool cl : {false, true}) {
      for (bool x : {true, false}) {
        out.push_back(parse_options{q, cl, x});
      }
    }
  }
  return out;
}

// A subset for the file tests, each option changed once.
std::vector<parse_options> some_options() {
  return {parse_options{quoting::mboxo, false, true}, parse_options{quoting::mboxrd, false, true},
          parse_options{quoting::none, false, false}, parse_options{quoting::mboxo, true, true}};
}

void expect_same_scan(const scan_result& a, const scan_result& b) {
  ASSERT_EQ(a.messages.size(), b.messages.size());
  EXPECT_EQ(a.scanned_size, b.scanned_size);
  EXPECT_EQ(a.tail_fingerprint, b.tail_fingerprint);
  for (std::size_t i = 0; i < a.messages.size(); ++i) {
    SCOPED_TRACE("message " + std::to_string(i + 1));
    const auto& x = a.messages[i];
    const auto& y = b.messages[i];
    EXPECT_EQ(x.separator, y.separator);
    EXPECT_EQ(x.content, y.content);
    EXPECT_EQ(x.end, y.end);
    EXPECT_EQ(x.extent_end, y.extent_end);
    EXPECT_EQ(x.size, y.size);
    EXPECT_EQ(x.from_line_length, y.from_line_length);
    EXPECT_EQ(x.from_fingerprint, y.from_fingerprint);
    EXPECT_EQ(x.unquote, y.unquote);
    EXPECT_EQ(x.dated_separator, y.dated_separator);
    EXPECT_EQ(x.ends_with_blank_line, y.ends_with_blank_line);
    EXPECT_EQ(x.uidl_collided, y.uidl_collided);
    EXPECT_EQ(x.uidl, y.uidl);
    if (a.digest_seed == b.digest_seed) {
      EXPECT_EQ(x.digest, y.digest);
    }
  }
}

options mbox_options(const parse_options& po) {
  options o;
  o.locking.timeout = std::chrono::milliseconds(300);
  o.from_quoting = po.from_quoting;
  o.honour_content_length = po.honour_content_length;
  o.use_x_uidl = po.use_x_uidl;
  return o;
}

// Waits until the file system's clock has passed the file's timestamps, so that a scan
// starting now may record a stable stamp.
void wait_for_file_system_tick(const std::string& dir, const std::string& file) {
  const std::string probe = dir + "/.probe";
  for (int i = 0; i < 3000; ++i) {
    write_file(probe, "x");
    struct stat p {};
    struct stat f {};
    ASSERT_EQ(::stat(probe.c_str(), &p), 0);
    ASSERT_EQ(::stat(file.c_str(), &f), 0);
    const auto later = [](const timespec& a, const timespec& b) {
      return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
    };
    if (later(p.st_mtim, f.st_mtim) && later(p.st_mtim, f.st_ctim)) {
      ::unlink(probe.c_str());
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  FAIL() << "the file system clock does not advance";
}

std::array<unsigned char, 32> sha256_of(std::string_view data) {
  std::array<unsigned char, 32> md{};
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha256(), nullptr);
  return md;
}

// Re-seals an index after `mutate` changed its body: a valid length trailer and checksum,
// as a hostile writer would produce.
std::string reseal(const std::string& index, const std::function<void(std::string&)>& mutate) {
  std::string body = index.substr(0, index.size() - 40);
  mutate(body);
  const std::uint64_t len = body.size() + 40;
  for (int i = 0; i < 8; ++i) {
    body += static_cast<char>((len >> (8 * i)) & 0xFF);
  }
  const auto md = sha256_of(body);
  body.append(reinterpret_cast<const char*>(md.data()), md.size());
  return body;
}

index_contents contents_of(std::string_view data, const parse_options& po) {
  index_contents c;
  c.opts = po;
  c.stamp = file_stamp{1, 2, data.size(), 3, 4, 5, 6};
  c.stable = true;
  auto r = scan(data, po);
  EXPECT_TRUE(r.ok());
  c.scan = std::move(*r);
  return c;
}

// ---------------------------------------------------------------------------------------

TEST(mbox_index, round_trip_of_every_input_and_option) {
  for (const auto& [name, data] : inputs()) {
    for (const auto& po : all_options()) {
      SCOPED_TRACE(name);
      const index_contents c = contents_of(data, po);
      auto bytes = encode_index(c);
      ASSERT_TRUE(bytes.ok()) << bytes.err().message();
      auto back = decode_index(*bytes);
      ASSERT_TRUE(back.ok()) << back.err().message();
      EXPECT_EQ(back->stamp, c.stamp);
      EXPECT_EQ(back->stable, c.stable);
      EXPECT_EQ(back->opts.from_quoting, po.from_quoting);
      EXPECT_EQ(back->opts.honour_content_length, po.honour_content_length);
      EXPECT_EQ(back->opts.use_x_uidl, po.use_x_uidl);
      expect_same_scan(back->scan, c.scan);
    }
  }
}

TEST(mbox_index, every_truncation_and_bit_flip_is_rejected) {
  const index_contents c = contents_of(msg("a@b", "1", "one") + "\n" + msg("c@d", "2", "two"), {});
  const std::string bytes = *encode_index(c);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(decode_index(bytes.substr(0, n)).ok()) << "truncated to " << n;
  }
  EXPECT_FALSE(decode_index(bytes + "x").ok());
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    for (int bit : {0, 7}) {
      std::string b = bytes;
      b[i] = static_cast<char>(b[i] ^ (1 << bit));
      EXPECT_FALSE(decode_index(b).ok()) << "flip at " << i;
    }
  }
}

TEST(mbox_index, hostile_sealed_files_are_rejected) {
  // Two small messages: every varint is one byte. Header: 112 bytes; record 1 at 112:
  // From_ length, content offset, extent, end-back, size, flags, fingerprint (8), digest
  // (16), UIDL (20).
  const std::string data = "From a\nX: 1\n\nx\n\nFrom b\nX: 2\n\ny\n";
  const std::string good = *encode_index(contents_of(data, {}));
  ASSERT_TRUE(decode_index(reseal(good, [](std::string&) {})).ok());
  const std::vector<std::pair<std::string, std::function<void(std::string&)>>> cases = {
      {"magic", [](std::string& b) { b[0] = 'X'; }},
      {"version 1 (no identities)", [](std::string& b) { b[8] = 1; }},
      {"version 3", [](std::string& b) { b[8] = 3; }},
      {"unknown option", [](std::string& b) { b[12] = static_cast<char>(b[12] | 0x40); }},
      {"quoting 3", [](std::string& b) { b[12] = static_cast<char>(b[12] | 0x3); }},
      {"scanned beyond size", [](std::string& b) { b[80] = static_cast<char>(b[80] + 100); }},
      {"huge count", [](std::string& b) { b[104 + 7] = 0x7f; }},
      {"count + 1", [](std::string& b) { b[104] = 3; }},
      {"count - 1", [](std::string& b) { b[104] = 1; }},
      {"zero From_ length", [](std::string& b) { b[112] = 0; }},
      {"content past extent", [](std::string& b) { b[113] = 100; }},
      {"extent past scanned", [](std::string& b) { b[114] = static_cast<char>(b[114] + 1); }},
      {"extent short (gap)", [](std::string& b) { b[114] = static_cast<char>(b[114] - 1); }},
      {"end-back too large", [](std::string& b) { b[115] = 60; }},
      {"unknown flag", [](std::string& b) { b[117] = static_cast<char>(b[117] | 0x80); }},
      {"text UIDL with a space",
       [](std::string& b) {
         b[117] = static_cast<char>(b[117] & ~0x10);  // the UIDL becomes "\x14" + 20 bytes
         b[142] = 3;
         b[143] = 'a';
         b[144] = ' ';
         b[145] = 'b';
       }},
      {"non-minimal varint",
       [](std::string& b) {
         b.insert(112, "\x87");
         b[113] = 0;
       }},
      {"trailing bytes", [](std::string& b) { b += "zz"; }},
  };
  for (const auto& [name, mutate] : cases) {
    EXPECT_FALSE(decode_index(reseal(good, mutate)).ok()) << name;
  }
}

// ---------------------------------------------------------------------------------------

class mbox_index_files : public ::testing::Test {
 protected:
  void SetUp() override { box_ = dir_.path() + "/user"; }

  std::string index_path() const { return dir_.path() + "/.user.postern-index"; }

  std::optional<index_contents> index_now() {
    const unique_fd dir(::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    return load_index(dir.get(), side_files_for("user"));
  }

  // Opens, checks the source and that the listing is a full scan's, and closes.
  void open_and_check(const parse_options& po, open_source want, const std::string& data) {
    open_source from = open_source::none;
    options with_from = mbox_options(po);
    with_from.opened_from = &from;
    auto m = open(box_, with_from);
    ASSERT_TRUE(m.ok()) << m.err().message();
    EXPECT_EQ(from, want);
    auto full = scan(data, po);
    ASSERT_TRUE(full.ok());
    const auto msgs = (*m)->messages();
    ASSERT_EQ(msgs.size(), full->messages.size());
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      EXPECT_EQ(msgs[i].size, full->messages[i].size) << i;
      EXPECT_EQ(msgs[i].uidl, full->messages[i].uidl) << i;
      auto r = (*m)->open_message(i, false);
      EXPECT_TRUE(r.ok()) << i;
    }
    m->reset();
    auto idx = index_now();
    ASSERT_TRUE(idx.has_value());
    auto again = scan(data, po, idx->scan.digest_seed);  // the digests too
    ASSERT_TRUE(again.ok());
    expect_same_scan(idx->scan, *again);
  }

  temp_dir dir_;
  std::string box_;
};

TEST_F(mbox_index_files, unchanged_file_opens_from_the_index_with_a_full_scans_list) {
  for (const auto& [name, data] : inputs()) {
    for (const auto& po : all_options()) {
      SCOPED_TRACE(name);
      ::unlink(index_path().c_str());
      write_file(box_, data);
      wait_for_file_system_tick(dir_.path(), box_);
      open_and_check(po, open_source::full_scan, data);
      open_and_check(po, open_source::index, data);
    }
  }
}

TEST_F(mbox_index_files, without_an_index_every_open_scans_and_none_is_kept) {
  const auto all = inputs();
  ASSERT_FALSE(all.empty());
  const auto& [name, data] = all.front();
  SCOPED_TRACE(name);
  write_file(box_, data);
  wait_for_file_system_tick(dir_.path(), box_);
  {
    auto m = open(box_, mbox_options(parse_options{}));  // leaves an index behind
    ASSERT_TRUE(m.ok()) << m.err().message();
  }
  ASSERT_TRUE(index_now().has_value());
  options no_index = mbox_options(parse_options{});
  no_index.use_index = false;
  for (int i = 0; i < 2; ++i) {
    open_source from = open_source::none;
    no_index.opened_from = &from;
    auto m = open(box_, no_index);
    ASSERT_TRUE(m.ok()) << m.err().message();
    EXPECT_EQ(from, open_source::full_scan);
    EXPECT_FALSE(index_now().has_value());
  }
}

TEST_F(mbox_index_files, appended_mail_scans_only_the_new_part) {
  for (const auto& [name, data] : inputs()) {
    for (const auto& po : some_options()) {
      const std::size_t step = std::max<std::size_t>(1, data.size() / 23);
      for (std::size_t split = 0; split < data.size(); split += step) {
        SCOPED_TRACE(name + " split at " + std::to_string(split));
        ::unlink(index_path().c_str());
        write_file(box_, data.substr(0, split));
        open_and_check(po, open_source::full_scan, data.substr(0, split));
        append_file(box_, data.substr(split));
        const auto prefix = scan(data.substr(0, split), po);
        const bool resumable = !prefix->messages.empty() && !po.honour_content_length &&
                               prefix->messages.front().separator == 0;
        open_and_check(po, resumable ? open_source::appended_scan : open_source::full_scan, data);
      }
    }
  }
}

TEST_F(mbox_index_files, commit_writes_the_index_of_the_new_file) {
  for (const auto& [name, data] : inputs()) {
    for (const auto& po : some_options()) {
      const auto full = scan(data, po);
      const std::size_t n = full->messages.size();
      if (n < 2) {
        continue;
      }
      std::vector<std::vector<bool>> patterns;
      for (std::size_t k = 0; k < n; ++k) {
        std::vector<bool> one(n, false);
        one[k] = true;
        patterns.push_back(one);
      }
      std::vector<bool> alternate(n, false);
      for (std::size_t k = 0; k < n; k += 2) {
        alternate[k] = true;
      }
      patterns.push_back(alternate);
      std::vector<bool> all_but_last(n, true);
      all_but_last[n - 1] = false;
      patterns.push_back(all_but_last);
      for (bool appended : {false, true}) {
        for (const auto& del : patterns) {
          SCOPED_TRACE(name + (appended ? " with mail appended" : ""));
          ::unlink(index_path().c_str());
          write_file(box_, data);
          {
            auto m = open(box_, mbox_options(po));
            ASSERT_TRUE(m.ok());
            if (appended) {
              append_file(box_, "\n" + msg("late@example.org", "late", "new mail"));
            }
            bool flags[64] = {};
            for (std::size_t k = 0; k < n && k < 64; ++k) {
              flags[k] = del[k];
            }
            ASSERT_LE(n, 64U);
            auto c = (*m)->commit(std::span<const bool>(flags, n));
            ASSERT_TRUE(c.ok()) << c.err().message();
          }
          const std::string now = read_file(box_);
          auto idx = index_now();
          if (idx) {
            auto want = scan(std::string_view(now).substr(0, idx->scan.scanned_size), po,
                             idx->scan.digest_seed);
            expect_same_scan(idx->scan, *want);
            const bool resumable =
                !idx->scan.messages.empty() && idx->scan.messages.front().separator == 0;
            const auto src = idx->scan.scanned_size < now.size()
                                 ? (resumable ? open_source::appended_scan : open_source::full_scan)
                             : idx->stable ? open_source::index
                                           : open_source::full_scan;
            open_and_check(po, src, now);
          } else {
            open_and_check(po, open_source::full_scan, now);
          }
        }
      }
    }
  }
}

TEST_F(mbox_index_files, login_right_after_a_change_still_writes_a_stable_index) {
  // As a delivery just before the login, or a spool copied into place: the login waits for
  // the clock tick, so the next login is served from the index.
  const std::string data = msg("a@b", "1", "one") + "\n" + msg("c@d", "2", "two");
  for (int round = 0; round < 5; ++round) {
    write_file(box_, data);
    struct stat st {};
    ASSERT_EQ(::stat(box_.c_str(), &st), 0);
    if (st.st_mtim.tv_nsec == 0) {
      GTEST_SKIP() << "timestamps in whole seconds here";
    }
    open_and_check({}, open_source::full_scan, data);
    auto idx = index_now();
    ASSERT_TRUE(idx.has_value());
    EXPECT_TRUE(idx->stable);
    open_and_check({}, open_source::index, data);
    ::unlink(index_path().c_str());
  }
}

TEST_F(mbox_index_files, corrupt_foreign_or_mismatched_indexes_are_ignored) {
  const std::string data = msg("a@b", "1", "one") + "\n" + msg("c@d", "2", "two");
  write_file(box_, data);
  wait_for_file_system_tick(dir_.path(), box_);
  open_and_check({}, open_source::full_scan, data);
  open_and_check({}, open_source::index, data);
  // Other options: scanned again.
  open_and_check(parse_options{quoting::mboxrd, false, true}, open_source::full_scan, data);
  open_and_check(parse_options{quoting::mboxrd, false, true}, open_source::index, data);
  // A damaged file.
  std::string bytes = read_file(index_path());
  bytes[bytes.size() / 2] ^= 1;
  write_file(index_path(), bytes);
  open_and_check(parse_options{quoting::mboxrd, false, true}, open_source::full_scan, data);
  // Writable by others.
  ASSERT_EQ(::chmod(index_path().c_str(), 0666), 0);
  open_and_check(parse_options{quoting::mboxrd, false, true}, open_source::full_scan, data);
  // A symbolic link.
  ::unlink(index_path().c_str());
  write_file(dir_.path() + "/elsewhere", read_file(box_));
  ASSERT_EQ(::symlink("elsewhere", index_path().c_str()), 0);
  open_source from = open_source::none;
  options with_from = mbox_options({});
  with_from.opened_from = &from;
  auto m = open(box_, with_from);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(from, open_source::full_scan);
}

TEST_F(mbox_index_files, same_size_rewrite_with_restored_mtime_is_rescanned) {
  const std::string data = msg("a@b", "1", "one") + "\n" + msg("c@d", "2", "two");
  write_file(box_, data);
  wait_for_file_system_tick(dir_.path(), box_);
  open_and_check({}, open_source::full_scan, data);
  struct stat before {};
  ASSERT_EQ(::stat(box_.c_str(), &before), 0);
  std::string changed = data;
  changed[changed.find("one")] = 'O';
  unique_fd fd(::open(box_.c_str(), O_WRONLY));
  ASSERT_EQ(::pwrite(fd.get(), changed.data(), changed.size(), 0),
            static_cast<ssize_t>(changed.size()));
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::futimens(fd.get(), times), 0);
  fd.reset();
  open_and_check({}, open_source::full_scan, changed);
}

TEST_F(mbox_index_files, hostile_index_is_caught_by_the_identity_checks_and_loses_nothing) {
  std::string data;
  for (int i = 1; i <= 5; ++i) {
    data += msg("s@example.org", std::to_string(i), "body " + std::to_string(i)) + "\n";
  }
  write_file(box_, data);
  wait_for_file_system_tick(dir_.path(), box_);
  open_and_check({}, open_source::full_scan, data);
  // A forged index that matches the file's stamp, first and last From_ lines and tail, but
  // moves message 3 by a few bytes.
  auto idx = index_now();
  ASSERT_TRUE(idx.has_value());
  auto& ms = idx->scan.messages;
  ms[1].extent_end += 3;
  ms[1].end += 3;
  ms[2].separator += 3;
  ms[2].content += 3;
  {
    const unique_fd dir(::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(save_index(dir.get(), side_files_for("user"), *idx).ok());
  }
  {
    open_source from = open_source::none;
    options with_from = mbox_options({});
    with_from.opened_from = &from;
    auto m = open(box_, with_from);
    ASSERT_TRUE(m.ok());
    ASSERT_EQ(from, open_source::index);
    auto r = (*m)->open_message(2, false);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.err().code(), errc::temporary);
    bool del[5] = {true, false, true, false, false};
    auto c = (*m)->commit(std::span<const bool>(del, 5));
    EXPECT_FALSE(c.ok());
  }
  EXPECT_EQ(read_file(box_), data);       // nothing lost, nothing changed
  EXPECT_FALSE(index_now().has_value());  // and the next login scans
  open_and_check({}, open_source::full_scan, data);
}

// The file's stamp alone never makes an index trusted: one that matches the stamp but fails
// the spot check (here its tail fingerprint, as after a same-size edit whose timestamps were
// restored) is scanned again, and its forged UIDL is never listed.
TEST_F(mbox_index_files, index_failing_the_spot_check_is_not_used_although_the_stamp_matches) {
  const std::string data = msg("a@b", "1", "one") + "\n" + msg("c@d", "2", "two");
  write_file(box_, data);
  wait_for_file_system_tick(dir_.path(), box_);
  open_and_check({}, open_source::full_scan, data);
  auto idx = index_now();
  ASSERT_TRUE(idx.has_value());
  idx->scan.tail_fingerprint ^= 1;
  idx->scan.messages[0].uidl = "forged-uidl";
  {
    const unique_fd dir(::open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(save_index(dir.get(), side_files_for("user"), *idx).ok());
  }
  ASSERT_TRUE(index_now().has_value());  // the forged index is well formed
  open_and_check({}, open_source::full_scan, data);
}

// Five list posts: one sender, one second, one footer (defect 2 of issue 10).
std::string list_posts(int n) {
  std::string data;
  for (int i = 1; i <= n; ++i) {
    data +=
        "From list@example.org Mon Jan  1 00:00:00 2024\nStatus: O\nX-Status: \n"
        "Subject: post " +
        std::string(static_cast<std::size_t>(i), '+') + "\n\nText " + std::to_string(i) +
        "\n-- \nthe list footer\n\n";
  }
  return data;
}

void pwrite_at(const std::string& path, std::size_t off, std::string_view bytes) {
  const unique_fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd);
  ASSERT_EQ(::pwrite(fd.get(), bytes.data(), bytes.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(bytes.size()));
}

TEST_F(mbox_index_files, same_length_edit_then_delivery_is_rescanned) {
  // Mutt toggles a flag in message 2 (same length), then mail is delivered: the old region
  // is proved unchanged or scanned again, never taken from the index as it was.
  std::string data = list_posts(4);
  write_file(box_, data);
  open_and_check({}, open_source::full_scan, data);
  const std::size_t flag = data.find("X-Status: \n", data.find("post ++"));
  data.replace(flag, 11, "X-Status: A");
  // And a body line of message 3 corrected, same length (its UIDL changes).
  data.replace(data.find("Text 3"), 6, "Text C");
  pwrite_at(box_, 0, data);
  const std::string late = msg("late@example.org", "late", "new mail");
  append_file(box_, late);
  data += late;
  open_and_check({}, open_source::full_scan, data);
  open_and_check({}, open_source::index, data);
}

TEST_F(mbox_index_files, swapped_messages_then_delivery_are_rescanned) {
  const std::string data = list_posts(4);
  write_file(box_, data);
  open_and_check({}, open_source::full_scan, data);
  auto r = scan(data, {});
  ASSERT_TRUE(r.ok());
  const auto part = [&](std::size_t i) {
    const auto& m = r->messages[i];
    return data.substr(m.separator, m.extent_end - m.separator);
  };
  std::string swapped = part(0) + part(2) + part(1) + part(3);
  ASSERT_EQ(swapped.size(), data.size());
  pwrite_at(box_, 0, swapped);
  const std::string late = msg("late@example.org", "late", "new mail");
  append_file(box_, late);
  swapped += late;
  open_and_check({}, open_source::full_scan, swapped);
  // Deleting works at once, and at every later login.
  {
    auto m = open(box_, mbox_options({}));
    ASSERT_TRUE(m.ok());
    const bool del[] = {true, false, false, false, false};
    auto c = (*m)->commit(del);
    ASSERT_TRUE(c.ok()) << c.err().message();
  }
  const std::string after = swapped.substr(part(0).size());
  EXPECT_EQ(read_file(box_), after);
  open_and_check({}, open_source::index, after);
}

TEST_F(mbox_index_files, a_message_that_changed_under_a_session_removes_the_index) {
  std::string data = list_posts(3);
  write_file(box_, data);
  open_and_check({}, open_source::full_scan, data);
  open_source from = open_source::none;
  options with_from = mbox_options({});
  with_from.opened_from = &from;
  auto m = open(box_, with_from);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(from, open_source::index);
  data.replace(data.find("Text 2"), 6, "Text B");
  pwrite_at(box_, 0, data);
  auto r = (*m)->open_message(1, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), errc::temporary);
  EXPECT_FALSE(index_now().has_value());
  // The session reads and deletes nothing more.
  EXPECT_FALSE((*m)->open_message(0, false).ok());
  const bool del[] = {true, false, false};
  EXPECT_FALSE((*m)->commit(del).ok());
  m->reset();
  EXPECT_EQ(read_file(box_), data);
  open_and_check({}, open_source::full_scan, data);
}

TEST_F(mbox_index_files, commit_after_an_edit_before_the_first_deleted_one_keeps_no_stale_index) {
  std::string data = list_posts(4);
  write_file(box_, data);
  open_and_check({}, open_source::full_scan, data);
  auto r = scan(data, {});
  ASSERT_TRUE(r.ok());
  const std::uint64_t third = r->messages[2].separator;
  const std::uint64_t fourth = r->messages[3].separator;
  {
    auto m = open(box_, mbox_options({}));
    ASSERT_TRUE(m.ok());
    // During the session: message 1 edited in place (same length), mail delivered.
    data.replace(data.find("Text 1"), 6, "Text A");
    pwrite_at(box_, 0, data.substr(0, 200));
    const std::string late = msg("late@example.org", "late", "new mail");
    append_file(box_, late);
    data += late;
    const bool del[] = {false, false, true, false};
    auto c = (*m)->commit(del);
    ASSERT_TRUE(c.ok()) << c.err().message();
  }
  data.erase(third, fourth - third);
  EXPECT_EQ(read_file(box_), data);
  EXPECT_FALSE(index_now().has_value());
  open_and_check({}, open_source::full_scan, data);
}

// Random foreign edits (same-length edits, swaps, in-place deletions, deliveries), between
// sessions and during them, with random deletions at QUIT. Every listing must be a fresh
// scan's, and a commit either deletes exactly the marked messages or nothing.
TEST_F(mbox_index_files, randomized_foreign_edits_deliveries_and_sessions) {
  std::mt19937 rng(20261207);
  int next_id = 0;
  // Equal From_ lines, equal footers, equal lengths: only the identities tell them apart.
  const auto entry = [&next_id] {
    char id[8];
    std::snprintf(id, sizeof id, "%05d", next_id++);
    return "From list@example.org Mon Jan  1 00:00:00 2024\nMessage-ID: <" + std::string(id) +
           "@x>\nX-Status: A\n\nText of post " + std::string(id) + ".\n-- \nthe footer\n\n";
  };
  const auto id_of = [](const std::string& e) { return e.substr(e.find("<") + 1, 5); };
  std::vector<std::string> entries;
  for (int i = 0; i < 6; ++i) {
    entries.push_back(entry());
  }
  const auto join = [](const std::vector<std::string>& es) {
    std::string out;
    for (const auto& e : es) {
      out += e;
    }
    return out;
  };
  const auto rewrite = [this](const std::string& data) {  // same inode, as mutt does
    const unique_fd fd(::open(box_.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(data.size())), 0);
  };
  // One foreign change; returns false when it was a delivery (or nothing).
  const auto foreign = [&]() -> bool {
    const std::size_t n = entries.size();
    switch (rng() % 5) {
      case 0: {  // a same-length edit: a flag toggled
        std::string& e = entries[rng() % n];
        const std::size_t at = e.find("X-Status: ") + 10;
        e[at] = e[at] == 'A' ? 'F' : 'A';
        break;
      }
      case 1: {  // two messages swapped
        if (n < 2) {
          return false;
        }
        const std::size_t i = rng() % n;
        std::swap(entries[i], entries[(i + 1 + rng() % (n - 1)) % n]);
        break;
      }
      case 2:  // one deleted in place
        if (n < 2) {
          return false;
        }
        entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(rng() % n));
        break;
      case 3: {  // a delivery
        entries.push_back(entry());
        append_file(box_, entries.back());
        return false;
      }
      default:
        return false;
    }
    rewrite(join(entries));
    return true;
  };
  const auto check_listing = [&](maildrop& m) {
    const std::string data = read_file(box_);
    auto full = scan(data, {});
    ASSERT_TRUE(full.ok());
    const auto msgs = m.messages();
    ASSERT_EQ(msgs.size(), full->messages.size());
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      EXPECT_EQ(msgs[i].size, full->messages[i].size) << i;
      EXPECT_EQ(msgs[i].uidl, full->messages[i].uidl) << i;
    }
  };
  write_file(box_, join(entries));
  for (int round = 0; round < 300; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    if (rng() % 2 == 0) {
      foreign();
    }
    auto m = open(box_, mbox_options({}));
    ASSERT_TRUE(m.ok()) << m.err().message();
    check_listing(**m);
    const std::vector<std::string> listed = entries;
    const bool changed = rng() % 3 == 0 && foreign();
    const std::string before_commit = read_file(box_);
    std::vector<char> del(listed.size(), 0);
    std::set<std::string> deleted_ids;
    for (std::size_t i = 0; i < listed.size(); ++i) {
      if (listed.size() - deleted_ids.size() > 2 && rng() % 4 == 0) {
        del[i] = 1;
        deleted_ids.insert(id_of(listed[i]));
      }
    }
    const std::size_t probe = rng() % listed.size();
    auto r = (*m)->open_message(probe, false);
    if (!changed) {
      ASSERT_TRUE(r.ok()) << r.err().message();
    }
    const std::vector<bool> marks(del.begin(), del.end());
    bool flags[64] = {};
    std::copy(marks.begin(), marks.end(), flags);
    auto c = (*m)->commit(std::span<const bool>(flags, listed.size()));
    if (!changed) {
      ASSERT_TRUE(c.ok()) << c.err().message();
    }
    if (c.ok()) {
      std::vector<std::string> kept;
      for (const auto& e : entries) {
        if (deleted_ids.count(id_of(e)) == 0) {
          kept.push_back(e);
        }
      }
      entries = std::move(kept);
      ASSERT_EQ(read_file(box_), join(entries));
    } else {
      ASSERT_EQ(read_file(box_), before_commit);  // nothing deleted
    }
    m->reset();
    if (entries.size() < 4) {
      entries.push_back(entry());
      append_file(box_, entries.back());
    }
  }
  auto last = open(box_, mbox_options({}));
  ASSERT_TRUE(last.ok());
  check_listing(**last);
}

}  // namespace
}  // namespace postern::store::mbox
