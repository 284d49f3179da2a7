// Fuzz target: the TOML configuration (src/server/config.hpp, parse_config from a string).
// Properties: no crash, no exception escapes; a refused text gets a message naming the
// file; an accepted one formats (the --check-config output) to text that parses again and
// formats identically.
#include "fuzz/fuzz_check.hpp"
#include "server/config.hpp"

#include <cstdio>
#include <string>

namespace server = postern::server;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto c = server::parse_config(text, "fuzz.toml");
  if (!c.ok()) {
    FUZZ_CHECK(c.err().message().find("fuzz.toml") != std::string::npos);
    return 0;
  }
  const std::string shown = server::format_config(*c);
  const auto again = server::parse_config(shown, "fuzz.toml");
  if (!again.ok()) {
    std::fprintf(stderr, "%s\n--- refused: %s\n", shown.c_str(), again.err().message().c_str());
  }
  FUZZ_CHECK(again.ok());
  const std::string shown_again = server::format_config(*again);
  if (shown_again != shown) {
    std::fprintf(stderr, "%s\n--- formats again as:\n%s\n", shown.c_str(), shown_again.c_str());
  }
  FUZZ_CHECK(shown_again == shown);
  return 0;
}
