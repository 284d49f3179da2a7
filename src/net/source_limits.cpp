#include "net/source_limits.hpp"

#include <functional>
#include <string_view>

namespace postern::net {

std::size_t source_limits::addr_hash::operator()(const asio::ip::address& a) const noexcept {
  return hash_address(a);
}

std::size_t source_limits::hash_address(const asio::ip::address& a) noexcept {
  if (a.is_v4()) {
    return std::hash<std::uint32_t>()(a.to_v4().to_uint());
  }
  auto bytes = a.to_v6().to_bytes();
  return std::hash<std::string_view>()(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::size_t connection_pacer::addr_hash::operator()(const asio::ip::address& a) const noexcept {
  return source_limits::hash_address(a);
}

bool connection_pacer::admit(const asio::ip::address& addr,
                             std::chrono::steady_clock::time_point now) {
  if (interval_.count() <= 0) {
    return true;
  }
  std::lock_guard lock(mu_);
  if (last_start_.size() >= 1024) {
    std::erase_if(last_start_, [&](const auto& kv) { return now - kv.second >= interval_; });
  }
  auto [it, fresh] = last_start_.try_emplace(addr, now);
  if (!fresh) {
    if (now - it->second < interval_) {
      return false;
    }
    it->second = now;
  }
  return true;
}

bool source_limits::acquire(const asio::ip::address& addr, refusal& why) {
  std::lock_guard lock(mu_);
  if (max_total_ > 0 && total_ >= max_total_) {
    why = refusal::total;
    return false;
  }
  auto& count = per_source_[addr];
  if (max_per_source_ > 0 && count >= max_per_source_) {
    why = refusal::per_source;
    return false;
  }
  ++count;
  ++total_;
  why = refusal::none;
  return true;
}

std::optional<source_limits::slot> source_limits::try_acquire(const asio::ip::address& addr,
                                                              refusal& why) {
  if (!acquire(addr, why)) {
    return std::nullopt;
  }
  return slot(this, addr);
}

void source_limits::release(const asio::ip::address& addr) noexcept {
  std::lock_guard lock(mu_);
  auto it = per_source_.find(addr);
  if (it != per_source_.end() && --it->second == 0) {
    per_source_.erase(it);
  }
  --total_;
}

void source_limits::slot::release() noexcept {
  if (owner_ != nullptr) {
    owner_->release(addr_);
    owner_ = nullptr;
  }
}

std::uint32_t source_limits::active() const {
  std::lock_guard lock(mu_);
  return total_;
}

}  // namespace postern::net
