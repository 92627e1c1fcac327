package conformance

// The PKCS#11 implementation a pass of the suite runs on (CONFORMANCE_DEVICE): SoftHSM2, NSS softoken
// loaded directly with its initialisation string, or opencryptoki's soft token. A device makes tokens
// (or, where there is only one token, key families on it), gives their URIs and adds key versions.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

const (
	deviceSoftHSM      = "softhsm"
	deviceNSS          = "nss"
	deviceOpencryptoki = "opencryptoki"

	nssModule         = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
	nssTokenLabel     = "NSS Certificate DB" // the key slot of an NSS database
	ockModule         = "/usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so"
	ockDefaultToken   = "trousseau-ock" // tests/devices/opencryptoki-token.sh's default label
	devicesScriptsDir = "../devices"
)

// device is the implementation under test, chosen once per process.
type device struct {
	kind   string
	module string // the real PKCS#11 module
	// ock only: the one soft token's label and user PIN (from $OCK_USER_PIN_FILE, as the script set it).
	ockLabel, ockPin string
}

var (
	theDevice    *device
	familyNumber atomic.Int64 // opencryptoki: each environment's own key family on the one token
)

// currentDevice reads CONFORMANCE_DEVICE (default softhsm) and what that device needs.
func currentDevice() (*device, error) {
	kind := os.Getenv("CONFORMANCE_DEVICE")
	if kind == "" {
		kind = deviceSoftHSM
	}
	switch kind {
	case deviceSoftHSM:
		return &device{kind: kind, module: softhsmModule()}, nil
	case deviceNSS:
		return &device{kind: kind, module: nssModule}, nil
	case deviceOpencryptoki:
		pinFile := os.Getenv("OCK_USER_PIN_FILE")
		if pinFile == "" {
			return nil, fmt.Errorf("CONFORMANCE_DEVICE=opencryptoki needs OCK_USER_PIN_FILE (the user PIN given to " +
				"tests/devices/opencryptoki-token.sh start, which ci/conformance runs first)")
		}
		b, err := os.ReadFile(pinFile)
		if err != nil {
			return nil, fmt.Errorf("OCK_USER_PIN_FILE: %w", err)
		}
		pin := strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r")
		label := os.Getenv("OCK_TOKEN_LABEL")
		if label == "" {
			label = ockDefaultToken
		}
		return &device{kind: kind, module: ockModule, ockLabel: label, ockPin: pin}, nil
	}
	return nil, fmt.Errorf("CONFORMANCE_DEVICE=%q: want softhsm, nss or opencryptoki", kind)
}

// checkTools reports what the device's pass needs and is missing. SoftHSM2 and pkcs11-tool are needed on
// every device (opencryptoki's "other HSM" is a SoftHSM token; pkcs11-tool manages opencryptoki's keys).
func (d *device) checkTools() error {
	tools := []string{"softhsm2-util", "pkcs11-tool"}
	if d.kind == deviceNSS {
		tools = append(tools, "certutil")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install softhsm2 opensc libnss3-tools): %v", tool, err)
		}
	}
	for _, m := range []string{softhsmModule(), d.module} {
		if _, err := os.Stat(m); err != nil {
			return fmt.Errorf("PKCS#11 module: %v", err)
		}
	}
	if d.kind != deviceSoftHSM {
		if _, err := initToolBinary(); err != nil {
			return err
		}
	}
	return nil
}

// onlyOn skips a test on devices it cannot run on, naming the device's limit. ci/conformance never
// selects such a test for such a device (-run per device, README table), so under CI=true this skip
// can only show that the table and the tests disagree.
func onlyOn(t *testing.T, why string, kinds ...string) {
	t.Helper()
	for _, k := range kinds {
		if theDevice.kind == k {
			return
		}
	}
	t.Skipf("not on %s: %s", theDevice.kind, why)
}

// newDeviceToken makes a fresh token (softhsm, nss) or key family (opencryptoki) named name under dir,
// on the device under test.
func newDeviceToken(dir, name string) (*token, error) {
	return newTokenOn(theDevice, dir, name)
}

// newOtherHSMToken is a token of another HSM than the one newDeviceToken uses: a second token of the same
// implementation where it has more than one, else (opencryptoki: one soft token per host) a SoftHSM token.
func newOtherHSMToken(dir, name string) (*token, error) {
	if theDevice.kind == deviceOpencryptoki {
		return newTokenOn(&device{kind: deviceSoftHSM, module: softhsmModule()}, dir, name)
	}
	return newTokenOn(theDevice, dir, name)
}

func newTokenOn(dev *device, dir, name string) (*token, error) {
	tk := &token{dev: dev, dir: dir, family: kekLabel, userPin: tokenUserPin}
	switch dev.kind {
	case deviceSoftHSM:
		return newSoftHSMToken(tk, name)
	case deviceNSS:
		return newNSSToken(tk)
	case deviceOpencryptoki:
		// One soft token per host: each environment gets its own key family on it instead, removed again
		// by close (and first, in case an earlier run left one behind).
		tk.label, tk.userPin = dev.ockLabel, dev.ockPin
		tk.family = fmt.Sprintf("%s-%d-%d", name, os.Getpid(), familyNumber.Add(1))
		if err := tk.writeToolsPin(); err != nil {
			return nil, err
		}
		return tk, tk.deleteFamily()
	}
	return nil, fmt.Errorf("unknown device %q", dev.kind)
}

// newNSSToken creates an NSS database in its own directory (tests/devices/nss-db.sh) whose password is the
// user PIN, and keeps the initialisation string the module needs (x-init-reserved in the URI).
func newNSSToken(tk *token) (*token, error) {
	if err := tk.writeToolsPin(); err != nil {
		return nil, err
	}
	script, err := filepath.Abs(filepath.Join(devicesScriptsDir, "nss-db.sh"))
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("bash", script, filepath.Join(tk.dir, "nssdb"), tk.toolsPin).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%s)", script, err, stderrOf(err))
	}
	tk.label = nssTokenLabel
	tk.initReserved = strings.TrimRight(string(out), "\n")
	return tk, nil
}

// writeToolsPin writes the user PIN, mode 0600, for the tools (trousseau-hsm-init's pin-source,
// nss-db.sh); the plugin's own PIN file is writePinFile's, whose mode a test may choose.
func (tk *token) writeToolsPin() error {
	tk.toolsPin = filepath.Join(tk.dir, "tools.pin")
	return os.WriteFile(tk.toolsPin, []byte(tk.userPin+"\n"), 0o600)
}

// addVersion adds the next key version of the token's family the way an operator would on this device:
// trousseau-hsm-init key generate (first) or key rotate (later), which picks the device's scheme (aes-gcm,
// or aes-cbc-hmac where the token has no AES-GCM) and a CKA_ID no other key uses. On SoftHSM, the next
// CKA_ID through pkcs11-tool, as the suite always did. It returns the version number.
func (tk *token) addVersion() (uint64, error) {
	if tk.dev.kind == deviceSoftHSM || tk.chosenIDs {
		next := tk.highest + 1
		if tk.highest == 0 {
			next = firstChosenVersion(tk.dev)
		}
		if _, err := tk.addKey(versionHex(next), safeKeyFlags...); err != nil {
			return 0, err
		}
		tk.highest = next
		return next, nil
	}
	bin, err := initToolBinary()
	if err != nil {
		return 0, err
	}
	args := []string{"key", "generate", "--pkcs11-uri", tk.uri(tk.toolsPin), "--json"}
	if tk.highest != 0 {
		args = []string{"key", "rotate", "--pkcs11-uri", tk.uri(tk.toolsPin), "--json", "--no-wait"}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = tk.environ()
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("trousseau-hsm-init %s %s: %w\n%s", args[0], args[1], err, stderrOf(err))
	}
	var made struct {
		Version uint64 `json:"version"`
		KeyID   string `json:"key_id"`
	}
	if err := json.Unmarshal(out, &made); err != nil || made.Version == 0 {
		return 0, fmt.Errorf("trousseau-hsm-init %s %s printed %q (%v), want {\"version\":N,...}", args[0], args[1], out, err)
	}
	tk.highest = made.Version
	return made.Version, nil
}

// firstChosenVersion is where a token whose CKA_IDs a test chooses starts: 1, except on opencryptoki's one
// token, where other families hold the low numbers and the tests' chosen ones must not meet them
// (trousseau-hsm-init never takes a CKA_ID another family uses; pkcs11-tool would).
func firstChosenVersion(dev *device) uint64 {
	if dev.kind == deviceOpencryptoki {
		return 0x70
	}
	return 1
}

// withChosenIDs makes tokens whose key versions come from pkcs11-tool (addKey) with CKA_IDs counted up from
// firstChosenVersion, on the devices where pkcs11-tool can load the module (not NSS).
func withChosenIDs(dir, name string) (*token, error) {
	tk, err := newDeviceToken(dir, name)
	if err == nil {
		tk.chosenIDs = true
	}
	return tk, err
}

// deleteFamily removes every secret key labelled with the token's family (opencryptoki: the one token
// is shared by every environment of the pass). pkcs11-tool deletes one object per call.
func (tk *token) deleteFamily() error {
	if tk.dev.kind != deviceOpencryptoki {
		return nil
	}
	for i := 0; i < 64; i++ {
		out, err := tk.p11tool("--delete-object", "--type", "secrkey", "--label", tk.family)
		if err != nil {
			if strings.Contains(out, "object not found") {
				return nil
			}
			return err
		}
	}
	return fmt.Errorf("key family %s on token %s: still keys after 64 deletions", tk.family, tk.label)
}

// p11tool runs pkcs11-tool on the token, logged in as user. The PIN reaches it as env:NAME, never in argv
// (SoftHSM's test PIN has always been passed in argv by addKey; kept).
func (tk *token) p11tool(args ...string) (string, error) {
	all := append([]string{"--module", tk.dev.module, "--token-label", tk.label, "--login", "--pin", "env:CONFORMANCE_P11_PIN"}, args...)
	cmd := exec.Command("pkcs11-tool", all...)
	cmd.Env = append(tk.environ(), "CONFORMANCE_P11_PIN="+tk.userPin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pkcs11-tool %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// initToolBinary is trousseau-hsm-init: $TROUSSEAU_HSM_INIT_BIN, else next to the plugin in its build tree
// (build/src/trousseau-hsm -> build/tools/init/trousseau-hsm-init).
func initToolBinary() (string, error) {
	return builtFile("TROUSSEAU_HSM_INIT_BIN", filepath.Join("tools", "init", "trousseau-hsm-init"), true)
}

// faultShimLibrary is the fault-injecting PKCS#11 shim: $TROUSSEAU_FAULT_SHIM, else in the plugin's build tree.
func faultShimLibrary() (string, error) {
	return builtFile("TROUSSEAU_FAULT_SHIM", filepath.Join("tests", "fault_shim", "libtrousseau_fault_shim.so"), false)
}

func builtFile(envName, inBuildTree string, executable bool) (string, error) {
	p := os.Getenv(envName)
	if p == "" {
		bin, err := pluginBinary()
		if err != nil {
			return "", err
		}
		p = filepath.Join(filepath.Dir(filepath.Dir(bin)), inBuildTree)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("%s: %w (build it, or set %s)", abs, err, envName)
	}
	if st.IsDir() || (executable && st.Mode()&0o111 == 0) {
		return "", fmt.Errorf("%s is not an executable file (set %s)", abs, envName)
	}
	return abs, nil
}

// versionHex is a key version as the CKA_ID our tools write: minimal big-endian bytes, in hex.
func versionHex(v uint64) string {
	s := fmt.Sprintf("%x", v)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

// percentEncode is RFC 3986 percent-encoding of everything but the unreserved characters.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
