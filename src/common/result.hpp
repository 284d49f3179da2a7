// result<T>: the return type of every fallible function in Postern.
//
// Shaped like std::expected (C++23, which clang 14 cannot build from libstdc++ 12): either a
// value or an `error`. An error carries a Postern code that says how a caller should react,
// the std::error_code cause (errno is converted inside the syscall wrapper, never later) and a
// short context string that never holds secrets. Not thread-safe; move it like a value.
#pragma once

#include <cassert>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

namespace postern {

// How the failure should be treated by whoever handles it.
enum class errc {
  ok = 0,
  temporary,  // environment failure that may pass: disk, lock timeout, backend down
  permanent,  // environment failure that will not pass by retrying: bad path, corrupt
  in_use,     // the resource is held by someone else (maildrop lock)
  not_found,  // the named thing does not exist
  invalid,    // malformed input (config value, file content)
  denied,     // credentials or permissions refused
  changed,    // the thing changed since it was listed (a message rewritten by another
              // program): the listing given is stale for it until the next open
};

const char* to_string(errc code) noexcept;

class error {
 public:
  error() = default;
  error(errc code, std::string context, std::error_code cause = {})
      : code_(code), cause_(cause), context_(std::move(context)) {}

  static error from_errno(int err, std::string context, errc code = errc::temporary) {
    return error(code, std::move(context), std::error_code(err, std::generic_category()));
  }

  errc code() const noexcept { return code_; }
  const std::error_code& cause() const noexcept { return cause_; }
  const std::string& context() const noexcept { return context_; }
  // "context: cause message" for logs.
  std::string message() const;

 private:
  errc code_ = errc::temporary;
  std::error_code cause_;
  std::string context_;
};

template <typename T>
class [[nodiscard]] result {
 public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  result(error err) : v_(std::in_place_index<1>, std::move(err)) {}  // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const error& err() const& {
    assert(!ok());
    return std::get<1>(v_);
  }
  error&& err() && {
    assert(!ok());
    return std::get<1>(std::move(v_));
  }

 private:
  std::variant<T, error> v_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  result() = default;
  result(error err) : err_(std::move(err)), ok_(false) {}  // NOLINT

  bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const error& err() const& {
    assert(!ok_);
    return err_;
  }
  error&& err() && {
    assert(!ok_);
    return std::move(err_);
  }

 private:
  error err_;
  bool ok_ = true;
};

inline result<void> ok_result() { return {}; }

}  // namespace postern

// Propagates an error result in one line: POSTERN_TRY(do_thing());
#define POSTERN_TRY(expr)                     \
  do {                                        \
    auto postern_try_r_ = (expr);             \
    if (!postern_try_r_.ok()) {               \
      return std::move(postern_try_r_).err(); \
    }                                         \
  } while (0)
