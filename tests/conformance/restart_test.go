package conformance

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

func TestPluginRestartTransformerRecovers(t *testing.T) {
	env := startEnv(t, "rst")
	enableKMSv1(t)
	ctx := context.Background()
	svc := newV2Client(t, env.plugin.endpoint())
	before, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}

	// apiA lives through the restart. apiB is another apiserver that writes
	// objects apiA has never seen, so apiA's reads of them need the plugin's Decrypt.
	apiA := loadTransformer(t, "v2", env.plugin.endpoint())
	v1A := loadTransformer(t, "v1", env.plugin.endpoint())
	apiB := loadTransformer(t, "v2", env.plugin.endpoint())
	bObjs := makeObjects(t, "rst-b", 20, 20)
	bStored := make([][]byte, len(bObjs))
	for i, o := range bObjs {
		if bStored[i], err = apiB.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("apiserver B TransformToStorage(%s): %v", o.name, err)
		}
	}
	apiB.cancel()
	aObjs := makeObjects(t, "rst-a", 5, 21)
	aStored := make([][]byte, len(aObjs))
	for i, o := range aObjs {
		if aStored[i], err = apiA.TransformToStorage(ctx, o.plaintext, etcdKey(o.name)); err != nil {
			t.Fatalf("apiserver A TransformToStorage(%s): %v", o.name, err)
		}
	}
	t.Logf("apiserver B wrote %d objects, apiserver A wrote %d; key_id %q", len(bObjs), len(aObjs), shortID(before.KeyID))

	// SIGTERM: the plugin drains, exits 0 and removes its socket.
	pid := env.plugin.pid()
	t0 := time.Now()
	code, err := env.plugin.stop(15 * time.Second)
	if err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if code != 0 {
		t.Fatalf("plugin exited %d on SIGTERM, want 0", code)
	}
	if _, err := os.Stat(env.plugin.sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket %s still present after SIGTERM exit (stat err %v)", env.plugin.sock, err)
	}
	t.Logf("SIGTERM: pid %d exited 0 in %s and removed its socket", pid, time.Since(t0).Round(time.Millisecond))

	// While the plugin is down, a read that needs a DEK from the plugin fails.
	t0 = time.Now()
	if _, _, err := apiA.TransformFromStorage(ctx, bStored[0], etcdKey(bObjs[0].name)); err == nil {
		t.Fatal("apiserver A read an object needing the plugin's Decrypt while the plugin was down")
	} else {
		t.Logf("while the plugin is down, apiserver A's read of %s fails after %s: %v", bObjs[0].name, time.Since(t0).Round(time.Millisecond), err)
	}

	// Start it again on the same socket, same token.
	t0 = time.Now()
	if err := env.plugin.start(20 * time.Second); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("plugin restarted (pid %d) on %s in %s", env.plugin.pid(), env.plugin.sock, time.Since(t0).Round(time.Millisecond))

	// The same transformer, with its gRPC connection from before, recovers.
	took, err := eventually(30*time.Second, 500*time.Millisecond, func() error {
		_, _, err := apiA.TransformFromStorage(ctx, bStored[0], etcdKey(bObjs[0].name))
		return err
	})
	if err != nil {
		t.Fatalf("apiserver A did not recover its reads through the restarted plugin: %v", err)
	}
	t.Logf("apiserver A's reads recovered %s after the restart", took.Round(time.Millisecond))
	for i, o := range bObjs {
		got, stale, err := apiA.TransformFromStorage(ctx, bStored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("read %s after restart: %v", o.name, err)
		}
		checkReadBack(t, o, got)
		if stale {
			t.Fatalf("%s reported stale after a restart with the same key", o.name)
		}
	}
	for i, o := range aObjs {
		got, _, err := apiA.TransformFromStorage(ctx, aStored[i], etcdKey(o.name))
		if err != nil {
			t.Fatalf("read own %s after restart: %v", o.name, err)
		}
		checkReadBack(t, o, got)
	}
	t.Logf("all %d objects from B and %d from A read back equal, not stale", len(bObjs), len(aObjs))

	after, err := svc.Status(ctx)
	if err != nil {
		t.Fatalf("Status after restart: %v", err)
	}
	if after.KeyID != before.KeyID {
		t.Fatalf("key_id changed across a restart with the same key: %q -> %q (every stored object would turn stale)", before.KeyID, after.KeyID)
	}
	took, err = eventually(30*time.Second, time.Second, func() error { return apiA.healthz(ctx) })
	if err != nil {
		t.Fatalf("apiserver A's KMS healthz did not recover: %v", err)
	}
	t.Logf("key_id unchanged across the restart; apiserver A's KMS healthz passes (%s)", took.Round(time.Millisecond))

	// KMS v1: every write is an Encrypt call, so the old connection must recover too.
	probe := makeObjects(t, "rst-v1", 1, 22)[0]
	var v1Stored []byte
	took, err = eventually(30*time.Second, 500*time.Millisecond, func() error {
		var err error
		v1Stored, err = v1A.TransformToStorage(ctx, probe.plaintext, etcdKey(probe.name))
		return err
	})
	if err != nil {
		t.Fatalf("KMS v1 transformer from before the restart cannot write: %v", err)
	}
	checkStored(t, probe, v1Stored, kmsV1Prefix)
	got, _, err := loadTransformer(t, "v1", env.plugin.endpoint()).TransformFromStorage(ctx, v1Stored, etcdKey(probe.name))
	if err != nil {
		t.Fatalf("fresh v1 read of the post-restart write: %v", err)
	}
	checkReadBack(t, probe, got)
	t.Logf("KMS v1 transformer from before the restart writes again (%s); a fresh one reads it back", took.Round(time.Millisecond))
}
