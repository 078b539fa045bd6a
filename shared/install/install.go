// Package install puts cnibox into a CNI plugin directory: the binary
// first, then one link per applet, each written under a temporary name and
// renamed into place. A runtime that lists or watches the directory (CRI-O
// watches it with inotify) never sees a half-written binary or a link that
// points at nothing, and an existing file or link is replaced, never
// written through: "cp cnibox /opt/cni/bin/bridge" over a symlink would
// overwrite the binary itself.
package install

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// BinaryName is the name the binary itself gets in the plugin directory.
const BinaryName = "cnibox"

// Options says where and how to install.
type Options struct {
	Dir string
	// Hardlink makes hard links instead of relative symlinks, for runtimes
	// or mounts that do not follow symlinks.
	Hardlink bool
	// Source is the binary to install; empty means the running one.
	Source string
}

// Main is "cnibox install".
func Main(args []string, applets []string) int {
	fs := flag.NewFlagSet("cnibox install", flag.ContinueOnError)
	dir := fs.String("dir", "/opt/cni/bin", "CNI plugin directory to install into")
	hard := fs.Bool("hardlink", false, "make hard links instead of relative symlinks")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cnibox install: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := Install(Options{Dir: *dir, Hardlink: *hard}, applets); err != nil {
		fmt.Fprintf(os.Stderr, "cnibox install: %v\n", err)
		return 1
	}
	fmt.Printf("installed %s and %d applets into %s\n", BinaryName, len(applets), *dir)
	return 0
}

// Install copies the binary into opt.Dir and links every applet name to it.
func Install(opt Options, applets []string) error {
	src := opt.Source
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running binary: %w", err)
		}
		src = exe
	}
	if err := os.MkdirAll(opt.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", opt.Dir, err)
	}
	bin := filepath.Join(opt.Dir, BinaryName)
	if err := copyFile(src, bin); err != nil {
		return err
	}
	for _, name := range applets {
		dst := filepath.Join(opt.Dir, name)
		if err := link(bin, dst, opt.Hardlink); err != nil {
			return err
		}
	}
	return syncDir(opt.Dir)
}

// copyFile writes src to dst through a temporary file in dst's directory
// and renames it into place. Copying onto ourselves (reinstalling from the
// installed binary) works too: the old inode stays until the rename.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	tmp := tempName(dst)
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(0o755)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}

// link points dst at bin: a relative symlink ("bridge -> cnibox"), so the
// directory still works when bind-mounted elsewhere, or a hard link.
func link(bin, dst string, hard bool) error {
	if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
		return fmt.Errorf("link %s: it is a directory", dst)
	}
	if !hard {
		if target, err := os.Readlink(dst); err == nil && target == filepath.Base(bin) {
			return nil // already right; leave it untouched for watchers
		}
	}
	tmp := tempName(dst)
	var err error
	if hard {
		err = os.Link(bin, tmp)
	} else {
		err = os.Symlink(filepath.Base(bin), tmp)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	// rename(2) does nothing when both names are already links to the same
	// inode, so the temporary name may still exist either way.
	os.Remove(tmp)
	if err != nil {
		return fmt.Errorf("link %s: %w", dst, err)
	}
	return nil
}

func tempName(dst string) string {
	return filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".cnibox-tmp-"+
		strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
