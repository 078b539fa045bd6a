// Package install puts cnibox into a CNI plugin directory: the binary
// first, then one entry per applet (see Entry: a tiny script of its own by
// default, or a symlink or hard link), and optionally a network list into a
// configuration directory last, each written under a temporary name and
// renamed into place. A runtime that lists or watches the directory (CRI-O
// watches it with inotify) never sees a half-written binary or an entry
// that runs nothing, and an existing file or link is replaced, never
// written through. Uninstall removes exactly what Install made; Purge the
// node state cnibox's applets leave.
package install

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// BinaryName is the name the binary itself gets in the plugin directory.
const BinaryName = "cnibox"

// Options says where and how to install.
type Options struct {
	Dir string
	// HostDir is Dir as the runtime sees it, when Install runs in a
	// container with the host's plugin directory mounted at Dir; applet
	// entries name the binary by this path. Empty means Dir.
	HostDir string
	// Symlink makes relative symlinks instead of applet entries, for a
	// directory that is bind-mounted at other paths; Hardlink hard links.
	// Both share the binary's inode with every name, so a cp over any name
	// overwrites the binary (see Entry).
	Symlink, Hardlink bool
	// Source is the binary to install; empty means the running one.
	Source string
	// Conflist, when set, is a network configuration file installed into
	// ConfDir after the plugins, under its own name.
	Conflist, ConfDir string
}

// Main is "cnibox install".
func Main(args []string, applets []string) int {
	fs := flag.NewFlagSet("cnibox install", flag.ContinueOnError)
	var opt Options
	fs.StringVar(&opt.Dir, "dir", "/opt/cni/bin", "CNI plugin directory to install into")
	fs.StringVar(&opt.HostDir, "host-dir", "", "the plugin directory as the runtime sees it, when --dir is a mount of it (default: --dir)")
	fs.BoolVar(&opt.Symlink, "symlink", false, "make relative symlinks instead of copy-proof applet entries (cp over a name then overwrites the binary)")
	fs.BoolVar(&opt.Hardlink, "hardlink", false, "make hard links instead of copy-proof applet entries (cp over a name then overwrites the binary)")
	fs.StringVar(&opt.Conflist, "conflist", "", "also install this network configuration file into --conf-dir, after the plugins")
	fs.StringVar(&opt.ConfDir, "conf-dir", "/etc/cni/net.d", "network configuration directory for --conflist")
	sleep := fs.Bool("sleep", false, "after installing, sleep until SIGTERM (a DaemonSet's main container; an init container exits)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: cnibox install [--dir DIR] [--host-dir DIR] [--symlink|--hardlink] [--conflist FILE [--conf-dir DIR]] [--sleep]\n\n"+
			"Copies this binary into DIR and makes one entry per applet name, atomically and\n"+
			"idempotently. By default each entry is a tiny script of its own (#!DIR/cnibox),\n"+
			"so a later 'cp' of other plugins over DIR replaces only those names.\n\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if opt.Symlink && opt.Hardlink {
		fmt.Fprintln(os.Stderr, "cnibox install: --symlink and --hardlink exclude each other")
		return 2
	}
	sig := make(chan os.Signal, 1)
	if *sleep { // before anything is printed: a SIGTERM right after must not kill us
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	}
	if err := Install(opt, applets); err != nil {
		fmt.Fprintf(os.Stderr, "cnibox install: %v\n", err)
		return 1
	}
	fmt.Printf("installed %s and %d applets into %s\n", BinaryName, len(applets), opt.Dir)
	if opt.Conflist != "" {
		fmt.Printf("installed %s into %s\n", filepath.Base(opt.Conflist), opt.ConfDir)
	}
	if *sleep {
		<-sig
	}
	return 0
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

// parseFlags parses a subcommand's flags as operators expect: --help
// prints the usage on stdout and exits 0, a bad flag or a stray argument
// exits 2. ok is false when the command should exit with code.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if slices.ContainsFunc(args, isHelp) {
		fs.SetOutput(os.Stdout)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

// Install copies the binary into opt.Dir and makes every applet name run it.
func Install(opt Options, applets []string) error {
	src := opt.Source
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running binary: %w", err)
		}
		src = exe
	}
	hostDir := opt.HostDir
	if hostDir == "" {
		hostDir = opt.Dir
	}
	hostDir, err := filepath.Abs(hostDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(opt.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", opt.Dir, err)
	}
	var conflist []byte
	if opt.Conflist != "" {
		// Read it first: a missing file must fail before anything changes.
		if conflist, err = os.ReadFile(opt.Conflist); err != nil {
			return fmt.Errorf("read the network configuration: %w", err)
		}
	}
	bin := filepath.Join(opt.Dir, BinaryName)
	if err := copyFile(src, bin); err != nil {
		return err
	}
	hostBin := filepath.Join(hostDir, BinaryName)
	for _, name := range applets {
		dst := filepath.Join(opt.Dir, name)
		switch {
		case opt.Symlink || opt.Hardlink:
			err = link(bin, dst, opt.Hardlink)
		default:
			err = writeFile(dst, Entry(hostBin, name), 0o755)
		}
		if err != nil {
			return err
		}
	}
	if err := syncDir(opt.Dir); err != nil {
		return err
	}
	if conflist != nil {
		if err := os.MkdirAll(opt.ConfDir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", opt.ConfDir, err)
		}
		if err := writeFile(filepath.Join(opt.ConfDir, filepath.Base(opt.Conflist)), conflist, 0o644); err != nil {
			return err
		}
		return syncDir(opt.ConfDir)
	}
	return nil
}

// writeFile puts data at dst through a temporary file and a rename, unless
// dst is a regular file that already holds exactly data (left untouched for
// watchers). A directory at dst is an error.
func writeFile(dst string, data []byte, mode os.FileMode) error {
	if fi, err := os.Lstat(dst); err == nil {
		if fi.IsDir() {
			return fmt.Errorf("install %s: it is a directory", dst)
		}
		if fi.Mode().IsRegular() && fi.Mode().Perm() == mode && fi.Size() == int64(len(data)) {
			if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
				return nil
			}
		}
	}
	return replace(dst, mode, func(w io.Writer) error { _, err := w.Write(data); return err })
}

// replace writes dst's new content through a temporary file in dst's
// directory, synced, then renamed into place.
func replace(dst string, mode os.FileMode, write func(io.Writer) error) error {
	tmp := tempName(dst)
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	err = write(out)
	if err == nil {
		err = out.Chmod(mode)
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

// copyFile writes src to dst through a temporary file in dst's directory
// and renames it into place, unless dst already is a regular file with the
// same bytes. Copying onto ourselves (reinstalling from the installed
// binary) works too: the old inode stays until the rename.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	return writeFile(dst, data, 0o755)
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
