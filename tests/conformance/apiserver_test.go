package conformance

// Helpers that build what kube-apiserver builds: an EncryptionConfiguration
// file loaded by k8s.io/apiserver/pkg/server/options/encryptionconfig, the
// secrets transformer it yields, and Secret objects serialised the way they
// are written to etcd (Kubernetes protobuf).

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
)

const (
	apiServerID = "conformance-apiserver"
	kmsV2Prefix = "k8s:enc:kms:v2:" + providerName + ":"
	kmsV1Prefix = "k8s:enc:kms:v1:" + providerName + ":"
)

var secretsGR = schema.GroupResource{Group: "", Resource: "secrets"}

// writeEncryptionConfig writes the EncryptionConfiguration an operator would
// give kube-apiserver: secrets -> kms (apiVersion kmsAPIVersion) then identity.
func writeEncryptionConfig(t *testing.T, kmsAPIVersion, endpoint string) string {
	t.Helper()
	cfg := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: %s
          name: %s
          endpoint: %s
          timeout: 3s
      - identity: {}
`, kmsAPIVersion, providerName, endpoint)
	p := filepath.Join(t.TempDir(), "encryption-config-"+kmsAPIVersion+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// apiTransformer is what kube-apiserver keeps for the secrets resource.
type apiTransformer struct {
	value.Transformer
	cfg    *encryptionconfig.EncryptionConfiguration
	cancel context.CancelFunc
}

// loadTransformer loads an EncryptionConfiguration for the plugin at endpoint
// exactly as kube-apiserver does at start (reload=false) and returns the
// secrets transformer. Its goroutines and gRPC connection end with the test
// (or earlier via close).
func loadTransformer(t *testing.T, kmsAPIVersion, endpoint string) *apiTransformer {
	t.Helper()
	path := writeEncryptionConfig(t, kmsAPIVersion, endpoint)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, apiServerID)
	if err != nil {
		cancel()
		t.Fatalf("encryptionconfig.LoadEncryptionConfig(kms %s): %v", kmsAPIVersion, err)
	}
	tr, ok := cfg.Transformers[secretsGR]
	if !ok {
		cancel()
		t.Fatalf("no transformer for %v in %v", secretsGR, cfg.Transformers)
	}
	return &apiTransformer{Transformer: tr, cfg: cfg, cancel: cancel}
}

// healthz runs the KMS health checks kube-apiserver serves under /healthz
// (for KMS v2 alone: one check named "kms-providers", which calls Status and
// validates it; for v1: "kms-provider-0", an Encrypt+Decrypt of "ping").
func (a *apiTransformer) healthz(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/healthz", nil)
	if err != nil {
		return err
	}
	if len(a.cfg.HealthChecks) == 0 {
		return fmt.Errorf("encryption config produced no KMS health checks")
	}
	for _, hc := range a.cfg.HealthChecks {
		if err := hc.Check(req); err != nil {
			return fmt.Errorf("healthz check %q: %w", hc.Name(), err)
		}
	}
	return nil
}

func (a *apiTransformer) healthCheckNames() []string {
	var names []string
	for _, hc := range a.cfg.HealthChecks {
		names = append(names, hc.Name())
	}
	return names
}

// etcdKey is the authenticated data kube-apiserver passes for an object: its storage key.
func etcdKey(name string) value.Context {
	return value.DefaultContext("/registry/secrets/conformance/" + name)
}

// testObject is one Secret as plaintext (the bytes the apiserver hands the
// transformer) plus markers that must never appear in storage.
type testObject struct {
	name      string
	secret    *corev1.Secret
	plaintext []byte
	markers   [][]byte
}

var (
	objScheme = func() *runtime.Scheme {
		s := runtime.NewScheme()
		if err := corev1.AddToScheme(s); err != nil {
			panic(err)
		}
		return s
	}()
	objSerializer = protobuf.NewSerializer(objScheme, objScheme)
)

// objectSizes are the sizes of the secret payloads, cycled over: empty, tiny,
// around the AES block size, page sizes, and large (a Secret may hold up to 1 MiB).
var objectSizes = []int{0, 1, 15, 16, 17, 100, 255, 1024, 4095, 4096, 16384, 65536, 200000}

// makeObjects builds n Secrets named prefix-NNNN with varied payload sizes;
// objects 0 and 1 hold ~1 MB. Deterministic for a given seed.
func makeObjects(t *testing.T, prefix string, n int, seed uint64) []testObject {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x7472_6f75_7373_6561))
	objs := make([]testObject, n)
	for i := range objs {
		size := objectSizes[i%len(objectSizes)]
		if i < 2 {
			size = 1000000
		}
		name := fmt.Sprintf("%s-%04d", prefix, i)
		marker := fmt.Sprintf("PLAINTEXT-MARKER-%s-%04d", prefix, i)
		payload := make([]byte, size)
		for j := range payload {
			payload[j] = byte(rng.UintN(256))
		}
		s := &corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "conformance", Labels: map[string]string{"suite": "trousseau-hsm"}},
			Type:       corev1.SecretTypeOpaque,
			Data: map[string][]byte{
				"marker":  []byte(marker),
				"payload": payload,
			},
			StringData: nil,
		}
		var buf bytes.Buffer
		if err := objSerializer.Encode(s, &buf); err != nil {
			t.Fatalf("encode %s: %v", name, err)
		}
		o := testObject{name: name, secret: s, plaintext: buf.Bytes(), markers: [][]byte{[]byte(marker), []byte(name)}}
		if size >= 64 {
			o.markers = append(o.markers, payload[size/2-32:size/2+32])
		}
		objs[i] = o
	}
	return objs
}

// checkStored asserts what etcd would hold: the provider prefix, and none of the object's plaintext markers.
func checkStored(t *testing.T, o testObject, stored []byte, prefix string) {
	t.Helper()
	if !bytes.HasPrefix(stored, []byte(prefix)) {
		t.Fatalf("%s: stored bytes start with %q, want prefix %q", o.name, head(stored, len(prefix)+8), prefix)
	}
	for _, m := range o.markers {
		if bytes.Contains(stored, m) {
			t.Fatalf("%s: stored bytes contain plaintext %q", o.name, head(m, 40))
		}
	}
	if bytes.Contains(stored, o.plaintext) {
		t.Fatalf("%s: stored bytes contain the whole plaintext", o.name)
	}
}

// checkReadBack asserts a read-back equals the original, byte for byte and as a decoded Secret.
func checkReadBack(t *testing.T, o testObject, got []byte) {
	t.Helper()
	if !bytes.Equal(got, o.plaintext) {
		t.Fatalf("%s: read back %d bytes that differ from the %d written", o.name, len(got), len(o.plaintext))
	}
	obj, _, err := objSerializer.Decode(got, nil, nil)
	if err != nil {
		t.Fatalf("%s: decode read-back: %v", o.name, err)
	}
	s, ok := obj.(*corev1.Secret)
	if !ok || s.Name != o.name || !bytes.Equal(s.Data["payload"], o.secret.Data["payload"]) {
		t.Fatalf("%s: decoded read-back is not the Secret written", o.name)
	}
}

// decodeV2 parses stored KMS v2 bytes (after the prefix) into the
// EncryptedObject proto kube-apiserver writes to etcd.
func decodeV2(t *testing.T, stored []byte) *kmstypes.EncryptedObject {
	t.Helper()
	if !bytes.HasPrefix(stored, []byte(kmsV2Prefix)) {
		t.Fatalf("stored bytes lack prefix %q: %q", kmsV2Prefix, head(stored, 40))
	}
	eo := &kmstypes.EncryptedObject{}
	if err := proto.Unmarshal(stored[len(kmsV2Prefix):], eo); err != nil {
		t.Fatalf("unmarshal EncryptedObject: %v", err)
	}
	return eo
}

func head(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// shortID shortens a key_id for logs (they are opaque; the plugin's may be long).
func shortID(id string) string {
	if len(id) > 48 {
		return id[:48] + "..."
	}
	return strings.TrimSpace(id)
}
