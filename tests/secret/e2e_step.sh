# Sourced by ci/e2e after the first objects are read back (a real kube-apiserver + etcd + the plugin on
# SoftHSM): `trousseauctl secret generate|inject` (issue 15, docs/secrets.md). Uses ci/e2e's functions and
# variables (kubectl, kcurl, etcdctl, pass, fail, info, log, $CTL, $URI, $NS, $API, $pki, $tmp, $KEY1).
# The probes: E2E_SECRET_PROBE for the 409 path (default build/tests/secret/secret_conflict_probe) and
# E2E_SECRET_PTY_PROBE for inject on a terminal (default build/tests/secret/secret_pty_inject_probe), and
# E2E_SECRET_PG_PROBE for the PostgreSQL hand-off (default build/tests/secret/secret_postgres_probe).
# Every check that cannot run (no trousseauctl, no probe) is a failure, not a skip.

# The tool's run, watched while it runs: stdout, stderr, and every /proc/PID/cmdline and environ seen.
secret_run() { # out-prefix command...: runs it in the background, samples /proc, returns its exit status
  local out="$1" pid rc=0 n=0
  shift
  : > "$out.proc"
  "$@" > "$out.stdout" 2> "$out.stderr" < "${SECRET_STDIN:-/dev/null}" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if cat "/proc/$pid/cmdline" "/proc/$pid/environ" >> "$out.proc" 2>/dev/null; then n=$((n + 1)); fi
  done
  wait "$pid" || rc=$?
  echo "$n" > "$out.samples"
  return "$rc"
}
secret_value() { # name key: the value as the API gives it back (decoded)
  kubectl get secret "$1" -n "$NS" -o "jsonpath={.data.${2//./\\.}}" | base64 -d
}
secret_not_exposed() { # what out-prefix value: the value is in none of the run's outputs nor its /proc samples
  local what="$1" out="$2" value="$3" where=""
  grep -aqF -- "$value" "$out.stdout" && where+=" stdout"
  grep -aqF -- "$value" "$out.stderr" && where+=" stderr"
  grep -aqF -- "$value" "$out.proc" && where+=" /proc/PID/cmdline|environ"
  if [ -z "$where" ]; then
    pass "$what: the value is not in stdout, stderr, nor $(cat "$out.samples") sample(s) of /proc/PID/cmdline+environ taken while it ran"
  else
    fail "$what: the value appeared in:$where"
  fi
}
secret_etcd_clean() { # name value...: the raw etcd value is KMS v2 under $KEY1 and holds none of the values
  local name="$1" raw="$tmp/secret-$1.raw" v bad=""
  shift
  etcdctl get "/registry/secrets/$NS/$name" --print-value-only > "$raw"
  if [ "$(head -c 29 "$raw")" != "k8s:enc:kms:v2:trousseau-hsm:" ]; then
    fail "etcd /registry/secrets/$NS/$name starts with '$(head -c 40 "$raw" | tr -c '[:print:]' .)'"; return
  fi
  for v in "$@"; do
    grep -aqF -- "$v" "$raw" && bad+=" plaintext"
    grep -aqF -- "$(printf '%s' "$v" | base64 -w0)" "$raw" && bad+=" base64"
  done
  [ -z "$bad" ] && pass "etcd /registry/secrets/$NS/$name: k8s:enc:kms:v2:trousseau-hsm:..., no value in it" \
                || fail "etcd /registry/secrets/$NS/$name holds a value:$bad"
}
one_line() { # file: exactly one line
  [ "$(grep -c . "$1")" = 1 ]
}

secret_tools_e2e() {
  log "trousseauctl secret generate|inject (issue 15): values nobody sees"
  if [ -z "$CTL" ]; then fail "trousseauctl not built (TROUSSEAUCTL_BIN): the secret steps cannot run"; return; fi
  local probe="${E2E_SECRET_PROBE:-$root/build/tests/secret/secret_conflict_probe}"
  local kc="$tmp/kubeconfig" out="$tmp/sg" v1 v2 prev at by from rc
  local gen=("$CTL" secret generate --kubeconfig "$kc" -n "$NS" --pkcs11-uri "$URI")

  # 1. generate: created, read back through the API, never shown.
  if secret_run "$out" "${gen[@]}" app-db --key password; then
    pass "generate app-db/password: $(head -c 200 "$out.stdout")"
  else
    fail "generate app-db/password: exit status $?: $(head -c 300 "$out.stderr")"; return
  fi
  v1="$(secret_value app-db password)"
  if [[ "$v1" =~ ^[A-Za-z0-9]{32}$ ]]; then pass "read back through the API: 32 alphanumeric characters"
  else fail "read back through the API: not 32 alphanumeric characters (${#v1} bytes)"; fi
  secret_not_exposed "generate" "$out" "$v1"
  secret_etcd_clean app-db "$v1"
  by="$(kubectl get secret app-db -n "$NS" -o 'jsonpath={.metadata.annotations.trousseau-hsm\.io/generated-by}')"
  at="$(kubectl get secret app-db -n "$NS" -o 'jsonpath={.metadata.annotations.trousseau-hsm\.io/generated-at}')"
  from="$(kubectl get secret app-db -n "$NS" -o 'jsonpath={.metadata.annotations.trousseau-hsm\.io/generated-from}')"
  if [ "$by" = e2e-admin ] && [[ "$at" =~ ^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] &&
     [[ "$from" == "pkcs11 token 'e2e'"* ]]; then
    pass "annotations: generated-by '$by' (SelfSubjectReview), generated-at $at, generated-from \"$from\""
  else
    fail "annotations: generated-by '$by', generated-at '$at', generated-from '$from'"
  fi
  if kubectl get secret app-db -n "$NS" -o 'jsonpath={.metadata.annotations}' | grep -qF -- "$v1"; then
    fail "an annotation holds the value"
  fi

  # 2. the same key again without --rotate: refused, one line, nothing changed.
  if secret_run "$out" "${gen[@]}" app-db --key password; then
    fail "generate of an existing key without --rotate succeeded"
  elif one_line "$out.stderr" && grep -q "already has key 'password'" "$out.stderr" && [ "$(secret_value app-db password)" = "$v1" ]; then
    pass "existing key without --rotate refused in one line: $(cat "$out.stderr")"
  else
    fail "existing key without --rotate: $(head -c 300 "$out.stderr")"
  fi

  # 3. --rotate --keep-previous: a new value, the old one under password.previous.
  if secret_run "$out" "${gen[@]}" app-db --key password --rotate --keep-previous; then
    v2="$(secret_value app-db password)"; prev="$(secret_value app-db password.previous)"
    if [ "$v2" != "$v1" ] && [ "$prev" = "$v1" ] && [ ${#v2} = 32 ]; then
      pass "--rotate --keep-previous: a new value, the old one under password.previous"
    else
      fail "--rotate --keep-previous: new==old? $([ "$v2" = "$v1" ] && echo yes || echo no), previous kept? $([ "$prev" = "$v1" ] && echo yes || echo no)"
    fi
    secret_not_exposed "generate --rotate" "$out" "$v2"
    secret_etcd_clean app-db "$v1" "$v2"
  else
    fail "--rotate --keep-previous: $(head -c 300 "$out.stderr")"
  fi

  # 4. --rotate of a key that is not there: refused.
  if secret_run "$out" "${gen[@]}" app-db --key nothere --rotate; then fail "--rotate of a missing key succeeded"
  elif one_line "$out.stderr" && grep -q "nothing to rotate" "$out.stderr"; then pass "--rotate of a missing key refused: $(cat "$out.stderr")"
  else fail "--rotate of a missing key: $(head -c 300 "$out.stderr")"; fi

  # 5. pem-ec-p256 and hex into another Secret.
  if secret_run "$out" "${gen[@]}" app-tls --key tls.key --format pem-ec-p256 &&
     secret_value app-tls tls.key | openssl pkey -noout -text 2>/dev/null | grep -q 'prime256v1'; then
    pass "--format pem-ec-p256: the Secret holds a P-256 private key (openssl pkey reads it)"
    secret_not_exposed "generate pem-ec-p256" "$out" "$(secret_value app-tls tls.key | sed -n 2p)"
  else
    fail "--format pem-ec-p256: $(head -c 300 "$out.stderr")"
  fi
  if secret_run "$out" "${gen[@]}" app-tls --key token --format hex --length 16 &&
     [[ "$(secret_value app-tls token)" =~ ^[0-9a-f]{32}$ ]]; then
    pass "--format hex --length 16 added key 'token' to app-tls: 32 hex digits"
  else
    fail "--format hex: $(head -c 300 "$out.stderr")"
  fi

  # 6. 409: a merge patch with a stale resourceVersion, against this apiserver, through the client library.
  if [ ! -x "$probe" ]; then
    fail "no $probe (E2E_SECRET_PROBE): the 409 path is not checked"
  elif "$probe" "$kc" "$NS" app-tls probe > "$out.probe" 2>&1 && one_line "$out.probe" && grep -q "409 Conflict" "$out.probe"; then
    pass "a patch with a stale resourceVersion: one line, the first writer kept: $(cat "$out.probe")"
  else
    fail "409 probe: $(head -c 400 "$out.probe")"
  fi

  # 7. RBAC: a service account that may read Secrets but not create them gets one 403 line.
  kubectl -n "$NS" create serviceaccount secret-reader >/dev/null 2>&1
  kubectl -n "$NS" create role secret-reader --verb=get --resource=secrets >/dev/null 2>&1
  kubectl -n "$NS" create rolebinding secret-reader --role=secret-reader --serviceaccount="$NS:secret-reader" >/dev/null 2>&1
  local sa_token
  sa_token="$(kcurl -X POST -H 'Content-Type: application/json' \
    --data '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":600}}' \
    "$API/api/v1/namespaces/$NS/serviceaccounts/secret-reader/token" | jq -r '.status.token // empty')"
  if [ -z "$sa_token" ]; then
    fail "no token for service account secret-reader (TokenRequest)"
  else
    sed -e "s|name: e2e-admin|name: reader|; s|user: e2e-admin|user: reader|; s|token: \"$TOKEN\"|token: \"$sa_token\"|" \
      "$kc" > "$tmp/kubeconfig-reader"
    chmod 600 "$tmp/kubeconfig-reader"
    if secret_run "$out" "$CTL" secret generate --kubeconfig "$tmp/kubeconfig-reader" -n "$NS" --pkcs11-uri "$URI" \
         rbac-denied --key password; then
      fail "a service account without 'create secrets' created one"
    elif one_line "$out.stderr" && grep -q '403 Forbidden' "$out.stderr" && grep -qF 'cannot create resource "secrets"' "$out.stderr"; then
      pass "RBAC: one line: $(cat "$out.stderr")"
    else
      fail "RBAC: $(head -c 400 "$out.stderr")"
    fi
  fi

  # 8. inject: from stdin with --from-stdin; refused without it.
  local injected
  injected="$(openssl rand -hex 20)"
  printf '%s' "$injected" > "$tmp/inject.in"
  if SECRET_STDIN="$tmp/inject.in" secret_run "$out" "$CTL" secret inject --kubeconfig "$kc" -n "$NS" app-api --key api-token --from-stdin &&
     [ "$(secret_value app-api api-token)" = "$injected" ]; then
    pass "inject --from-stdin: the value read back through the API is the one given"
  else
    fail "inject --from-stdin: $(head -c 300 "$out.stderr")"
  fi
  secret_not_exposed "inject --from-stdin" "$out" "$injected"
  secret_etcd_clean app-api "$injected"
  if SECRET_STDIN="$tmp/inject.in" secret_run "$out" "$CTL" secret inject --kubeconfig "$kc" -n "$NS" app-api2 --key api-token; then
    fail "inject from a non-terminal stdin without --from-stdin succeeded"
  elif one_line "$out.stderr" && grep -q "stdin is not a terminal" "$out.stderr" &&
       ! kubectl get secret app-api2 -n "$NS" >/dev/null 2>&1; then
    pass "inject without --from-stdin, stdin a file: refused: $(cat "$out.stderr")"
  else
    fail "inject without --from-stdin: $(head -c 300 "$out.stderr")"
  fi
  # 8b. inject --from-fd: the value on another file descriptor; stdin stays free.
  if "$CTL" secret inject --kubeconfig "$kc" -n "$NS" app-api --key fd-token --from-fd 3 3< "$tmp/inject.in" \
       > "$out.stdout" 2> "$out.stderr" < /dev/null && [ "$(secret_value app-api fd-token)" = "$injected" ] &&
     ! grep -qF -- "$injected" "$out.stdout" "$out.stderr"; then
    pass "inject --from-fd 3: added key 'fd-token' to app-api, read back through the API, not shown"
  else
    fail "inject --from-fd 3: $(head -c 300 "$out.stderr")"
  fi

  # 9. inject from a terminal: a pseudo-terminal, echo off while the value is typed, nothing echoed.
  local pty_probe="${E2E_SECRET_PTY_PROBE:-$root/build/tests/secret/secret_pty_inject_probe}" typed
  typed="$(openssl rand -hex 20)"
  if [ ! -x "$pty_probe" ]; then
    fail "no $pty_probe (E2E_SECRET_PTY_PROBE): inject from a terminal is not checked"
  elif printf '%s' "$typed" | "$pty_probe" "$CTL" secret inject --kubeconfig "$kc" -n "$NS" app-typed --key password \
         > "$out.pty" 2>&1 && [ "$(secret_value app-typed password)" = "$typed" ]; then
    pass "inject on a pseudo-terminal: echo off while typing, the value not shown, read back through the API: $(tr -d '\r' < "$out.pty" | tr '\n' ' ')"
  else
    fail "inject on a pseudo-terminal: $(tr -d '\r' < "$out.pty" | head -c 400)"
  fi
  # 10. generate --postgres-role: a real PostgreSQL 15 (tests/postgres's fixture) behind secret_postgres_probe.
  local pg_probe="${E2E_SECRET_PG_PROBE:-$root/build/tests/secret/secret_postgres_probe}"
  if [ ! -x "$pg_probe" ]; then
    fail "no $pg_probe (E2E_SECRET_PG_PROBE): the PostgreSQL hand-off is not checked"
  elif [ ! -f "$tmp/kubeconfig-reader" ]; then
    fail "PostgreSQL hand-off: no reader kubeconfig (step 7 failed)"
  elif "$pg_probe" "$CTL" "$kc" "$tmp/kubeconfig-reader" "$NS" "$URI" > "$out.pg" 2>&1; then
    pass "generate --postgres-role (real PostgreSQL 15):"
    sed 's/^/         /' "$out.pg"
  else
    fail "generate --postgres-role (real PostgreSQL 15):"
    sed 's/^/         /' "$out.pg"
  fi
  rm -f "$tmp/inject.in" "$out".*
}
