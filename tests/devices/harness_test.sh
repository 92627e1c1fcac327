#!/usr/bin/env bash
# devices.harness: the two device scripts bring up what they promise, checked with the devices' own tools.
#   opencryptoki: pkcsconf -t shows slot 3's token labelled trousseau-ock, and the user PIN logs in (pkcs11-tool).
#   NSS: certutil lists the database's token and logs in with the password; the printed init string names DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
cleanup() {
  "$here/opencryptoki-token.sh" stop >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "devices.harness: FAIL: $*" >&2
  exit 1
}
umask 077

# opencryptoki soft token, twice: the second start must re-initialise the token the first one left.
printf '%s\n' "$(od -An -N3 -tu4 /dev/urandom | tr -d ' ' | cut -c1-8 | sed 's/^/9/' | cut -c1-8)" >"$work/so.pin"
printf '%s\n' "$(od -An -N3 -tu4 /dev/urandom | tr -d ' ' | cut -c1-8 | sed 's/^/7/' | cut -c1-8)" >"$work/user.pin"
export OCK_SO_PIN_FILE="$work/so.pin" OCK_USER_PIN_FILE="$work/user.pin"
"$here/opencryptoki-token.sh" start
"$here/opencryptoki-token.sh" start
pkcsconf -t -c 3 | grep -Eq '^[[:space:]]*Label: trousseau-ock[[:space:]]*$' ||
  fail "pkcsconf -t -c 3 does not show the label trousseau-ock"
pkcsconf -t -c 3 | grep -q 'USER_PIN_INITIALIZED' || fail "slot 3: user PIN not initialised"
OCK_USER_PIN="$(head -n1 "$work/user.pin")" pkcs11-tool --module /usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so \
  --slot 3 --login --pin env:OCK_USER_PIN --list-objects >/dev/null || fail "user login on slot 3 failed"
# A wrong PIN must be refused (the check above could not fail otherwise).
if OCK_USER_PIN=0000 pkcs11-tool --module /usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so --slot 3 --login \
  --pin env:OCK_USER_PIN --list-objects >/dev/null 2>&1; then
  fail "slot 3 accepted a wrong user PIN"
fi
# A PIN opencryptoki cannot take is refused by the script with the reason.
printf '123456789\n' >"$work/long.pin"
if out="$(OCK_USER_PIN_FILE="$work/long.pin" "$here/opencryptoki-token.sh" start 2>&1)"; then
  fail "a 9-character PIN was accepted"
fi
grep -q '4 to 8 characters' <<<"$out" || fail "no reason given for the 9-character PIN: $out"

# NSS softoken database.
printf 'nss-%s\n' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" >"$work/nss.pin"
init_string="$("$here/nss-db.sh" "$work/nssdb" "$work/nss.pin")"
[ "$init_string" = "configdir='sql:$work/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags=" ] ||
  fail "unexpected init string: $init_string"
certutil -U -d "sql:$work/nssdb" | grep -q 'token: NSS Certificate DB' || fail "certutil -U shows no NSS Certificate DB"
# certutil -K exits 255 on an empty database too: what it says tells a login from a refused password.
listing="$(certutil -K -d "sql:$work/nssdb" -f "$work/nss.pin" 2>&1 || true)"
grep -q 'no keys found' <<<"$listing" || fail "login to the NSS database with its password failed: $listing"
printf 'wrong\n' >"$work/wrong.pin"
listing="$(certutil -K -d "sql:$work/nssdb" -f "$work/wrong.pin" 2>&1 || true)"
grep -q 'SEC_ERROR_BAD_PASSWORD' <<<"$listing" || fail "the NSS database did not refuse a wrong password: $listing"
echo "devices.harness: ok"
