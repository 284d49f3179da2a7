// APOP (RFC 1939 section 7): the greeting's timestamp and the digest check.
//
// APOP proves knowledge of the password by MD5(timestamp || password), so the server needs the
// password itself: it works for users whose stored secret is a plaintext one ({PLAIN},
// {CLEAR}, {CLEARTEXT}, in any encoding), and fails cleanly for everybody else. MD5 and
// plaintext storage make APOP a legacy mechanism; prefer SCRAM (see docs/authentication.md).
//
// Threading: both functions may be called from any number of threads at once. verify_apop()
// blocks on the passdb: call it off the I/O threads.
#pragma once

#include <ctime>
#include <string>
#include <string_view>

#include "auth/passdb.hpp"

namespace postern::auth {

// A fresh greeting timestamp "<random.pid.time@hostname>" (RFC 1939 section 7: msg-id form):
// 128 random bits from OpenSSL's RAND_bytes in hex, the process id and the time, so it is
// unique and unpredictable. Bytes of `hostname` outside [A-Za-z0-9.-] are left out (an empty
// result gives "localhost"), so the timestamp never holds '<', '>', blanks or control bytes.
// Aborts the process if the random generator fails (a broken invariant: OpenSSL's DRBG does
// not fail once seeded). Also used as the CRAM-MD5 challenge.
std::string make_apop_timestamp(std::string_view hostname);
// The same with the time given (for tests).
std::string make_apop_timestamp(std::string_view hostname, std::time_t now);

// Checks an APOP digest: `digest_hex` must be the 32 hex digits (either case) of
// MD5(timestamp || password) for `user`'s plaintext secret, found through passdb::lookup().
// `timestamp` is the whole "<...>" string the greeting carried. Returns ok with the user's
// record; bad_credentials for an unknown or refused user, a user without a plaintext secret
// (reason "no plaintext secret for APOP"), a malformed digest or a mismatch; temporary when the
// passdb failed. Compares in constant time; an unknown user costs the same MD5.
verify_result verify_apop(passdb& db, std::string_view user, std::string_view timestamp,
                          std::string_view digest_hex);

}  // namespace postern::auth
