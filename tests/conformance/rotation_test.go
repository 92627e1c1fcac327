package conformance

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	kmsservice "k8s.io/kms/pkg/service"
)

// rotate adds the next key version to the token (addVersion: as an operator
// would on this device), sends SIGHUP, and waits for Status to report a key_id
// other than old. It returns the new Status.
func rotate(t *testing.T, env *hsmEnv, svc kmsservice.Service, old string) *kmsservice.StatusResponse {
	t.Helper()
	v, err := env.tok.addVersion()
	if err != nil {
		t.Fatalf("adding a key version to family %s: %v", env.tok.family, err)
	}
	rotated(t, env, svc, fmt.Sprintf("version %d (CKA_ID %s)", v, versionHex(v)), old)
	return lastStatus
}

// lastStatus is the Status rotated saw (tests run one at a time).
var lastStatus *kmsservice.StatusResponse

// rotated sends SIGHUP after what was added to the token and waits for Status
// to report a key_id other than old; the new Status is left in lastStatus.
func rotated(t *testing.T, env *hsmEnv, svc kmsservice.Service, what, old string) {
	t.Helper()
	if err := env.plugin.signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	t.Logf("added %s of family %s on the token and sent SIGHUP to pid %d", what, env.tok.family, env.plugin.pid())
	var st *kmsservice.StatusResponse
	took, err := eventually(15*time.Second, 100*time.Millisecond, func() error {
		if gone, werr := env.plugin.exited(); gone {
			return fmt.Errorf("plugin exited after SIGHUP: %v", werr)
		}
		s, err := svc.Status(context.Background())
		if err != nil {
			return err
		}
		if s.KeyID == old {
			return fmt.Errorf("Status still reports the old key_id %q", old)
		}
		st = s
		return nil
	})
	if err != nil {
		t.Fatalf("after adding %s and SIGHUP: %v", what, err)
	}
	if err := validateStatus(st); err != nil {
		t.Fatalf("Status after rotation fails kube-apiserver's validation: %v", err)
	}
	t.Logf("Status reports the new key_id %q %s after SIGHUP", shortID(st.KeyID), took.Round(time.Millisecond))
	lastStatus = st
}

func TestKMSv2KeyRotation(t *testing.T) {
	env := startEnv(t, "rot")
	enableKMSv1(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	st1, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	t.Logf("before rotation: key_id %q", shortID(st1.KeyID))

	// Data written under the first version: by a long-lived apiserver (v2) and through KMS v1.
	apiA := loadTransformer(t, "v2", env.plugin.endpoint())
	oldObjs := makeObjects(t, "rot-old", 20, 10)
	oldStored := make([][]byte, len(oldObjs))
	for i, o := range oldObjs {
		if oldStored[i], err = apiA.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("TransformToStorage(%s): %v", o.name, err)
		}
		if id := decodeV2(t, oldStored[i]).KeyID; id != st1.KeyID {
			t.Fatalf("%s stored with key_id %q, want %q", o.name, id, st1.KeyID)
		}
	}
	v1A := loadTransformer(t, "v1", env.plugin.endpoint())
	v1Objs := makeObjects(t, "rot-v1", 10, 11)
	v1Stored := make([][]byte, len(v1Objs))
	for i, o := range v1Objs {
		if v1Stored[i], err = v1A.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("v1 TransformToStorage(%s): %v", o.name, err)
		}
	}
	seed1 := randomBytes(t, 32)
	resp1, err := svc.Encrypt(ctx, "uid-rot-1", seed1)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	t.Logf("wrote %d v2 objects, %d v1 objects and one direct Encrypt under the first key version", len(oldObjs), len(v1Objs))

	// Rotate to the next version.
	st2 := rotate(t, env, svc, st1.KeyID)

	resp2, err := svc.Encrypt(ctx, "uid-rot-2", randomBytes(t, 32))
	if err != nil {
		t.Fatalf("Encrypt after rotation: %v", err)
	}
	if resp2.KeyID != st2.KeyID {
		t.Fatalf("Encrypt after rotation used key_id %q, Status says %q", resp2.KeyID, st2.KeyID)
	}
	if got, err := svc.Decrypt(ctx, "uid-rot-1", &kmsservice.DecryptRequest{Ciphertext: resp1.Ciphertext, KeyID: resp1.KeyID, Annotations: resp1.Annotations}); err != nil || !bytes.Equal(got, seed1) {
		t.Fatalf("Decrypt of a first-version ciphertext after rotation: err=%v equal=%v", err, bytes.Equal(got, seed1))
	}
	t.Log("direct calls: Encrypt now uses the new key_id; a first-version ciphertext still decrypts")

	// The long-lived apiserver notices through its KMS health probe (Status every
	// minute in the background, or a /healthz call once the last result is older
	// than its 20 s TTL: kmsPluginHealthzPositiveTTL in encryptionconfig/config.go;
	// neither interval is settable from outside). Drive /healthz until its writes
	// carry the new key_id.
	took, err := eventually(50*time.Second, time.Second, func() error {
		if err := apiA.healthz(ctx); err != nil {
			return err
		}
		out, err := apiA.TransformToStorage(ctx, []byte("probe"), etcdKey("probe"))
		if err != nil {
			return err
		}
		if id := decodeV2(t, out).KeyID; id != st2.KeyID {
			return fmt.Errorf("apiserver still writes with key_id %q", shortID(id))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the apiserver's transformer did not re-seed onto the new key: %v", err)
	}
	t.Logf("the long-lived apiserver re-seeded its DEK onto key_id %q after %s of /healthz polling", shortID(st2.KeyID), took.Round(time.Second))

	newObjs := makeObjects(t, "rot-new", 20, 12)
	newStored := make([][]byte, len(newObjs))
	for i, o := range newObjs {
		if newStored[i], err = apiA.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("TransformToStorage(%s) after rotation: %v", o.name, err)
		}
		checkStored(t, o, newStored[i], kmsV2Prefix)
		if id := decodeV2(t, newStored[i]).KeyID; id != st2.KeyID {
			t.Fatalf("%s stored with key_id %q, want new %q", o.name, id, st2.KeyID)
		}
	}
	t.Logf("%d new writes carry the new key_id", len(newObjs))

	checkReads := func(who string, tr *apiTransformer) {
		t.Helper()
		for i, o := range oldObjs {
			got, stale, err := tr.TransformFromStorage(ctx, oldStored[i], etcdKey(o.name))
			if err != nil {
				t.Fatalf("%s: read old %s: %v", who, o.name, err)
			}
			checkReadBack(t, o, got)
			if !stale {
				t.Fatalf("%s: old %s (key_id %q) not reported stale though the current key_id is %q", who, o.name, shortID(st1.KeyID), shortID(st2.KeyID))
			}
		}
		for i, o := range newObjs {
			got, stale, err := tr.TransformFromStorage(ctx, newStored[i], etcdKey(o.name))
			if err != nil {
				t.Fatalf("%s: read new %s: %v", who, o.name, err)
			}
			checkReadBack(t, o, got)
			if stale {
				t.Fatalf("%s: new %s reported stale", who, o.name)
			}
		}
		t.Logf("%s: %d old objects read back equal and stale=true; %d new ones equal and stale=false", who, len(oldObjs), len(newObjs))
	}
	checkReads("long-lived apiserver", apiA)
	// A fresh apiserver has no cached DEKs: reading the old objects makes the plugin
	// decrypt with the first version although the second is active.
	checkReads("fresh apiserver", loadTransformer(t, "v2", env.plugin.endpoint()))

	v1B := loadTransformer(t, "v1", env.plugin.endpoint())
	for i, o := range v1Objs {
		got, _, err := v1B.TransformFromStorage(ctx, v1Stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("fresh v1 apiserver: read %s written under the first version: %v", o.name, err)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("a fresh KMS v1 apiserver reads all %d v1 objects written under the first version", len(v1Objs))

	// A SIGHUP with nothing new on the token must keep key_id and service.
	if err := env.plugin.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		time.Sleep(200 * time.Millisecond)
		st, err := svc.Status(ctx)
		if err != nil {
			t.Fatalf("Status after a no-op SIGHUP: %v", err)
		}
		if st.KeyID != st2.KeyID {
			t.Fatalf("a SIGHUP without new keys changed key_id from %q to %q", st2.KeyID, st.KeyID)
		}
	}
	t.Log("a SIGHUP with no new key leaves key_id unchanged and the plugin serving")
}

// TestKMSv2KeyVersionIsABigEndianInteger: CKA_ID is a big-endian unsigned
// integer, so version v<<8 (CKA_ID "0100" after "01", "02") outranks v+1
// although its bytes sort below it. It needs CKA_IDs of the test's choosing
// (pkcs11-tool --id; trousseau-hsm-init always takes the next free number), so
// it runs where pkcs11-tool can load the module: SoftHSM and opencryptoki.
func TestKMSv2KeyVersionIsABigEndianInteger(t *testing.T) {
	onlyOn(t, "needs keys with chosen CKA_IDs from pkcs11-tool, which cannot pass NSS softoken its C_Initialize arguments",
		deviceSoftHSM, deviceOpencryptoki)
	env := startEnvWith(t, "big", withChosenIDs, nil)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	st1, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	first := env.tok.highest
	resp1, err := svc.Encrypt(ctx, "uid-big-1", randomBytes(t, 32))
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	st2 := rotate(t, env, svc, st1.KeyID)
	resp2, err := svc.Encrypt(ctx, "uid-big-2", randomBytes(t, 32))
	if err != nil || resp2.KeyID != st2.KeyID {
		t.Fatalf("Encrypt after adding version %s: err=%v key_id=%q want %q", versionHex(first+1), err, resp2.KeyID, st2.KeyID)
	}
	big := versionHex(first << 8)
	access, err := env.tok.addKey(big, safeKeyFlags...)
	if err != nil {
		t.Fatalf("generate key %s/%s: %v", env.tok.family, big, err)
	}
	rotated(t, env, svc, "CKA_ID "+big+" ("+access+")", st2.KeyID)
	st3 := lastStatus
	if st3.KeyID == st1.KeyID {
		t.Fatalf("key version 0x%s got the key_id of version 0x%s", big, versionHex(first))
	}
	resp3, err := svc.Encrypt(ctx, "uid-rot-3", randomBytes(t, 32))
	if err != nil || resp3.KeyID != st3.KeyID {
		t.Fatalf("Encrypt after adding version 0x%s: err=%v key_id=%q want %q", big, err, resp3.KeyID, st3.KeyID)
	}
	for _, r := range []*kmsservice.EncryptResponse{resp1, resp2} {
		if _, err := svc.Decrypt(ctx, "uid-rot-old", &kmsservice.DecryptRequest{Ciphertext: r.Ciphertext, KeyID: r.KeyID, Annotations: r.Annotations}); err != nil {
			t.Fatalf("Decrypt of a %q ciphertext with three versions present: %v", shortID(r.KeyID), err)
		}
	}
	t.Logf("CKA_ID %s (%d) became the active version over %s; versions %s and %s still decrypt",
		big, first<<8, versionHex(first+1), versionHex(first), versionHex(first+1))
}
