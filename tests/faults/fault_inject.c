/* libpostern_faults.so: syscall fault injection for the real posternd (LD_PRELOAD, tests only).

   Usage (docs/reliability.md, "Fault injection"; tests/integration/fault_injection.py builds
   the environment, preloading the ASan runtime first for the sanitizer build):

     LD_PRELOAD=build/libpostern_faults.so \
     POSTERN_FAULTS='rename:path~/cur/:nth=2:errno=EIO;fsync:nth=1:action=kill' posternd ...

   POSTERN_FAULTS holds rules separated by ';'. A rule is the call names ('|' between them)
   then ':'-separated fields; '\' escapes the next character of a value (a ':' in a path):

     path~TEXT      the call's path contains TEXT: the path argument(s) of open, openat, creat,
                    rename*, unlink*, link*, mkdir (a relative one joined to its directory), or
                    the fd's /proc/self/fd link for fd calls ("socket:[..]", "pipe:[..]")
     on=KIND        the fd is a file, dir, tcp (AF_INET/AF_INET6 socket), unix, pipe or any
                    (default any); for accept it is the listening socket
     nth=N          the first matching call to act on (default 1)
     every=K        then every K-th matching call after it (default 1)
     times=T        act at most T times (default 1; 0: no limit)
     action=A       fail (default): return -1 (MAP_FAILED for mmap) with errno, call not made
                    short: make the call with fewer bytes (short=B, default half, at least 1;
                           short=0 gives end of file for reads), calls with a length only
                    kill: raise SIGKILL; stop: raise SIGSTOP (SIGCONT goes on)
                    count: do nothing but count (and log) the matching calls
     when=W         before (default) or after the call, for kill and stop
     errno=E        EIO (default), ENOSPC, EINTR, EMFILE, ENFILE, EAGAIN, EPIPE, ECONNRESET,
                    EACCES, EROFS, EDQUOT, ENOMEM, EBADF, EEXIST, ENOENT, EXDEV, or a number
     scope=S        process (default): each process counts its own calls from 0, a forked
                    child starts again at 0; tree: one count shared by the process and every
                    process forked from it

   Calls: read readv pread preadv recv recvfrom recvmsg write writev pwrite pwritev send
   sendto sendmsg fsync fdatasync ftruncate mmap open openat creat rename renameat renameat2
   unlink unlinkat link linkat mkdir accept accept4 (the *64 forms count as their plain name).
   mmap rules see only file mappings (fd >= 0), never anonymous memory.

   POSTERN_FAULTS_FILE=FILE reads the rules from FILE instead (';' or newlines between them),
   and again whenever FILE changes (write a new one and rename it into place): the new rules
   start counting at 0, so one running daemon serves a whole loop over fault points. A missing
   or empty FILE means no rules.

   POSTERN_FAULTS_LOG=FILE appends one line per act and per counted call:
     fault pid=P rule=R call=C n=N action=A path=PATH
   (opened for each line, so it survives a daemon closing its descriptors; unwritable after a
   chroot). POSTERN_FAULTS_PROG=NAME limits the rules to processes whose executable's base
   name is NAME (a program the daemon spawns keeps its environment). A malformed
   POSTERN_FAULTS ends the process with status 127 and a message on stderr.

   Built only with the tests (POSTERN_TESTS, target postern_faults), never instrumented by a
   sanitizer: under ASan, preload libasan first (LD_PRELOAD="libasan.so.8 this.so") or set
   ASAN_OPTIONS=verify_asan_link_order=0. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

enum { max_rules = 32, max_names = 40, max_text = 512, max_path = 1024, max_iov = 64 };

enum action { act_fail, act_short, act_kill, act_stop, act_count };
enum fd_kind { kind_any, kind_file, kind_dir, kind_tcp, kind_unix, kind_pipe };

struct counter {
  uint64_t seen;   /* matching calls */
  uint64_t acted;  /* acts */
};

struct rule {
  char names[max_names][16];
  int nnames;
  char path[max_text];  /* "" = any */
  enum fd_kind on;
  uint64_t nth, every, times;
  enum action action;
  int after;
  int err;
  long short_bytes;  /* -1: half */
  int shared;
  struct counter* count;
};

/* The rules in force: one of two tables, so that a reloaded rules file is parsed into the
   other one and then switched to. */
struct table {
  struct rule rules[max_rules];
  int n;
};

static struct table tables_[2];
static struct table* current_;          /* NULL: no rules */
static struct counter private_counts_[2][max_rules];
static struct counter* shared_counts_;  /* [2][max_rules], MAP_SHARED */
static char log_path_[max_path];
static char rules_file_[max_path];
static pthread_once_t once_ = PTHREAD_ONCE_INIT;

/* ---- raw helpers: never through an interposed symbol ---------------------------------- */

static void say(const char* s) { syscall(SYS_write, 2, s, strlen(s)); }

static void die(const char* what, const char* rule) {
  say("postern_faults: ");
  say(what);
  say(": ");
  say(rule);
  say("\n");
  syscall(SYS_exit_group, 127);
}

static void append_text(char* out, size_t cap, const char* s) {
  size_t n = strlen(out);
  while (*s != '\0' && n + 1 < cap) {
    out[n++] = *s++;
  }
  out[n] = '\0';
}

static void append_num(char* out, size_t cap, uint64_t v) {
  char digits[24];
  int i = (int)sizeof digits - 1;
  digits[i] = '\0';
  do {
    digits[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0 && i > 0);
  append_text(out, cap, digits + i);
}

/* The /proc/self/fd link of fd ("" when unknown). */
static void fd_path(int fd, char* out, size_t cap) {
  char link[40] = "/proc/self/fd/";
  out[0] = '\0';
  if (fd < 0) {
    return;
  }
  append_num(link, sizeof link, (uint64_t)fd);
  long n = syscall(SYS_readlinkat, AT_FDCWD, link, out, cap - 1);
  out[n > 0 ? n : 0] = '\0';
}

/* `path` as seen from dirfd: absolute paths stay, relative ones get the directory prefixed. */
static void at_path(int dirfd, const char* path, char* out, size_t cap) {
  out[0] = '\0';
  if (path == NULL) {
    return;
  }
  if (path[0] != '/') {
    if (dirfd == AT_FDCWD) {
      if (syscall(SYS_getcwd, out, cap) < 0) {
        out[0] = '\0';
      }
    } else {
      fd_path(dirfd, out, cap);
    }
    append_text(out, cap, "/");
  }
  append_text(out, cap, path);
}

static enum fd_kind kind_of(int fd) {
  struct stat st;
  if (fd < 0 || syscall(SYS_fstat, fd, &st) != 0) {
    return kind_any;
  }
  if (S_ISREG(st.st_mode)) {
    return kind_file;
  }
  if (S_ISDIR(st.st_mode)) {
    return kind_dir;
  }
  if (S_ISFIFO(st.st_mode)) {
    return kind_pipe;
  }
  if (S_ISSOCK(st.st_mode)) {
    int domain = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) {
      return kind_any;
    }
    return domain == AF_UNIX ? kind_unix : (domain == AF_INET || domain == AF_INET6) ? kind_tcp
                                                                                    : kind_any;
  }
  return kind_any;
}

/* ---- configuration -------------------------------------------------------------------- */

struct errno_name {
  const char* name;
  int value;
};

static const struct errno_name errnos_[] = {
    {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EINTR", EINTR},   {"EMFILE", EMFILE},
    {"ENFILE", ENFILE}, {"EAGAIN", EAGAIN}, {"EPIPE", EPIPE},   {"ECONNRESET", ECONNRESET},
    {"EACCES", EACCES}, {"EROFS", EROFS},   {"EDQUOT", EDQUOT}, {"ENOMEM", ENOMEM},
    {"EBADF", EBADF},   {"EEXIST", EEXIST}, {"ENOENT", ENOENT}, {"EXDEV", EXDEV},
};

static const char* const calls_[] = {
    "read",  "readv",     "pread",     "preadv", "recv",   "recvfrom", "recvmsg",  "write",
    "writev", "pwrite",   "pwritev",   "send",   "sendto", "sendmsg",  "fsync",    "fdatasync",
    "ftruncate", "mmap",  "open",      "openat", "creat",  "rename",   "renameat", "renameat2",
    "unlink", "unlinkat", "link",      "linkat", "mkdir",  "accept",   "accept4",
};

static int known_call(const char* name) {
  for (size_t i = 0; i < sizeof calls_ / sizeof calls_[0]; ++i) {
    if (strcmp(calls_[i], name) == 0) {
      return 1;
    }
  }
  return 0;
}

static int parse_u64(const char* s, uint64_t* out) {
  char* end = NULL;
  if (*s < '0' || *s > '9') {
    return 0;
  }
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') {
    return 0;
  }
  *out = v;
  return 1;
}

static int parse_errno(const char* s, int* out) {
  for (size_t i = 0; i < sizeof errnos_ / sizeof errnos_[0]; ++i) {
    if (strcmp(errnos_[i].name, s) == 0) {
      *out = errnos_[i].value;
      return 1;
    }
  }
  uint64_t v;
  if (parse_u64(s, &v) && v > 0 && v < 4096) {
    *out = (int)v;
    return 1;
  }
  return 0;
}

static int parse_kind(const char* s, enum fd_kind* out) {
  static const char* const names[] = {"any", "file", "dir", "tcp", "unix", "pipe"};
  for (int i = 0; i < 6; ++i) {
    if (strcmp(names[i], s) == 0) {
      *out = (enum fd_kind)i;
      return 1;
    }
  }
  return 0;
}

static int parse_action(const char* s, enum action* out) {
  static const char* const names[] = {"fail", "short", "kill", "stop", "count"};
  for (int i = 0; i < 5; ++i) {
    if (strcmp(names[i], s) == 0) {
      *out = (enum action)i;
      return 1;
    }
  }
  return 0;
}

/* Splits `text` at unescaped `sep` into out (escapes removed); returns the rest or NULL. */
static const char* next_part(const char* text, char sep, char* out, size_t cap) {
  size_t n = 0;
  while (*text != '\0' && *text != sep) {
    if (*text == '\\' && text[1] != '\0') {
      ++text;
    }
    if (n + 1 < cap) {
      out[n++] = *text;
    }
    ++text;
  }
  out[n] = '\0';
  return *text == sep ? text + 1 : NULL;
}

static void parse_names(struct rule* r, char* list, const char* whole) {
  char* save = NULL;
  for (char* name = strtok_r(list, "|,", &save); name != NULL; name = strtok_r(NULL, "|,", &save)) {
    if (!known_call(name)) {
      die("unknown call in rule", whole);
    }
    if (r->nnames == max_names) {
      die("too many calls in rule", whole);
    }
    strncpy(r->names[r->nnames++], name, sizeof r->names[0] - 1);
  }
  if (r->nnames == 0) {
    die("rule names no call", whole);
  }
}

static void parse_field(struct rule* r, const char* field, const char* whole) {
  uint64_t v;
  if (strncmp(field, "path~", 5) == 0) {
    strncpy(r->path, field + 5, sizeof r->path - 1);
    return;
  }
  const char* eq = strchr(field, '=');
  if (eq == NULL) {
    die("field is not key=value or path~text", whole);
  }
  const size_t klen = (size_t)(eq - field);
  const char* val = eq + 1;
  int ok = 0;
#define KEY(k) (klen == sizeof(k) - 1 && strncmp(field, k, klen) == 0)
  if (KEY("nth")) {
    ok = parse_u64(val, &r->nth) && r->nth > 0;
  } else if (KEY("every")) {
    ok = parse_u64(val, &r->every) && r->every > 0;
  } else if (KEY("times")) {
    ok = parse_u64(val, &r->times);
  } else if (KEY("errno")) {
    ok = parse_errno(val, &r->err);
  } else if (KEY("action")) {
    ok = parse_action(val, &r->action);
  } else if (KEY("short")) {
    ok = parse_u64(val, &v) && v < (1ull << 40);
    r->short_bytes = (long)v;
  } else if (KEY("on")) {
    ok = parse_kind(val, &r->on);
  } else if (KEY("when")) {
    ok = strcmp(val, "before") == 0 || strcmp(val, "after") == 0;
    r->after = strcmp(val, "after") == 0;
  } else if (KEY("scope")) {
    ok = strcmp(val, "process") == 0 || strcmp(val, "tree") == 0;
    r->shared = strcmp(val, "tree") == 0;
  }
#undef KEY
  if (!ok) {
    die("bad field in rule", whole);
  }
}

static void parse_rule(struct table* t, const char* text) {
  if (t->n == max_rules) {
    die("too many rules", text);
  }
  struct rule* r = &t->rules[t->n++];
  memset(r, 0, sizeof *r);
  r->nth = 1;
  r->every = 1;
  r->times = 1;
  r->err = EIO;
  r->short_bytes = -1;
  char part[max_text];
  const char* rest = next_part(text, ':', part, sizeof part);
  parse_names(r, part, text);
  while (rest != NULL) {
    rest = next_part(rest, ':', part, sizeof part);
    parse_field(r, part, text);
  }
}

static int program_matches(const char* want) {
  char exe[max_path];
  long n = syscall(SYS_readlinkat, AT_FDCWD, "/proc/self/exe", exe, sizeof exe - 1);
  exe[n > 0 ? n : 0] = '\0';
  const char* base = strrchr(exe, '/');
  return strcmp(base != NULL ? base + 1 : exe, want) == 0;
}

static void reset_private_counts(void) { memset(private_counts_, 0, sizeof private_counts_); }

/* Parses `spec` into table `which` (counters at 0). Rules end at an unescaped ';'; the escapes
   stay for the split into fields. */
static struct table* parse_table(int which, const char* spec) {
  struct table* t = &tables_[which];
  t->n = 0;
  char text[max_text * 2];
  const char* p = spec;
  while (*p != '\0') {
    size_t n = 0;
    while (*p != '\0' && *p != ';' && *p != '\n') {
      if (*p == '\\' && p[1] != '\0' && n + 2 < sizeof text) {
        text[n++] = *p++;
      }
      if (n + 1 < sizeof text) {
        text[n++] = *p;
      }
      ++p;
    }
    text[n] = '\0';
    if (*p != '\0') {
      ++p;
    }
    if (n > 0) {
      parse_rule(t, text);
    }
  }
  memset(private_counts_[which], 0, sizeof private_counts_[which]);
  memset(&shared_counts_[which * max_rules], 0, sizeof(struct counter) * max_rules);
  for (int i = 0; i < t->n; ++i) {
    t->rules[i].count =
        t->rules[i].shared ? &shared_counts_[which * max_rules + i] : &private_counts_[which][i];
  }
  return t->n > 0 ? t : NULL;
}

/* The rules file: reread when its inode, size or times change (a test renames a new one into
   place); the new rules start with their counts at 0. One thread rereads at a time, into the
   table not in force; a thread still deciding on the table of two changes ago could see it
   rewritten, so tests change the rules while the process is between sessions. */
static struct {
  uint64_t ino, size;
  int64_t mtime_ns, ctime_ns;
  int seen;
} file_stamp_;
static int reloading_;
static int file_table_;

static void reload_rules_file(void) {
  struct stat st;
  const int exists = syscall(SYS_newfstatat, AT_FDCWD, rules_file_, &st, 0) == 0;
  const int64_t mt = exists ? (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec : 0;
  const int64_t ct = exists ? (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec : 0;
  if (file_stamp_.seen && file_stamp_.ino == (uint64_t)(exists ? st.st_ino : 0) &&
      file_stamp_.size == (uint64_t)(exists ? st.st_size : 0) && file_stamp_.mtime_ns == mt &&
      file_stamp_.ctime_ns == ct) {
    return;
  }
  if (__atomic_test_and_set(&reloading_, __ATOMIC_ACQUIRE)) {
    return;  /* another thread rereads it */
  }
  char spec[8192];
  long n = 0;
  if (exists) {
    const long fd = syscall(SYS_openat, AT_FDCWD, rules_file_, O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? syscall(SYS_read, (int)fd, spec, sizeof spec - 1) : -1;
    if (fd >= 0) {
      syscall(SYS_close, (int)fd);
    }
  }
  spec[n > 0 ? n : 0] = '\0';
  file_table_ = 1 - file_table_;
  struct table* t = parse_table(file_table_, spec);
  file_stamp_.ino = exists ? st.st_ino : 0;
  file_stamp_.size = exists ? (uint64_t)st.st_size : 0;
  file_stamp_.mtime_ns = mt;
  file_stamp_.ctime_ns = ct;
  file_stamp_.seen = 1;
  __atomic_store_n(&current_, t, __ATOMIC_RELEASE);
  __atomic_clear(&reloading_, __ATOMIC_RELEASE);
}

static void init(void) {
  const char* spec = getenv("POSTERN_FAULTS");
  const char* file = getenv("POSTERN_FAULTS_FILE");
  const char* prog = getenv("POSTERN_FAULTS_PROG");
  const char* log = getenv("POSTERN_FAULTS_LOG");
  const int have_spec = spec != NULL && *spec != '\0';
  const int have_file = file != NULL && *file != '\0';
  if ((!have_spec && !have_file) || (prog != NULL && *prog != '\0' && !program_matches(prog))) {
    return;
  }
  if (log != NULL) {
    strncpy(log_path_, log, sizeof log_path_ - 1);
  }
  shared_counts_ = (struct counter*)syscall(SYS_mmap, NULL, sizeof(struct counter) * 2 * max_rules,
                                            PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                            -1, 0);
  if ((long)shared_counts_ < 0 && (long)shared_counts_ > -4096) {
    die("cannot map shared counters", "");
  }
  pthread_atfork(NULL, NULL, reset_private_counts);
  if (have_file) {
    strncpy(rules_file_, file, sizeof rules_file_ - 1);
    reload_rules_file();
  } else {
    __atomic_store_n(&current_, parse_table(0, spec), __ATOMIC_RELEASE);
  }
}

/* The rules for this call (NULL: none), the rules file reread first when it changed. */
static const struct table* rules_now(void) {
  pthread_once(&once_, init);
  if (rules_file_[0] != '\0') {
    const int saved_errno = errno;
    reload_rules_file();
    errno = saved_errno;
  }
  return __atomic_load_n(&current_, __ATOMIC_ACQUIRE);
}

__attribute__((constructor)) static void load(void) { pthread_once(&once_, init); }

/* ---- matching --------------------------------------------------------------------------- */

struct call {
  const char* name;
  int fd;            /* -1: path call */
  const char* p1;    /* resolved paths of a path call */
  const char* p2;
};

static void log_act(int index, const struct call* c, uint64_t n, const char* action,
                    const char* path) {
  if (log_path_[0] == '\0') {
    return;
  }
  char line[max_path + 256] = "fault pid=";
  append_num(line, sizeof line, (uint64_t)syscall(SYS_getpid));
  append_text(line, sizeof line, " rule=");
  append_num(line, sizeof line, (uint64_t)index + 1);
  append_text(line, sizeof line, " call=");
  append_text(line, sizeof line, c->name);
  append_text(line, sizeof line, " n=");
  append_num(line, sizeof line, n);
  append_text(line, sizeof line, " action=");
  append_text(line, sizeof line, action);
  append_text(line, sizeof line, " path=");
  append_text(line, sizeof line, path);
  append_text(line, sizeof line, "\n");
  long fd = syscall(SYS_openat, AT_FDCWD, log_path_, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                    0666);
  if (fd >= 0) {
    syscall(SYS_write, (int)fd, line, strlen(line));
    syscall(SYS_close, (int)fd);
  }
}

static int names_call(const struct rule* r, const char* name) {
  for (int i = 0; i < r->nnames; ++i) {
    if (strcmp(r->names[i], name) == 0) {
      return 1;
    }
  }
  return 0;
}

/* The rule that acts on this call, or NULL. Counts every matching call. */
static const struct rule* decide(const struct call* c, char* path, size_t cap) {
  const struct table* t = rules_now();
  if (t == NULL) {
    return NULL;
  }
  const int saved_errno = errno;
  int have_path = 0;
  const struct rule* chosen = NULL;
  for (int i = 0; i < t->n; ++i) {
    const struct rule* r = &t->rules[i];
    if (!names_call(r, c->name)) {
      continue;
    }
    if (r->on != kind_any && (c->fd < 0 || kind_of(c->fd) != r->on)) {
      continue;
    }
    if (!have_path) {
      if (c->fd >= 0) {
        fd_path(c->fd, path, cap);
      } else {
        path[0] = '\0';
        append_text(path, cap, c->p1 != NULL ? c->p1 : "");
        if (c->p2 != NULL) {
          append_text(path, cap, " -> ");
          append_text(path, cap, c->p2);
        }
      }
      have_path = 1;
    }
    if (r->path[0] != '\0' && strstr(path, r->path) == NULL) {
      continue;
    }
    const uint64_t n = __atomic_add_fetch(&r->count->seen, 1, __ATOMIC_ACQ_REL);
    if (r->action == act_count) {
      log_act(i, c, n, "count", path);
      continue;
    }
    if (chosen != NULL || n < r->nth || (n - r->nth) % r->every != 0) {
      continue;
    }
    const uint64_t acted = __atomic_add_fetch(&r->count->acted, 1, __ATOMIC_ACQ_REL);
    if (r->times != 0 && acted > r->times) {
      continue;
    }
    static const char* const names[] = {"fail", "short", "kill", "stop", "count"};
    log_act(i, c, n, names[r->action], path);
    chosen = r;
  }
  errno = saved_errno;
  return chosen;
}

static void raise_now(int sig) { syscall(SYS_kill, syscall(SYS_getpid), sig); }

/* Before the call: 1 when it must fail now (errno set), 0 to make it (maybe shortened). */
static int before(const struct rule* r) {
  if (r == NULL) {
    return 0;
  }
  if ((r->action == act_kill || r->action == act_stop) && !r->after) {
    raise_now(r->action == act_kill ? SIGKILL : SIGSTOP);
    return 0;
  }
  if (r->action == act_fail) {
    errno = r->err;
    return 1;
  }
  return 0;
}

static void after(const struct rule* r) {
  if (r != NULL && r->after && (r->action == act_kill || r->action == act_stop)) {
    const int saved = errno;
    raise_now(r->action == act_kill ? SIGKILL : SIGSTOP);
    errno = saved;
  }
}

static size_t shortened(const struct rule* r, size_t n) {
  if (r == NULL || r->action != act_short) {
    return n;
  }
  const long want = r->short_bytes;
  if (want >= 0) {
    return (size_t)want < n ? (size_t)want : n;
  }
  return n > 1 ? n / 2 : n;
}

/* An iovec list cut to `limit` bytes in `out` (at most max_iov entries); its length. */
static int cut_iov(const struct iovec* iov, int cnt, size_t limit, struct iovec* out) {
  int k = 0;
  for (int i = 0; i < cnt && k < max_iov && limit > 0; ++i) {
    out[k] = iov[i];
    if (out[k].iov_len > limit) {
      out[k].iov_len = limit;
    }
    limit -= out[k].iov_len;
    ++k;
  }
  return k;
}

static size_t iov_total(const struct iovec* iov, int cnt) {
  size_t n = 0;
  for (int i = 0; i < cnt; ++i) {
    n += iov[i].iov_len;
  }
  return n;
}

/* ---- the interposed calls ------------------------------------------------------------ */

#define SYMBOLS(X)                                                                              \
  X(read) X(write) X(pread) X(pread64) X(pwrite) X(pwrite64) X(readv) X(writev) X(preadv)      \
  X(preadv64) X(pwritev) X(pwritev64) X(recv) X(send) X(sendto) X(recvfrom) X(recvmsg)         \
  X(sendmsg) X(fsync) X(fdatasync) X(ftruncate) X(ftruncate64) X(mmap) X(mmap64) X(open)       \
  X(open64) X(openat) X(openat64) X(creat) X(rename) X(link) X(renameat) X(renameat2)          \
  X(linkat) X(unlink) X(unlinkat) X(mkdir) X(accept) X(accept4)

#define SYM_ID(s) sym_##s,
#define SYM_NAME(s) #s,
enum sym { SYMBOLS(SYM_ID) sym_count };
static const char* const sym_names_[sym_count] = {SYMBOLS(SYM_NAME)};
static void* real_[sym_count];

/* The next definition of the symbol (libc's, or a sanitizer's interceptor), looked up once. */
static void* real(enum sym s) {
  void* f = __atomic_load_n(&real_[s], __ATOMIC_ACQUIRE);
  if (f == NULL) {
    f = dlsym(RTLD_NEXT, sym_names_[s]);
    if (f == NULL) {
      die("no next definition of", sym_names_[s]);
    }
    __atomic_store_n(&real_[s], f, __ATOMIC_RELEASE);
  }
  return f;
}

/* The rule acting on fd call `name` (decide()), NULL for none. */
static const struct rule* fd_decision(const char* name, int fd) {
  char path[max_path];
  const struct call c = {name, fd, NULL, NULL};
  return decide(&c, path, sizeof path);
}

/* The same for a call on one or two paths, each relative to its directory fd. */
static const struct rule* path_decision(const char* name, int d1, const char* p1, int d2,
                                         const char* p2) {
  const struct table* t = rules_now();
  int named = 0;
  for (int i = 0; t != NULL && i < t->n && !named; ++i) {
    named = names_call(&t->rules[i], name);
  }
  if (!named) {
    return NULL;
  }
  char a[max_path], b[max_path], path[max_path * 2 + 8];
  at_path(d1, p1, a, sizeof a);
  if (p2 != NULL) {
    at_path(d2, p2, b, sizeof b);
  }
  const struct call c = {name, -1, a, p2 != NULL ? b : NULL};
  return decide(&c, path, sizeof path);
}

/* Runs `expr` (the real call, its result in r) between the rule's before and after steps;
   `failed` is what the call returns when the rule fails it. */
#define AROUND(chosen, type, failed, expr) \
  do {                                     \
    if (before(chosen)) {                  \
      return failed;                       \
    }                                      \
    type r = expr;                         \
    after(chosen);                         \
    return r;                              \
  } while (0)

typedef ssize_t (*rw_fn)(int, void*, size_t);
typedef ssize_t (*prw_fn)(int, void*, size_t, off_t);
typedef ssize_t (*vec_fn)(int, const struct iovec*, int);
typedef ssize_t (*pvec_fn)(int, const struct iovec*, int, off_t);
typedef ssize_t (*sr_fn)(int, void*, size_t, int);
typedef ssize_t (*sto_fn)(int, const void*, size_t, int, const struct sockaddr*, socklen_t);
typedef ssize_t (*rfrom_fn)(int, void*, size_t, int, struct sockaddr*, socklen_t*);
typedef ssize_t (*msg_fn)(int, struct msghdr*, int);
typedef int (*fd_fn)(int);
typedef int (*trunc_fn)(int, off_t);
typedef void* (*mmap_fn)(void*, size_t, int, int, int, off_t);
typedef int (*open_fn)(const char*, int, ...);
typedef int (*openat_fn)(int, const char*, int, ...);
typedef int (*creat_fn)(const char*, mode_t);
typedef int (*two_fn)(const char*, const char*);
typedef int (*twoat_fn)(int, const char*, int, const char*);
typedef int (*twoatf_fn)(int, const char*, int, const char*, unsigned);
typedef int (*linkat_fn)(int, const char*, int, const char*, int);
typedef int (*one_fn)(const char*);
typedef int (*unlinkat_fn)(int, const char*, int);
typedef int (*mkdir_fn)(const char*, mode_t);
typedef int (*accept_fn)(int, struct sockaddr*, socklen_t*);
typedef int (*accept4_fn)(int, struct sockaddr*, socklen_t*, int);

static ssize_t do_rw(enum sym s, const char* name, int fd, void* buf, size_t n) {
  const struct rule* const chosen = fd_decision(name, fd);
  AROUND(chosen, ssize_t, -1, ((rw_fn)real(s))(fd, buf, shortened(chosen, n)));
}

static ssize_t do_prw(enum sym s, const char* name, int fd, void* buf, size_t n, off_t off) {
  const struct rule* const chosen = fd_decision(name, fd);
  AROUND(chosen, ssize_t, -1, ((prw_fn)real(s))(fd, buf, shortened(chosen, n), off));
}

static ssize_t do_vec(enum sym s, const char* name, int fd, const struct iovec* iov, int cnt,
                      int positioned, off_t off) {
  const struct rule* const chosen = fd_decision(name, fd);
  struct iovec cut[max_iov];
  const size_t total = iov_total(iov, cnt);
  if (shortened(chosen, total) < total) {
    cnt = cut_iov(iov, cnt, shortened(chosen, total), cut);
    iov = cut;
  }
  AROUND(chosen, ssize_t, -1,
         positioned ? ((pvec_fn)real(s))(fd, iov, cnt, off) : ((vec_fn)real(s))(fd, iov, cnt));
}

static ssize_t do_sr(enum sym s, int fd, void* buf, size_t n, int flags) {
  const struct rule* const chosen = fd_decision(sym_names_[s], fd);
  AROUND(chosen, ssize_t, -1, ((sr_fn)real(s))(fd, buf, shortened(chosen, n), flags));
}

static ssize_t do_msg(enum sym s, int fd, struct msghdr* m, int flags) {
  const struct rule* const chosen = fd_decision(sym_names_[s], fd);
  if (before(chosen)) {
    return -1;
  }
  const size_t total = iov_total(m->msg_iov, (int)m->msg_iovlen);
  ssize_t r;
  if (shortened(chosen, total) < total) {
    struct iovec cut[max_iov];
    struct msghdr copy = *m;
    copy.msg_iovlen = (size_t)cut_iov(m->msg_iov, (int)m->msg_iovlen, shortened(chosen, total),
                                      cut);
    copy.msg_iov = cut;
    r = ((msg_fn)real(s))(fd, &copy, flags);
    m->msg_flags = copy.msg_flags;
    m->msg_namelen = copy.msg_namelen;
    m->msg_controllen = copy.msg_controllen;
  } else {
    r = ((msg_fn)real(s))(fd, m, flags);
  }
  after(chosen);
  return r;
}

static int do_trunc(enum sym s, int fd, off_t len) {
  const struct rule* const chosen = fd_decision("ftruncate", fd);
  AROUND(chosen, int, -1, ((trunc_fn)real(s))(fd, len));
}

static void* do_mmap(enum sym s, void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  if (fd < 0 || (flags & MAP_ANONYMOUS) != 0) {
    return ((mmap_fn)real(s))(addr, len, prot, flags, fd, off);
  }
  const struct rule* const chosen = fd_decision("mmap", fd);
  AROUND(chosen, void*, MAP_FAILED, ((mmap_fn)real(s))(addr, len, prot, flags, fd, off));
}

static int do_open(enum sym s, const char* path, int flags, mode_t mode) {
  const struct rule* const chosen = path_decision("open", AT_FDCWD, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((open_fn)real(s))(path, flags, mode));
}

static int do_openat(enum sym s, int dirfd, const char* path, int flags, mode_t mode) {
  const struct rule* const chosen = path_decision("openat", dirfd, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((openat_fn)real(s))(dirfd, path, flags, mode));
}

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) != 0 ? (mode_t)va_arg(ap, int) : 0;
}

EXPORT ssize_t read(int fd, void* buf, size_t n) { return do_rw(sym_read, "read", fd, buf, n); }
EXPORT ssize_t write(int fd, const void* buf, size_t n) {
  return do_rw(sym_write, "write", fd, (void*)buf, n);
}
EXPORT ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  return do_prw(sym_pread, "pread", fd, buf, n, off);
}
EXPORT ssize_t pread64(int fd, void* buf, size_t n, off_t off) {
  return do_prw(sym_pread64, "pread", fd, buf, n, off);
}
EXPORT ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  return do_prw(sym_pwrite, "pwrite", fd, (void*)buf, n, off);
}
EXPORT ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  return do_prw(sym_pwrite64, "pwrite", fd, (void*)buf, n, off);
}
EXPORT ssize_t readv(int fd, const struct iovec* iov, int cnt) {
  return do_vec(sym_readv, "readv", fd, iov, cnt, 0, 0);
}
EXPORT ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  return do_vec(sym_writev, "writev", fd, iov, cnt, 0, 0);
}
EXPORT ssize_t preadv(int fd, const struct iovec* iov, int cnt, off_t off) {
  return do_vec(sym_preadv, "preadv", fd, iov, cnt, 1, off);
}
EXPORT ssize_t preadv64(int fd, const struct iovec* iov, int cnt, off_t off) {
  return do_vec(sym_preadv64, "preadv", fd, iov, cnt, 1, off);
}
EXPORT ssize_t pwritev(int fd, const struct iovec* iov, int cnt, off_t off) {
  return do_vec(sym_pwritev, "pwritev", fd, iov, cnt, 1, off);
}
EXPORT ssize_t pwritev64(int fd, const struct iovec* iov, int cnt, off_t off) {
  return do_vec(sym_pwritev64, "pwritev", fd, iov, cnt, 1, off);
}
EXPORT ssize_t recv(int fd, void* buf, size_t n, int flags) {
  return do_sr(sym_recv, fd, buf, n, flags);
}
EXPORT ssize_t send(int fd, const void* buf, size_t n, int flags) {
  return do_sr(sym_send, fd, (void*)buf, n, flags);
}
EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const struct sockaddr* a,
                      socklen_t alen) {
  const struct rule* const chosen = fd_decision("sendto", fd);
  AROUND(chosen, ssize_t, -1,
         ((sto_fn)real(sym_sendto))(fd, buf, shortened(chosen, n), flags, a, alen));
}
EXPORT ssize_t recvfrom(int fd, void* buf, size_t n, int flags, struct sockaddr* a,
                        socklen_t* alen) {
  const struct rule* const chosen = fd_decision("recvfrom", fd);
  AROUND(chosen, ssize_t, -1,
         ((rfrom_fn)real(sym_recvfrom))(fd, buf, shortened(chosen, n), flags, a, alen));
}
EXPORT ssize_t recvmsg(int fd, struct msghdr* m, int flags) {
  return do_msg(sym_recvmsg, fd, m, flags);
}
EXPORT ssize_t sendmsg(int fd, const struct msghdr* m, int flags) {
  return do_msg(sym_sendmsg, fd, (struct msghdr*)m, flags);
}
EXPORT int fsync(int fd) {
  const struct rule* const chosen = fd_decision("fsync", fd);
  AROUND(chosen, int, -1, ((fd_fn)real(sym_fsync))(fd));
}
EXPORT int fdatasync(int fd) {
  const struct rule* const chosen = fd_decision("fdatasync", fd);
  AROUND(chosen, int, -1, ((fd_fn)real(sym_fdatasync))(fd));
}
EXPORT int ftruncate(int fd, off_t len) { return do_trunc(sym_ftruncate, fd, len); }
EXPORT int ftruncate64(int fd, off_t len) { return do_trunc(sym_ftruncate64, fd, len); }
EXPORT void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return do_mmap(sym_mmap, addr, len, prot, flags, fd, off);
}
EXPORT void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return do_mmap(sym_mmap64, addr, len, prot, flags, fd, off);
}
EXPORT int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return do_open(sym_open, path, flags, mode);
}
EXPORT int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return do_open(sym_open64, path, flags, mode);
}
EXPORT int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(sym_openat, dirfd, path, flags, mode);
}
EXPORT int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(sym_openat64, dirfd, path, flags, mode);
}
EXPORT int creat(const char* path, mode_t mode) {
  const struct rule* const chosen = path_decision("creat", AT_FDCWD, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((creat_fn)real(sym_creat))(path, mode));
}
EXPORT int rename(const char* a, const char* b) {
  const struct rule* const chosen = path_decision("rename", AT_FDCWD, a, AT_FDCWD, b);
  AROUND(chosen, int, -1, ((two_fn)real(sym_rename))(a, b));
}
EXPORT int link(const char* a, const char* b) {
  const struct rule* const chosen = path_decision("link", AT_FDCWD, a, AT_FDCWD, b);
  AROUND(chosen, int, -1, ((two_fn)real(sym_link))(a, b));
}
EXPORT int renameat(int d1, const char* a, int d2, const char* b) {
  const struct rule* const chosen = path_decision("renameat", d1, a, d2, b);
  AROUND(chosen, int, -1, ((twoat_fn)real(sym_renameat))(d1, a, d2, b));
}
EXPORT int renameat2(int d1, const char* a, int d2, const char* b, unsigned flags) {
  const struct rule* const chosen = path_decision("renameat2", d1, a, d2, b);
  AROUND(chosen, int, -1, ((twoatf_fn)real(sym_renameat2))(d1, a, d2, b, flags));
}
EXPORT int linkat(int d1, const char* a, int d2, const char* b, int flags) {
  const struct rule* const chosen = path_decision("linkat", d1, a, d2, b);
  AROUND(chosen, int, -1, ((linkat_fn)real(sym_linkat))(d1, a, d2, b, flags));
}
EXPORT int unlink(const char* path) {
  const struct rule* const chosen = path_decision("unlink", AT_FDCWD, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((one_fn)real(sym_unlink))(path));
}
EXPORT int unlinkat(int dirfd, const char* path, int flags) {
  const struct rule* const chosen = path_decision("unlinkat", dirfd, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((unlinkat_fn)real(sym_unlinkat))(dirfd, path, flags));
}
EXPORT int mkdir(const char* path, mode_t mode) {
  const struct rule* const chosen = path_decision("mkdir", AT_FDCWD, path, AT_FDCWD, NULL);
  AROUND(chosen, int, -1, ((mkdir_fn)real(sym_mkdir))(path, mode));
}
EXPORT int accept(int fd, struct sockaddr* a, socklen_t* alen) {
  const struct rule* const chosen = fd_decision("accept", fd);
  AROUND(chosen, int, -1, ((accept_fn)real(sym_accept))(fd, a, alen));
}
EXPORT int accept4(int fd, struct sockaddr* a, socklen_t* alen, int flags) {
  const struct rule* const chosen = fd_decision("accept4", fd);
  AROUND(chosen, int, -1, ((accept4_fn)real(sym_accept4))(fd, a, alen, flags));
}
