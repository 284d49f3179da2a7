// Logging: one line per event to syslog (facility mail) or stderr.
//
// Thread-safe: each line is written with a single write(2) or syslog(3) call. init() is called
// once at startup before other threads exist. Client-supplied text must go through
// log::client() so that it can forge neither a field nor a line; secrets are never passed here.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace postern::log {

enum class level { debug = 0, info, notice, warning, error };

// target_syslog: syslog with `ident`, facility mail; otherwise stderr.
void init(bool target_syslog, level min_level, const std::string& ident);
bool enabled(level l) noexcept;
// Writes `message` as one line: control bytes in it (CR, LF, ...) are written as \xNN.
void write(level l, std::string_view message);

// The one escaping of client-supplied text (user names, SASL identities, mechanism names,
// command words) in log lines: control bytes, bytes outside ASCII, space and the field
// punctuation < > , = \ " ' become \xNN, so the text can neither end its field nor the line;
// output past 256 bytes is cut and ends in "...".
std::string client(std::string_view client_text);

// For text that is not the client's but may hold any byte (paths, certificate names, values
// from the configuration): control bytes, bytes outside ASCII and '\' become \xNN; cut like
// client().
std::string safe(std::string_view text);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level::debug)) {
    write(level::debug, fmt::format(f, std::forward<Args>(args)...));
  }
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level::info)) {
    write(level::info, fmt::format(f, std::forward<Args>(args)...));
  }
}
template <typename... Args>
void notice(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level::notice)) {
    write(level::notice, fmt::format(f, std::forward<Args>(args)...));
  }
}
template <typename... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level::warning)) {
    write(level::warning, fmt::format(f, std::forward<Args>(args)...));
  }
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level::error)) {
    write(level::error, fmt::format(f, std::forward<Args>(args)...));
  }
}

}  // namespace postern::log
