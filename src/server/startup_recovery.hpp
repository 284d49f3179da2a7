// Completing the mbox updates that a crash interrupted, for every user at once: when posternd
// starts (before it accepts connections) and for `posternd --recover-all`. docs/mbox.md,
// "Completing journals early".
//
// The users come from the password database: every passwd-file entry, or every system user
// (getpwent) for PAM. Each user's mail location is expanded as a login does; for an mbox, the
// journal is looked for with stat(2) only, where the store keeps it (the spool's directory
// when it is the mail owner's alone, else the user's mbox_state_dir): no spool is opened when
// there is no journal. Each mailbox with a journal is then recovered by a child process that
// has become its mail owner (privsep::become: uid, gid and groups, verified; the mail owner
// uid range applies), never uid 0, which calls store::mbox::recover_pending. Who the mail owner
// is follows the process model: fork mode, each account's own (privsep::resolve_mail_owner);
// event mode, the uid the sessions run as (server.user when started as root, else the
// process's own), so only that uid's mailboxes are recovered.
//
// Runs at startup only, from one thread, in a process without other threads (it forks).
#pragma once

#include "common/result.hpp"
#include "server/config.hpp"

#include <chrono>
#include <cstddef>

namespace postern::server {

struct recovery_tally {
  std::size_t users = 0;         // accounts looked at
  std::size_t pending = 0;       // mailboxes with a journal
  std::size_t completed = 0;     // interrupted updates completed
  std::size_t set_aside = 0;     // journals that did not match their mailbox (logged by the store)
  std::size_t failed = 0;        // recovery failed (logged): left for the next login
  std::size_t left = 0;          // not reached within the time limit: left for the next login
  bool enumeration_cut = false;  // the time limit ended the search for users
};

// Finds and recovers every pending journal, one child process per mailbox, until `deadline`
// (a child still running then is killed: each step of a recovery is safe to interrupt, the
// next login finishes it). Logs one line per mailbox and returns the counts; `echo` also
// prints each line on stdout (posternd --recover-all). `us.model` selects whose mailboxes
// (see above). Errors: errc::invalid for a configuration that names no usable mail owner
// (event mode as root without server.user) or an unreadable passdb; errc::temporary when NSS
// fails.
result<recovery_tally> recover_pending_mailboxes(const config& cfg, const unix_settings& us,
                                                 std::chrono::steady_clock::time_point deadline,
                                                 bool echo);

// posternd's startup (event and fork mode, after binding, before accepting; never --inetd):
// runs recover_pending_mailboxes in a child process (so that no passdb secret or NSS state
// stays in this one) with cfg.mbox_startup_recovery_timeout as the limit and waits for it,
// at most that long and a few seconds more. Skips at once when the limit is 0 or when no user
// can have an mbox (the location is not mbox and the passdb has no per-user locations).
// Logs a summary; never fails the startup.
void run_startup_recovery(const config& cfg, const unix_settings& us);

}  // namespace postern::server
