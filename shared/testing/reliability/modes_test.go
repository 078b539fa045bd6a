package reliability

import (
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestStateModes: after an ADD of the default chain (with a port
// mapping, a bandwidth limit and a MAC) every state file cnibox wrote is
// 0600 and no state directory is writable by group or others: the
// reservations, firewall and portmap records and tuning backups name
// containers and addresses, and nobody but root may change them.
func TestStateModes(t *testing.T) {
	t.Parallel()
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)
	a := r.Attach(r.Pod(t), "eth0")
	caps(a, 7)
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	files := 0
	err := filepath.WalkDir(r.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == r.StateDir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(r.StateDir, path)
		switch perm := info.Mode().Perm(); {
		case d.IsDir() && perm&0o022 != 0:
			t.Errorf("%s/: mode %v is writable by group or others", rel, perm)
		case !d.IsDir() && perm&0o077 != 0:
			t.Errorf("%s: mode %v, want 0600", rel, perm)
		case !d.IsDir():
			files++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 4 {
		t.Errorf("only %d state files: the test looked at too little", files)
	}
	if err := r.Del(list, a); err != nil {
		t.Errorf("DEL: %v", err)
	}
}
