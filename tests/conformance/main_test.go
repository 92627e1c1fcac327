package conformance

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestMain picks the device (CONFORMANCE_DEVICE), checks the tools, builds a
// token (opencryptoki: a key family) with its first key version and starts
// the plugin that the non-destructive tests share. Tests that rotate keys,
// restart the process or make bad tokens build their own (startEnv).
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dev, err := currentDevice()
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		return 1
	}
	if err := dev.checkTools(); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: device %s: %v\n", dev.kind, err)
		return 1
	}
	theDevice = dev
	bin, err := pluginBinary()
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		return 1
	}
	env, err := newEnv(bin, "conf")
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance: building the shared token: %v\n", err)
		return 1
	}
	defer env.close()
	t0 := time.Now()
	if err := env.plugin.start(20 * time.Second); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: starting the shared plugin: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "conformance: device %s (%s), token %q, key family %q; plugin %s (pid %d) serving on %s after %s; files in %s\n",
		dev.kind, dev.module, env.tok.label, env.tok.family, bin, env.plugin.pid(), env.plugin.sock,
		time.Since(t0).Round(time.Millisecond), env.dir)
	shared = env

	code := m.Run()

	// A plugin that does not drain cleanly on SIGTERM (a kubelet stop, a node drain) fails the suite,
	// whatever the tests said.
	exit, err := env.plugin.stop(15 * time.Second)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "conformance: FAIL: stopping the shared plugin: %v; log:\n%s\n", err, env.plugin.logTail(30))
		return failed(code)
	case exit != 0:
		fmt.Fprintf(os.Stderr, "conformance: FAIL: shared plugin exited %d on SIGTERM (want 0); log:\n%s\n", exit, env.plugin.logTail(30))
		return failed(code)
	}
	return code
}

// The suite's exit code once the shared plugin's stop failed: the tests' own failure code, else 1.
func failed(code int) int {
	if code != 0 {
		return code
	}
	return 1
}
