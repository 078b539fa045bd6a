package hostlocal

import (
	"errors"
	"math/rand/v2"
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
// path exclusively, polling with a growing, jittered backoff so that a
// wedged holder cannot hang us: after timeout it returns cni.TryAgain.
// flock is what the reference uses on the same file, so the two plugins
// exclude each other, and the kernel drops it when a holder dies.
func lockFile(path string, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	wait := 100 * time.Microsecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, err
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, cni.TryAgain("lock %s: still held by another process after %v", path, timeout)
		}
		time.Sleep(wait/2 + rand.N(wait))
		if wait < 8*time.Millisecond {
			wait *= 2
		}
	}
}
