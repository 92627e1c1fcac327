package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsservice "k8s.io/kms/pkg/service"
)

// newV2Client is the KMS v2 gRPC client kube-apiserver builds for a kms
// provider (kmsv2.NewGRPCService, the EnvelopeKMSv2ServiceFactory of encryptionconfig).
func newV2Client(t *testing.T, endpoint string) kmsservice.Service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	svc, err := kmsv2.NewGRPCService(ctx, endpoint, providerName, kmsCallTimeout)
	if err != nil {
		t.Fatalf("kmsv2.NewGRPCService(%s): %v", endpoint, err)
	}
	return svc
}

// validateStatus applies to a StatusResponse the checks kube-apiserver makes in
// (*kmsv2PluginProbe).isKMSv2ProviderHealthyAndMaybeRotateDEK, in
// k8s.io/apiserver@v0.37.2/pkg/server/options/encryptionconfig/config.go
// (unexported, so replicated here): Healthz must be "ok"; Version must be
// kmsv2.KMSAPIVersionv2 ("v2"; the apiserver also tolerates the legacy
// "v2beta1", which we do not: our plugin speaks v2); and the KeyID must pass
// the exported kmsv2.ValidateKeyID (non-empty, at most 1 KiB).
// The full unexported path also runs, unreplicated, in every healthz call of
// the tests below (apiTransformer.healthz).
func validateStatus(st *kmsservice.StatusResponse) error {
	if st.Healthz != "ok" {
		return fmt.Errorf("got unexpected healthz status: %q", st.Healthz)
	}
	if st.Version != kmsv2.KMSAPIVersionv2 {
		return fmt.Errorf("expected KMSv2 API version %q, got %q", kmsv2.KMSAPIVersionv2, st.Version)
	}
	if _, err := kmsv2.ValidateKeyID(st.KeyID); err != nil {
		return fmt.Errorf("invalid key_id: %w", err)
	}
	return nil
}

// validateEncryptResponse checks an Encrypt response the way
// kmsv2.GenerateTransformer does before kube-apiserver will use a DEK seed:
// the EncryptedObject built from it must pass kmsv2.ValidateEncryptedObject
// (ciphertext non-empty and <= 1 KiB, key_id valid, annotation keys fully
// qualified domain names, annotations <= 32 KiB in total).
func validateEncryptResponse(resp *kmsservice.EncryptResponse) error {
	return kmsv2.ValidateEncryptedObject(&kmstypes.EncryptedObject{
		KeyID:                  resp.KeyID,
		EncryptedDEKSource:     resp.Ciphertext,
		Annotations:            resp.Annotations,
		EncryptedDEKSourceType: kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED,
		EncryptedData:          []byte{0},
	})
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKMSv2StatusPassesAPIServerValidation(t *testing.T) {
	env := sharedEnv(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())

	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	t.Logf("Status: healthz=%q version=%q key_id=%q", st.Healthz, st.Version, shortID(st.KeyID))
	if err := validateStatus(st); err != nil {
		t.Fatalf("Status fails kube-apiserver's validation: %v", err)
	}

	// Status must be stable while nothing changes.
	st2, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("second Status: %v", err)
	}
	if st2.KeyID != st.KeyID {
		t.Fatalf("key_id changed between two Status calls without rotation: %q then %q", st.KeyID, st2.KeyID)
	}

	// The apiserver only accepts a DEK seed whose Encrypt key_id equals Status's key_id
	// (rotateDEKOnKeyIDChange in encryptionconfig/config.go).
	seed := randomBytes(t, 32)
	resp, err := svc.Encrypt(ctx, "uid-status-test", seed)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	t.Logf("Encrypt(32-byte seed): %d-byte ciphertext, key_id=%q, %d annotations", len(resp.Ciphertext), shortID(resp.KeyID), len(resp.Annotations))
	if resp.KeyID != st.KeyID {
		t.Fatalf("Encrypt key_id %q != Status key_id %q: kube-apiserver would refuse to rotate to this DEK", resp.KeyID, st.KeyID)
	}
	if err := validateEncryptResponse(resp); err != nil {
		t.Fatalf("Encrypt response fails kmsv2.ValidateEncryptedObject: %v", err)
	}
	if bytes.Contains(resp.Ciphertext, seed) {
		t.Fatal("ciphertext contains the plaintext seed")
	}
	plain, err := svc.Decrypt(ctx, "uid-status-test", &kmsservice.DecryptRequest{
		Ciphertext: resp.Ciphertext, KeyID: resp.KeyID, Annotations: resp.Annotations,
	})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(plain, seed) {
		t.Fatal("Decrypt returned something other than the seed")
	}
	t.Log("Decrypt returned the seed")

	// The apiserver's own health probe: LoadEncryptionConfig primes it (Status +
	// validation + DEK generation) and the /healthz check reports its result.
	tr := loadTransformer(t, "v2", env.plugin.endpoint())
	if err := tr.healthz(ctx); err != nil {
		t.Fatalf("kube-apiserver KMS healthz: %v", err)
	}
	t.Logf("kube-apiserver KMS v2 healthz checks %v pass", tr.healthCheckNames())
}

func TestKMSv2EnvelopeRoundTrip(t *testing.T) {
	env := sharedEnv(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}

	writer := loadTransformer(t, "v2", env.plugin.endpoint())
	objs := makeObjects(t, "v2rt", 200, 2)
	stored := make([][]byte, len(objs))

	// Write concurrently, as the apiserver does.
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(objs))
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
	total := 0
	for i, o := range objs {
		if errs[i] != nil {
			t.Fatalf("TransformToStorage(%s): %v", o.name, errs[i])
		}
		checkStored(t, o, stored[i], kmsV2Prefix)
		eo := decodeV2(t, stored[i])
		if eo.KeyID != st.KeyID {
			t.Fatalf("%s stored with key_id %q, Status says %q", o.name, eo.KeyID, st.KeyID)
		}
		total += len(o.plaintext)
	}
	t.Logf("wrote %d Secrets (%d bytes of plaintext, 0 B to 1 MB each) in %s; all stored with prefix %q and key_id %q, no plaintext visible",
		len(objs), total, time.Since(t0).Round(time.Millisecond), kmsV2Prefix, shortID(st.KeyID))

	// Read back through the same transformer (its DEK cache).
	for i, o := range objs {
		got, stale, err := writer.TransformFromStorage(ctx, stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("TransformFromStorage(%s): %v", o.name, err)
		}
		if stale {
			t.Fatalf("%s reported stale right after writing it", o.name)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("read back all %d through the writing transformer: equal, not stale", len(objs))

	// Read back through a second apiserver instance: its DEK cache is empty, so the
	// first read must Decrypt the DEK seed through the plugin.
	reader := loadTransformer(t, "v2", env.plugin.endpoint())
	for i, o := range objs {
		got, stale, err := reader.TransformFromStorage(ctx, stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("second apiserver TransformFromStorage(%s): %v", o.name, err)
		}
		if stale {
			t.Fatalf("%s reported stale by a second apiserver with the same key_id", o.name)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("read back all %d through a second apiserver's transformer (DEK decrypted by the plugin): equal, not stale", len(objs))

	// The ciphertext is bound to its etcd key: moving it under another key must fail.
	if _, _, err := reader.TransformFromStorage(ctx, stored[5], etcdKey(objs[6].name)); err == nil {
		t.Fatal("an object moved to another etcd key was read back without error")
	}
	t.Log("an object read under a different etcd key is refused (authenticated data)")
}

func TestKMSv2ConcurrentEncryptDecrypt(t *testing.T) {
	env := sharedEnv(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	const workers, perWorker = 8, 25
	t0 := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				uid := fmt.Sprintf("uid-%d-%d", w, i)
				seed := make([]byte, 32)
				if _, err := rand.Read(seed); err != nil {
					errc <- err
					return
				}
				resp, err := svc.Encrypt(ctx, uid, seed)
				if err != nil {
					errc <- fmt.Errorf("Encrypt %s: %w", uid, err)
					return
				}
				plain, err := svc.Decrypt(ctx, uid, &kmsservice.DecryptRequest{Ciphertext: resp.Ciphertext, KeyID: resp.KeyID, Annotations: resp.Annotations})
				if err != nil {
					errc <- fmt.Errorf("Decrypt %s: %w", uid, err)
					return
				}
				if !bytes.Equal(plain, seed) {
					errc <- fmt.Errorf("Decrypt %s returned different bytes", uid)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if !t.Failed() {
		t.Logf("%d concurrent Encrypt+Decrypt pairs over %d clients' worth of goroutines in %s", workers*perWorker, workers, time.Since(t0).Round(time.Millisecond))
	}
}
