package conformance

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsservice "k8s.io/kms/pkg/service"
)

func flipped(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func TestBadInputIsRefusedAndPluginKeepsServing(t *testing.T) {
	env := sharedEnv(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	seed := randomBytes(t, 32)
	good, err := svc.Encrypt(ctx, "uid-bad", seed)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	ct := good.Ciphertext
	if len(ct) < 2 {
		t.Fatalf("ciphertext of %d bytes", len(ct))
	}

	// A second token holding a different key with the same label and version, as
	// on a wrong or re-initialised HSM.
	other := startEnv(t, "other")
	otherResp, err := newV2Client(t, other.plugin.endpoint()).Encrypt(ctx, "uid-other", seed)
	if err != nil {
		t.Fatalf("Encrypt on the other token: %v", err)
	}

	cases := []struct {
		name string
		req  kmsservice.DecryptRequest
	}{
		{"unknown key_id", kmsservice.DecryptRequest{Ciphertext: ct, KeyID: "unknown-" + hex.EncodeToString(randomBytes(t, 16)), Annotations: good.Annotations}},
		{"garbage ciphertext", kmsservice.DecryptRequest{Ciphertext: randomBytes(t, len(ct)), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"short garbage ciphertext", kmsservice.DecryptRequest{Ciphertext: []byte("not a ciphertext"), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"empty ciphertext", kmsservice.DecryptRequest{Ciphertext: nil, KeyID: good.KeyID, Annotations: good.Annotations}},
		{"first byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, 0), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"middle byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, len(ct)/2), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"last byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, len(ct)-1), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"truncated by one byte", kmsservice.DecryptRequest{Ciphertext: ct[:len(ct)-1], KeyID: good.KeyID, Annotations: good.Annotations}},
		{"ciphertext with a trailing byte", kmsservice.DecryptRequest{Ciphertext: append(bytes.Clone(ct), 0), KeyID: good.KeyID, Annotations: good.Annotations}},
		{"another token's ciphertext under our key_id", kmsservice.DecryptRequest{Ciphertext: otherResp.Ciphertext, KeyID: good.KeyID, Annotations: otherResp.Annotations}},
		{"another token's ciphertext and key_id", kmsservice.DecryptRequest{Ciphertext: otherResp.Ciphertext, KeyID: otherResp.KeyID, Annotations: otherResp.Annotations}},
	}
	for _, c := range cases {
		req := c.req
		got, err := svc.Decrypt(ctx, "uid-bad", &req)
		if err == nil {
			t.Errorf("KMS v2 Decrypt with %s succeeded (returned %d bytes), want an error", c.name, len(got))
			continue
		}
		t.Logf("KMS v2 Decrypt with %s: refused: %v", c.name, err)
	}

	// The same through the apiserver's transformer: a fresh apiserver (no DEK
	// cache) reading etcd values whose envelope was tampered with.
	writer := loadTransformer(t, "v2", env.plugin.endpoint())
	obj := makeObjects(t, "bad", 1, 30)[0]
	stored, err := writer.TransformToStorage(ctx, obj.plaintext, etcdKey(obj.name))
	if err != nil {
		t.Fatalf("TransformToStorage: %v", err)
	}
	tamper := func(f func(eo *kmstypes.EncryptedObject)) []byte {
		eo := decodeV2(t, stored)
		f(eo)
		b, err := proto.Marshal(eo)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(kmsV2Prefix), b...)
	}
	stored2 := []struct {
		name string
		data []byte
	}{
		{"encrypted DEK seed replaced by garbage", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.EncryptedDEKSource = randomBytes(t, len(eo.EncryptedDEKSource))
		})},
		{"encrypted DEK seed with a flipped byte", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.EncryptedDEKSource = flipped(eo.EncryptedDEKSource, len(eo.EncryptedDEKSource)/2)
		})},
		{"unknown key_id", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.KeyID = "unknown-" + hex.EncodeToString(randomBytes(t, 16))
		})},
	}
	for _, c := range stored2 {
		reader := loadTransformer(t, "v2", env.plugin.endpoint())
		if got, _, err := reader.TransformFromStorage(ctx, c.data, etcdKey(obj.name)); err == nil {
			t.Errorf("apiserver read of an etcd value with %s succeeded (%d bytes), want an error", c.name, len(got))
		} else {
			t.Logf("apiserver read of an etcd value with %s: refused: %v", c.name, err)
		}
	}

	// KMS v1 (v1beta1) Decrypt gets the same treatment.
	enableKMSv1(t)
	v1 := newV1Client(t, env.plugin.endpoint())
	v1ct, err := v1.Encrypt(seed)
	if err != nil {
		t.Fatalf("v1 Encrypt: %v", err)
	}
	v1Cases := []struct {
		name string
		ct   []byte
	}{
		{"garbage ciphertext", randomBytes(t, len(v1ct))},
		{"empty ciphertext", nil},
		{"middle byte flipped", flipped(v1ct, len(v1ct)/2)},
		{"last byte flipped", flipped(v1ct, len(v1ct)-1)},
		{"truncated by one byte", v1ct[:len(v1ct)-1]},
		{"another token's v2 ciphertext", otherResp.Ciphertext},
	}
	for _, c := range v1Cases {
		if got, err := v1.Decrypt(c.ct); err == nil {
			t.Errorf("KMS v1 Decrypt with %s succeeded (%d bytes), want an error", c.name, len(got))
		} else {
			t.Logf("KMS v1 Decrypt with %s: refused: %v", c.name, err)
		}
	}

	// After all that the plugin is alive and serving correctly.
	if gone, werr := env.plugin.exited(); gone {
		t.Fatalf("plugin exited after bad input: %v", werr)
	}
	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status after bad input: %v", err)
	}
	if err := validateStatus(st); err != nil {
		t.Fatalf("Status after bad input: %v", err)
	}
	plain, err := svc.Decrypt(ctx, "uid-bad", &kmsservice.DecryptRequest{Ciphertext: ct, KeyID: good.KeyID, Annotations: good.Annotations})
	if err != nil || !bytes.Equal(plain, seed) {
		t.Fatalf("Decrypt of the good ciphertext after bad input: err=%v equal=%v", err, bytes.Equal(plain, seed))
	}
	if pt, err := v1.Decrypt(v1ct); err != nil || !bytes.Equal(pt, seed) {
		t.Fatalf("v1 Decrypt of the good ciphertext after bad input: err=%v", err)
	}
	fresh := loadTransformer(t, "v2", env.plugin.endpoint())
	got, _, err := fresh.TransformFromStorage(ctx, stored, etcdKey(obj.name))
	if err != nil {
		t.Fatalf("apiserver read of the untampered value after bad input: %v", err)
	}
	checkReadBack(t, obj, got)
	t.Log("after the bad input the plugin still runs; Status is healthy and good ciphertexts (v2, v1, via the transformer) decrypt")
}
