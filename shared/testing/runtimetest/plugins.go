package runtimetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// Plugins is a CNI plugin directory as a node would have it after
// "cnibox install", plus links to the reference plugins for the names
// cnibox does not implement yet.
type Plugins struct {
	Dir       string
	Ours      []string // applets cnibox provides
	Reference []string // names linked to the reference plugins
}

// InstallPlugins makes a plugin directory in a fresh temporary dir.
func InstallPlugins(t testing.TB) *Plugins {
	t.Helper()
	return InstallPluginsInto(t, filepath.Join(t.TempDir(), "bin"))
}

// InstallPluginsInto runs "cnibox install --dir dir" and links every
// reference plugin cnibox lacks into dir.
func InstallPluginsInto(t testing.TB, dir string) *Plugins {
	t.Helper()
	if out, err := exec.Command(testnet.Binary(t), "install", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("cnibox install --dir %s: %v: %s", dir, err, out)
	}
	// RUNTIMETEST_REFERENCE=bridge,portmap makes those names the
	// reference plugins even where cnibox has them: to compare, or to
	// tell a cnibox bug from a test's.
	forced := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("RUNTIMETEST_REFERENCE"), ",") {
		if n != "" {
			forced[n] = true
			os.Remove(filepath.Join(dir, n))
		}
	}
	p := &Plugins{Dir: dir}
	ours := map[string]bool{}
	for _, a := range testnet.Applets(t) {
		if !forced[a] {
			ours[a] = true
			p.Ours = append(p.Ours, a)
		}
	}
	refs, _ := os.ReadDir(testnet.ReferenceDir())
	for _, e := range refs {
		if ours[e.Name()] || e.IsDir() {
			continue
		}
		if err := os.Symlink(filepath.Join(testnet.ReferenceDir(), e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
		p.Reference = append(p.Reference, e.Name())
	}
	sort.Strings(p.Reference)
	t.Logf("plugins in %s: cnibox: %s; REFERENCE (%s, cnibox has no such applet yet): %s",
		dir, strings.Join(p.Ours, " "), testnet.ReferenceDir(), strings.Join(p.Reference, " "))
	return p
}

// IsOurs reports whether cnibox provides plugin.
func (p *Plugins) IsOurs(plugin string) bool {
	for _, a := range p.Ours {
		if a == plugin {
			return true
		}
	}
	return false
}

// Side names who runs plugin: "cnibox" or "REFERENCE".
func (p *Plugins) Side(plugin string) string {
	if p.IsOurs(plugin) {
		return "cnibox"
	}
	return "REFERENCE"
}

// Describe says, for each plugin type, which side runs it, for test logs:
// "bridge=REFERENCE host-local=REFERENCE loopback=cnibox".
func (p *Plugins) Describe(types ...string) string {
	var parts []string
	for _, ty := range types {
		parts = append(parts, ty+"="+p.Side(ty))
	}
	return strings.Join(parts, " ")
}
