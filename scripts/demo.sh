#!/usr/bin/env bash
# Builds Postern and starts a demo server on 127.0.0.1 with user "demo" (password "demo") and
# a sample Maildir, then prints how to read the mail. Works as root or as an ordinary user
# (an ordinary user needs the build packages installed already: see README).
# Environment: POSTERN_DEMO_DIR (default ./demo-run), POSTERN_DEMO_PORT (default 8110).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/install-deps.sh --build-only
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target posternd -j "$(nproc)"

dir=${POSTERN_DEMO_DIR:-$top/demo-run}
port=${POSTERN_DEMO_PORT:-8110}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -f "$dir/posternd.pid" ]] && kill -0 "$(cat "$dir/posternd.pid")" 2>/dev/null; then
  kill "$(cat "$dir/posternd.pid")"
  for _ in $(seq 50); do kill -0 "$(cat "$dir/posternd.pid")" 2>/dev/null || break; sleep 0.1; done
fi
# Event mode never opens mail as root: started as root, the demo server runs as the system
# user "postern" (created here when missing; posternd refuses to start as root without one).
if [[ $(id -u) -eq 0 ]] && ! id postern >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin postern
fi
: >"$dir/posternd.log"
nohup "$top/build/posternd" --demo "$dir/server" --demo-port "$port" >>"$dir/posternd.log" 2>&1 </dev/null &
echo $! >"$dir/posternd.pid"
for _ in $(seq 100); do
  grep -q "listening on" "$dir/posternd.log" && break
  if ! kill -0 "$(cat "$dir/posternd.pid")" 2>/dev/null; then
    echo "demo: posternd did not start:" >&2
    cat "$dir/posternd.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "listening on" "$dir/posternd.log" || { echo "demo: posternd did not start in time" >&2; exit 1; }

cat <<EOT

Postern demo server is running on 127.0.0.1:$port (pid $(cat "$dir/posternd.pid")).
User: demo   Password: demo   Maildir: $dir/server/mail/demo/Maildir
Log: $dir/posternd.log   Config: $dir/server/postern.toml

Read the mail with curl:
  curl -u demo:demo pop3://127.0.0.1:$port/          # list messages
  curl -u demo:demo pop3://127.0.0.1:$port/1         # message 1
  curl -u demo:demo -X UIDL pop3://127.0.0.1:$port/  # unique ids

Or with Python's poplib:
  python3 -c 'import poplib; p = poplib.POP3("127.0.0.1", $port); p.user("demo"); p.pass_("demo"); print(p.stat()); print(b"\n".join(p.retr(1)[1]).decode()); p.quit()'

Or talk POP3 yourself:  python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",$port)); print(s.recv(512).decode())'

Stop it with:  kill \$(cat $dir/posternd.pid)
EOT
