//go:build tools

// Package apiserver only pins the kube-apiserver (and kubectl) main packages
// for `go build`; ci/e2e builds them from here.
package apiserver

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
