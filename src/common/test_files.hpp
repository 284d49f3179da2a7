// Test-only helpers for unit tests that work on real files: a scratch directory and whole-file
// reads and writes. Not part of the server.
#pragma once

#include <stdlib.h>

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace postern::test {

// A fresh directory <temp>/<prefix>-XXXXXX, removed with everything in it at destruction
// (after giving the owner back full access, so that a test's chmod cannot leave it behind).
class temp_dir {
 public:
  explicit temp_dir(std::string_view prefix = "postern-test") {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      const int err = errno;
      throw std::system_error(err, std::generic_category(), "mkdtemp " + tmpl);
    }
    path_ = std::move(tmpl);
  }
  ~temp_dir() {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    for (auto it = fs::recursive_directory_iterator(path_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_symlink()) {
        fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
      }
    }
    fs::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const noexcept { return path_; }
  // path() + "/" + name
  std::string operator/(std::string_view name) const {
    std::string out = path_;
    out += '/';
    out += name;
    return out;
  }

 private:
  std::string path_;
};

namespace detail {
inline void put_file(const std::filesystem::path& p, std::string_view data,
                     std::ios::openmode mode) {
  std::ofstream out(p, std::ios::binary | mode);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) {
    throw std::runtime_error("cannot write " + p.string());
  }
}
}  // namespace detail

// Replaces the file's content with `data` (creating it); throws if that fails.
inline void write_file(const std::filesystem::path& p, std::string_view data) {
  detail::put_file(p, data, std::ios::trunc);
}

// Adds `data` at the end of the file (creating it); throws if that fails.
inline void append_file(const std::filesystem::path& p, std::string_view data) {
  detail::put_file(p, data, std::ios::app);
}

// The file's whole content; empty if it cannot be read (tests compare it with what they want).
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// `relative` (e.g. "tests/fixtures/mbox") inside the source tree this header belongs to.
inline std::filesystem::path source_path(std::string_view relative) {
  std::filesystem::path here(__FILE__);  // <top>/src/common/test_files.hpp
  if (here.is_relative()) {
    here = std::filesystem::current_path() / here;
  }
  return here.parent_path().parent_path().parent_path() / relative;
}

// A message of `size` bytes with LF line ends, lines starting with dots and long CRLF lines:
// for tests of streaming and mapping large messages.
inline std::string sample_message(std::size_t size) {
  std::string s;
  s.reserve(size);
  for (std::size_t line = 0; s.size() < size; ++line) {
    if (line % 7 == 0) {
      s += ".dot-stuffed line\n";
    } else if (line % 11 == 0) {
      s += std::string(5000, 'x') + "\r\n";
    } else {
      s += "Line " + std::to_string(line) + " of the message body\n";
    }
  }
  s.resize(size);
  return s;
}

// Message bodies that end and mix line ends in every way the wire size must count (no final
// newline, lone CR, CR LF, runs of empty lines, a dot line, large ones). The dot encoder's and
// the stores' tests both check their sizes with these.
inline std::vector<std::string> line_end_samples() {
  return {
      "",
      "a\n",
      "a",
      "a\r",
      "a\r\n",
      "Subject: x\n\nno eol",
      "x\n\n",
      ".dot\n.",
      "a\nb\r\nc",
      "\n",
      "\r",
      "a\r\r",
      "line\n\r\n",
      std::string(70000, 'y'),
      std::string(70000, '\n') + "z",
      std::string(32, 'x') + "y",
  };
}

}  // namespace postern::test
