// Package conformance drives the trousseau-hsm KMS plugin through the code
// kube-apiserver itself runs: the KMS v2 and v1 gRPC clients and envelope
// transformers of k8s.io/apiserver, built from an EncryptionConfiguration
// file by k8s.io/apiserver/pkg/server/options/encryptionconfig.
//
// Everything lives in the _test.go files; run it with `go test ./...` from
// this directory once the plugin is built (see README.md).
package conformance
