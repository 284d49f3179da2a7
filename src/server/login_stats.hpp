// login_stats: RFC 2449 LOGIN-DELAY the way GNU Mailutils' pop3d does it. An SQLite database
// (the [pop3] stat_file) holds each user's last successful login time; a login that comes
// sooner than the configured delay after the previous one is refused with
// "-ERR [LOGIN-DELAY]" and is not recorded.
//
// Only logins whose credentials were valid reach this check (the caller asks after the
// password database said yes), so the answer cannot be used to harvest account names, and a
// wrong password still gets "-ERR [AUTH]".
//
// The time is passed in (tests control the clock). A clock that went backwards (the stored
// login lies in the future) never locks a user out: such a login is allowed and recorded.
//
// Files. open() creates the database's directory (0700) and the file (0600) when missing and
// puts it in WAL mode, so readers never block the writer; SQLite gives the -wal and -shm
// files the database file's mode. Several processes may share the file (fork mode): every
// check is one BEGIN IMMEDIATE transaction, and a busy database is waited for up to
// busy_timeout before the check fails with errc::temporary.
//
// Failure policy (Mailutils'): when the database cannot be opened the server logs it and runs
// without the delay (open_or_warn does both); when one check fails the caller logs it and
// lets the login through. The database limits load; it never keeps a user out by error.
//
// Threading: one object is shared by all worker threads; a mutex serializes the connection.
// Calls block on the file system and on other processes' transactions: call them on the
// worker pool, never on an I/O thread. Do not carry an open object across fork(): open it in
// the process that uses it.
#pragma once

#include "common/result.hpp"

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

struct sqlite3;
struct sqlite3_stmt;

namespace postern::server {

// How long a check waits for another process's transaction.
inline constexpr std::chrono::milliseconds state_db_busy_timeout{5000};

// A small SQLite file of per-user state, shared by login_stats and bulletins: created (0600,
// directory 0700) when missing, WAL mode, busy timeout, `schema_sql` run once at open.
// Move-only owner of the connection; use() hands the connection out under its mutex.
class state_db {
 public:
  // Errors: errc::permanent when the path cannot be created or opened (permissions, a
  // directory in the way), errc::temporary otherwise; the context names the file.
  static result<std::unique_ptr<state_db>> open(const std::string& path,
                                                std::string_view schema_sql);
  ~state_db();
  state_db(const state_db&) = delete;
  state_db& operator=(const state_db&) = delete;

  sqlite3* handle() noexcept { return db_; }
  std::mutex& mutex() noexcept { return mu_; }
  const std::string& path() const noexcept { return path_; }

  // An error for the connection's last failure: "<what> <path>: <sqlite message>",
  // errc::temporary for SQLITE_BUSY/LOCKED/IOERR/FULL, errc::permanent otherwise.
  error last_error(std::string_view what) const;

 private:
  state_db(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  sqlite3* db_;
  std::string path_;
  std::mutex mu_;
};

// One prepared statement, finalized on destruction.
class statement {
 public:
  statement() = default;
  explicit statement(sqlite3_stmt* s) noexcept : s_(s) {}
  statement(statement&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  statement& operator=(statement&& o) noexcept;
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement();
  sqlite3_stmt* get() const noexcept { return s_; }

 private:
  sqlite3_stmt* s_ = nullptr;
};

// Prepares `sql` on db. Errors as state_db::last_error.
result<statement> prepare_statement(state_db& db, std::string_view sql);

class login_stats {
 public:
  // Opens (creating it if missing) the login statistics database at `path` (absolute).
  // Errors: see state_db::open; the caller then runs without the delay.
  static result<std::unique_ptr<login_stats>> open(const std::string& path);

  // open(), and on failure logs "Unable to open statistics db <path>: <why>; running without
  // LOGIN-DELAY" as a warning and returns null: the Mailutils behaviour in one call.
  static std::unique_ptr<login_stats> open_or_warn(const std::string& path);

  // For a user whose credentials were just accepted: true when the login is allowed, which
  // records `now` as the user's last login; false when the previous login lies less than
  // `delay` before `now` (nothing is recorded: the delay runs from the last successful
  // login). A delay of zero or less always allows and records.
  // Errors: errc::temporary (database busy past the timeout, I/O error): nothing was
  // recorded; the caller logs it and allows the login.
  result<bool> check_and_record(std::string_view user, std::chrono::system_clock::time_point now,
                                std::chrono::seconds delay);

  // The user's last recorded login, for tests and tools. Errors as check_and_record.
  result<std::optional<std::chrono::system_clock::time_point>> last_login(std::string_view user);

 private:
  explicit login_stats(std::unique_ptr<state_db> db) : db_(std::move(db)) {}
  std::unique_ptr<state_db> db_;
};

// The CAPA line value for a delay: "LOGIN-DELAY 60"; "" for zero (not advertised).
std::string login_delay_capability(std::chrono::seconds delay);

}  // namespace postern::server
