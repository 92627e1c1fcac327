#!/usr/bin/env bash
# ctest deploy_kube_validation: validates deploy/'s Kubernetes objects with Kubernetes' own code
# (tests/deploy/kubevalidate, k8s.io/kubernetes v1.37.2): the static pods (PKCS#11 and TPM), the Helm chart's DaemonSet (rendered
# by real helm when HELM or `helm` is available, else by deploy_helm_render) and both EncryptionConfigurations.
# Never downloads: GOPROXY=off. Exits 77 (ctest: skipped) when there is no Go toolchain or the Kubernetes
# modules are not in the local module cache (ci/go-tools fills it, and ci/test runs ci/go-tools first);
# under CI (CI=true) that is a failure instead, so CI can never pass by skipping this.
# Usage: kubevalidate.sh DEPLOY_HELM_RENDER DEPLOY_DIR WORK_DIR
set -euo pipefail
render="$1" deploy="$2"
work="$(mkdir -p "$3" && cd "$3" && pwd)"   # absolute: the build below runs in another directory
src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kubevalidate"

GO="${GO:-}"
if [ -z "$GO" ]; then
  if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; elif command -v go >/dev/null; then GO="$(command -v go)"; fi
fi
skip() {
  if [ "${CI:-}" = "true" ]; then echo "FAIL (CI=true, no skipping): $*"; exit 1; fi
  echo "SKIP: $*"
  exit 77
}
if [ -z "$GO" ]; then
  skip "no Go toolchain"
fi
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$work"
if ! (cd "$src" && "$GO" build -o "$work/kubevalidate" .) >"$work/build.log" 2>&1; then
  if grep -qE 'GOPROXY=off|module lookup disabled|missing go.sum entry|cannot find module' "$work/build.log"; then
    head -5 "$work/build.log"
    skip "the k8s.io modules are not in the local Go module cache (run ci/go-tools once to fill it)"
  fi
  cat "$work/build.log"
  exit 1
fi

"$render" "$deploy/helm/trousseau-hsm" >"$work/daemonset.rendered.yaml"
files=("$deploy"/static-pod/*.yaml "$deploy"/encryption-configuration*.yaml "$work/daemonset.rendered.yaml")
helm="${HELM:-helm}"
if command -v "$helm" >/dev/null 2>&1; then
  "$helm" template trousseau-hsm "$deploy/helm/trousseau-hsm" --namespace kube-system --kube-version 1.33.0 \
    >"$work/daemonset.helm.yaml"
  "$helm" template trousseau-hsm "$deploy/helm/trousseau-hsm" --namespace kube-system --kube-version 1.33.0 \
    --set tpm.enabled=true --set 'supplementalGroups={113}' >"$work/daemonset.helm-tpm.yaml"
  files+=("$work/daemonset.helm.yaml" "$work/daemonset.helm-tpm.yaml")
elif [ "${CI:-}" = "true" ]; then
  echo "FAIL (CI=true, no skipping): no helm for the chart's TPM variant (ci/go-tools builds it)"
  exit 1
fi
"$work/kubevalidate" "${files[@]}"
