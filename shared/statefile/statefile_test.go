package statefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNoFollow: Write replaces a symlink at the path with a file and
// leaves its target alone; Read refuses a symlink; WriteAtomic replaces
// the link, not its target.
func TestNoFollow(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	for _, write := range []func(string, []byte) error{
		func(p string, b []byte) error { return Write(p, b, 0o600) },
		WriteAtomic,
	} {
		link := filepath.Join(dir, "state", "rec")
		os.MkdirAll(filepath.Dir(link), 0o700)
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(link); !errors.Is(err, unix.ELOOP) {
			t.Errorf("Read of a symlink: %v, want ELOOP", err)
		}
		if err := write(link, []byte("new")); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(target); string(b) != "keep" {
			t.Errorf("the link's target was written: %q", b)
		}
		if b, err := Read(link); err != nil || string(b) != "new" {
			t.Errorf("Read after Write: %q %v", b, err)
		}
	}
}

// TestWriteMakesDirRemoveTakesIt: Write makes the directories it needs;
// Remove takes the emptied ones with the last file, and no more.
func TestWriteMakesDirRemoveTakesIt(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "s", "net", "a"), filepath.Join(root, "s", "net", "b")
	for _, p := range []string{a, b} {
		if err := Write(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	Remove(a, 2)
	if _, err := os.Stat(b); err != nil {
		t.Fatalf("Remove took a sibling: %v", err)
	}
	Remove(b, 2)
	if _, err := os.Stat(filepath.Join(root, "s")); err == nil {
		t.Errorf("emptied directories stayed")
	}
	if _, err := os.Stat(root); err != nil {
		t.Errorf("Remove went above its parents: %v", err)
	}
}

func TestName(t *testing.T) {
	short, long := "abc", strings.Repeat("x", 300)
	if Name(short, 255) != short {
		t.Errorf("short name changed")
	}
	if n := Name(long, 255); len(n) != 33 || n[0] != '#' || n == Name(long+"y", 255) {
		t.Errorf("long name %q", n)
	}
}
