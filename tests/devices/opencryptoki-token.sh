#!/usr/bin/env bash
# opencryptoki's soft token (slot 3, swtok) for tests, brought to a known state without systemd.
#   opencryptoki-token.sh start   starts pkcsslotd if it is not running and re-initialises the soft token from scratch:
#                                 label trousseau-ock (or $OCK_TOKEN_LABEL), SO PIN and user PIN from the files named
#                                 by $OCK_SO_PIN_FILE and $OCK_USER_PIN_FILE (opencryptoki accepts 4 to 8 characters).
#   opencryptoki-token.sh stop    stops the pkcsslotd this host runs (one daemon per host: a second one would take
#                                 over the first one's shared memory and its exit would remove the shared socket).
# One user at a time: `start` takes a host-wide lock (/run/lock/trousseau-opencryptoki.lock) and hands it to a small
# holder process that keeps it until `stop` by the same caller, or until the caller (this script's parent process:
# the test binary, ci/conformance) exits, whichever comes first; another caller's `start` waits for it (up to
# $OCK_LOCK_TIMEOUT seconds, default 900). A caller that already holds the lock starts again at once, and a `stop`
# from a caller that does not hold it leaves the other user's daemon alone. ctest's RESOURCE_LOCK opencryptoki
# serialises the tests of one ctest run; this lock serialises everything that uses this script on the host.
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
readonly lock_file=/run/lock/trousseau-opencryptoki.lock
readonly holder_file=/run/lock/trousseau-opencryptoki.holder  # "HOLDER_PID OWNER_PID" of the lock's holder
readonly caller=$PPID

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

# Whether process $1 runs (a zombie does not: in a container whose PID 1 does not reap, a dead caller stays one).
alive() {
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# The holder of the lock now, as "HOLDER_PID OWNER_PID", if its holder process still runs.
current_holder() {
  local holder owner
  [ -r "$holder_file" ] || return 0
  read -r holder owner <"$holder_file" 2>/dev/null || return 0
  [ -n "$holder" ] && alive "$holder" && echo "$holder $owner"
  return 0
}

acquire_lock() {
  local held fd
  held="$(current_holder)"
  if [ -n "$held" ] && [ "${held#* }" = "$caller" ]; then
    return 0  # this caller holds it already
  fi
  exec {fd}>>"$lock_file"
  if ! flock -n "$fd"; then
    echo "opencryptoki-token: another test uses the opencryptoki token (holder ${held:-unknown}); waiting" >&2
    flock -w "${OCK_LOCK_TIMEOUT:-900}" "$fd" ||
      die "the opencryptoki token stayed in use by another test for ${OCK_LOCK_TIMEOUT:-900} s (lock $lock_file)"
  fi
  # The holder inherits the locked descriptor and keeps the lock after this script exits; its own output goes
  # nowhere, so a caller that waits for the script's output to end does not wait for it.
  # Its sleeps do not inherit the lock and are waited for with `wait`, so a stop (SIGTERM) frees the lock at once.
  (
    trap 'exit 0' TERM
    while alive "$caller"; do
      sleep 1 {fd}>&- &
      wait $!
    done
  ) </dev/null >/dev/null 2>&1 &
  echo "$! $caller" >"$holder_file"
  exec {fd}>&-
}

# Releases the lock if this caller holds it; returns 1 if another caller does (its token is left alone).
release_lock() {
  local held
  held="$(current_holder)"
  [ -n "$held" ] || return 0
  [ "${held#* }" = "$caller" ] || return 1
  kill -TERM "${held% *}" 2>/dev/null || true
  rm -f "$holder_file"
}

p11() { pkcs11-tool --module "$api_module" --slot "$slot" "$@" >/dev/null; }

start() {
  command -v pkcs11-tool >/dev/null || die "pkcs11-tool not found: install the Debian package opensc"
  local so_pin user_pin
  so_pin="$(read_pin OCK_SO_PIN_FILE)"
  user_pin="$(read_pin OCK_USER_PIN_FILE)"

  acquire_lock
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
  stop)
    # The daemon goes first and the lock last, so a caller waiting for the lock never starts while the
    # old daemon is still on its way out.
    held="$(current_holder)"
    if [ -z "$held" ] || [ "${held#* }" = "$caller" ]; then
      stop_daemon && echo "opencryptoki-token: pkcsslotd stopped"
      release_lock
    else
      echo "opencryptoki-token: another test holds the opencryptoki token; left running" >&2
    fi
    ;;
  *) die "usage: $0 start|stop (PIN files in OCK_SO_PIN_FILE and OCK_USER_PIN_FILE)" ;;
esac
