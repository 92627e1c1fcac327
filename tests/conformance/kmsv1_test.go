package conformance

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
)

// enableKMSv1 turns on the deprecated KMSv1 feature gate for one test, as
// --feature-gates=KMSv1=true does for kube-apiserver (off by default since 1.29).
func enableKMSv1(t *testing.T) {
	t.Helper()
	if err := utilfeature.DefaultMutableFeatureGate.Set("KMSv1=true"); err != nil {
		t.Fatalf("enable KMSv1 feature gate: %v", err)
	}
	t.Cleanup(func() {
		if err := utilfeature.DefaultMutableFeatureGate.Set("KMSv1=false"); err != nil {
			t.Errorf("reset KMSv1 feature gate: %v", err)
		}
	})
	if !utilfeature.DefaultFeatureGate.Enabled(features.KMSv1) {
		t.Fatal("KMSv1 feature gate still disabled after Set")
	}
}

// newV1Client is the KMS v1 gRPC client kube-apiserver builds for an
// apiVersion v1 kms provider (envelope.NewGRPCService). Its interceptor calls
// Version first and insists on "v1beta1".
func newV1Client(t *testing.T, endpoint string) envelope.Service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	svc, err := envelope.NewGRPCService(ctx, endpoint, kmsCallTimeout)
	if err != nil {
		t.Fatalf("envelope.NewGRPCService(%s): %v", endpoint, err)
	}
	return svc
}

func TestKMSv1EnvelopeRoundTrip(t *testing.T) {
	env := sharedEnv(t)
	ctx := context.Background()

	// Without the gate, the apiserver refuses a v1 provider: this is what the gate is for.
	path := writeEncryptionConfig(t, "v1", env.plugin.endpoint())
	lctx, lcancel := context.WithCancel(ctx)
	_, err := encryptionconfig.LoadEncryptionConfig(lctx, path, false, apiServerID)
	lcancel()
	if err == nil || !strings.Contains(err.Error(), "KMSv1") {
		t.Fatalf("LoadEncryptionConfig with KMSv1 gate off: err = %v, want the KMSv1 deprecation refusal", err)
	}
	t.Log("with the KMSv1 gate off, LoadEncryptionConfig refuses the v1 provider; enabling KMSv1=true")
	enableKMSv1(t)

	// Direct v1beta1 calls through the apiserver's v1 client (Version is checked on first use).
	svc := newV1Client(t, env.plugin.endpoint())
	dek := randomBytes(t, 32)
	ct, err := svc.Encrypt(dek)
	if err != nil {
		t.Fatalf("v1 Encrypt (after the client's v1beta1 Version check): %v", err)
	}
	if bytes.Contains(ct, dek) {
		t.Fatal("v1 ciphertext contains the DEK")
	}
	pt, err := svc.Decrypt(ct)
	if err != nil {
		t.Fatalf("v1 Decrypt: %v", err)
	}
	if !bytes.Equal(pt, dek) {
		t.Fatal("v1 Decrypt returned different bytes")
	}
	t.Logf("v1beta1 Version check passed; Encrypt/Decrypt of a 32-byte DEK round-trips (%d-byte ciphertext)", len(ct))

	writer := loadTransformer(t, "v1", env.plugin.endpoint())
	if err := writer.healthz(ctx); err != nil {
		t.Fatalf("kube-apiserver KMS v1 healthz (Encrypt+Decrypt of \"ping\"): %v", err)
	}
	t.Logf("kube-apiserver KMS v1 healthz checks %v pass", writer.healthCheckNames())

	// Each v1 write makes a fresh DEK and calls the plugin's Encrypt: 200 calls, 8 at a time.
	objs := makeObjects(t, "v1rt", 200, 1)
	stored := make([][]byte, len(objs))
	errs := make([]error, len(objs))
	t0 := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(objs); i += 8 {
				stored[i], errs[i] = writer.TransformToStorage(ctx, objs[i].plaintext, etcdKey(objs[i].name))
			}
		}(w)
	}
	wg.Wait()
	for i, o := range objs {
		if errs[i] != nil {
			t.Fatalf("v1 TransformToStorage(%s): %v", o.name, errs[i])
		}
		checkStored(t, o, stored[i], kmsV1Prefix)
	}
	t.Logf("wrote %d Secrets through the KMS v1 transformer in %s; all stored with prefix %q, no plaintext visible",
		len(objs), time.Since(t0).Round(time.Millisecond), kmsV1Prefix)

	for i, o := range objs {
		got, _, err := writer.TransformFromStorage(ctx, stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("v1 TransformFromStorage(%s): %v", o.name, err)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("read back all %d through the writing transformer: equal", len(objs))

	// A second apiserver has no DEK cache: every read is a Decrypt call to the plugin.
	t0 = time.Now()
	reader := loadTransformer(t, "v1", env.plugin.endpoint())
	for i, o := range objs {
		got, _, err := reader.TransformFromStorage(ctx, stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("second apiserver v1 TransformFromStorage(%s): %v", o.name, err)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("read back all %d through a second apiserver's v1 transformer (%d Decrypt calls) in %s: equal",
		len(objs), len(objs), time.Since(t0).Round(time.Millisecond))
}
