package conformance

// An HSM outage and its end, on every device, through the fault-injecting PKCS#11 shim
// (tests/fault_shim) in front of the device's real module: while the link is down the
// plugin answers UNAVAILABLE and its Status is not ok, and it keeps running; once the link
// is back it recovers by itself (on opencryptoki this takes the plugin's C_Finalize +
// C_Initialize of the real module inside one process).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	kmsservice "k8s.io/kms/pkg/service"
)

// setLink writes "up" or "down" to the shim's control file the way the shim wants it
// (tools/support/fault_shim_control.h): a temporary file renamed over it, so the shim never
// reads a half-written file and notices the new inode on its next call.
func setLink(t *testing.T, control, state string) {
	t.Helper()
	tmp := control + ".tmp"
	if err := os.WriteFile(tmp, []byte(state+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, control); err != nil {
		t.Fatal(err)
	}
}

// reinitLogLine is what the plugin logs (debug) when it re-initialises the module to reconnect
// (hsm/pkcs11_backend.cc).
const reinitLogLine = "re-initialising it"

func TestDeviceOutageAndRecovery(t *testing.T) {
	shim, err := faultShimLibrary()
	if err != nil {
		t.Fatal(err)
	}
	var control string
	env := startEnvWith(t, "outage", newDeviceToken, func(e *hsmEnv) {
		control = filepath.Join(e.dir, "shim.control")
		setLink(t, control, "up")
		e.plugin.module = shim
		e.plugin.env = []string{"TROUSSEAU_FAULT_SHIM_MODULE=" + e.tok.dev.module, "TROUSSEAU_FAULT_SHIM_CONTROL=" + control}
		// A short health cache, so Status reflects the device within the bounded waits below; debug
		// logging shows the plugin re-initialising the module (reinitLogLine).
		e.plugin.args = []string{"--health-cache", "200ms", "--log-level", "debug"}
	})
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	before, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if err := validateStatus(before); err != nil {
		t.Fatalf("Status through the shim: %v", err)
	}
	seed := randomBytes(t, 32)
	sealed, err := svc.Encrypt(ctx, "uid-outage-before", seed)
	if err != nil {
		t.Fatalf("Encrypt before the outage: %v", err)
	}
	writer := loadTransformer(t, "v2", env.plugin.endpoint())
	objs := makeObjects(t, "outage", 5, 40)
	stored := make([][]byte, len(objs))
	for i, o := range objs {
		if stored[i], err = writer.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("TransformToStorage(%s) before the outage: %v", o.name, err)
		}
	}
	t.Logf("%s through the fault shim: key_id %q; one Encrypt and %d Secrets written before the outage",
		env.tok.dev.kind, shortID(before.KeyID), len(objs))

	// The link goes down: every device call fails (CKR_DEVICE_ERROR) and the shim closes the real sessions.
	setLink(t, control, "down")
	decryptReq := func() *kmsservice.DecryptRequest {
		return &kmsservice.DecryptRequest{Ciphertext: sealed.Ciphertext, KeyID: sealed.KeyID, Annotations: sealed.Annotations}
	}
	if got, err := svc.Decrypt(ctx, "uid-outage-down", decryptReq()); err == nil {
		t.Fatalf("Decrypt during the outage succeeded (%d bytes)", len(got))
	} else if status.Code(err) != codes.Unavailable {
		t.Fatalf("Decrypt during the outage: %s (%v), want Unavailable", status.Code(err), err)
	}
	if _, err := svc.Encrypt(ctx, "uid-outage-down", randomBytes(t, 32)); status.Code(err) != codes.Unavailable {
		t.Fatalf("Encrypt during the outage: %s (%v), want Unavailable", status.Code(err), err)
	}
	// A fresh apiserver (no DEK cache) cannot read what needs the plugin's Decrypt.
	if _, _, err := loadTransformerOrErr(ctx, t, "v2", env.plugin.endpoint(), stored[0], objs[0].name); err == nil {
		t.Fatal("a fresh apiserver read an object during the outage")
	}
	var down *kmsservice.StatusResponse
	took, err := eventually(10*time.Second, 100*time.Millisecond, func() error {
		st, err := svc.Status(ctx)
		if err != nil {
			return fmt.Errorf("Status call failed (%v): the plugin must answer Status during an outage", err)
		}
		if st.Healthz == "ok" {
			return fmt.Errorf("Status still healthz ok")
		}
		down = st
		return nil
	})
	if err != nil {
		t.Fatalf("during the outage: %v", err)
	}
	if down.KeyID != before.KeyID {
		t.Fatalf("key_id changed during the outage: %q -> %q", before.KeyID, down.KeyID)
	}
	if gone, werr := env.plugin.exited(); gone {
		t.Fatalf("the plugin died in the outage (%v); log:\n%s", werr, env.plugin.logTail(40))
	}
	t.Logf("link down: Decrypt and Encrypt are Unavailable, Status says %q after %s, key_id unchanged, plugin alive",
		down.Healthz, took.Round(time.Millisecond))

	// Keep the link down until the plugin has given up reconnecting on the module as it is and
	// re-initialised it (C_Finalize + C_Initialize of the real module, which the shim lets through while
	// down): the recovery below then runs on a module re-initialised inside this process.
	took, err = eventually(15*time.Second, 100*time.Millisecond, func() error {
		if gone, werr := env.plugin.exited(); gone {
			return fmt.Errorf("plugin exited: %v", werr)
		}
		if !strings.Contains(env.plugin.logTail(400), reinitLogLine) {
			return fmt.Errorf("no %q in the plugin's log", reinitLogLine)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("during the outage: %v; log:\n%s", err, env.plugin.logTail(40))
	}
	t.Logf("link down: the plugin re-initialised the module after %s (log: %q) and still runs", took.Round(time.Millisecond), reinitLogLine)

	// The link is back: the plugin recovers by itself, without a restart.
	pid := env.plugin.pid()
	setLink(t, control, "up")
	took, err = eventually(30*time.Second, 200*time.Millisecond, func() error {
		if gone, werr := env.plugin.exited(); gone {
			return fmt.Errorf("plugin exited: %v", werr)
		}
		got, err := svc.Decrypt(ctx, "uid-outage-up", decryptReq())
		if err != nil {
			return err
		}
		if !bytes.Equal(got, seed) {
			return fmt.Errorf("Decrypt after the outage returned other bytes")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after the link came back: %v; log:\n%s", err, env.plugin.logTail(40))
	}
	t.Logf("link up: the ciphertext from before the outage decrypts again after %s", took.Round(time.Millisecond))
	took, err = eventually(10*time.Second, 100*time.Millisecond, func() error {
		st, err := svc.Status(ctx)
		if err != nil {
			return err
		}
		return validateStatus(st)
	})
	if err != nil {
		t.Fatalf("Status after the outage: %v", err)
	}
	after, err := svc.Status(ctx)
	if err != nil || after.KeyID != before.KeyID {
		t.Fatalf("Status after the outage: err=%v key_id %q, want %q", err, after.KeyID, before.KeyID)
	}
	fresh, err := svc.Encrypt(ctx, "uid-outage-after", seed)
	if err != nil {
		t.Fatalf("Encrypt after the outage: %v", err)
	}
	if got, err := svc.Decrypt(ctx, "uid-outage-after", &kmsservice.DecryptRequest{Ciphertext: fresh.Ciphertext, KeyID: fresh.KeyID, Annotations: fresh.Annotations}); err != nil || !bytes.Equal(got, seed) {
		t.Fatalf("Decrypt of a new ciphertext after the outage: err=%v", err)
	}
	reader := loadTransformer(t, "v2", env.plugin.endpoint())
	for i, o := range objs {
		got, _, err := reader.TransformFromStorage(ctx, stored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("fresh apiserver read of %s after the outage: %v", o.name, err)
		}
		checkReadBack(t, o, got)
	}
	if gone, werr := env.plugin.exited(); gone {
		t.Fatalf("the plugin exited after the outage (%v)", werr)
	}
	if !strings.Contains(env.plugin.logTail(400), "reconnected to PKCS#11 token") {
		t.Fatalf("recovered without the plugin logging its reconnection; log:\n%s", env.plugin.logTail(40))
	}
	t.Logf("Status ok again after %s with the same key_id; new Encrypts work; a fresh apiserver reads the %d Secrets; the same process (pid %d) throughout",
		took.Round(time.Millisecond), len(objs), pid)
}

// loadTransformerOrErr loads a fresh apiserver's transformer and reads one stored value with it,
// returning the read's error (the transformer's creation may itself fail while the plugin is down).
func loadTransformerOrErr(ctx context.Context, t *testing.T, kmsAPIVersion, endpoint string, stored []byte, name string) ([]byte, bool, error) {
	t.Helper()
	path := writeEncryptionConfig(t, kmsAPIVersion, endpoint)
	lctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	cfg, err := encryptionconfig.LoadEncryptionConfig(lctx, path, false, apiServerID)
	if err != nil {
		return nil, false, err
	}
	tr, ok := cfg.Transformers[secretsGR]
	if !ok {
		return nil, false, fmt.Errorf("no transformer for %v", secretsGR)
	}
	return tr.TransformFromStorage(ctx, stored, etcdKey(name))
}
