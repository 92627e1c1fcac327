#!/usr/bin/env bash
# opencryptoki's soft token (slot 3, swtok) for tests, brought to a known state without systemd.
#   opencryptoki-token.sh start   starts pkcsslotd if it is not running and re-initialises the soft token from scratch:
#                                 label trousseau-ock (or $OCK_TOKEN_LABEL), SO PIN and user PIN from the files named
#                                 by $OCK_SO_PIN_FILE and $OCK_USER_PIN_FILE (opencryptoki accepts 4 to 8 characters).
#   opencryptoki-token.sh stop    stops the pkcsslotd this host runs (one daemon per host: a second one would take
#                                 over the first one's shared memory and its exit would remove the shared socket).
# Why a wipe and not C_InitToken alone: C_InitToken needs the current SO PIN, which an earlier run may have changed;
# with the daemon stopped, removing the token's files and its /dev/shm segment gives back the factory token
# (SO PIN 87654321). PINs reach pkcs11-tool through its env:NAME form, never through argv; nothing secret is printed.
# Needs root (the daemon, /var/lib/opencryptoki, /var/run) as in CI.
set -euo pipefail

readonly api_module=/usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so
readonly daemon=/usr/sbin/pkcsslotd
readonly socket=/var/run/pkcsslotd.socket
readonly pidfile=/var/run/pkcsslotd.pid
readonly token_dir=/var/lib/opencryptoki/swtok
readonly token_shm=/dev/shm/var.lib.opencryptoki.swtok
readonly slot=3
readonly factory_so_pin=87654321
readonly label="${OCK_TOKEN_LABEL:-trousseau-ock}"

die() {
  echo "opencryptoki-token: $*" >&2
  exit 1
}

# The pid of the running pkcsslotd, or nothing. By executable, not by name, and only one is expected.
running_daemon() {
  local pid
  for pid in $(pgrep -x pkcsslotd || true); do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$daemon" ] && echo "$pid" && return 0
  done
  return 0
}

# Waits (bounded) until the library can talk to the daemon: the socket exists and C_Initialize succeeds.
wait_for_daemon() {
  local deadline=$((SECONDS + 10))
  until [ -S "$socket" ] && pkcsconf -i >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "pkcsslotd did not answer on $socket within 10 s"
    sleep 0.1
  done
}

start_daemon() {
  [ -x "$daemon" ] || die "$daemon not found: install the Debian package opencryptoki"
  getent group pkcs11 >/dev/null || die "group pkcs11 missing (created by the opencryptoki package; the daemon needs it)"
  [ "$(id -u)" -eq 0 ] || die "must run as root (pkcsslotd, /var/lib/opencryptoki)"
  # What the package's tmpfiles.d entry would create; a container without systemd has not run it.
  local d
  for d in /var/lock/opencryptoki /var/lock/opencryptoki/swtok /var/log/opencryptoki "$token_dir" "$token_dir/TOK_OBJ"; do
    mkdir -p -m 0770 "$d"
    chown root:pkcs11 "$d"
  done
  if [ -z "$(running_daemon)" ]; then
    "$daemon" || die "$daemon exited with $?"
  fi
  wait_for_daemon
}

# Waits (bounded) until process $1 is gone. A zombie counts as gone: in a container whose PID 1 does not reap,
# the exited daemon stays a zombie and `kill -0` would keep saying it runs.
wait_gone() {
  local pid="$1" deadline=$((SECONDS + $2))
  while [ -e "/proc/$pid/exe" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$daemon" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

stop_daemon() {
  local pid
  for pid in $(pgrep -x pkcsslotd || true); do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$daemon" ] || continue
    # On SIGTERM the daemon removes its socket and SysV segment but leaves its pid file. While a client process
    # is attached it does not exit on SIGTERM (seen: still running 5 s later): SIGKILL and the cleanup it skipped.
    kill -TERM "$pid"
    if ! wait_gone "$pid" 5; then
      echo "opencryptoki-token: pkcsslotd (pid $pid) ignored SIGTERM for 5 s: SIGKILL" >&2
      kill -KILL "$pid"
      wait_gone "$pid" 5 || die "pkcsslotd (pid $pid) survived SIGKILL"
      rm -f "$socket"
      ipcrm -M 0x6200600a 2>/dev/null || true  # the daemon's SysV segment (key from ftok on its lock file)
    fi
  done
  rm -f "$pidfile"
}

read_pin() {  # read_pin VAR_NAMING_FILE -> the PIN on stdout (captured into a variable, never echoed)
  local name="$1" file="${!1:-}"
  [ -n "$file" ] || die "\$$name is not set (the file holding that PIN)"
  [ -r "$file" ] || die "\$$name: cannot read $file"
  local pin
  pin="$(head -n1 "$file" | tr -d '\r\n')"
  [ ${#pin} -ge 4 ] && [ ${#pin} -le 8 ] || die "the PIN in $file must have 4 to 8 characters (opencryptoki soft token)"
  printf '%s' "$pin"
}

p11() { pkcs11-tool --module "$api_module" --slot "$slot" "$@" >/dev/null; }

start() {
  command -v pkcs11-tool >/dev/null || die "pkcs11-tool not found: install the Debian package opensc"
  local so_pin user_pin
  so_pin="$(read_pin OCK_SO_PIN_FILE)"
  user_pin="$(read_pin OCK_USER_PIN_FILE)"

  stop_daemon
  rm -f "$token_dir/NVTOK.DAT" "$token_dir/MK_SO" "$token_dir/MK_USER" "$token_shm"
  find "$token_dir/TOK_OBJ" -mindepth 1 -delete 2>/dev/null || true
  start_daemon

  export OCK_FACTORY_SO="$factory_so_pin" OCK_SO="$so_pin" OCK_USER="$user_pin"
  p11 --init-token --label "$label" --so-pin env:OCK_FACTORY_SO || die "C_InitToken on slot $slot failed"
  p11 --login --login-type so --so-pin env:OCK_FACTORY_SO --init-pin --new-pin env:OCK_USER ||
    die "C_InitPIN on slot $slot failed"
  if [ "$so_pin" != "$factory_so_pin" ]; then
    p11 --login --login-type so --so-pin env:OCK_FACTORY_SO --change-pin --new-pin env:OCK_SO ||
      die "C_SetPIN (SO) on slot $slot failed"
  fi
  p11 --login --pin env:OCK_USER --list-objects || die "user login on the new token failed"
  unset OCK_FACTORY_SO OCK_SO OCK_USER
  echo "opencryptoki-token: slot $slot token '$label' ready (module $api_module)"
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemon && echo "opencryptoki-token: pkcsslotd stopped" ;;
  *) die "usage: $0 start|stop (PIN files in OCK_SO_PIN_FILE and OCK_USER_PIN_FILE)" ;;
esac
