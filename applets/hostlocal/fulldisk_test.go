package hostlocal_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// tinyTmpfs mounts a small tmpfs (64 KiB, 64 inodes) at a fresh
// directory, unmounted when the test ends.
func tinyTmpfs(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testnet.MountTmpfs(t, dir, "size=64k,nr_inodes=64,mode=0755")
	return dir
}

// TestDelOnFullDisk: DEL releases the attachment's reservation on a
// dataDir with no free block or inode left, in the three cases where
// it would otherwise rebuild the index (writing index.new): a
// reservation the reference made ("switch both ways": its ADD changed
// the directory after cnibox's), a network cnibox has never indexed
// (its first use by cnibox is this DEL), and the ordinary case of an
// index that is current. Before, DEL failed with 999 ("no space left on
// device") in the first two and the address stayed reserved.
func TestDelOnFullDisk(t *testing.T) {
	ref := testnet.RequireReference(t, "host-local")
	our := filepath.Join(testnet.BinDir(t), "host-local")
	for _, tc := range []struct {
		name string
		adds [][2]string // (plugin, container ID) in order
		del  string
	}{
		{"reference-after-cnibox", [][2]string{{our, "c1"}, {ref, "r1"}}, "c1"},
		{"reference-reservation", [][2]string{{our, "c1"}, {ref, "r1"}}, "r1"},
		{"first-use", [][2]string{{ref, "r1"}, {ref, "r2"}}, "r1"},
		{"index-current", [][2]string{{our, "c1"}, {our, "c2"}}, "c1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNetwork(t, "1.0.0")
			n.name = "full"
			n.anyMode = true
			n.dataDir = tinyTmpfs(t)
			ipam := `"ranges":[[{"subnet":"10.91.0.0/24"}]]`
			netns := testnet.NewNS(t, "pod").Path
			run := func(bin, cmd, id string) error {
				env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(bin)}
				_, err := execPlugin(t, bin, env, n.conf(ipam))
				return err
			}
			for _, a := range tc.adds {
				if err := run(a[0], "ADD", a[1]); err != nil {
					t.Fatalf("ADD %s: %v", a[1], err)
				}
			}
			before := n.files(t)
			testnet.FillUp(t, n.dataDir)
			if err := run(our, "DEL", tc.del); err != nil {
				t.Fatalf("DEL on a full disk: %v", err)
			}
			after := n.files(t)
			if len(after) != len(before)-1 {
				t.Fatalf("DEL on a full disk released %d reservations, want 1: before %v, after %v", len(before)-len(after), before, after)
			}
			for ip, owner := range after {
				if strings.HasPrefix(owner, tc.del) {
					t.Errorf("%s still holds %s", tc.del, ip)
				}
			}
			// Once space is back, the next ADD and DEL of cnibox and of
			// the reference agree with the files.
			os.Remove(filepath.Join(n.dataDir, "filler"))
			inodes, _ := filepath.Glob(filepath.Join(n.dataDir, "inode*"))
			for _, f := range inodes {
				os.Remove(f)
			}
			if err := run(our, "ADD", "c9"); err != nil {
				t.Fatalf("ADD after the disk has room again: %v", err)
			}
			if err := run(our, "DEL", "c9"); err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.adds {
				if a[1] != tc.del {
					if err := run(our, "DEL", a[1]); err != nil {
						t.Fatal(err)
					}
				}
			}
			if left := n.files(t); len(left) != 0 {
				t.Errorf("reservations left after every DEL: %v", left)
			}
		})
	}
}

// TestNoFollowSymlinks: symlinks planted in the network's directory and
// in the index's (last_reserved_ip.0 to a file of the node, lock and the
// stamp to files that do not exist yet) are never written through or
// created through: ADD and DEL replace them with their own files. Before,
// ADD wrote the address into the file last_reserved_ip.0 pointed at, and
// created the lock's target.
func TestNoFollowSymlinks(t *testing.T) {
	n := newNetwork(t, "1.0.0")
	our := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	outside := t.TempDir()
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(cmd, id string) {
		t.Helper()
		env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(our)}
		if _, err := execPlugin(t, our, env, n.conf(`"ranges":[[{"subnet":"10.92.0.0/24"}]]`)); err != nil {
			t.Fatal(err)
		}
	}
	plant := func(target, link string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(link), 0o755)
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	// The index exists after a first ADD; then every file gets a link.
	run("ADD", "c0")
	plant(precious, filepath.Join(n.dir(), "last_reserved_ip.0"))
	plant(filepath.Join(outside, "lock-target"), filepath.Join(n.dir(), "lock"))
	plant(filepath.Join(outside, "stamp-target"), filepath.Join(n.dataDir, ".cnibox", n.name, "stamp"))
	run("ADD", "c1")
	run("DEL", "c1")
	run("ADD", "c2")
	if b, _ := os.ReadFile(precious); string(b) != "keep me" {
		t.Errorf("a file a symlink pointed at was written: %q", b)
	}
	for _, f := range []string{"lock-target", "stamp-target"} {
		if _, err := os.Lstat(filepath.Join(outside, f)); err == nil {
			t.Errorf("%s was created through a symlink", f)
		}
	}
	for _, f := range []string{filepath.Join(n.dir(), "last_reserved_ip.0"), filepath.Join(n.dir(), "lock")} {
		if st, err := os.Lstat(f); err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s is not a regular file now: %v %v", f, st, err)
		}
	}
	// A reservation that is a symlink names nobody: it is not read.
	plant(precious, filepath.Join(n.dir(), "10.92.0.200"))
	run("DEL", "c2")
	run("DEL", "c0")
	if b, _ := os.ReadFile(precious); string(b) != "keep me" {
		t.Errorf("a file a symlink pointed at was written: %q", b)
	}
}

// TestIndexGoesWithLastAttachment: the index (.cnibox/<network>, and
// .cnibox itself when no other network has one) is removed with the
// network's last reservation; the reference's own files stay.
func TestIndexGoesWithLastAttachment(t *testing.T) {
	n := newNetwork(t, "1.0.0")
	our := filepath.Join(testnet.BinDir(t), "host-local")
	netns := testnet.NewNS(t, "pod").Path
	run := func(cmd, id string) {
		t.Helper()
		env := []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + filepath.Dir(our)}
		if _, err := execPlugin(t, our, env, n.conf(`"ranges":[[{"subnet":"10.93.0.0/24"}]]`)); err != nil {
			t.Fatal(err)
		}
	}
	run("ADD", "a")
	run("ADD", "b")
	run("DEL", "a")
	if _, err := os.Stat(filepath.Join(n.dataDir, ".cnibox", n.name, "index")); err != nil {
		t.Fatalf("index gone while an attachment is left: %v", err)
	}
	run("DEL", "b")
	if _, err := os.Lstat(filepath.Join(n.dataDir, ".cnibox")); err == nil {
		t.Errorf(".cnibox left after the last attachment's DEL")
	}
	if _, err := os.Stat(filepath.Join(n.dir(), "lock")); err != nil {
		t.Errorf("the reference's lock file went: %v", err)
	}
	run("ADD", "c")
	run("DEL", "c")
	if _, err := os.Lstat(filepath.Join(n.dataDir, ".cnibox")); err == nil {
		t.Errorf(".cnibox left after the last attachment's DEL")
	}
}
