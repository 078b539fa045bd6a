package hostlocal

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// defaultLockTimeout bounds the wait for the network's lock. Holders keep
// it for well under a millisecond per operation; a lock busy for this long
// is wedged (a hung process, a stalled filesystem), and the runtime is
// better served by "try again" (code 11) than by a plugin that never
// returns. CNIBOX_HOSTLOCAL_LOCK_TIMEOUT (a Go duration) overrides it.
const defaultLockTimeout = 30 * time.Second

func lockTimeout() time.Duration {
	if s := os.Getenv("CNIBOX_HOSTLOCAL_LOCK_TIMEOUT"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			return d
		}
	}
	return defaultLockTimeout
}

// lockFile opens (creating it 0600, as the reference does) and flocks
// path exclusively. flock is what the reference uses on the same file, so
// the two plugins exclude each other, and the kernel drops it when a
// holder dies. The wait is bounded so that a wedged holder cannot hang us:
// after timeout it returns cni.TryAgain. The blocking flock runs on its own
// thread; on timeout we close the descriptor, so should that flock still
// succeed later, the lock goes with the last reference to the file, at once.
func lockFile(path string, timeout time.Duration) (*os.File, error) {
	// Never through a symlink (one planted there could make us create a
	// file anywhere): a symlink in its place is replaced by the file.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err == unix.ELOOP {
		if rerr := os.Remove(path); rerr == nil {
			fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
		return os.NewFile(uintptr(fd), path), nil
	}
	done := make(chan error, 1)
	go func() {
		for {
			err := unix.Flock(fd, unix.LOCK_EX)
			if err != unix.EINTR {
				done <- err
				return
			}
		}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			unix.Close(fd)
			return nil, &os.PathError{Op: "flock", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	case <-timer.C:
		unix.Close(fd)
		return nil, cni.TryAgain("lock %s: still held by another process after %v", path, timeout)
	}
}
