// Writes the seed inputs of the decoder targets that need bytes an encoder produces:
// fuzz/corpus/{mbox_index,maildir_index,mbox_journal}/seed-*. Each seed is a file's body
// without its trailer or check line (the targets append a valid one). Not built by default:
//   cmake --build build --target fuzz_make_seeds && build/fuzz_make_seeds fuzz/corpus
#include "store/maildir/index.hpp"
#include "store/mbox/index.hpp"
#include "store/mbox/journal.hpp"

#include <cstdio>
#include <fstream>
#include <string>

namespace maildir = postern::store::maildir;
namespace mbox = postern::store::mbox;

namespace {

void write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  std::printf("%s: %zu bytes\n", path.c_str(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  const std::string mboxes[] = {
      "From a Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n\nFrom b\nX-UIDL: u1\n\n>From y\n",
      "From a\r\nContent-Length: 3\r\n\r\nabc\r\n",
  };
  int n = 0;
  for (const auto& data : mboxes) {
    for (const bool cl : {false, true}) {
      mbox::parse_options po;
      po.honour_content_length = cl;
      po.use_x_uidl = cl;
      mbox::index_contents c;
      c.stamp = mbox::file_stamp{1, 2, data.size(), 1700000000, 5, 1700000001, 6};
      c.stable = cl;
      c.opts = po;
      c.scan = *mbox::scan(data, po, 42);
      const std::string file = *mbox::encode_index(c);
      write(root + "/mbox_index/seed-" + std::to_string(++n), file.substr(0, file.size() - 40));
    }
  }

  maildir::index_contents m;
  m.new_dir = maildir::dir_stamp{1, 2, 4096, {1700000000, 1}, {1700000001, 2}};
  m.cur_dir = maildir::dir_stamp{1, 3, 8192, {1700000002, 0}, {1700000003, 7}};
  m.listed_at = {1700000004, 123456789};
  write(root + "/maildir_index/seed-empty", maildir::encode_index(m).substr(0, 8 + 8 + 112 + 24));
  m.records = {
      maildir::index_record{
          "1700000000.M1P2.host:2,S", 1934, 77, false, 1900, {1700000005, 42}, true},
      maildir::index_record{"1700000001.M2P2.host,S=10,W=12", 12, 78, true},
  };
  const std::string idx = maildir::encode_index(m);
  write(root + "/maildir_index/seed-two", idx.substr(0, idx.size() - 24));

  for (const auto st : {mbox::journal_header::state::redo, mbox::journal_header::state::trunc}) {
    mbox::journal_header h;
    h.st = st;
    h.ino = 1234;
    h.start = 100;
    h.old_size = 5000;
    h.new_size = 4000;
    h.payload_size = 3900;
    const std::string d(64, 'a');
    h.prefix_digest = h.gap_digest = h.payload_digest = h.cells_digest = d;
    const std::string text = *mbox::format_journal_header(h);
    write(root + "/mbox_journal/seed-" +
              std::string(st == mbox::journal_header::state::redo ? "redo" : "trunc"),
          text.substr(0, text.rfind("check ")));
  }
  return 0;
}
