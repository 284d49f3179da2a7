#include "net/acl.hpp"

#include "common/encoding.hpp"

#include <cctype>
#include <string_view>

namespace postern::net {
namespace {

std::vector<std::string_view> words(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) {
      ++i;
    }
    std::size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') {
      ++i;
    }
    if (i > start) {
      out.push_back(s.substr(start, i - start));
    }
  }
  return out;
}

}  // namespace

result<acl> acl::parse(const std::vector<std::string>& rules) {
  acl out;
  out.rules_.reserve(rules.size());
  for (std::size_t n = 0; n < rules.size(); ++n) {
    const std::string& text = rules[n];
    auto w = words(text);
    auto bad = [&] {
      return error(errc::invalid, "acl rule " + std::to_string(n + 1) + " \"" + text +
                                      "\" is not \"allow NETWORK\", \"deny NETWORK\" or "
                                      "\"allow/deny any\"");
    };
    if (w.size() != 2) {
      return bad();
    }
    rule r;
    if (ascii_iequals(w[0], "allow")) {
      r.action = verdict::allow;
    } else if (ascii_iequals(w[0], "deny")) {
      r.action = verdict::deny;
    } else {
      return bad();
    }
    if (!ascii_iequals(w[1], "any")) {
      r.net = parse_network(w[1]);
      if (!r.net) {
        return bad();
      }
    }
    out.rules_.push_back(std::move(r));
  }
  return out;
}

std::optional<std::size_t> acl::matching_rule(const asio::ip::address& client) const {
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    if (!rules_[i].net || contains(*rules_[i].net, client)) {
      return i;
    }
  }
  return std::nullopt;
}

bool acl::allows(const asio::ip::address& client) const {
  auto i = matching_rule(client);
  return !i || rules_[*i].action == verdict::allow;
}

std::string to_string(const acl::rule& r) {
  std::string out = r.action == acl::verdict::allow ? "allow " : "deny ";
  if (!r.net) {
    return out + "any";
  }
  return out + r.net->base.to_string() + "/" + std::to_string(r.net->prefix);
}

}  // namespace postern::net
