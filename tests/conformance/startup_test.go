package conformance

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPluginRefusesUnsafeStartup checks the plugin's start-up refusals: a KEK
// that could leave the HSM, or a PIN file others can read, must stop it from
// serving at all.
func TestPluginRefusesUnsafeStartup(t *testing.T) {
	bin, err := pluginBinary()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		keyFlags []string
		pinMode  os.FileMode
		access   string // what pkcs11-tool must report, so we know the token is as intended
		why      string // in the plugin's log: the refusal is this one, not another failure
	}{
		{"extractable key", []string{"--sensitive", "--extractable", "--private"}, 0o600, "extractable", "it is extractable"},
		{"key not sensitive", []string{"--private"}, 0o600, "", "it is not sensitive"},
		{"PIN file group-readable (0640)", safeKeyFlags, 0o640, "never extractable", "has mode 0640"},
		{"PIN file world-readable (0604)", safeKeyFlags, 0o604, "never extractable", "has mode 0604"},
	}
	for _, c := range cases {
		t.Run(strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(c.name), func(t *testing.T) {
			dir, err := os.MkdirTemp("", "thsm-")
			if err != nil {
				t.Fatal(err)
			}
			tok, err := newToken(dir, "refuse")
			if err != nil {
				t.Fatal(err)
			}
			access, err := tok.addKey(kekLabel, "01", c.keyFlags...)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.access == "extractable" && !strings.Contains(access, ", extractable"):
				t.Fatalf("pkcs11-tool made %q, want an extractable key", access)
			case c.access == "" && strings.HasPrefix(access, "sensitive"):
				t.Fatalf("pkcs11-tool made %q, want a non-sensitive key", access)
			case c.access == "never extractable" && !(strings.HasPrefix(access, "sensitive") && strings.Contains(access, "never extractable")):
				t.Fatalf("pkcs11-tool made %q, want a sensitive, never extractable key", access)
			}
			pin, err := tok.writePinFile(c.pinMode)
			if err != nil {
				t.Fatal(err)
			}
			p := &plugin{bin: bin, tok: tok, pinFile: pin, sock: filepath.Join(dir, "kms.sock"), logPath: filepath.Join(dir, "plugin.log")}
			t.Cleanup(func() {
				p.kill()
				os.RemoveAll(dir)
			})
			t.Logf("token with key %s/01 (pkcs11-tool: %q), PIN file mode %04o", kekLabel, access, c.pinMode)

			if err := p.launch(); err != nil {
				t.Fatal(err)
			}
			code, err := p.waitExit(15 * time.Second)
			if err != nil {
				t.Fatalf("plugin still running with %s (%v); log:\n%s", c.name, err, p.logTail(20))
			}
			// Exit 2 is the documented refusal (README: configuration or key-policy error); any other
			// code, and -1 for a death by signal, is a crash or another failure, not this refusal.
			if code != 2 {
				t.Fatalf("plugin exited %d with %s, want 2 (a start-up refusal; -1 is a death by signal); log:\n%s", code, c.name, p.logTail(20))
			}
			if log := p.logTail(20); !strings.Contains(log, c.why) {
				t.Fatalf("plugin refused %s without saying %q; log:\n%s", c.name, c.why, log)
			}
			if _, err := os.Stat(p.sock); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("socket %s left behind by the refused start (stat err %v)", p.sock, err)
			}
			t.Logf("refused: exit code %d; last log line: %s", code, lastLine(p.logTail(5)))

			// Control: the same token with the PIN file at 0600 starts when only the mode was wrong.
			if c.pinMode != 0o600 {
				if err := os.Chmod(pin, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := p.start(20 * time.Second); err != nil {
					t.Fatalf("control start with the PIN file at 0600: %v", err)
				}
				if code, err := p.stop(15 * time.Second); err != nil || code != 0 {
					t.Fatalf("control stop: exit %d, %v", code, err)
				}
				t.Log("control: the same token with the PIN file at 0600 serves")
			}
		})
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
