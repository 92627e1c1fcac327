package conformance

// The harness: tokens of the device under test (device_test.go: SoftHSM2 or
// NSS tokens in temporary directories, key families on opencryptoki's one
// token), their key versions, and the real trousseau-hsm binary started on a
// unix socket.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
)

const (
	tokenSOPin   = "12345678"
	tokenUserPin = "87654321"
	kekLabel     = "kek"
	providerName = "trousseau-hsm"
	// kmsCallTimeout is the timeout written into every EncryptionConfiguration and
	// used for the direct gRPC clients, as the brief asks (3s).
	kmsCallTimeout = 3 * time.Second
)

// pluginBinary returns the absolute path of the plugin under test:
// $TROUSSEAU_HSM_BIN, else ../../build/src/trousseau-hsm relative to this module.
func pluginBinary() (string, error) {
	p := os.Getenv("TROUSSEAU_HSM_BIN")
	if p == "" {
		p = filepath.Join("..", "..", "build", "src", "trousseau-hsm")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("plugin binary %s: %w (build it first, or set TROUSSEAU_HSM_BIN)", abs, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("plugin binary %s is not an executable file", abs)
	}
	return abs, nil
}

// softhsmModule is the PKCS#11 module the plugin and pkcs11-tool load.
func softhsmModule() string {
	if m := os.Getenv("SOFTHSM2_MODULE"); m != "" {
		return m
	}
	return "/usr/lib/softhsm/libsofthsm2.so"
}

// token is where one environment's key family lives: a SoftHSM2 token in its own directory with its own
// softhsm2.conf, an NSS database in its own directory, or (opencryptoki: one soft token per host) a key
// family of its own on the one token. See device_test.go.
type token struct {
	dev          *device
	dir          string
	conf         string // SoftHSM only: its softhsm2.conf
	label        string // the token label (URI token=)
	family       string // the key family's label (URI object=)
	initReserved string // NSS only: C_Initialize's pReserved string (URI x-init-reserved)
	userPin      string
	toolsPin     string // a 0600 file with the user PIN for the tools (not SoftHSM)
	highest      uint64 // the highest key version addVersion made
	chosenIDs    bool   // addVersion makes keys with pkcs11-tool (addKey), CKA_IDs counted from firstChosenVersion
}

// newSoftHSMToken initialises a fresh SoftHSM2 token labelled label under tk.dir.
func newSoftHSMToken(tk *token, label string) (*token, error) {
	tokDir := filepath.Join(tk.dir, "tokens")
	if err := os.MkdirAll(tokDir, 0o700); err != nil {
		return nil, err
	}
	tk.conf = filepath.Join(tk.dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokDir)
	if err := os.WriteFile(tk.conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	tk.label = label
	if _, err := tk.run("softhsm2-util", "--init-token", "--free", "--label", label,
		"--so-pin", tokenSOPin, "--pin", tokenUserPin); err != nil {
		return nil, err
	}
	return tk, nil
}

// environ is the environment of every process on this token: SoftHSM's conf, and neither a PIN nor fault
// shim settings from the caller's environment (the plugin gets its PIN from the PIN file only).
func (tk *token) environ() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") && !strings.HasPrefix(kv, "TROUSSEAU_HSM_PIN=") &&
			!strings.HasPrefix(kv, "TROUSSEAU_FAULT_SHIM_") {
			env = append(env, kv)
		}
	}
	if tk.conf != "" {
		env = append(env, "SOFTHSM2_CONF="+tk.conf)
	}
	return env
}

func (tk *token) run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = tk.environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// safeKeyFlags make a key the plugin must accept: sensitive, never extractable
// (SoftHSM's default for CKA_EXTRACTABLE is false, and pkcs11-tool 0.23 only
// sets it with --extractable; checked by hand with C_GetAttributeValue), private.
var safeKeyFlags = []string{"--sensitive", "--private"}

// addKey makes key version idHex (CKA_ID) of the token's family with
// pkcs11-tool, for tests that need a CKA_ID or attributes of their choosing:
// on SoftHSM an AES-256 key (aes-gcm), on opencryptoki an AES-256 key and a
// 256-bit generic secret for HMAC (aes-cbc-hmac), same label and CKA_ID. flags
// are the AES key's attribute flags (safeKeyFlags for a good key). It returns
// pkcs11-tool's "Access:" line for the AES key.
func (tk *token) addKey(idHex string, flags ...string) (string, error) {
	var out string
	var err error
	aes := append([]string{"--keygen", "--key-type", "AES:32", "--label", tk.family, "--id", idHex}, flags...)
	switch tk.dev.kind {
	case deviceSoftHSM:
		out, err = tk.run("pkcs11-tool", append([]string{"--module", softhsmModule(), "--token-label", tk.label,
			"--login", "--pin", tokenUserPin}, aes...)...)
	case deviceOpencryptoki:
		if out, err = tk.p11tool(aes...); err == nil {
			_, err = tk.p11tool("--keygen", "--key-type", "GENERIC:32", "--label", tk.family, "--id", idHex,
				"--sensitive", "--private", "--usage-sign")
		}
	default:
		return "", fmt.Errorf("pkcs11-tool cannot load %s's module (its C_Initialize needs arguments): use addVersion", tk.dev.kind)
	}
	if err != nil {
		return "", err
	}
	if !strings.Contains(out, "Secret Key Object") {
		return "", fmt.Errorf("pkcs11-tool --keygen printed no key object:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "Access:"); ok {
			return strings.TrimSpace(a), nil
		}
	}
	return "", nil
}

// writePinFile writes the user PIN to dir/pin with the given mode and returns its path.
func (tk *token) writePinFile(mode os.FileMode) (string, error) {
	p := filepath.Join(tk.dir, "pin")
	if err := os.WriteFile(p, []byte(tk.userPin), 0o600); err != nil {
		return "", err
	}
	// WriteFile honours the umask; chmod makes the mode exact.
	return p, os.Chmod(p, mode)
}

// uri is the --pkcs11-uri for this token's key family.
func (tk *token) uri(pinFile string) string { return tk.uriVia(tk.dev.module, pinFile) }

// uriVia is uri with another module in front of the device's (the fault shim).
func (tk *token) uriVia(module, pinFile string) string {
	u := fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s",
		percentEncode(tk.label), percentEncode(tk.family), module, pinFile)
	if tk.initReserved != "" {
		u += "&x-init-reserved=" + percentEncode(tk.initReserved)
	}
	return u
}

// plugin is one running (or exited) trousseau-hsm process.
type plugin struct {
	bin     string
	tok     *token
	sock    string
	pinFile string
	logPath string
	// module, when set, is loaded instead of the device's module (the fault shim), with env added to the
	// process environment and args to its flags.
	module string
	env    []string
	args   []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// endpoint is the socket as an EncryptionConfiguration / --listen value.
func (p *plugin) endpoint() string { return "unix://" + p.sock }

// launch starts the process without waiting for it to serve.
func (p *plugin) launch() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "==== harness: starting %s at %s\n", p.bin, time.Now().Format(time.RFC3339Nano))
	uri := p.tok.uri(p.pinFile)
	if p.module != "" {
		uri = p.tok.uriVia(p.module, p.pinFile)
	}
	cmd := exec.Command(p.bin, append([]string{"--listen", p.endpoint(), "--pkcs11-uri", uri}, p.args...)...)
	cmd.Env = append(p.tok.environ(), p.env...)
	// If the test binary dies (e.g. go test -timeout), take the plugin with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.waitErr = cmd, done, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// start launches the plugin and waits until it answers a KMS v2 Status with healthz "ok".
func (p *plugin) start(timeout time.Duration) error {
	if err := p.launch(); err != nil {
		return err
	}
	return p.waitServing(timeout)
}

func (p *plugin) exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	default:
		return false, nil
	}
}

// waitServing polls the socket with the apiserver's own KMS v2 client until
// Status says healthz "ok", the process exits, or timeout passes.
func (p *plugin) waitServing(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if gone, err := p.exited(); gone {
			return fmt.Errorf("plugin exited before serving (%v); log:\n%s", err, p.logTail(40))
		}
		if _, err := os.Stat(p.sock); err == nil {
			lastErr = func() error {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				svc, err := kmsv2.NewGRPCService(ctx, p.endpoint(), providerName, time.Second)
				if err != nil {
					return err
				}
				st, err := svc.Status(ctx)
				if err != nil {
					return err
				}
				if st.Healthz != "ok" {
					return fmt.Errorf("healthz %q", st.Healthz)
				}
				return nil
			}()
			if lastErr == nil {
				return nil
			}
		} else {
			lastErr = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("plugin not serving on %s after %s (last error: %v); log:\n%s", p.sock, timeout, lastErr, p.logTail(40))
}

func (p *plugin) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *plugin) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return errors.New("plugin not started")
	}
	return cmd.Process.Signal(sig)
}

// waitExit waits for the process to end and returns its exit code
// (-1 when killed by a signal). It fails if the process is still alive after timeout.
func (p *plugin) waitExit(timeout time.Duration) (int, error) {
	p.mu.Lock()
	done, cmd := p.done, p.cmd
	p.mu.Unlock()
	select {
	case <-done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("plugin pid %d still running after %s", cmd.Process.Pid, timeout)
	}
	return cmd.ProcessState.ExitCode(), nil
}

// stop sends SIGTERM and waits up to timeout; on timeout it SIGKILLs the process
// (our own child, by pid) and reports the timeout as an error.
func (p *plugin) stop(timeout time.Duration) (int, error) {
	if gone, _ := p.exited(); gone {
		code, _ := p.waitExit(0)
		return code, nil
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		return 0, err
	}
	code, err := p.waitExit(timeout)
	if err != nil {
		_ = p.signal(syscall.SIGKILL)
		_, _ = p.waitExit(5 * time.Second)
		return 0, err
	}
	return code, nil
}

// kill is the cleanup of last resort: SIGKILL to our own child if it still runs.
func (p *plugin) kill() {
	if gone, _ := p.exited(); gone {
		return
	}
	_ = p.signal(syscall.SIGKILL)
	_, _ = p.waitExit(5 * time.Second)
}

// logTail returns the last n lines the plugin wrote to stdout/stderr.
func (p *plugin) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// hsmEnv is a token holding key version 01 plus a plugin configured for it.
type hsmEnv struct {
	dir    string
	tok    *token
	plugin *plugin
}

// newEnv builds a token (opencryptoki: a key family) with its first key
// version and a 0600 PIN file in a fresh short temporary directory (unix
// socket paths are limited to 108 bytes), without starting the plugin.
func newEnv(bin, name string) (*hsmEnv, error) {
	return buildEnv(bin, name, newDeviceToken, 0o600)
}

// buildEnv is newEnv with the token's maker and the PIN file's mode chosen.
func buildEnv(bin, name string, makeToken func(dir, name string) (*token, error), pinMode os.FileMode) (*hsmEnv, error) {
	dir, err := os.MkdirTemp("", "thsm-")
	if err != nil {
		return nil, err
	}
	e := &hsmEnv{dir: dir}
	if e.tok, err = makeToken(dir, name); err != nil {
		e.close()
		return nil, err
	}
	if _, err := e.tok.addVersion(); err != nil {
		e.close()
		return nil, err
	}
	pin, err := e.tok.writePinFile(pinMode)
	if err != nil {
		e.close()
		return nil, err
	}
	e.plugin = &plugin{
		bin: bin, tok: e.tok, pinFile: pin,
		sock:    filepath.Join(dir, "kms.sock"),
		logPath: filepath.Join(dir, "plugin.log"),
	}
	return e, nil
}

// close stops the plugin and removes what the environment made (opencryptoki: its key family).
func (e *hsmEnv) close() {
	if e.plugin != nil {
		e.plugin.kill()
	}
	if e.tok != nil {
		if err := e.tok.deleteFamily(); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: removing key family %s: %v\n", e.tok.family, err)
		}
	}
	os.RemoveAll(e.dir)
}

// startEnv gives a test its own token (opencryptoki: key family) and running
// plugin, torn down at the end of the test; the plugin's log is printed if the
// test failed.
func startEnv(t *testing.T, name string) *hsmEnv {
	t.Helper()
	return startEnvWith(t, name, newDeviceToken, nil)
}

// startOtherHSMEnv is startEnv on another HSM than the device's tokens (newOtherHSMToken).
func startOtherHSMEnv(t *testing.T, name string) *hsmEnv {
	t.Helper()
	return startEnvWith(t, name, newOtherHSMToken, nil)
}

// startEnvWith is startEnv with the token's maker chosen and a hook that may
// set up the plugin (module, env, flags) before it starts.
func startEnvWith(t *testing.T, name string, makeToken func(dir, name string) (*token, error), setup func(*hsmEnv)) *hsmEnv {
	t.Helper()
	bin, err := pluginBinary()
	if err != nil {
		t.Fatal(err)
	}
	e, err := buildEnv(bin, name, makeToken, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("plugin log (%s), last lines:\n%s", e.plugin.logPath, e.plugin.logTail(60))
		}
		e.close()
	})
	if setup != nil {
		setup(e)
	}
	t0 := time.Now()
	if err := e.plugin.start(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s token %q, key family %q version %d, in %s; plugin pid %d serving on %s after %s",
		e.tok.dev.kind, e.tok.label, e.tok.family, e.tok.highest, e.dir, e.plugin.pid(), e.plugin.sock,
		time.Since(t0).Round(time.Millisecond))
	return e
}

// shared is the plugin TestMain starts for the tests that do not change the
// token or the process (round trips, bad input).
var shared *hsmEnv

// sharedEnv returns the shared plugin and arranges for its log to be shown
// if the calling test fails.
func sharedEnv(t *testing.T) *hsmEnv {
	t.Helper()
	if shared == nil {
		t.Fatal("shared plugin not started (see TestMain output)")
	}
	if gone, err := shared.plugin.exited(); gone {
		t.Fatalf("shared plugin has exited (%v); log:\n%s", err, shared.plugin.logTail(60))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shared plugin log (%s), last lines:\n%s", shared.plugin.logPath, shared.plugin.logTail(60))
		}
	})
	return shared
}

// eventually retries f every interval until it returns nil or timeout passes,
// returning the last error and how long it took.
func eventually(timeout, interval time.Duration, f func() error) (time.Duration, error) {
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("still failing after %s: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}
