// Package statefile reads and writes the small state files applets keep
// under their data directories (records, backups, leases). It never
// follows a symbolic link in the file's own name (O_NOFOLLOW): a link
// planted there, pointing at any file of the node, is replaced, never
// written through. The directories above are the administrator's (a
// dataDir may well live behind a symlink) and are used as they resolve.
//
// Writers create missing directories (0700) and retry when a concurrent
// Remove took an emptied directory away between the two steps, so that
// Remove can delete a directory with its last file.
package statefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// Read returns the file's contents; a symlink is refused (ELOOP).
func Read(path string) ([]byte, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Open opens path for reading without following a symlink in its name.
func Open(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
}

// Write writes data to path (mode perm), creating the directory (0700)
// when it is missing. A symlink at path is removed and a plain file made
// in its place.
func Write(path string, data []byte, perm fs.FileMode) error {
	for try := 0; ; try++ {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, perm)
		switch {
		case err == nil:
			_, err = f.Write(data)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		case try >= 3:
			return err
		case errors.Is(err, unix.ELOOP):
			if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				return fmt.Errorf("%w (and removing the symlink there: %v)", err, rerr)
			}
		case errors.Is(err, fs.ErrNotExist):
			if merr := os.MkdirAll(filepath.Dir(path), 0o700); merr != nil {
				return merr
			}
		default:
			return err
		}
	}
}

// WriteAtomic writes data to path through a temporary file beside it
// (O_EXCL: never through a symlink) renamed over path (which replaces a
// symlink, not its target): a crash leaves the old file or the new one.
func WriteAtomic(path string, data []byte) error {
	for try := 0; ; try++ {
		err := writeAtomic(path, data)
		if err == nil || try >= 3 || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if merr := os.MkdirAll(filepath.Dir(path), 0o700); merr != nil {
			return merr
		}
	}
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// Remove deletes path (a missing file is fine) and then up to parents of
// the directories above it, each only when it is empty: state
// directories go with their last file. Unlinking needs no free space.
func Remove(path string, parents int) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	for d := filepath.Dir(path); parents > 0; parents, d = parents-1, filepath.Dir(d) {
		if os.Remove(d) != nil { // not empty (or gone): stop
			break
		}
	}
	return err
}

// Name is s as one file name: itself when it fits (at most max bytes),
// else "#" and 32 hex digits of its SHA-256 (cni.HashField).
func Name(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return cni.HashField(s)
}
