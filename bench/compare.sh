#!/usr/bin/env bash
# Postern against the POP3 servers people would run instead, measured in one run on this
# machine: identical content, every server pinned to one CPU and the client to another,
# scenarios run server after server, round after round, and medians compared.
#
#   bench/compare.sh           the full comparison (as root): Postern, Dovecot (installs
#                              dovecot-pop3d if missing) and popa3d (unpacked with apt-get
#                              download + dpkg -x, never installed); about 12 minutes
#   bench/compare.sh --smoke   a few seconds, Postern (and the no-work server) only, small
#                              content, any user: for CI.
#                              Exits non-zero on wrong replies or a crash, never on slowness.
#
# Options:
#   --rounds N      rounds of every scenario (5; smoke 1)
#   --duration S    measured seconds per run (3; smoke 0.5); --warmup S before it (1; 0.2)
#   --clients N     clients of the session and TLS scenarios (32)
#   --idle N        sessions held by the idle scenario, every server (1000)
#   --idle-max N    sessions Postern is asked to hold once, at the end (50000; 0 skips)
#   --only ROWS     comma-separated rows: session,tls-pop3s,tls-stls,retr-large,retr-cycle,
#                   retr-cycle-pipelined,idle,bigbox-maildir,bigbox-mbox,idle-max
#                   (retr-cycle fetches one message at a time; retr-cycle-pipelined keeps
#                   16 RETRs outstanding where the server's CAPA lists PIPELINING, and
#                   fetches one at a time from a server that does not, saying so)
#   --servers LIST  comma-separated: postern,dovecot,popa3d,nowork (all; smoke: postern and
#                   nowork).
#                   nowork is `postern-bench serve`, a POP3 server that answers from memory
#                   and does no work: the ceiling of what the machine and client allow
#   --out DIR       where results.jsonl, summary.md and the server logs go
#                   (default /var/tmp/postern-bench-results/DATE)
#   --content DIR   keep the generated mail content in DIR and reuse it next time (it takes
#                   half a minute to write); default: a fresh copy in the temporary directory
#   --keep          keep the temporary directory (content, maildrops, configs)
# Environment: POSTERND and POSTERN_BENCH (binaries; default build/posternd and
#   build/postern-bench), SERVER_CPU (0) and CLIENT_CPU (1).
#
# What it changes on the machine (full mode), all undone on exit: a symlink /run/postern-bench
# to its temporary directory (bench/dovecot.conf points there), system users pbench (mail
# owner), pbench-large, pbench-cycle and pbench-bigmbox with spools in /var/mail (popa3d
# serves system users only), and popa3d's own user and /var/lib/popa3d if missing. It never
# reads or writes /etc/dovecot. Installing dovecot-pop3d is the one lasting change; on a
# systemd machine the package starts the distribution's own Dovecot on ports 110/995, which
# this script leaves alone (its ports are 21100-21195).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SMOKE=0
ROUNDS=""
DURATION=""
WARMUP=""
CLIENTS=32
IDLE=""
IDLE_MAX=""
ONLY=""
SERVERS_WANTED=""
OUT=""
CONTENT=""
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --idle-max) IDLE_MAX=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --servers) SERVERS_WANTED=$2; shift ;;
    --out) OUT=$2; shift ;;
    --content) CONTENT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $SMOKE == 1 ]]; then
  : "${ROUNDS:=1}" "${DURATION:=0.5}" "${WARMUP:=0.2}" "${IDLE:=16}" "${IDLE_MAX:=0}"
  CLIENTS=4
  : "${SERVERS_WANTED:=postern,nowork}"
else
  : "${ROUNDS:=5}" "${DURATION:=3}" "${WARMUP:=1}" "${IDLE:=1000}" "${IDLE_MAX:=50000}"
  : "${SERVERS_WANTED:=postern,dovecot,popa3d,nowork}"
fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
POSTERND=${POSTERND:-$ROOT/build/posternd}
BENCH=${POSTERN_BENCH:-$ROOT/build/postern-bench}
USERS=$((CLIENTS * 2))  # a multiple of the clients: no two clients share a maildrop

log() { printf '%s compare.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 2; }
wanted_row() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
wanted_server() { [[ ",$SERVERS_WANTED," == *",$1,"* ]]; }

[[ -x $POSTERND ]] || die "no posternd at $POSTERND (build it: cmake --build build)"
POSTERND_SOURCE=$POSTERND
if [[ $SMOKE == 0 && $EUID -ne 0 ]]; then
  die "the full comparison needs root (system users for popa3d, Dovecot's privilege drop);" \
    "try --smoke"
fi
if [[ $SMOKE == 0 ]] && [[ $(nproc) -lt 2 ]]; then
  log "warning: fewer than 2 CPUs: server and client share one"
fi

# --- temporary state, undone on exit -------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/postern-bench.XXXXXX")
chmod 755 "$WORK"
declare -a PIDS=()           # servers we started
declare -a CREATED_USERS=()  # system users we created
declare -a CREATED_FILES=()  # files and directories outside $WORK we created
RUN_LINK=""

cleanup() {
  local rc=$?
  set +e
  log "cleaning up"
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null
  done
  for f in "${CREATED_FILES[@]}"; do
    rm -rf -- "$f"
  done
  for u in "${CREATED_USERS[@]}"; do
    userdel "$u" 2>/dev/null || log "warning: could not remove user $u"
  done
  if [[ -n $RUN_LINK && $(readlink "$RUN_LINK") == "$WORK/run" ]]; then
    rm -f "$RUN_LINK"
  fi
  if [[ $KEEP == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z $OUT ]]; then
  OUT=/var/tmp/postern-bench-results/$(date +%Y%m%d-%H%M%S)
fi
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# In full mode the run directory is reached as /run/postern-bench, the path
# bench/dovecot.conf names; only one full comparison runs at a time.
if [[ $SMOKE == 0 ]]; then
  exec 9>/run/lock/postern-bench.lock
  flock -n 9 || die "another compare.sh is running"
  RUN=/run/postern-bench
  if [[ -L $RUN ]]; then
    [[ -d $(readlink "$RUN") ]] && die "$RUN points at $(readlink "$RUN"): another run?"
    rm -f "$RUN"
  fi
  [[ -e $RUN ]] && die "$RUN exists and is not ours"
  mkdir -p "$WORK/run"
  ln -s "$WORK/run" "$RUN"
  RUN_LINK=$RUN
else
  RUN=$WORK/run
  mkdir -p "$RUN"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
wait_port() {  # PORT PID: until something listens on PORT, while PID lives
  local i
  for ((i = 0; i < 200; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

if [[ $SMOKE == 1 ]]; then
  P_POSTERN=$(free_port)
  P_POSTERN_TLS=$(free_port)
else
  P_POSTERN=21100
  P_POSTERN_TLS=21195
fi
P_DOVECOT=21110
P_DOVECOT_TLS=21995
P_POPA3D=21120
P_NOWORK_SESSION=21130
P_NOWORK_LARGE=21131
P_NOWORK_CYCLE=21132
if [[ $SMOKE == 1 ]]; then
  P_NOWORK_SESSION=$(free_port)
  P_NOWORK_LARGE=$(free_port)
  P_NOWORK_CYCLE=$(free_port)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# Run copies, so a rebuild during the run cannot mix two versions in one table.
cp "$POSTERND" "$WORK/posternd"
POSTERND=$WORK/posternd
POSTERND_ID="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
POSTERND_ID+=" sha256:$(sha256sum "$POSTERND" | cut -c1-12)"

# --- the benchmark client --------------------------------------------------------------------

if [[ ! -x $BENCH ]]; then
  if [[ -f $ROOT/build/build.ninja ]] && grep -q 'postern-bench' "$ROOT/build/build.ninja"; then
    log "building postern-bench"
    cmake --build "$ROOT/build" --target postern-bench >&2
  else
    log "compiling postern-bench into $WORK (no build/postern-bench target yet; ~1 minute)"
    BENCH=$WORK/postern-bench
    g++ -std=c++20 -O2 -DASIO_NO_DEPRECATED -DASIO_DISABLE_STD_ALIGNED_ALLOC \
      "$ROOT"/tools/postern-bench/*.cpp \
      -lfmt -lssl -lcrypto -pthread -o "$BENCH"
  fi
fi
if [[ $BENCH != "$WORK/postern-bench" ]]; then
  cp "$BENCH" "$WORK/postern-bench"
  BENCH=$WORK/postern-bench
fi
# First make sure the client still catches servers that lie (a fake server, a few seconds).
if ! python3 "$HERE/selftest.py" "$BENCH" >"$OUT/selftest.log" 2>&1; then
  cat "$OUT/selftest.log" >&2
  log "postern-bench no longer verifies replies: see $OUT/selftest.log"
  exit 1
fi

# --- content -----------------------------------------------------------------------------------

C=${CONTENT:-$WORK/content}
want_smoke=$([[ $SMOKE == 1 ]] && echo true || echo false)
content_kind() {  # DIR: "VERSION SMOKE" of the content there
  python3 -c 'import json, sys; m = json.load(open(sys.argv[1]))
print(m.get("version"), str(m.get("smoke")).lower())' "$1/manifest.json" 2>/dev/null || true
}
if [[ -f $C/manifest.json && $(content_kind "$C") == "2 $want_smoke" ]]; then
  log "reusing the mail content in $C"
else
  log "writing the mail content into $C"
  rm -rf "$C"
  python3 "$HERE/provision.py" content "$C" $([[ $SMOKE == 1 ]] && echo --smoke) >/dev/null
fi
chmod 755 "$C"

MAILUSER=""
# posternd refuses to open mail as root, so a root run always has a mail owner; an ordinary
# user's smoke run serves its own files.
if [[ $SMOKE == 0 || $(id -u) == 0 ]]; then
  MAILUSER=pbench
  if ! id -u "$MAILUSER" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group "$MAILUSER"
    CREATED_USERS+=("$MAILUSER")
  fi
fi
own() { [[ -z $MAILUSER ]] || chown -R "$MAILUSER:$MAILUSER" "$@"; }

IDLE_USERS=$IDLE
POSTERN_IDLE_USERS=$IDLE
if [[ $IDLE_MAX -gt 0 ]] && wanted_row idle-max; then
  # Every session of the idle-max row has a maildrop of its own: postern-bench forks client
  # processes past its descriptor limit, and Postern runs worker processes for that row.
  ((IDLE_MAX > POSTERN_IDLE_USERS)) && POSTERN_IDLE_USERS=$IDLE_MAX
fi

# One tree per server: maildirs hard-linked to the content, a passwd-file, mbox copies.
layout_server() {  # NAME IDLE_COUNT
  local srv=$1 idle=$2 d=$RUN/$1
  mkdir -p "$d/mail" "$d/mbox" "$d/home"
  : >"$d/users"
  python3 "$HERE/provision.py" maildirs "$d/mail" user "$USERS" "$C/maildir/session" "$d/users" pw
  python3 "$HERE/provision.py" maildirs "$d/mail" idle "$idle" "$C/maildir/session" "$d/users" pw
  for box in large cycle; do
    mkdir -p "$d/mail/$box"
    cp -al "$C/maildir/$box" "$d/mail/$box/Maildir"
    echo "$box:{PLAIN}x::::::" >>"$d/users"
  done
  echo "bigbox:{PLAIN}x::::::" >>"$d/users"
  chmod 755 "$d"
  chmod 644 "$d/users"
}

# --- TLS certificate -------------------------------------------------------------------------

mkdir -p "$RUN/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=localhost \
  -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2>/dev/null
chmod 644 "$RUN/tls/cert.pem"
chmod 640 "$RUN/tls/key.pem"
[[ -z $MAILUSER ]] || chgrp "$MAILUSER" "$RUN/tls/key.pem"

# --- Postern -----------------------------------------------------------------------------------

POSTERN_TLS=0
POSTERN_PID=""
POSTERN_PROCESSES=""  # worker processes ([server] processes) for the next start; "" for one
IDLE_MAX_PROCESSES=6  # the idle-max row: 2 descriptors a session, 20,000 a process
postern_config() {  # OUT TLS(0|1) PROCESSES("" for none)
  local tls_sed="/# @tls\$/d" proc_sed="/# @processes\$/d"
  [[ $2 == 1 ]] && tls_sed="s|  # @tls\$||"
  [[ -n $3 ]] && proc_sed="s|@PROCESSES@|$3|g; s|  # @processes\$||"
  sed -e "s|@RUN@|$RUN|g; s|@PORT@|$P_POSTERN|g; s|@TLS_PORT@|$P_POSTERN_TLS|g" \
    -e "s|@USER@|$MAILUSER|g" -e "$tls_sed" -e "$proc_sed" "$HERE/postern.toml" >"$1"
}
start_postern() {
  local cfg=$RUN/postern/postern.toml
  postern_config "$cfg" "$POSTERN_TLS" "$POSTERN_PROCESSES"
  taskset -c "$SERVER_CPU" "$POSTERND" --config "$cfg" --foreground >>"$OUT/postern.log" 2>&1 &
  POSTERN_PID=$!
  PIDS+=("$POSTERN_PID")
  wait_port "$P_POSTERN" "$POSTERN_PID" || die "posternd did not start: see $OUT/postern.log"
}

setup_postern() {
  local port
  for port in $P_POSTERN $P_POSTERN_TLS; do
    # Postern binds with SO_REUSEPORT: a leftover server on the port would share the load.
    port_is_free "$port" || die "port $port is busy: is another posternd still running?"
  done
  layout_server postern "$POSTERN_IDLE_USERS"
  echo "bigmbox:{PLAIN}x::::::userdb_mail=mbox:$RUN/postern/mbox/bigmbox" >>"$RUN/postern/users"
  mkdir -p "$RUN/postern/mail/bigbox"
  own "$RUN/postern"
  # TLS rows run only when this posternd accepts the TLS settings.
  local probe=$RUN/postern/probe.toml
  postern_config "$probe" 1 ""
  if "$POSTERND" --check-config --config "$probe" >/dev/null 2>"$RUN/postern/probe.err"; then
    POSTERN_TLS=1
  else
    log "Postern: no TLS rows ($(head -n 1 "$RUN/postern/probe.err"))"
  fi
  # Worker processes for the idle-max row, when this posternd knows the setting.
  if [[ $IDLE_MAX -gt 0 ]]; then
    postern_config "$probe" "$POSTERN_TLS" "$IDLE_MAX_PROCESSES"
    if ! "$POSTERND" --check-config --config "$probe" >/dev/null 2>"$RUN/postern/probe.err"
    then
      log "Postern: idle-max in one process ($(head -n 1 "$RUN/postern/probe.err"))"
      IDLE_MAX_PROCESSES=""
    fi
  fi
  start_postern
  log "Postern $("$POSTERND" --version 2>&1 | head -n 1) ($POSTERND_ID, from $POSTERND_SOURCE)" \
    "on 127.0.0.1:$P_POSTERN (pid $POSTERN_PID)"
}

# --- Dovecot -----------------------------------------------------------------------------------

DOVECOT_PID=""
setup_dovecot() {
  if ! command -v dovecot >/dev/null; then
    log "installing dovecot-pop3d"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-pop3d >&2 ||
      { log "Dovecot could not be installed: its rows read n/a"; return 1; }
  fi
  local port
  for port in $P_DOVECOT $P_DOVECOT_TLS; do
    port_is_free "$port" || { log "port $port is busy: no Dovecot rows"; return 1; }
  done
  layout_server dovecot "$IDLE_USERS"
  local d=$RUN/dovecot
  mkdir -p "$d/run" "$d/state" "$d/mbox-root" "$d/mail/bigbox"
  echo "bigmbox:{PLAIN}x::::::userdb_mail=mbox:$d/mbox-root/bigmbox:INBOX=$d/mbox/bigmbox" \
    >>"$d/users"
  own "$d/mail" "$d/mbox" "$d/mbox-root" "$d/home"
  start_dovecot || return 1
  log "$(dovecot --version | sed 's/^/Dovecot /') on 127.0.0.1:$P_DOVECOT (pid $DOVECOT_PID)"
}
start_dovecot() {
  taskset -c "$SERVER_CPU" dovecot -F -c "$HERE/dovecot.conf" >>"$OUT/dovecot.out" 2>&1 &
  DOVECOT_PID=$!
  PIDS+=("$DOVECOT_PID")
  if ! wait_port "$P_DOVECOT" "$DOVECOT_PID"; then
    log "Dovecot did not start: see $OUT/dovecot.out"
    return 1
  fi
}

# --- popa3d ------------------------------------------------------------------------------------

POPA3D_PID=""
POPA3D_PW=bench-pw
add_system_user() {  # NAME [useradd options]
  local name=$1
  shift
  if ! id -u "$name" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$@" "$name"
    CREATED_USERS+=("$name")
  fi
}
setup_popa3d() {
  local cache=/var/tmp/postern-bench-cache deb
  mkdir -p "$cache"
  deb=$(ls "$cache"/popa3d_*.deb 2>/dev/null | head -n 1 || true)
  if [[ -z $deb ]]; then
    if ! (cd "$cache" && apt-get download -q popa3d >&2); then
      log "apt-get download popa3d failed: its rows read n/a"
      return 1
    fi
    deb=$(ls "$cache"/popa3d_*.deb | head -n 1)
  fi
  dpkg -x "$deb" "$WORK/popa3d"
  port_is_free "$P_POPA3D" || { log "port $P_POPA3D is busy: no popa3d rows"; return 1; }
  # popa3d drops to its own user in an empty chroot before login, then to the mail owner.
  add_system_user popa3d --home-dir /var/lib/popa3d --user-group
  if [[ ! -d /var/lib/popa3d ]]; then
    mkdir -p /var/lib/popa3d
    CREATED_FILES+=(/var/lib/popa3d)
  fi
  local u
  for u in pbench-large pbench-cycle pbench-bigmbox; do
    add_system_user "$u" --home-dir /nonexistent --gid mail
    # SHA-512 crypt at its minimum cost: close to the PLAIN compare the others make.
    echo "$u:$POPA3D_PW" | chpasswd -c SHA512 -s 1000
    [[ -e /var/mail/$u ]] || CREATED_FILES+=("/var/mail/$u" "/var/mail/$u.lock")
  done
  install -o pbench-large -g mail -m 600 "$C/mbox/large" /var/mail/pbench-large
  install -o pbench-cycle -g mail -m 600 "$C/mbox/cycle" /var/mail/pbench-cycle
  taskset -c "$SERVER_CPU" python3 "$HERE/inetd.py" 127.0.0.1 "$P_POPA3D" \
    "$WORK/popa3d/usr/sbin/popa3d" >>"$OUT/popa3d.out" 2>&1 &
  POPA3D_PID=$!
  PIDS+=("$POPA3D_PID")
  wait_port "$P_POPA3D" "$POPA3D_PID" || { log "popa3d's wrapper did not start"; return 1; }
  log "popa3d $(dpkg-deb -f "$deb" Version) on 127.0.0.1:$P_POPA3D through bench/inetd.py" \
    "(pid $POPA3D_PID)"
}

# --- the no-work server ---------------------------------------------------------------------------

NOWORK_PIDS=()
setup_nowork() {
  local spec port count size
  # One instance per row, each holding that row's messages in memory, sized like the content.
  for spec in \
    "$P_NOWORK_SESSION 10 $(manifest_get session first_octets)" \
    "$P_NOWORK_LARGE 1 $(manifest_get large octets)" \
    "$P_NOWORK_CYCLE $(manifest_get cycle messages) $(($(manifest_get cycle octets) / $(manifest_get cycle messages)))"; do
    read -r port count size <<<"$spec"
    port_is_free "$port" || { log "port $port is busy: no no-work rows"; return 1; }
    taskset -c "$SERVER_CPU" "$BENCH" serve --port "$port" --messages "$count" \
      --message-size "$size" >>"$OUT/nowork.out" 2>&1 &
    NOWORK_PIDS+=($!)
    PIDS+=($!)
    wait_port "$port" "$!" || { log "the no-work server did not start"; return 1; }
  done
  log "no-work server (postern-bench serve) on 127.0.0.1:$P_NOWORK_SESSION," \
    "$P_NOWORK_LARGE, $P_NOWORK_CYCLE"
}
manifest_get() {  # BOX KEY
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][sys.argv[3]])' \
    "$C/manifest.json" "$1" "$2"
}

SERVERS=()
wanted_server postern && { setup_postern; SERVERS+=(postern); }
if [[ $SMOKE == 0 ]]; then
  if wanted_server dovecot && setup_dovecot; then SERVERS+=(dovecot); fi
  if wanted_server popa3d && setup_popa3d; then SERVERS+=(popa3d); fi
fi
if wanted_server nowork && setup_nowork; then SERVERS+=(nowork); fi
[[ ${#SERVERS[@]} -gt 0 ]] || die "no server to measure"

# --- running one measurement ---------------------------------------------------------------

FAILURES=0        # runs with errors or that did not complete
CRASHES=0         # posternd exits
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
na() {  # ROW SERVER REASON: recorded once
  printf '{"row":"%s","server":"%s","na":%s}\n' "$1" "$2" "$(json_str "$3")" >>"$RESULTS"
}

server_pid() {
  case $1 in
    postern) echo "$POSTERN_PID" ;;
    dovecot) echo "$DOVECOT_PID" ;;
    popa3d) echo "$POPA3D_PID" ;;
    nowork) echo "${NOWORK_PIDS[0]}" ;;
  esac
}

check_alive() {  # SERVER
  local pid
  pid=$(server_pid "$1")
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$1 (pid $pid) is gone: crashed?"
    na crash "$1" "the server process exited during the runs"
    FAILURES=$((FAILURES + 1))
    if [[ $1 == postern ]]; then
      CRASHES=$((CRASHES + 1))
      start_postern
    else
      die "$1 exited; stopping"
    fi
  fi
}

bench() {  # ROW SERVER ROUND SCENARIO ARGS...
  local row=$1 srv=$2 round=$3 rc=0 out err
  shift 3
  err=$WORK/bench.err
  out=$(taskset -c "$CLIENT_CPU" "$BENCH" "$@" --cpu "$CLIENT_CPU" --output json \
    --label "$srv" --duration "$DURATION" --warmup "$WARMUP" 2>"$err") || rc=$?
  if [[ -n $out && $rc -le 1 ]]; then
    printf '{"row":"%s","server":"%s","round":%s,"rc":%s,"result":%s}\n' \
      "$row" "$srv" "$round" "$rc" "$out" >>"$RESULTS"
  else
    printf '{"row":"%s","server":"%s","round":%s,"rc":%s,"result":null,"error":%s}\n' "$row" \
      "$srv" "$round" "$rc" "$(json_str "$(head -c 300 "$err")")" >>"$RESULTS"
  fi
  if [[ $rc -ne 0 ]]; then
    FAILURES=$((FAILURES + 1))
    log "$row on $srv, round $round: postern-bench exit $rc: $(
      [[ -n $out ]] &&
        python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print(r["errors"], r["warnings"][:3])' \
          "$out" ||
      head -c 300 "$err")"
  fi
  check_alive "$srv"
  [[ -z $out ]] || summary_line "$row" "$srv" "$out"
}

summary_line() {  # ROW SERVER JSON: one progress line
  python3 - "$@" <<'EOF' >&2
import json, sys
row, srv, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kind = r["scenario"]
if kind == "idle":
    i = r["idle"]
    v = f'{i["alive"]} held, {i.get("kib_per_session", "?")} KiB/session'
elif kind == "bigbox":
    v = ", ".join(f'{it["login_stat_ms"]:.0f}' for it in r["iterations"]) + " ms login+STAT"
elif kind == "retr":
    v = f'{r["mb_per_s"]:.1f} MB/s'
    if r.get("pipeline_requested", 1) > 1:
        v += f', {r.get("pipeline_depth", 0)} outstanding'
else:
    v = f'{r["per_s"]:.0f} sessions/s'
print(f'    {row:<20} {srv:<8} {v}  errors {r["errors"]["total"]}')
EOF
}

# The idle row measures memory from a fresh process: a server that kept processes or
# allocator caches from earlier runs would hide what sessions cost.
restart_server() {  # SERVER
  local pid
  pid=$(server_pid "$1")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  case $1 in
    postern) start_postern ;;
    dovecot) start_dovecot || die "Dovecot did not restart" ;;
  esac
}

port_of() {
  case $1 in
    postern) echo "$P_POSTERN" ;;
    dovecot) echo "$P_DOVECOT" ;;
    popa3d) echo "$P_POPA3D" ;;
    nowork)
      case $row in
        retr-large) echo "$P_NOWORK_LARGE" ;;
        retr-cycle|retr-cycle-pipelined) echo "$P_NOWORK_CYCLE" ;;
        *) echo "$P_NOWORK_SESSION" ;;
      esac ;;
  esac
}
tls_port_of() {
  case $1 in
    postern) echo "$P_POSTERN_TLS" ;;
    dovecot) echo "$P_DOVECOT_TLS" ;;
  esac
}

# Fresh copies before every run of the huge-mailbox rows: "first login" means first.
reset_bigbox_maildir() {
  local d=$RUN/$1/mail/bigbox
  rm -rf "$d"
  mkdir -p "$d"
  cp -al "$C/maildir/bigbox" "$d/Maildir"
  own "$d"
}
reset_bigbox_mbox() {
  case $1 in
    postern)
      # A first login must find no index (the last round's would describe a prefix of the
      # fresh copy, and Postern would rightly scan only the rest).
      rm -f "$RUN/postern/mbox/.bigmbox.postern-index"
      cp "$C/mbox/bigbox" "$RUN/postern/mbox/bigmbox"
      own "$RUN/postern/mbox" ;;
    dovecot)
      rm -rf "$RUN/dovecot/mbox-root/bigmbox"
      mkdir -p "$RUN/dovecot/mbox-root/bigmbox"
      cp "$C/mbox/bigbox" "$RUN/dovecot/mbox/bigmbox"
      own "$RUN/dovecot/mbox" "$RUN/dovecot/mbox-root" ;;
    popa3d)
      install -o pbench-bigmbox -g mail -m 600 "$C/mbox/bigbox" /var/mail/pbench-bigmbox ;;
  esac
}

machine_baselines() {
  printf '{"row":"machine","server":"machine","result":%s}\n' "$(taskset -c "$SERVER_CPU" \
    python3 "$HERE/baseline.py" "$C/maildir/bigbox/cur" "$C/mbox/bigbox")" >>"$RESULTS"
}

PIPELINE_DEPTH=16  # RETRs outstanding in the retr-cycle-pipelined row
BIGBOX_ITERATIONS=4
BIGBOX_DELETE=10
BIGBOX_TIMEOUT=300  # Dovecot takes half a minute to index a 190 MB mbox the first time
if [[ $SMOKE == 1 ]]; then
  BIGBOX_ITERATIONS=2
  BIGBOX_DELETE=3
fi

supports() {  # ROW SERVER: whether the server can run the row (records n/a once otherwise)
  case "$1:$2" in
    tls-*:popa3d|session:popa3d|idle:popa3d|bigbox-maildir:popa3d) return 1 ;;
    session:nowork|retr-*:nowork) return 0 ;;
    *:nowork) return 1 ;;
    tls-*:postern)
      [[ $POSTERN_TLS == 1 ]] && return 0
      [[ $round == 1 ]] && na "$1" postern "this posternd has no TLS listener yet"
      return 1 ;;
    bigbox-mbox:postern)
      [[ ${POSTERN_MBOX:-} == 0 ]] && return 1
      if [[ -z ${POSTERN_MBOX:-} ]]; then
        # A login shows whether this posternd serves mbox yet.
        reset_bigbox_mbox postern
        if "$BENCH" bigbox --port "$P_POSTERN" --user bigmbox --password x --count 1 \
          --output json >"$WORK/probe.json" 2>/dev/null; then
          POSTERN_MBOX=1
        else
          POSTERN_MBOX=0
          local why
          why=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["warnings"][0])' \
            "$WORK/probe.json" 2>/dev/null || echo "no reply")
          na bigbox-mbox postern "this posternd cannot serve the mbox yet: $why"
          log "Postern: no mbox rows ($why)"
          return 1
        fi
      fi ;;
  esac
  return 0
}

run_row() {  # ROW SERVER ROUND
  local row=$1 srv=$2 round=$3 port
  port=$(port_of "$srv")
  case $row in
    session)
      bench "$row" "$srv" "$round" session --port "$port" --user 'user%d' --users "$USERS" \
        --password 'pw%d' --clients "$CLIENTS" ;;
    tls-pop3s)
      bench "$row" "$srv" "$round" tls --mode pop3s --port "$(tls_port_of "$srv")" \
        --user 'user%d' --users "$USERS" --password 'pw%d' --clients "$CLIENTS" ;;
    tls-stls)
      bench "$row" "$srv" "$round" tls --mode stls --port "$port" --user 'user%d' \
        --users "$USERS" --password 'pw%d' --clients "$CLIENTS" ;;
    retr-large|retr-cycle|retr-cycle-pipelined)
      local box=${row#retr-} user pw=x
      box=${box%-pipelined}
      user=$box
      [[ $srv == popa3d ]] && { user=pbench-$box; pw=$POPA3D_PW; }
      local how=(--message 1)
      [[ $row == retr-cycle ]] && how=(--cycle)
      # Up to 16 RETRs outstanding, as pipelining clients (mpop, fetchmail) keep them; a
      # server whose CAPA lacks PIPELINING is fetched from one at a time, and the result's
      # pipeline_depth says so.
      [[ $row == retr-cycle-pipelined ]] && how=(--cycle --pipeline "$PIPELINE_DEPTH")
      bench "$row" "$srv" "$round" retr --port "$port" --user "$user" --password "$pw" \
        "${how[@]}" ;;
    idle)
      restart_server "$srv"
      bench "$row" "$srv" "$round" idle --port "$port" --user 'idle%d' --users "$IDLE" \
        --password 'pw%d' --clients "$IDLE" --server-pid "$(server_pid "$srv")"
      # And fresh again for the rows after: Dovecot keeps a thousand idle pop3 processes for
      # a minute (idle_kill), which all wake for every new connection on the one CPU.
      restart_server "$srv" ;;
    bigbox-maildir)
      reset_bigbox_maildir "$srv"
      bench "$row" "$srv" "$round" bigbox --port "$port" --user bigbox --password x \
        --count "$BIGBOX_ITERATIONS" --delete-last "$BIGBOX_DELETE" --timeout "$BIGBOX_TIMEOUT" ;;
    bigbox-mbox)
      reset_bigbox_mbox "$srv"
      local user=bigmbox pw=x
      [[ $srv == popa3d ]] && { user=pbench-bigmbox; pw=$POPA3D_PW; }
      bench "$row" "$srv" "$round" bigbox --port "$port" --user "$user" --password "$pw" \
        --count "$BIGBOX_ITERATIONS" --delete-last "$BIGBOX_DELETE" --timeout "$BIGBOX_TIMEOUT" ;;
  esac
}

python3 - "$C/manifest.json" "$POSTERND_ID" "$(cut -d' ' -f1-3 /proc/loadavg)" "$SMOKE" \
  "$ROUNDS" "$DURATION" "$WARMUP" "$CLIENTS" "$USERS" "$IDLE" "$IDLE_MAX" \
  "$BIGBOX_ITERATIONS" "$BIGBOX_DELETE" >>"$RESULTS" <<'EOF'
import json, sys
a = sys.argv[1:]
keys = ["rounds", "duration_s", "warmup_s", "clients", "users", "idle", "idle_max",
        "bigbox_iterations", "bigbox_delete"]
meta = {"row": "meta", "posternd": a[1], "load_start": a[2], "smoke": a[3] == "1"}
meta.update({k: float(v) if "." in v else int(v) for k, v in zip(keys, a[4:])})
meta["content"] = json.load(open(a[0]))
print(json.dumps(meta))
EOF

ROWS=(session tls-pop3s tls-stls retr-large retr-cycle retr-cycle-pipelined idle bigbox-maildir
  bigbox-mbox)
log "servers: ${SERVERS[*]}; $ROUNDS round(s) of ${DURATION}s runs after ${WARMUP}s warm-up;" \
  "server CPU $SERVER_CPU, client CPU $CLIENT_CPU"
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round of $ROUNDS"
  for row in "${ROWS[@]}"; do
    wanted_row "$row" || continue
    if [[ $row == bigbox-maildir && $SMOKE == 0 ]]; then
      machine_baselines
    fi
    # Rotate the order every round so no server always runs first or last.
    n=${#SERVERS[@]}
    for ((k = 0; k < n; k++)); do
      srv=${SERVERS[$(((k + round - 1) % n))]}
      supports "$row" "$srv" || continue
      run_row "$row" "$srv" "$round"
    done
  done
done

if [[ $IDLE_MAX -gt 0 ]] && wanted_row idle-max && [[ " ${SERVERS[*]} " == *" postern "* ]]; then
  log "idle-max: asking Postern to hold $IDLE_MAX sessions (RLIMIT_NOFILE here: $FD_LIMIT;" \
    "Postern processes: ${IDLE_MAX_PROCESSES:-1})"
  POSTERN_PROCESSES=$IDLE_MAX_PROCESSES
  restart_server postern
  # postern-bench forks client processes by itself past its own descriptor limit, and the
  # PSS it reads covers Postern's worker processes (the descendants of its pid).
  bench idle-max postern 1 idle --port "$P_POSTERN" --user 'idle%d' \
    --users "$POSTERN_IDLE_USERS" --password 'pw%d' --clients "$IDLE_MAX" \
    --concurrency 256 --timeout 5 --server-pid "$POSTERN_PID"
  POSTERN_PROCESSES=""
fi

printf '{"row":"meta-end","load_end":"%s"}\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
cp "$RUN"/dovecot/dovecot.log "$OUT/" 2>/dev/null || true
python3 "$HERE/summarize.py" "$RESULTS" | tee "$OUT/summary.md"
log "raw results: $RESULTS; logs: $OUT"
if [[ $FAILURES -gt 0 ]]; then
  log "$FAILURES run(s) had errors or did not complete (see the notes above)"
fi
# Smoke: any error from Postern is breakage. Full: only a crash is; peers' errors and slow
# numbers are findings, reported in the table.
if [[ $CRASHES -gt 0 || ($SMOKE == 1 && $FAILURES -gt 0) ]]; then
  exit 1
fi
exit 0
