package conformance

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsservice "k8s.io/kms/pkg/service"
)

func flipped(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// envelopeVersion is the key version an envelope's header names (docs/envelope.md: offset 3, 8 bytes).
func envelopeVersion(t *testing.T, ct []byte) uint64 {
	t.Helper()
	if len(ct) < 11 || ct[0] != 'T' || ct[1] != 'H' {
		t.Fatalf("not a trousseau-hsm envelope (%d bytes)", len(ct))
	}
	return binary.BigEndian.Uint64(ct[3:11])
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

	// Another HSM: a second token holding a different key of the same family label
	// and version, as on a wrong or re-initialised HSM (opencryptoki has one soft
	// token per host: there the other HSM is a SoftHSM token, whose aes-gcm
	// envelope names another format than our aes-cbc-hmac version).
	other := startOtherHSMEnv(t, "other")
	otherResp, err := newV2Client(t, other.plugin.endpoint()).Encrypt(ctx, "uid-other", seed)
	if err != nil {
		t.Fatalf("Encrypt on the other HSM: %v", err)
	}

	// Forged or foreign input is the caller's error (InvalidArgument), an unknown key_id NotFound: never
	// Unavailable or Internal, which would count against the plugin's health.
	cases := []struct {
		name string
		req  kmsservice.DecryptRequest
		want codes.Code
	}{
		{"unknown key_id", kmsservice.DecryptRequest{Ciphertext: ct, KeyID: "unknown-" + hex.EncodeToString(randomBytes(t, 16)), Annotations: good.Annotations}, codes.NotFound},
		{"garbage ciphertext", kmsservice.DecryptRequest{Ciphertext: randomBytes(t, len(ct)), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"short garbage ciphertext", kmsservice.DecryptRequest{Ciphertext: []byte("not a ciphertext"), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"empty ciphertext", kmsservice.DecryptRequest{Ciphertext: nil, KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"first byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, 0), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"middle byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, len(ct)/2), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"last byte flipped", kmsservice.DecryptRequest{Ciphertext: flipped(ct, len(ct)-1), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"truncated by one byte", kmsservice.DecryptRequest{Ciphertext: ct[:len(ct)-1], KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"ciphertext with a trailing byte", kmsservice.DecryptRequest{Ciphertext: append(bytes.Clone(ct), 0), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"oversize ciphertext (1025 bytes)", kmsservice.DecryptRequest{Ciphertext: randomBytes(t, 1025), KeyID: good.KeyID, Annotations: good.Annotations}, codes.InvalidArgument},
		{"another HSM's ciphertext under our key_id", kmsservice.DecryptRequest{Ciphertext: otherResp.Ciphertext, KeyID: good.KeyID, Annotations: otherResp.Annotations}, codes.InvalidArgument},
		{"another HSM's ciphertext and key_id", kmsservice.DecryptRequest{Ciphertext: otherResp.Ciphertext, KeyID: otherResp.KeyID, Annotations: otherResp.Annotations}, codes.NotFound},
	}
	for _, c := range cases {
		req := c.req
		got, err := svc.Decrypt(ctx, "uid-bad", &req)
		if err == nil {
			t.Errorf("KMS v2 Decrypt with %s succeeded (returned %d bytes), want %s", c.name, len(got), c.want)
			continue
		}
		if code := status.Code(err); code != c.want {
			t.Errorf("KMS v2 Decrypt with %s: %s (%v), want %s", c.name, code, err, c.want)
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
		want codes.Code // the plugin's answer, carried through the apiserver's wrapping
	}{
		{"encrypted DEK seed replaced by garbage", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.EncryptedDEKSource = randomBytes(t, len(eo.EncryptedDEKSource))
		}), codes.InvalidArgument},
		{"encrypted DEK seed with a flipped byte", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.EncryptedDEKSource = flipped(eo.EncryptedDEKSource, len(eo.EncryptedDEKSource)/2)
		}), codes.InvalidArgument},
		{"unknown key_id", tamper(func(eo *kmstypes.EncryptedObject) {
			eo.KeyID = "unknown-" + hex.EncodeToString(randomBytes(t, 16))
		}), codes.NotFound},
	}
	for _, c := range stored2 {
		reader := loadTransformer(t, "v2", env.plugin.endpoint())
		got, _, err := reader.TransformFromStorage(ctx, c.data, etcdKey(obj.name))
		switch {
		case err == nil:
			t.Errorf("apiserver read of an etcd value with %s succeeded (%d bytes), want %s", c.name, len(got), c.want)
		case status.Code(err) != c.want:
			t.Errorf("apiserver read of an etcd value with %s: %s (%v), want %s", c.name, status.Code(err), err, c.want)
		default:
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
	// The envelope header's key version (bytes 3-10, big-endian): one far above any the family has.
	unknownVersion := bytes.Clone(v1ct)
	binary.BigEndian.PutUint64(unknownVersion[3:11], envelopeVersion(t, v1ct)+1000)
	// v1beta1 carries no key_id: the other HSM's envelope names a version by number only. Where our family
	// has that number (every token but a shared one starts at 1) the bytes fail authentication
	// (InvalidArgument); where it has not, the version is unknown (NotFound).
	otherV1Want := codes.NotFound
	if envelopeVersion(t, otherResp.Ciphertext) == envelopeVersion(t, v1ct) {
		otherV1Want = codes.InvalidArgument
	}
	v1Cases := []struct {
		name string
		ct   []byte
		want codes.Code
	}{
		{"garbage ciphertext", randomBytes(t, len(v1ct)), codes.InvalidArgument},
		{"empty ciphertext", nil, codes.InvalidArgument},
		{"middle byte flipped (forged)", flipped(v1ct, len(v1ct)/2), codes.InvalidArgument},
		{"last byte flipped (forged)", flipped(v1ct, len(v1ct)-1), codes.InvalidArgument},
		{"truncated by one byte", v1ct[:len(v1ct)-1], codes.InvalidArgument},
		{"oversize ciphertext (65536 bytes)", randomBytes(t, 65536), codes.InvalidArgument},
		{"another HSM's v2 ciphertext", otherResp.Ciphertext, otherV1Want},
		{"a key version not on the token", unknownVersion, codes.NotFound},
	}
	for _, c := range v1Cases {
		got, err := v1.Decrypt(c.ct)
		switch {
		case err == nil:
			t.Errorf("KMS v1 Decrypt with %s succeeded (%d bytes), want %s", c.name, len(got), c.want)
		case status.Code(err) != c.want:
			t.Errorf("KMS v1 Decrypt with %s: %s (%v), want %s", c.name, status.Code(err), err, c.want)
		default:
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
