//go:build tools

// Package etcd only pins the etcd server and etcdctl main packages at the
// etcd release Kubernetes 1.37.2 is built against (v3.7.0); ci/e2e builds them.
package etcd

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
