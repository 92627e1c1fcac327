#!/usr/bin/env bash
# nss-db.sh DIR PINFILE: creates an NSS softoken database (sql: format) in DIR whose password (the token's user PIN)
# is the first line of PINFILE, and prints the string NSS's libsoftokn3.so needs in CK_C_INITIALIZE_ARGS.pReserved
# (without it, C_Initialize returns CKR_ARGUMENTS_BAD). certutil reads the password from the file, never from argv.
set -euo pipefail

die() {
  echo "nss-db: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: $0 DIR PINFILE"
dir="$1"
pin_file="$2"
command -v certutil >/dev/null || die "certutil not found: install the Debian package libnss3-tools"
[ -r "$pin_file" ] || die "cannot read $pin_file"
[ -s "$pin_file" ] || die "$pin_file is empty (NSS would create a database without a password: no login needed)"
case "$dir" in *"'"* | *" "*) die "DIR must not contain quotes or spaces (it goes into the quoted init string)" ;; esac

mkdir -p -m 0700 "$dir"
dir="$(cd "$dir" && pwd)"
rm -f "$dir/cert9.db" "$dir/key4.db" "$dir/pkcs11.txt"
certutil -N -d "sql:$dir" -f "$pin_file" >/dev/null || die "certutil -N -d sql:$dir failed"
[ -s "$dir/key4.db" ] || die "certutil did not create $dir/key4.db"
printf "configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=\n" "$dir"
