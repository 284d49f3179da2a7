// PAM authentication for system users (passdb = "pam").
//
// verify() runs one PAM transaction: pam_start(service, user), pam_authenticate with a
// conversation that answers the password prompt (and nothing else), pam_acct_mgmt (expired
// or locked accounts), then takes the account data from getpwnam_r under the name PAM
// finally settled on (PAM_USER; a module may map it). Refused like popa3d does: uid 0 (root)
// even with the right password (checked before PAM runs, so POP3 is never an oracle for
// root's password, and again after), empty passwords, and names NSS treats specially. Unknown
// users go through PAM like everybody else, so their failures look the same.
//
// PAM's own failure delay (pam_unix sleeps about two seconds after a failure) is replaced by
// a no-op PAM_FAIL_DELAY callback: the session driver delays failures itself, without blocking
// a worker thread.
//
// lookup() (EXTERNAL, GSSAPI) returns the system user and never a secret (PAM has none to
// give): stored is always nullopt, so CRAM-MD5, SCRAM and APOP cannot succeed. It runs
// pam_acct_mgmt too, so an expired account is refused by every mechanism.
//
// Threading: verify() and lookup() may be called from any number of threads; each call has
// its own PAM handle. PAM modules are not all thread-safe, so transactions are serialised
// by one mutex unless pam_settings::serialize is false. Calls block (PAM modules, NSS): run
// them off the I/O threads.
#pragma once

#include "auth/passdb.hpp"
#include "common/result.hpp"

#include <memory>
#include <string>

namespace postern::auth {

struct pam_settings {
  std::string service = "pop3";  // /etc/pam.d/<service>
  bool account_check = true;     // pam_acct_mgmt after pam_authenticate
  bool serialize = true;         // one PAM transaction at a time in this process
};

// Errors: errc::invalid for a service name that is not a plain file name.
result<std::unique_ptr<passdb>> open_pam_passdb(pam_settings s);

}  // namespace postern::auth
