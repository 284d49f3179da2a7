#!/usr/bin/env bash
# Installs the Debian packages Postern needs to build and test. Idempotent: installs only
# what is missing, so a second run is fast and needs no network.
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config
  libasio-dev          # standalone Asio: event loop, sockets, C++20 coroutines
  libssl-dev           # OpenSSL 3
  libcrypt-dev         # libxcrypt: crypt(3) schemes incl. yescrypt, bcrypt
  libcli11-dev         # command line parsing
  libfmt-dev           # formatting
  libtomlplusplus-dev  # TOML config with source positions for error messages
  libgtest-dev         # unit tests
  libgsasl-dev         # GNU SASL: the SASL mechanisms
  libpam0g-dev         # PAM: system users
  libwrap0-dev         # TCP wrappers: hosts.allow / hosts.deny
  libsqlite3-dev       # login statistics and bulletin databases
  libxxhash-dev        # xxHash: checksums of the Maildir index
  libsystemd-dev       # sd_listen_fds, sd_notify: socket activation and Type=notify
)
test_pkgs=(
  python3 curl fetchmail mpop getmail6 openssl procps
  liblockfile-bin      # dotlockfile: a real delivery-agent lock in the mbox tests
  krb5-kdc krb5-admin-server krb5-user python3-gssapi  # a loopback KDC for the GSSAPI tests
  dovecot-imapd dovecot-pop3d  # Dovecot on the same Maildir: test_dovecot_uids.py (stdio only)
  fail2ban             # fail2ban-regex runs contrib/fail2ban on real logs: test_log_forgery.py
  haproxy nginx-light libnginx-mod-mail  # real PROXY-protocol front ends: test_proxy_protocol.py
  systemd              # systemd-analyze verify, systemd-socket-activate: test_systemd.py
  clang libclang-rt-14-dev  # clang with libFuzzer and the sanitizer runtimes: scripts/fuzz.sh
  clang-tidy-14 clang-format-14 cppcheck  # static analysis: scripts/lint.sh, scripts/format.sh
)

want=("${build_pkgs[@]}")
if [[ "${1:-}" != "--build-only" ]]; then
  want+=("${test_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
  else
    echo "install-deps: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
else
  SUDO=
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Debian starts the services of haproxy and nginx on install. The tests run their own
# instances (own configs, ports and pid files) and never use these, so a service this run
# installed is stopped and disabled again (only on a machine booted with systemd).
services=()
for p in "${missing[@]}"; do
  case "$p" in
    haproxy) services+=(haproxy) ;;
    nginx-light) services+=(nginx) ;;
  esac
done
if ((${#services[@]} > 0)) && [[ -d /run/systemd/system ]]; then
  echo "install-deps: stopping and disabling the system services ${services[*]}"
  $SUDO systemctl disable --now "${services[@]}" || true
fi
