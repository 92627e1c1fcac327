package conformance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPluginRefusesUnsafeKey: a KEK that could leave the HSM must stop the
// plugin from serving at all. The bad keys come from pkcs11-tool with chosen
// attributes (trousseau-hsm-init never makes such keys), so the test runs where
// pkcs11-tool can load the module: SoftHSM and opencryptoki.
func TestPluginRefusesUnsafeKey(t *testing.T) {
	onlyOn(t, "the unsafe keys are made with pkcs11-tool, which cannot pass NSS softoken its C_Initialize arguments",
		deviceSoftHSM, deviceOpencryptoki)
	cases := []struct {
		name     string
		keyFlags []string
		access   string // what pkcs11-tool must report, so we know the token is as intended
		why      string // in the plugin's log: the refusal is this one, not another failure
	}{
		{"extractable key", []string{"--sensitive", "--extractable", "--private"}, "extractable", "it is extractable"},
		{"key not sensitive", []string{"--private"}, "", "it is not sensitive"},
	}
	for _, c := range cases {
		t.Run(strings.NewReplacer(" ", "_").Replace(c.name), func(t *testing.T) {
			p := refusalPlugin(t, func(tok *token) string {
				id := versionHex(firstChosenVersion(tok.dev))
				access, err := tok.addKey(id, c.keyFlags...)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case c.access == "extractable" && !strings.Contains(access, ", extractable"):
					t.Fatalf("pkcs11-tool made %q, want an extractable key", access)
				case c.access == "" && strings.HasPrefix(access, "sensitive"):
					t.Fatalf("pkcs11-tool made %q, want a non-sensitive key", access)
				}
				return fmt.Sprintf("key %s/%s (pkcs11-tool: %q)", tok.family, id, access)
			}, 0o600)
			expectRefusal(t, p, c.name, c.why)
		})
	}
}

// TestPluginRefusesReadablePinFile: a PIN file others can read stops the
// plugin on every device; the same token with the file at 0600 serves.
func TestPluginRefusesReadablePinFile(t *testing.T) {
	cases := []struct {
		name    string
		pinMode os.FileMode
		why     string
	}{
		{"PIN file group-readable (0640)", 0o640, "has mode 0640"},
		{"PIN file world-readable (0604)", 0o604, "has mode 0604"},
	}
	for _, c := range cases {
		t.Run(strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(c.name), func(t *testing.T) {
			p := refusalPlugin(t, func(tok *token) string {
				v, err := tok.addVersion()
				if err != nil {
					t.Fatal(err)
				}
				return fmt.Sprintf("family %s version %d", tok.family, v)
			}, c.pinMode)
			expectRefusal(t, p, c.name, c.why)

			// Control: the same token with the PIN file at 0600 starts.
			if err := os.Chmod(p.pinFile, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := p.start(20 * time.Second); err != nil {
				t.Fatalf("control start with the PIN file at 0600: %v", err)
			}
			if code, err := p.stop(15 * time.Second); err != nil || code != 0 {
				t.Fatalf("control stop: exit %d, %v", code, err)
			}
			t.Log("control: the same token with the PIN file at 0600 serves")
		})
	}
}

// refusalPlugin makes a token on the device, lets addKeys put what the case
// needs on it (returning a description), writes the PIN file with pinMode and
// returns a plugin for it, not started; everything goes at the end of the test.
func refusalPlugin(t *testing.T, addKeys func(*token) string, pinMode os.FileMode) *plugin {
	t.Helper()
	bin, err := pluginBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "thsm-")
	if err != nil {
		t.Fatal(err)
	}
	e := &hsmEnv{dir: dir}
	t.Cleanup(e.close)
	if e.tok, err = newDeviceToken(dir, "refuse"); err != nil {
		t.Fatal(err)
	}
	what := addKeys(e.tok)
	pin, err := e.tok.writePinFile(pinMode)
	if err != nil {
		t.Fatal(err)
	}
	e.plugin = &plugin{bin: bin, tok: e.tok, pinFile: pin, sock: filepath.Join(dir, "kms.sock"), logPath: filepath.Join(dir, "plugin.log")}
	t.Logf("%s token %q with %s, PIN file mode %04o", e.tok.dev.kind, e.tok.label, what, pinMode)
	return e.plugin
}

// expectRefusal starts p and expects the documented start-up refusal: exit 2, the reason why in the log,
// no socket left.
func expectRefusal(t *testing.T, p *plugin, name, why string) {
	t.Helper()
	if err := p.launch(); err != nil {
		t.Fatal(err)
	}
	code, err := p.waitExit(15 * time.Second)
	if err != nil {
		t.Fatalf("plugin still running with %s (%v); log:\n%s", name, err, p.logTail(20))
	}
	// Exit 2 is the documented refusal (README: configuration or key-policy error); any other
	// code, and -1 for a death by signal, is a crash or another failure, not this refusal.
	if code != 2 {
		t.Fatalf("plugin exited %d with %s, want 2 (a start-up refusal; -1 is a death by signal); log:\n%s", code, name, p.logTail(20))
	}
	if log := p.logTail(20); !strings.Contains(log, why) {
		t.Fatalf("plugin refused %s without saying %q; log:\n%s", name, why, log)
	}
	if _, err := os.Stat(p.sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket %s left behind by the refused start (stat err %v)", p.sock, err)
	}
	t.Logf("refused: exit code %d; last log line: %s", code, lastLine(p.logTail(5)))
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
