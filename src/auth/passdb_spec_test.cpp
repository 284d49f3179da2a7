#include "auth/passdb_spec.hpp"

#include "auth/sasl.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace postern::auth {
namespace {

TEST(passdb_spec, accepted_forms) {
  auto pam = parse_passdb_spec("pam");
  ASSERT_TRUE(std::holds_alternative<passdb_spec>(pam));
  EXPECT_EQ(std::get<passdb_spec>(pam).kind, passdb_kind::pam);
  auto file = parse_passdb_spec("passwd-file:/etc/postern/users");
  ASSERT_TRUE(std::holds_alternative<passdb_spec>(file));
  EXPECT_EQ(std::get<passdb_spec>(file).kind, passdb_kind::passwd_file);
  EXPECT_EQ(std::get<passdb_spec>(file).path, "/etc/postern/users");
}

TEST(passdb_spec, refused_forms_say_why) {
  const struct {
    const char* spec;
    passdb_spec_fault fault;
  } rows[] = {
      {"PAM", passdb_spec_fault::unknown_kind},
      {"ldap:/etc/ldap.conf", passdb_spec_fault::unknown_kind},
      {"/etc/postern/users", passdb_spec_fault::unknown_kind},
      {"passwd-file:", passdb_spec_fault::missing_path},
      {"passwd-file:users", passdb_spec_fault::relative_path},
      {"passwd-file:/etc/\tusers", passdb_spec_fault::control_character},
      {"passwd-file:/etc/users\x7f", passdb_spec_fault::control_character},
  };
  for (const auto& r : rows) {
    auto got = parse_passdb_spec(r.spec);
    ASSERT_TRUE(std::holds_alternative<passdb_spec_fault>(got)) << r.spec;
    EXPECT_EQ(std::get<passdb_spec_fault>(got), r.fault) << r.spec;
  }
}

TEST(sasl_mechanism_names, are_what_the_server_accepts) {
  const auto names = sasl_mechanism_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "PLAIN"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "SCRAM-SHA-256-PLUS"), names.end());
  EXPECT_EQ(names.size(), 9u);
}

}  // namespace
}  // namespace postern::auth
