package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestIsolation: what a plugin writes to /var/lib/cni and /run/cni lands
// in the test's StateDir and RunDir, never on the machine; /run/cnibox (the
// per-netns lock files) and /run/netns stay the machine's.
func TestIsolation(t *testing.T) {
	r := NewRuntime(t)
	probe := "cnibox-isolation-" + randHex(8)
	script := `set -e
echo state > /var/lib/cni/` + probe + `
mkdir -p /run/cni/tuning && echo run > /run/cni/tuning/` + probe + `
test -e ` + r.Node.Path
	cmd := exec.Command("sh", "-c", script)
	r.isolate(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("isolated command: %v: %s", err, out)
	}
	for path, want := range map[string]string{
		filepath.Join(r.StateDir, probe):         "state",
		filepath.Join(r.RunDir, "tuning", probe): "run",
	} {
		if data, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(data)) != want {
			t.Errorf("%s: %q, %v", path, data, err)
		}
	}
	for _, path := range []string{"/var/lib/cni/" + probe, "/run/cni/tuning/" + probe} {
		if _, err := os.Stat(path); err == nil {
			os.Remove(path)
			t.Errorf("the isolated command wrote the machine's %s", path)
		}
	}
	if d := r.Snapshotter().Take(t).Sections["files"]; !strings.Contains(strings.Join(d, "\n"), "tuning/"+probe) {
		t.Errorf("the leak checker does not see RunDir's files: %q", d)
	}
}
