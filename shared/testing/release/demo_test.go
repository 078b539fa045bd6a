package release_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// runEntries lists what is in the machine's /run that the demo could
// leave: top-level names, /run/netns and /run/cni.
func runEntries() map[string]bool {
	seen := map[string]bool{}
	for _, d := range []string{"/run", "/run/netns", "/run/cni"} {
		es, _ := os.ReadDir(d)
		for _, e := range es {
			seen[filepath.Join(d, e.Name())] = true
		}
	}
	return seen
}

// TestDemo runs make demo's first part (scripts/demo) as an operator
// would, with its output not a terminal: it passes, prints no colour
// escapes, and leaves nothing of its own in the machine's /run (no
// /run/cnibox lock files, no /run/cni/tuning, no netns).
func TestDemo(t *testing.T) {
	testnet.RequireRoot(t)
	root := testnet.RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "bin", "cnibox")); err != nil {
		t.Skip("no bin/cnibox: make build (make test builds it first)")
	}
	before := runEntries()
	cmd := exec.Command("bash", "scripts/demo")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/demo: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "\x1b") {
		t.Error("the demo printed terminal escapes to a pipe")
	}
	for _, w := range []string{"CHECK", "DEL", "ping"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("the demo's output lacks %q", w)
		}
	}
	for p := range runEntries() {
		mine := strings.Contains(p, "cnibox-demo") || p == "/run/cnibox" || p == "/run/cni/tuning"
		if !before[p] && mine {
			t.Errorf("the demo left %s", p)
		}
	}
}

// TestDemoSaysWhatIsMissing: without the tools (a PATH holding only what
// a shell needs), the demo names what is missing and installs nothing.
func TestDemoSaysWhatIsMissing(t *testing.T) {
	testnet.RequireRoot(t)
	root := testnet.RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "bin", "cnibox")); err != nil {
		t.Skip("no bin/cnibox: make build")
	}
	path := t.TempDir()
	for _, tool := range []string{"bash", "id", "dirname", "env"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skip(err)
		}
		if err := os.Symlink(p, filepath.Join(path, tool)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(path, "bash"), "scripts/demo")
	cmd.Dir = root
	cmd.Env = []string{"PATH=" + path}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ip (Debian package iproute2)") || !strings.Contains(string(out), "iptables (Debian package iptables)") {
		t.Errorf("demo without tools: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "apt-get") || strings.Contains(string(out), "installing") {
		t.Errorf("the demo tried to install packages:\n%s", out)
	}
}

// TestMakeInstallWithoutGo: with bin/cnibox built, "make install" works on
// a machine without Go (PATH without it, GO pointing nowhere), into a
// DESTDIR whose entries name the final CNI_BIN_DIR.
func TestMakeInstallWithoutGo(t *testing.T) {
	root := testnet.RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "bin", "cnibox")); err != nil {
		t.Skip("no bin/cnibox: make build")
	}
	dest := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "install", "DESTDIR="+dest, "CNI_BIN_DIR=/opt/cni/bin", "GO=/nonexistent/go")
	cmd.Dir = root
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install without Go: %v\n%s", err, out)
	}
	entry, err := os.ReadFile(filepath.Join(dest, "opt/cni/bin/bridge"))
	if err != nil || !strings.HasPrefix(string(entry), "#!/opt/cni/bin/cnibox\n") {
		t.Errorf("DESTDIR's bridge: %v %q", err, entry)
	}
	if _, err := os.Stat(filepath.Join(dest, "opt/cni/bin/cnibox")); err != nil {
		t.Error(err)
	}
}
