// secret_string: holds a password or other credential. The bytes are wiped when the object
// is destroyed or reassigned, and the type cannot be streamed or formatted, so a secret cannot
// reach a log by accident. Move-only.
#pragma once

#include <openssl/crypto.h>

#include <string>
#include <string_view>
#include <utility>

namespace postern {

class secret_string {
 public:
  secret_string() = default;
  explicit secret_string(std::string_view s) : s_(s) {}
  secret_string(const secret_string&) = delete;
  secret_string& operator=(const secret_string&) = delete;
  secret_string(secret_string&& o) noexcept : s_(std::move(o.s_)) { o.wipe(); }
  secret_string& operator=(secret_string&& o) noexcept {
    if (this != &o) {
      wipe();
      s_ = std::move(o.s_);
      o.wipe();
    }
    return *this;
  }
  ~secret_string() { wipe(); }

  // Valid while this object lives and is not modified.
  std::string_view view() const noexcept { return s_; }
  const char* c_str() const noexcept { return s_.c_str(); }
  bool empty() const noexcept { return s_.empty(); }
  std::size_t size() const noexcept { return s_.size(); }

  void wipe() noexcept {
    if (!s_.empty()) {
      OPENSSL_cleanse(s_.data(), s_.size());
    }
    s_.clear();
  }

 private:
  std::string s_;
};

}  // namespace postern
