#include "server/login_stats.hpp"

#include "common/log.hpp"
#include "common/unique_fd.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace postern::server {
namespace {

constexpr mode_t db_dir_mode = 0700;
constexpr mode_t db_file_mode = 0600;

errc errc_for_sqlite(int rc) noexcept {
  switch (rc & 0xFF) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_INTERRUPT:
      return errc::temporary;
    default:
      return errc::permanent;
  }
}

errc errc_for_errno(int err) noexcept {
  switch (err) {
    case EACCES:
    case EPERM:
    case ENOTDIR:
    case EROFS:
    case ELOOP:
    case ENAMETOOLONG:
    case EISDIR:
      return errc::permanent;
    default:
      return errc::temporary;
  }
}

// mkdir -p for the database's directory; existing directories are left as they are.
result<void> make_parents(const std::string& path) {
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), db_dir_mode) == 0) {
      continue;
    }
    int err = errno;
    struct stat st {};
    if (err == EEXIST || (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
      continue;
    }
    return error::from_errno(err, "create directory " + dir, errc_for_errno(err));
  }
  return ok_result();
}

// Creates the file with mode 0600 when it is missing, so SQLite (which would use 0644 less
// the umask) and its -wal/-shm files never expose the data.
result<void> create_private_file(const std::string& path) {
  for (;;) {
    int fd =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, db_file_mode);
    if (fd >= 0) {
      ::close(fd);
      return ok_result();
    }
    int err = errno;
    if (err == EEXIST) {
      return ok_result();
    }
    if (err != EINTR) {
      return error::from_errno(err, "create " + path, errc_for_errno(err));
    }
  }
}

bool step_done(int rc) noexcept { return rc == SQLITE_DONE || rc == SQLITE_ROW; }

// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class transaction {
 public:
  explicit transaction(state_db& db) : db_(db) {}
  result<void> begin() {
    int rc = sqlite3_exec(db_.handle(), "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return db_.last_error("begin transaction on");
    }
    open_ = true;
    return ok_result();
  }
  result<void> commit() {
    int rc = sqlite3_exec(db_.handle(), "COMMIT", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return db_.last_error("commit to");
    }
    open_ = false;
    return ok_result();
  }
  ~transaction() {
    if (open_) {
      sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;

 private:
  state_db& db_;
  bool open_ = false;
};

std::int64_t unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

constexpr std::string_view login_schema =
    "CREATE TABLE IF NOT EXISTS login_stats ("
    " user TEXT PRIMARY KEY NOT NULL,"
    " last_login INTEGER NOT NULL) WITHOUT ROWID";

}  // namespace

// ---------------------------------------------------------------------------------------
// state_db

result<std::unique_ptr<state_db>> state_db::open(const std::string& path,
                                                 std::string_view schema_sql) {
  if (path.empty() || path.front() != '/') {
    return error(errc::invalid, "database path must be absolute: \"" + path + "\"");
  }
  POSTERN_TRY(make_parents(path));
  POSTERN_TRY(create_private_file(path));
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, nullptr);
  std::unique_ptr<state_db> db(new state_db(raw, path));
  if (rc != SQLITE_OK) {
    return db->last_error("open");
  }
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, static_cast<int>(state_db_busy_timeout.count()));
  // WAL: readers never block the writer, and a crash never leaves a torn file. NORMAL sync
  // is durable enough for this data (a power cut may lose the last login, never corrupt).
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"}) {
    rc = sqlite3_exec(raw, pragma, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return db->last_error("configure");
    }
  }
  std::string schema(schema_sql);
  rc = sqlite3_exec(raw, schema.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return db->last_error("create tables in");
  }
  return db;
}

state_db::~state_db() {
  if (db_ != nullptr) {
    sqlite3_close_v2(db_);
  }
}

error state_db::last_error(std::string_view what) const {
  int rc = db_ != nullptr ? sqlite3_extended_errcode(db_) : SQLITE_CANTOPEN;
  std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
  return error(errc_for_sqlite(rc), std::string(what) + " " + path_ + ": " + msg);
}

statement& statement::operator=(statement&& o) noexcept {
  if (this != &o) {
    sqlite3_finalize(s_);
    s_ = o.s_;
    o.s_ = nullptr;
  }
  return *this;
}

statement::~statement() { sqlite3_finalize(s_); }

result<statement> prepare_statement(state_db& db, std::string_view sql) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v2(db.handle(), sql.data(), static_cast<int>(sql.size()), &s, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(s);
    return db.last_error("prepare a statement for");
  }
  return statement(s);
}

// ---------------------------------------------------------------------------------------
// login_stats

result<std::unique_ptr<login_stats>> login_stats::open(const std::string& path) {
  auto db = state_db::open(path, login_schema);
  if (!db) {
    return std::move(db).err();
  }
  return std::unique_ptr<login_stats>(new login_stats(std::move(db).value()));
}

std::unique_ptr<login_stats> login_stats::open_or_warn(const std::string& path) {
  auto s = open(path);
  if (!s) {
    log::warning("Unable to open statistics db: {}; running without LOGIN-DELAY",
                 s.err().message());
    return nullptr;
  }
  return std::move(s).value();
}

result<bool> login_stats::check_and_record(std::string_view user,
                                           std::chrono::system_clock::time_point now,
                                           std::chrono::seconds delay) {
  std::lock_guard<std::mutex> lock(db_->mutex());
  transaction tx(*db_);
  POSTERN_TRY(tx.begin());
  const std::int64_t now_s = unix_seconds(now);
  if (delay.count() > 0) {
    auto sel = prepare_statement(*db_, "SELECT last_login FROM login_stats WHERE user = ?1");
    if (!sel) {
      return std::move(sel).err();
    }
    sqlite3_bind_text(sel->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
    int rc = sqlite3_step(sel->get());
    if (!step_done(rc)) {
      return db_->last_error("read");
    }
    if (rc == SQLITE_ROW) {
      const std::int64_t last = sqlite3_column_int64(sel->get(), 0);
      const std::int64_t elapsed = now_s - last;
      // elapsed < 0: our clock went back; never lock a user out for that.
      if (elapsed >= 0 && elapsed < delay.count()) {
        return false;  // the transaction rolls back: nothing recorded
      }
    }
  }
  auto put = prepare_statement(*db_,
                               "INSERT INTO login_stats (user, last_login) VALUES (?1, ?2) "
                               "ON CONFLICT(user) DO UPDATE SET last_login = excluded.last_login");
  if (!put) {
    return std::move(put).err();
  }
  sqlite3_bind_text(put->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
  sqlite3_bind_int64(put->get(), 2, now_s);
  if (!step_done(sqlite3_step(put->get()))) {
    return db_->last_error("write");
  }
  POSTERN_TRY(tx.commit());
  return true;
}

result<std::optional<std::chrono::system_clock::time_point>> login_stats::last_login(
    std::string_view user) {
  std::lock_guard<std::mutex> lock(db_->mutex());
  auto sel = prepare_statement(*db_, "SELECT last_login FROM login_stats WHERE user = ?1");
  if (!sel) {
    return std::move(sel).err();
  }
  sqlite3_bind_text(sel->get(), 1, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
  int rc = sqlite3_step(sel->get());
  if (!step_done(rc)) {
    return db_->last_error("read");
  }
  if (rc != SQLITE_ROW) {
    return std::optional<std::chrono::system_clock::time_point>();
  }
  return std::optional(std::chrono::system_clock::time_point(
      std::chrono::seconds(sqlite3_column_int64(sel->get(), 0))));
}

std::string login_delay_capability(std::chrono::seconds delay) {
  if (delay.count() <= 0) {
    return {};
  }
  return "LOGIN-DELAY " + std::to_string(delay.count());
}

}  // namespace postern::server
