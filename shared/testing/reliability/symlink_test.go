package reliability

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestStateSymlinks: symlinks planted where the default chain keeps its
// state (host-local's last_reserved_ip, firewall's and portmap's records,
// tuning's backup), each pointing at a file of the node, are never
// written through: after ADD and DEL the files hold what they held. (A
// backup read through a link would also let its author choose what DEL
// "restores".) Before, host-local, firewall and portmap wrote through
// them.
func TestStateSymlinks(t *testing.T) {
	t.Parallel()
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)
	a := r.Attach(r.Pod(t), "eth0")
	caps(a, 7)
	outside := t.TempDir()
	links := map[string]string{
		"host-local": filepath.Join(r.StateDir, "networks", list.Name, "last_reserved_ip.0"),
		"firewall":   filepath.Join(r.StateDir, "cnibox-firewall", list.Name, a.ContainerID+".eth0"),
		"portmap":    filepath.Join(r.StateDir, "cnibox-portmap", list.Name, a.ContainerID),
		"tuning":     filepath.Join(r.RunDir, "tuning", a.ContainerID+"_eth0.json"),
	}
	targets := map[string]string{}
	for name, link := range links {
		target := filepath.Join(outside, name)
		if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		targets[name] = target
	}
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	for name, target := range targets {
		if b, err := os.ReadFile(target); err != nil || string(b) != "keep me" {
			t.Errorf("%s wrote through its planted symlink: %q %v", name, b, err)
		}
	}
}
