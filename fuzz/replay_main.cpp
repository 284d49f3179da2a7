// Replays a fuzz target's corpus without libFuzzer: every regular file of each directory (or
// each file) named on the command line is passed once to LLVMFuzzerTestOneInput. Built in
// every test build, so the corpora run as ordinary ctest cases (fuzz_replay.<target>) under
// GCC and under ASan+UBSan; a failed property aborts, which fails the test.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

int run_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fuzz replay: cannot read %s\n", p.c_str());
    return 1;
  }
  const std::vector<char> bytes{std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>()};
  // A copy of exactly the file's size, so ASan sees a read past the end of the input.
  std::vector<std::uint8_t> exact(bytes.begin(), bytes.end());
  LLVMFuzzerTestOneInput(exact.empty() ? nullptr : exact.data(), exact.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  int failures = 0;
  std::size_t files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    if (std::filesystem::is_directory(arg)) {
      std::vector<std::filesystem::path> paths;
      for (const auto& e : std::filesystem::directory_iterator(arg)) {
        if (e.is_regular_file()) {
          paths.push_back(e.path());
        }
      }
      std::sort(paths.begin(), paths.end());
      for (const auto& p : paths) {
        failures += run_file(p);
        ++files;
      }
    } else {
      failures += run_file(arg);
      ++files;
    }
  }
  std::printf("fuzz replay: %zu inputs, %d unreadable\n", files, failures);
  return failures == 0 && files > 0 ? 0 : 1;
}
