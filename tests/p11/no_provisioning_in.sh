#!/usr/bin/env bash
# Usage: no_provisioning_in.sh BINARY LIBRARY.a
# Fails (exit 1, naming the symbols) if BINARY defines any function LIBRARY defines out of line
# (its T symbols: the provisioning code itself; inline functions from headers are weak and skipped).
set -euo pipefail
binary="$1" library="$2"
provisioning=$(nm --defined-only -g "$library" 2>/dev/null | awk 'NF == 3 && $2 == "T" { print $3 }' | sort -u)
if [[ -z "$provisioning" ]]; then
  echo "no function symbols in $library: cannot check" >&2
  exit 2
fi
binary_symbols=$(nm --defined-only "$binary" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u)
if [[ -z "$binary_symbols" ]]; then
  echo "$binary has no symbol table (stripped?): cannot check" >&2
  exit 2
fi
found=$(comm -12 <(echo "$provisioning") <(echo "$binary_symbols"))
if [[ -n "$found" ]]; then
  echo "$binary contains provisioning code from $(basename "$library"):" >&2
  echo "$found" | c++filt | sed 's/^/  /' >&2
  exit 1
fi
echo "$(basename "$binary"): none of the $(echo "$provisioning" | wc -l) provisioning functions is linked in"
