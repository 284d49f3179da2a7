// acl: GNU Mailutils-style access lists for [pop3] acl, checked when a connection is accepted
// (in addition to, and before, TCP wrappers).
//
// Rules are "allow NETWORK", "deny NETWORK", "allow any" and "deny any", where NETWORK is what
// net/network.hpp parses ("192.0.2.0/24", "2001:db8::/32", a bare address). The first rule that
// matches the client's address decides; when none matches, the connection is allowed (an empty
// list allows everyone). IPv4-mapped IPv6 clients are matched as IPv4, as everywhere else.
// No DNS, ever: rules name addresses only.
//
// Threading: an acl is immutable after parse(); allows() is const and safe from any thread.
#pragma once

#include "common/result.hpp"
#include "net/network.hpp"

#include <asio/ip/address.hpp>

#include <optional>
#include <string>
#include <vector>

namespace postern::net {

class acl {
 public:
  enum class verdict { allow, deny };

  struct rule {
    verdict action = verdict::allow;
    std::optional<network> net;  // nullopt: "any"
  };

  // An empty list: allows everyone.
  acl() = default;

  // Parses the config strings, in order. Words are separated by one or more blanks; the verb
  // and "any" are case-insensitive. Errors: errc::invalid naming the offending rule (the
  // config loader has already checked the same grammar, so this fails only on direct use).
  static result<acl> parse(const std::vector<std::string>& rules);

  // True if the first matching rule allows `client`, or no rule matches.
  bool allows(const asio::ip::address& client) const;

  // The 0-based index of the rule that decides for `client`, or nullopt when none matches
  // (for the refusal log line: "acl rule 1 (deny 127.0.0.1)").
  std::optional<std::size_t> matching_rule(const asio::ip::address& client) const;

  const std::vector<rule>& rules() const noexcept { return rules_; }
  bool empty() const noexcept { return rules_.empty(); }

 private:
  std::vector<rule> rules_;
};

// "deny 127.0.0.1/32", "allow any": the canonical text of a rule, for logs.
std::string to_string(const acl::rule& r);

}  // namespace postern::net
