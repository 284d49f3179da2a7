#include "store/decorated_maildrop.hpp"

#include "common/log.hpp"
#include "store/maildir/maildir.hpp"
#include "store/uidl_format.hpp"

#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace postern::store {
namespace {

constexpr std::string_view uidlist_side_name = "postern-uidlist";
constexpr std::string_view expire_side_name = "postern-expire";

struct dir_closer {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};

// Native Maildir UIDL -> base file name, for every file now in cur/ and new/. The Maildir
// store's UIDL is the base name, or its SHA-1 when the base is not a legal UIDL (longer
// than 70 octets, as Dovecot's names with ,S= and ,W= often are); this inverts that. A UIDL
// two files would share (corrupt state; the store numbers those differently) is left out.
result<std::unordered_map<std::string, std::string>> maildir_bases(const std::string& path) {
  std::unordered_map<std::string, std::string> out;
  std::unordered_set<std::string> ambiguous;
  for (const char* sub : {"cur", "new"}) {
    std::string dir = path + "/" + sub;
    std::unique_ptr<DIR, dir_closer> d(::opendir(dir.c_str()));
    if (!d) {
      int err = errno;
      if (err == ENOENT) {
        continue;
      }
      return error::from_errno(err, "uidl_format: list " + dir);
    }
    for (;;) {
      errno = 0;
      const dirent* ent = ::readdir(d.get());
      if (ent == nullptr) {
        if (errno != 0) {
          int err = errno;
          return error::from_errno(err, "uidl_format: list " + dir);
        }
        break;
      }
      if (ent->d_name[0] == '.') {
        continue;
      }
      std::string base(maildir::parse_name(ent->d_name).base);
      auto uidl = maildir::uidl_for_base(base);
      if (!uidl) {
        return std::move(uidl).err();
      }
      auto [it, inserted] = out.try_emplace(*uidl, base);
      if (!inserted && it->second != base) {
        ambiguous.insert(*uidl);
      }
    }
  }
  for (const auto& u : ambiguous) {
    out.erase(u);
  }
  return out;
}

// Reads and parses a uidlist side file. A missing file is nullopt. `strict`: a damaged file
// is an error (Postern's own: ignoring it would renumber messages); otherwise it is ignored
// (Dovecot's: Dovecot itself discards a broken one and renumbers).
result<std::optional<uidlist>> load_uidlist(const std::string& path, bool strict) {
  auto text = read_side_file(path);
  if (!text) {
    if (!strict) {
      return std::optional<uidlist>();
    }
    return std::move(text).err();
  }
  if (!text->has_value()) {
    return std::optional<uidlist>();
  }
  auto parsed = parse_uidlist(**text);
  if (!parsed) {
    if (!strict) {
      return std::optional<uidlist>();
    }
    return error(errc::permanent, path + " is damaged: " + parsed.err().context());
  }
  return std::optional<uidlist>(std::move(parsed).value());
}

// Makes every UIDL unique: a repeat gets "-2", "-3", ... (Dovecot's "rename").
void rename_duplicates(std::vector<message_info>& infos) {
  std::unordered_set<std::string> used;
  used.reserve(infos.size());
  for (const auto& m : infos) {
    used.insert(m.uidl);
  }
  std::unordered_set<std::string> seen;
  seen.reserve(infos.size());
  for (auto& m : infos) {
    if (seen.insert(m.uidl).second) {
      continue;
    }
    for (unsigned n = 2;; ++n) {
      std::string candidate = m.uidl + "-" + std::to_string(n);
      if (used.insert(candidate).second) {
        seen.insert(candidate);
        m.uidl = std::move(candidate);
        break;
      }
    }
  }
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return std::string(s);
}

}  // namespace

bool needs_decoration(const decoration_options& o) noexcept {
  return !o.uidl_format.empty() || o.expire.stamps() || o.dovecot_lock_session;
}

decorated_maildrop::decorated_maildrop(std::unique_ptr<maildrop> inner, decoration_options opts)
    : inner_(std::move(inner)), opts_(std::move(opts)) {
  auto native = inner_->messages();
  infos_.assign(native.begin(), native.end());
  retrieved_.assign(infos_.size(), false);
}

std::chrono::system_clock::time_point decorated_maildrop::now() const {
  return opts_.clock ? opts_.clock() : std::chrono::system_clock::now();
}

result<std::unique_ptr<decorated_maildrop>> decorated_maildrop::wrap(
    std::unique_ptr<maildrop> inner, decoration_options opts) {
  if (!inner) {
    return error(errc::invalid, "decorate: no maildrop");
  }
  std::unique_ptr<decorated_maildrop> d(new decorated_maildrop(std::move(inner), std::move(opts)));
  if (d->opts_.dovecot_lock_session && d->opts_.kind == store_kind::maildir) {
    auto l = lock_dovecot_pop3_session(
        d->opts_.path, std::chrono::steady_clock::now() + d->opts_.dovecot_lock_timeout);
    if (!l) {
      return std::move(l).err();
    }
    d->dovecot_session_lock_ = std::move(l).value();
  }
  if (!d->opts_.uidl_format.empty()) {
    POSTERN_TRY(d->apply_uidl_format());
  }
  if (d->opts_.expire.stamps()) {
    auto loaded = stamp_file::load(side_file_path(d->opts_.kind, d->opts_.path, expire_side_name));
    if (!loaded) {
      return std::move(loaded).err();
    }
    d->stamps_ = std::move(loaded).value();
  }
  return d;
}

// Maildir with %u/%v: the UIDs are Dovecot's (dovecot_uidlist.hpp). Postern's own list of
// earlier versions, `own`, only lends its numbers to messages Dovecot has none for, and is
// removed once they are in dovecot-uidlist.
result<uidlist> decorated_maildrop::sync_dovecot_uids(const std::vector<std::string>& bases,
                                                      const std::optional<uidlist>& own) {
  auto lock = lock_dovecot_uidlist(opts_.path,
                                   std::chrono::steady_clock::now() + opts_.dovecot_lock_timeout);
  if (!lock) {
    return std::move(lock).err();
  }
  const auto new_validity = static_cast<std::uint32_t>(unix_seconds(now()) & 0xFFFFFFFFu);
  auto synced = sync_dovecot_uidlist(*lock, opts_.path, bases, own ? &*own : nullptr, new_validity);
  lock->release();
  if (synced && own) {
    const std::string own_path = side_file_path(opts_.kind, opts_.path, uidlist_side_name);
    if (::unlink(own_path.c_str()) == 0) {
      log::notice("uidl_format: {} migrated into {}/dovecot-uidlist and removed", own_path,
                  opts_.path);
    }
  }
  return synced;
}

result<void> decorated_maildrop::read_headers(std::vector<std::string>& headers,
                                              std::vector<bool>& keep_native) {
  for (std::size_t i = 0; i < infos_.size(); ++i) {
    auto reader = inner_->open_message(i, false);
    if (!reader && reader.err().code() == errc::not_found) {
      // Removed by another client (an IMAP expunge) since the store listed it: it keeps
      // its native UIDL, and reading it answers the store's permanent error.
      keep_native[i] = true;
      continue;
    }
    if (!reader) {
      return std::move(reader).err();
    }
    auto h = read_header_section(**reader);
    if (!h) {
      return std::move(h).err();
    }
    headers[i] = std::move(h).value();
  }
  return ok_result();
}

result<void> decorated_maildrop::apply_uidl_format() {
  auto fmt = uidl_format::parse(opts_.uidl_format);
  if (!fmt) {
    return std::move(fmt).err();
  }
  const bool numbered = fmt->uses('u') || fmt->uses('v');
  const std::string own_path = side_file_path(opts_.kind, opts_.path, uidlist_side_name);
  auto own = load_uidlist(own_path, true);
  if (!own) {
    return std::move(own).err();
  }
  const auto fallback_validity = static_cast<std::uint32_t>(unix_seconds(now()) & 0xFFFFFFFFu);
  std::vector<std::string> keys(infos_.size());  // uidlist key per message; "" = none
  std::vector<std::string> headers(infos_.size());
  std::vector<bool> keep_native(infos_.size(), false);
  std::optional<uidlist> legacy;

  const bool need_headers =
      fmt->uses('m') || (opts_.kind == store_kind::mbox && (numbered || opts_.reuse_x_uidl));
  if (need_headers) {
    POSTERN_TRY(read_headers(headers, keep_native));
  }

  bool assign_own = numbered;  // number new messages in postern-uidlist
  if (opts_.kind == store_kind::maildir) {
    auto bases = maildir_bases(opts_.path);
    if (!bases) {
      return std::move(bases).err();
    }
    std::vector<std::string> listed;
    listed.reserve(infos_.size());
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      auto it = bases->find(infos_[i].uidl);
      if (it == bases->end()) {
        keep_native[i] = true;  // vanished since the store listed it, or a shared base name
      } else {
        keys[i] = it->second;
        listed.push_back(it->second);
      }
    }
    if (numbered) {
      auto synced = sync_dovecot_uids(listed, *own);
      if (!synced) {
        return std::move(synced).err();
      }
      legacy = std::move(synced).value();
      own->reset();
      assign_own = false;
    } else {
      auto loaded = load_uidlist(opts_.path + "/" + std::string(dovecot_uidlist_name), false);
      if (!loaded) {
        return std::move(loaded).err();
      }
      legacy = std::move(loaded).value();
    }
  } else {
    std::vector<std::string> native(infos_.size());
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      native[i] = infos_[i].uidl;
      keys[i] = infos_[i].uidl;
      if (opts_.reuse_x_uidl) {
        auto x = header_value(headers[i], "X-UIDL");
        if (x && trim(*x) == infos_[i].uidl) {
          keep_native[i] = true;  // the store took its UIDL from X-UIDL: reuse it
        }
      }
    }
    legacy = mbox_uidlist_from_headers(native, headers);
  }

  uid_assigner assigner(std::move(legacy), std::move(own).value(), fallback_validity);
  for (std::size_t i = 0; i < infos_.size(); ++i) {
    if (keep_native[i]) {
      continue;
    }
    const std::string& key = keys[i];
    std::optional<uid_entry> entry =
        assign_own ? std::optional(assigner.lookup_or_assign(key)) : assigner.lookup(key);
    if (entry && entry->pop3_uidl && opts_.kind == store_kind::maildir) {
      // Dovecot's saved POP3 UIDL ('P' field); an empty one means the base file name.
      infos_[i].uidl = entry->pop3_uidl->empty() ? key : *entry->pop3_uidl;
    } else {
      uidl_vars vars;
      if (entry) {
        vars.uid = entry->uid;
      }
      vars.uidvalidity = assigner.uidvalidity();
      if (fmt->uses('m')) {
        vars.md5 = header_md5_hex(headers[i]);
      }
      vars.filename = key;  // Maildir: base file name; mbox: native UIDL (no file names)
      vars.guid = entry && !entry->guid.empty() ? entry->guid : key;
      std::string expanded = fmt->expand(vars);
      if (is_sendable_uidl(expanded)) {
        infos_[i].uidl = std::move(expanded);
      }
    }
    if (!is_sendable_uidl(infos_[i].uidl)) {
      infos_[i].uidl = inner_->messages()[i].uidl;
    }
  }
  rename_duplicates(infos_);

  if (assign_own && assigner.changed()) {
    // Before any client sees the new numbers.
    POSTERN_TRY(replace_side_file(own_path, format_uidlist(assigner.own()), opts_.path));
  }
  return ok_result();
}

result<std::unique_ptr<message_reader>> decorated_maildrop::open_message(std::size_t index,
                                                                         bool retrieved) {
  auto r = inner_->open_message(index, retrieved);
  if (r && retrieved && index < retrieved_.size()) {
    retrieved_[index] = true;
  }
  return r;
}

void decorated_maildrop::note_top(std::size_t index) noexcept {
  if (index < retrieved_.size()) {
    retrieved_[index] = true;
  }
}

result<std::optional<std::int64_t>> decorated_maildrop::header_stamp(std::size_t index) {
  auto reader = inner_->open_message(index, false);
  if (!reader) {
    return std::move(reader).err();
  }
  auto h = read_header_section(**reader);
  if (!h) {
    return std::move(h).err();
  }
  auto v = header_value(*h, "X-Expire-Timestamp");
  if (!v) {
    return std::optional<std::int64_t>();
  }
  return parse_expire_timestamp(*v);
}

result<commit_stats> decorated_maildrop::commit(std::span<const bool> deleted) {
  if (committed_) {
    return error(errc::invalid, "decorate: commit called twice");
  }
  committed_ = true;
  if (!stamps_) {
    return inner_->commit(deleted);
  }
  if (deleted.size() != infos_.size()) {
    return inner_->commit(deleted);  // the store reports the mismatch
  }
  const auto native = inner_->messages();
  std::vector<char> marks(deleted.begin(), deleted.end());
  const std::int64_t now_s = unix_seconds(now());
  const expire_policy& policy = opts_.expire;
  // Mailutils' header stamps are looked for in an mbox only: there, reading a header is one
  // pread in a file already open; in a Maildir it would mean opening every message file at
  // every QUIT. A Maildir message stamped only by a header expires counting from its first
  // retrieval through Postern instead: later, never earlier.
  const bool header_stamps = opts_.kind == store_kind::mbox;
  for (std::size_t i = 0; i < infos_.size(); ++i) {
    if (marks[i]) {
      continue;
    }
    const std::string& key = native[i].uidl;
    std::optional<std::int64_t> stamp = stamps_->get(key);
    if (!stamp && header_stamps && (policy.deletes() || retrieved_[i])) {
      // Mailutils' X-Expire-Timestamp header counts for a message without our stamp. A
      // message that cannot be read now is simply not judged.
      auto h = header_stamp(i);
      if (h && *h) {
        stamp = **h;
      }
    }
    if (retrieved_[i] && !stamps_->get(key)) {
      std::int64_t first = stamp ? std::min(*stamp, now_s) : now_s;
      stamps_->set(key, first);
      stamp = first;
    }
    if (policy.deletes() && stamp && is_expired(*stamp, now_s, policy.days)) {
      marks[i] = 1;
      ++expired_deleted_;
    }
  }
  std::unique_ptr<bool[]> bool_marks(new bool[marks.size()]);
  for (std::size_t i = 0; i < marks.size(); ++i) {
    bool_marks[i] = marks[i] != 0;
  }
  auto r = inner_->commit(std::span<const bool>(bool_marks.get(), marks.size()));

  // Keep stamps of messages still there: all of them if the commit failed (some removals
  // may not have happened), else those not removed. Vanished messages' stamps are dropped.
  std::set<std::string, std::less<>> present;
  for (std::size_t i = 0; i < native.size(); ++i) {
    if (!r.ok() || !marks[i]) {
      present.insert(native[i].uidl);
    }
  }
  stamps_->retain_if([&](const std::string& uidl) { return present.count(uidl) != 0; });
  auto saved = stamps_->save(opts_.path);
  if (!saved) {
    stamp_error_ = std::move(saved).err();
  }
  if (!r.ok()) {
    expired_deleted_ = 0;
  }
  return r;
}

result<std::unique_ptr<maildrop>> decorate(std::unique_ptr<maildrop> inner, decoration_options opts,
                                           decorated_maildrop** decorated) {
  if (decorated != nullptr) {
    *decorated = nullptr;
  }
  if (!needs_decoration(opts)) {
    return inner;
  }
  auto d = decorated_maildrop::wrap(std::move(inner), std::move(opts));
  if (!d) {
    return std::move(d).err();
  }
  if (decorated != nullptr) {
    *decorated = d->get();
  }
  return std::unique_ptr<maildrop>(std::move(d).value());
}

}  // namespace postern::store
