package install

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// An applet entry is what "cnibox install" puts under each plugin name by
// default: a tiny script of its own whose interpreter is the cnibox binary,
//
//	#!/opt/cni/bin/cnibox
//	# cnibox applet entry: ...
//
// The kernel runs it as "/opt/cni/bin/cnibox /opt/cni/bin/bridge", and
// cnibox picks the applet from that path. Unlike a symlink or a hard link
// it shares nothing with the binary: "cp /usr/lib/cni/* /opt/cni/bin/"
// (or cp -a, or an installer's cp of one plugin) overwrites that name's own
// few bytes, leaving the binary and every other name working, exactly as
// with the reference's one file per plugin. Through a symlink cp writes
// into the binary itself, and afterwards every name runs the last file
// copied.
//
// The price is an absolute path: the interpreter is where the binary is as
// the runtime sees it (Options.HostDir when installing through a mount). A
// directory that is bind-mounted to another path must use symlinks.
const entryMarker = "# cnibox applet entry"

// entryMax bounds what is read of a file to recognise an entry; the kernel
// reads at most 256 bytes of a script's first line.
const entryMax = 512

// Entry returns the entry for applet whose binary is at bin (an absolute
// path as the runtime sees it).
func Entry(bin, applet string) []byte {
	return []byte("#!" + bin + "\n" + entryMarker + ": runs cnibox's " + applet +
		" applet; 'cnibox uninstall' removes it, 'cnibox install' rewrites it\n")
}

// EntryInterpreter returns the binary an applet entry at path runs, or ""
// when path is not a cnibox applet entry.
func EntryInterpreter(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, entryMax+1)
	n, _ := io.ReadFull(f, buf)
	return entryInterpreter(buf[:n])
}

func entryInterpreter(b []byte) string {
	if len(b) > entryMax || !bytes.HasPrefix(b, []byte("#!")) {
		return ""
	}
	first, rest, ok := bytes.Cut(b[2:], []byte("\n"))
	if !ok || !bytes.HasPrefix(rest, []byte(entryMarker)) {
		return ""
	}
	interp := strings.TrimSpace(string(first))
	if filepath.Base(interp) != BinaryName {
		return ""
	}
	return interp
}

// Kind says what a name in a plugin directory is, as far as cnibox is
// concerned.
type Kind int

const (
	Missing  Kind = iota
	Binary        // the cnibox binary itself (BinaryName)
	Script        // an applet entry (#! cnibox)
	Symlink       // a symlink to the directory's cnibox
	Hardlink      // another name of the cnibox binary's inode
	Foreign       // anything else: a reference plugin, a clobbered entry
)

func (k Kind) String() string {
	return [...]string{"missing", "binary", "entry", "symlink", "hardlink", "foreign"}[k]
}

// Inspect classifies dir/name.
func Inspect(dir, name string) Kind {
	p := filepath.Join(dir, name)
	fi, err := os.Lstat(p)
	if err != nil {
		return Missing
	}
	if name == BinaryName {
		if fi.Mode().IsRegular() {
			return Binary
		}
		return Foreign
	}
	bin, binErr := os.Lstat(filepath.Join(dir, BinaryName))
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err == nil && filepath.Base(target) == BinaryName {
			if t, err := os.Stat(p); err == nil && binErr == nil && os.SameFile(t, bin) {
				return Symlink
			}
		}
		return Foreign
	case !fi.Mode().IsRegular():
		return Foreign
	case binErr == nil && os.SameFile(fi, bin):
		return Hardlink
	case fi.Size() <= entryMax && EntryInterpreter(p) != "":
		return Script
	}
	return Foreign
}

// Ours reports whether dir/name belongs to a cnibox install (and so
// "cnibox uninstall" removes it).
func Ours(k Kind) bool { return k == Binary || k == Script || k == Symlink || k == Hardlink }
