#include "auth/passwd_file.hpp"

#include "auth/system_users.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "common/log.hpp"
#include "common/parse.hpp"
#include "common/unique_fd.hpp"

namespace postern::auth {
namespace {

constexpr off_t max_file_size = off_t{64} * 1024 * 1024;

// Checked for unknown users when the file has no password of its own to borrow the cost of.
// A SHA512-CRYPT hash (5000 rounds) of a random password nobody knows.
constexpr std::string_view fallback_dummy_hash =
    "{SHA512-CRYPT}$6$dUmMyS4LtdUmMyS4$"
    "k0Vy1hJrQsupHYMOIIxlU5jlMbVknj9MVxoRZ2kdgo1kxQGdF7UwqPkuKhsc0dOI2KbGP7Hc"
    "WlLJ2lnXEGBoY/";

const stored_password& fallback_dummy() {
  static const stored_password dummy = [] {
    auto parsed = parse_stored_password(fallback_dummy_hash);
    // A constant that parses: a failure here is a bug in this file.
    if (!parsed) {
      std::abort();
    }
    return std::move(parsed).value();
  }();
  return dummy;
}

// File contents hold secrets (PLAIN passwords): wiped once parsed.
struct wiped_buffer {
  std::string s;
  wiped_buffer() = default;
  wiped_buffer(const wiped_buffer&) = delete;
  wiped_buffer& operator=(const wiped_buffer&) = delete;
  ~wiped_buffer() {
    if (!s.empty()) {
      OPENSSL_cleanse(s.data(), s.size());
    }
  }
};

bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

bool is_slow_scheme(password_scheme s) noexcept {
  switch (s) {
    case password_scheme::crypt:
    case password_scheme::md5_crypt:
    case password_scheme::sha256_crypt:
    case password_scheme::sha512_crypt:
    case password_scheme::blf_crypt:
    case password_scheme::yescrypt:
    case password_scheme::pbkdf2:
    case password_scheme::scram_sha1:
    case password_scheme::scram_sha256:
      return true;
    default:
      return false;
  }
}

// A parse failure on one line: the reason, without the path and line (added by the caller).
struct line_error {
  std::string reason;
  std::error_code cause;
};

// uid/gid field: a number or an NSS name; 0 and (id_t)-1 refused (Dovecot does the same).
template <typename Id>
std::optional<line_error> parse_id(std::string_view field, bool is_user, Id& out) {
  const char* what = is_user ? "uid" : "gid";
  if (auto n = parse_u64(field)) {
    if (*n == 0) {
      return line_error{std::string(what) + " 0 (root) is not allowed", {}};
    }
    if (*n >= static_cast<std::uint64_t>(static_cast<Id>(-1))) {
      return line_error{std::string(what) + " out of range", {}};
    }
    out = static_cast<Id>(*n);
    return std::nullopt;
  }
  if (field.empty() || field.find_first_of("0123456789") == 0) {
    return line_error{std::string("invalid ") + what, {}};
  }
  const std::string name(field);
  Id id{};
  std::optional<error> failed;
  if (is_user) {
    auto account = find_system_user(name);
    if (account) {
      id = static_cast<Id>(account->uid);
    } else {
      failed = std::move(account).err();
    }
  } else {
    auto gid = find_group(name);
    if (gid) {
      id = static_cast<Id>(*gid);
    } else {
      failed = std::move(gid).err();
    }
  }
  if (failed && failed->code() == errc::not_found) {
    return line_error{
        std::string("unknown ") + (is_user ? "user" : "group") + " name '" + name + "' in " + what,
        {}};
  }
  if (failed) {
    return line_error{std::string("cannot look up ") + what + " name '" + name + "'",
                      failed->cause()};
  }
  if (id == 0) {
    return line_error{std::string(what) + " 0 (root) is not allowed", {}};
  }
  out = id;
  return std::nullopt;
}

std::string_view refusal_for(std::string_view key) noexcept {
  if (key == "nologin") {
    return "login disabled (nologin)";
  }
  if (key == "nopassword") {
    return "nopassword is not supported: login refused";
  }
  if (key == "allow_nets" || key == "allow_real_nets") {
    return "allow_nets cannot be checked (no client address): login refused";
  }
  if (key == "proxy" || key == "proxy_maybe") {
    return "user is served by another host (proxy): login refused";
  }
  return {};
}

std::optional<line_error> parse_extra_fields(std::string_view extra, passwd_entry& entry) {
  std::size_t i = 0;
  while (i < extra.size()) {
    if (is_blank(extra[i])) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < extra.size() && !is_blank(extra[end])) {
      ++end;
    }
    std::string_view token = extra.substr(i, end - i);
    i = end;
    auto eq = token.find('=');
    std::string_view key = token.substr(0, eq);
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : token.substr(eq + 1);
    if (key.empty()) {
      return line_error{"extra field without a name", {}};
    }
    if (key == "userdb_mail" || key == "mail") {
      entry.user.mail = value;
    } else if (key == "userdb_home") {
      entry.user.home = value;
    } else if (key == "userdb_uid") {
      uid_t uid = 0;
      if (auto err = parse_id(value, true, uid)) {
        return err;
      }
      entry.user.uid = uid;
    } else if (key == "userdb_gid") {
      gid_t gid = 0;
      if (auto err = parse_id(value, false, gid)) {
        return err;
      }
      entry.user.gid = gid;
    } else {
      if (auto refusal = refusal_for(key); !refusal.empty() && entry.refusal.empty()) {
        entry.refusal = refusal;
      }
      entry.user.extra[std::string(key)] = std::string(value);
    }
  }
  return std::nullopt;
}

// Parses one non-blank, non-comment line into `entry`.
std::optional<line_error> parse_line(std::string_view line, passwd_entry& entry) {
  if (line.find('\0') != std::string_view::npos) {
    return line_error{"NUL byte in line", {}};
  }
  // The first seven fields; `rest` is everything after the seventh ':' (extra fields).
  std::string_view fields[7];
  std::size_t count = 0;
  std::optional<std::string_view> rest;
  std::string_view s = line;
  while (true) {
    auto colon = s.find(':');
    if (count == 7) {
      rest = s;
      break;
    }
    fields[count++] = s.substr(0, colon);
    if (colon == std::string_view::npos) {
      break;
    }
    s.remove_prefix(colon + 1);
  }
  if (count < 2) {
    return line_error{"missing ':' after the user name", {}};
  }
  std::string_view user = fields[0];
  if (user.empty()) {
    return line_error{"empty user name", {}};
  }
  for (char c : user) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == ' ') {
      return line_error{"user name holds blanks or control characters", {}};
    }
  }
  entry.user.name = user;

  std::string_view pass = fields[1];
  std::string prefixed;
  // libpam-pwdfile's "hash[NN]" (13 = DES crypt, 34 = MD5 hex, 56 = DIGEST-MD5), read as
  // Dovecot reads it.
  if (pass.size() > 4 && pass[0] != '{' && pass[0] != '$' && pass.back() == ']' &&
      pass[pass.size() - 4] == '[') {
    std::string_view kind = pass.substr(pass.size() - 3, 2);
    std::string_view hash = pass.substr(0, pass.size() - 4);
    prefixed = kind == "34" ? "{PLAIN-MD5}" : kind == "56" ? "{DIGEST-MD5}" : "{CRYPT}";
    prefixed += hash;
    pass = prefixed;
  }
  if (!pass.empty()) {
    auto parsed = parse_stored_password(pass);
    if (parsed) {
      entry.stored.emplace(pass);
    }
    OPENSSL_cleanse(prefixed.data(), prefixed.size());
    if (!parsed) {
      return line_error{parsed.err().context(), {}};
    }
    entry.password.emplace(std::move(parsed).value());
  }

  if (count > 2 && !fields[2].empty()) {
    uid_t uid = 0;
    if (auto err = parse_id(fields[2], true, uid)) {
      return err;
    }
    entry.user.uid = uid;
  }
  if (count > 3 && !fields[3].empty()) {
    gid_t gid = 0;
    if (auto err = parse_id(fields[3], false, gid)) {
      return err;
    }
    entry.user.gid = gid;
  }
  if (count > 5) {
    entry.user.home = fields[5];
  }
  if (rest) {
    if (rest->starts_with(':')) {
      // Old format: empty eighth field, the mail location after it (may hold ':').
      if (rest->size() > 1) {
        entry.user.mail = rest->substr(1);
      }
    } else if (auto err = parse_extra_fields(*rest, entry)) {
      return err;
    }
  }
  return std::nullopt;
}

struct file_identity {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{};
  timespec ctime{};

  static file_identity of(const struct stat& st) noexcept {
    return {st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
  }
  bool operator==(const file_identity& o) const noexcept {
    return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
           mtime.tv_nsec == o.mtime.tv_nsec && ctime.tv_sec == o.ctime.tv_sec &&
           ctime.tv_nsec == o.ctime.tv_nsec;
  }
};

struct snapshot {
  file_identity identity;
  passwd_table table;
};

error load_error(const std::string& path, const std::string& what, int err = 0) {
  return error(errc::invalid, path + ": " + what,
               err != 0 ? std::error_code(err, std::generic_category()) : std::error_code());
}

// "name (uid N)" or "uid N" when the uid has no name.
std::string describe_uid(uid_t uid) {
  std::string out = "uid " + std::to_string(uid);
  if (auto account = find_system_user(uid); account && !account->name.empty()) {
    return account->name + " (" + out + ")";
  }
  return out;
}

std::string octal_mode(mode_t mode) {
  char text[8];
  (void)std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

std::string directory_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Reads and parses the file. The identity recorded is the one of the descriptor read.
result<std::shared_ptr<const snapshot>> load_snapshot(const std::string& path,
                                                      uid_t trusted_owner) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    return load_error(path, "cannot open", errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return load_error(path, "cannot stat", errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return load_error(path, "not a regular file");
  }
  POSTERN_TRY(check_passwd_file_trust(path, st, trusted_owner));
  if (st.st_size > max_file_size) {
    return load_error(path, "larger than 64 MiB");
  }
  wiped_buffer content;
  // One byte more than the size, to see a file that grew; a grown file is read to its end.
  content.s.resize(static_cast<std::size_t>(st.st_size) + 1);
  std::size_t used = 0;
  for (;;) {
    if (used == content.s.size()) {
      if (content.s.size() > static_cast<std::size_t>(max_file_size)) {
        return load_error(path, "larger than 64 MiB");
      }
      wiped_buffer bigger;
      bigger.s.resize(content.s.size() * 2);
      std::copy(content.s.begin(), content.s.end(), bigger.s.begin());
      std::swap(content.s, bigger.s);
    }
    ssize_t n = ::read(fd.get(), content.s.data() + used, content.s.size() - used);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return load_error(path, "cannot read", errno);
    }
    if (n == 0) {
      break;
    }
    used += static_cast<std::size_t>(n);
  }
  auto table = parse_passwd_file(std::string_view(content.s).substr(0, used), path);
  if (!table) {
    return std::move(table).err();
  }
  return std::shared_ptr<const snapshot>(
      std::make_shared<snapshot>(snapshot{file_identity::of(st), std::move(table).value()}));
}

class passwd_file_db final : public passdb {
 public:
  passwd_file_db(std::string path, uid_t trusted_owner, std::shared_ptr<const snapshot> initial)
      : path_(std::move(path)), trusted_owner_(trusted_owner), current_(std::move(initial)) {}

  verify_result verify(std::string_view user, const secret_string& password) override {
    std::string stale = refresh();
    const std::shared_ptr<const snapshot> snap = current();
    verify_result out;
    out.status = verify_status::bad_credentials;
    const passwd_entry* entry = snap->table.find(user);
    if (entry == nullptr || !entry->password || entry->password->data().empty()) {
      // Same work as for a known user, result ignored.
      (void)verify_password(snap->table.dummy(), password);
      out.reason = entry == nullptr ? "unknown user" : "no password set for user";
    } else {
      auto checked = verify_password(*entry->password, password);
      if (!checked) {
        if (checked.err().code() == errc::temporary) {
          out.status = verify_status::temporary;
          out.reason = "password check failed: " + checked.err().message();
        } else {
          out.reason = "stored password unusable (line " + std::to_string(entry->line) +
                       "): " + checked.err().message();
        }
      } else if (!*checked) {
        out.reason = "password mismatch";
      } else if (!entry->refusal.empty()) {
        out.reason = std::string(entry->refusal);
      } else {
        out.status = verify_status::ok;
        out.user = entry->user;
      }
    }
    if (!stale.empty()) {
      out.reason = out.reason.empty() ? stale : out.reason + "; " + stale;
    }
    return out;
  }

  lookup_result lookup(std::string_view user) override {
    std::string stale = refresh();
    const std::shared_ptr<const snapshot> snap = current();
    lookup_result out;
    out.status = verify_status::bad_credentials;
    const passwd_entry* entry = snap->table.find(user);
    if (entry == nullptr) {
      out.reason = "unknown user";
    } else if (!entry->password || !entry->stored || entry->password->data().empty()) {
      out.reason = "no password set for user";
    } else if (!entry->refusal.empty()) {
      out.reason = std::string(entry->refusal);
    } else {
      out.status = verify_status::ok;
      out.user = entry->user;
      out.stored.emplace(entry->stored->view());
    }
    if (!stale.empty()) {
      out.reason = out.reason.empty() ? stale : out.reason + "; " + stale;
    }
    return out;
  }

  void reload() override { (void)refresh(); }

 private:
  // The contents in use now; stays valid however often the file is re-read meanwhile.
  std::shared_ptr<const snapshot> current() {
    std::shared_lock lock(mutex_);
    return current_;
  }

  // Re-reads the file if it changed. Returns why the contents in use may be stale (for the
  // log), or an empty string.
  std::string refresh() {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) {
      int err = errno;
      return "passwd-file " + path_ +
             " not re-read (stat: " + std::generic_category().message(err) +
             "), using previous contents";
    }
    file_identity id = file_identity::of(st);
    {
      std::shared_lock lock(mutex_);
      if (id == current_->identity) {
        return {};
      }
      if (failed_identity_ && *failed_identity_ == id) {
        return reload_error_;
      }
    }
    std::unique_lock reloading(reload_mutex_, std::try_to_lock);
    if (!reloading.owns_lock()) {
      return {};  // another thread is re-reading; go on with the current contents
    }
    auto loaded = load_snapshot(path_, trusted_owner_);
    if (loaded) {
      if (auto warning = passwd_file_directory_warning(path_, trusted_owner_); !warning.empty()) {
        log::warning("{}", warning);
      }
    } else {
      log::error("passwd-file not re-read, using previous contents: {}", loaded.err().message());
    }
    std::unique_lock lock(mutex_);
    if (loaded) {
      current_ = std::move(loaded).value();
      failed_identity_.reset();
      reload_error_.clear();
      return {};
    }
    failed_identity_ = id;
    reload_error_ = "passwd-file not re-read, using previous contents: " + loaded.err().message();
    return reload_error_;
  }

  const std::string path_;
  const uid_t trusted_owner_;
  std::mutex reload_mutex_;                       // held by the one thread re-reading the file
  std::shared_mutex mutex_;                       // guards the three members below
  std::shared_ptr<const snapshot> current_;       // never null
  std::optional<file_identity> failed_identity_;  // the file version that failed to load
  std::string reload_error_;                      // why it failed
};

}  // namespace

const passwd_entry* passwd_table::find(std::string_view user) const {
  auto it = entries_.find(user);
  return it == entries_.end() ? nullptr : &it->second;
}

const stored_password& passwd_table::dummy() const noexcept {
  return dummy_ != nullptr ? *dummy_ : fallback_dummy();
}

result<passwd_table> parse_passwd_file(std::string_view content, std::string_view source) {
  passwd_table table;
  const stored_password* first_any = nullptr;
  const stored_password* first_slow = nullptr;
  std::size_t line_no = 0;
  while (!content.empty()) {
    ++line_no;
    auto nl = content.find('\n');
    std::string_view line = content.substr(0, nl);
    content.remove_prefix(nl == std::string_view::npos ? content.size() : nl + 1);
    if (line.ends_with('\r')) {
      line.remove_suffix(1);
    }
    auto first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') {
      continue;
    }
    auto fail = [&](const line_error& e) {
      return error(errc::invalid,
                   std::string(source) + ":" + std::to_string(line_no) + ": " + e.reason, e.cause);
    };
    passwd_entry entry;
    entry.line = line_no;
    if (auto err = parse_line(line, entry)) {
      return fail(*err);
    }
    if (auto it = table.entries_.find(entry.user.name); it != table.entries_.end()) {
      return fail(line_error{"user '" + entry.user.name + "' already defined on line " +
                                 std::to_string(it->second.line),
                             {}});
    }
    std::string name = entry.user.name;
    const passwd_entry& stored =
        table.entries_.emplace(std::move(name), std::move(entry)).first->second;
    // Locked crypt strings ("*", "!...") fail at once: useless as a cost model.
    if (stored.password && !stored.password->data().empty() &&
        stored.password->data().front() != '*' && stored.password->data().front() != '!') {
      if (first_any == nullptr) {
        first_any = &*stored.password;
      }
      if (first_slow == nullptr && is_slow_scheme(stored.password->scheme())) {
        first_slow = &*stored.password;
      }
    }
  }
  table.dummy_ = first_slow != nullptr ? first_slow : first_any;
  return table;
}

result<std::unique_ptr<passdb>> open_passwd_file(std::string path, uid_t trusted_owner) {
  auto loaded = load_snapshot(path, trusted_owner);
  if (!loaded) {
    return std::move(loaded).err();
  }
  if (auto warning = passwd_file_directory_warning(path, trusted_owner); !warning.empty()) {
    log::warning("{}", warning);
  }
  return std::unique_ptr<passdb>(
      std::make_unique<passwd_file_db>(std::move(path), trusted_owner, std::move(loaded).value()));
}

result<std::unique_ptr<passdb>> open_passwd_file(std::string path) {
  return open_passwd_file(std::move(path), ::geteuid());
}

result<void> check_passwd_file_trust(const std::string& path, const struct stat& st,
                                     uid_t trusted_owner) {
  std::string allowed =
      trusted_owner == 0 ? std::string("root") : "root or " + describe_uid(trusted_owner);
  if (st.st_uid != 0 && st.st_uid != trusted_owner) {
    return load_error(path, "refused: owned by " + describe_uid(st.st_uid) + ", mode " +
                                octal_mode(st.st_mode) +
                                "; a file that grants logins must be owned by " + allowed +
                                " (the user the server runs as): chown it");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return load_error(path, "refused: mode " + octal_mode(st.st_mode) + ", owned by " +
                                describe_uid(st.st_uid) +
                                "; a file that grants logins must not be writable by group or "
                                "others: chmod go-w (e.g. chmod 0600)");
  }
  return {};
}

std::string passwd_file_directory_warning(const std::string& path, uid_t trusted_owner) {
  std::string dir = directory_of(path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return {};  // the file was just read through it; nothing more to learn
  }
  bool foreign = st.st_uid != 0 && st.st_uid != trusted_owner;
  bool shared = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0;
  if (!foreign && !shared) {
    return {};
  }
  return "passwd-file " + path + ": its directory " + dir + " (owned by " +
         describe_uid(st.st_uid) + ", mode " + octal_mode(st.st_mode) +
         ") lets others replace the file; make it owned by root and not writable by group or "
         "others";
}

result<void> check_passwd_file_path(const std::string& path, uid_t trusted_owner) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == EACCES) {
      return {};  // nothing to judge here; reading the file reports it
    }
    return load_error(path, "cannot stat", errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return load_error(path, "not a regular file");
  }
  return check_passwd_file_trust(path, st, trusted_owner);
}

}  // namespace postern::auth
