package cni_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// inFreshNetns runs f on a thread in a new network namespace, so that the
// abstract socket names of the locks are the test's own. f gets the
// namespace for goroutines it starts (see inNetns).
func inFreshNetns(t testing.TB, f func(netns.NsHandle)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.New()
		if err != nil {
			t.Errorf("new netns: %v", err)
			return
		}
		defer h.Close()
		f(h)
	}()
	<-done
}

// inNetns runs f on a goroutine whose thread is in h, and waits for it.
func inNetns(h netns.NsHandle, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(h); err != nil {
			panic(err)
		}
		f()
	}()
	<-done
}

// TestAttachmentLockExclusive: while one invocation holds an attachment's
// lock, another of the same attachment waits and then fails with 11;
// other attachments, other applets and the released lock are free.
func TestAttachmentLockExclusive(t *testing.T) {
	inFreshNetns(t, func(h netns.NsHandle) {
		l, err := cni.LockAttachment("bridge", "net", "c1", "eth0", time.Second)
		if err != nil {
			t.Fatalf("first lock: %v", err)
		}
		_, err = cni.LockAttachment("bridge", "net", "c1", "eth0", 50*time.Millisecond)
		e, ok := err.(*types.Error)
		if !ok || e.Code != cni.ErrTryAgain {
			t.Fatalf("second lock of a held attachment: %v, want code 11", err)
		}
		for _, other := range [][4]string{
			{"host-local", "net", "c1", "eth0"}, // a delegate of the holder
			{"bridge", "net", "c2", "eth0"},
			{"bridge", "net", "c1", "net1"},
			{"bridge", "net2", "c1", "eth0"},
		} {
			o, err := cni.LockAttachment(other[0], other[1], other[2], other[3], 0)
			if err != nil {
				t.Errorf("lock %v while bridge/net/c1/eth0 is held: %v", other, err)
				continue
			}
			o.Release()
		}
		l.Release()
		l.Release()
		again, err := cni.LockAttachment("bridge", "net", "c1", "eth0", 0)
		if err != nil {
			t.Fatalf("lock after release: %v", err)
		}
		again.Release()
	})
}

// TestAttachmentLockSerializes: goroutines taking one lock never overlap,
// and a waiter gets the lock soon after it is released (woken by the
// holder's socket closing, not a long sleep).
func TestAttachmentLockSerializes(t *testing.T) {
	inFreshNetns(t, func(h netns.NsHandle) {
		var inside, overlaps, done atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go inNetns(h, func() {
				defer wg.Done()
				for j := 0; j < 20; j++ {
					l, err := cni.LockAttachment("ptp", "net", "c1", "eth0", 10*time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					time.Sleep(50 * time.Microsecond)
					inside.Add(-1)
					done.Add(1)
					l.Release()
				}
			})
		}
		wg.Wait()
		if overlaps.Load() != 0 {
			t.Errorf("%d times two holders at once", overlaps.Load())
		}
		if done.Load() != 160 {
			t.Errorf("%d of 160 critical sections ran", done.Load())
		}
	})
}

// TestAttachmentLockKilledHolder: a holder killed with SIGKILL releases
// the lock (the kernel closes its socket), and the waiter proceeds.
func TestAttachmentLockKilledHolder(t *testing.T) {
	if os.Getenv("CNIBOX_LOCK_HOLDER") != "" {
		l, err := cni.LockAttachment("bridge", "net", "c1", "eth0", time.Second)
		if err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		l.Release()
		os.Exit(0)
	}
	inFreshNetns(t, func(h netns.NsHandle) {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestAttachmentLockKilledHolder$")
		cmd.Env = append(os.Environ(), "CNIBOX_LOCK_HOLDER=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "held") {
			t.Fatalf("holder did not take the lock: %q %v", buf, err)
		}
		if _, err := cni.LockAttachment("bridge", "net", "c1", "eth0", 0); err == nil {
			t.Fatal("lock taken while the other process holds it")
		}
		go func() {
			time.Sleep(20 * time.Millisecond)
			_ = cmd.Process.Kill()
		}()
		l, err := cni.LockAttachment("bridge", "net", "c1", "eth0", 10*time.Second)
		_ = cmd.Wait()
		if err != nil {
			t.Fatalf("lock after the holder was killed: %v", err)
		}
		l.Release()
	})
}

// TestAttachmentLockStranger: abstract sockets have no permissions, so
// any user's process in the node's netns can bind a lock's name. Such a
// squatter (listening, as another user; or only bound, never listening)
// does not stall the invocation until LockWait: the lock is reported
// unavailable (after refusedGrace for one that never listens), and the
// dispatcher runs unlocked.
func TestAttachmentLockStranger(t *testing.T) {
	if name := os.Getenv("CNIBOX_LOCK_SQUATTER"); name != "" {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrUnix{Name: name})
		}
		if err == nil && os.Getenv("CNIBOX_LOCK_SQUATTER_LISTEN") != "" {
			err = unix.Listen(fd, 1)
		}
		if err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	// The test binary, where another user can run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "cni.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	defer cni.SetRefusedGrace(100 * time.Millisecond)()
	for _, c := range []struct {
		name   string
		listen bool
		uid    uint32
	}{{"another user listening", true, 65534}, {"bound, not listening", false, 0}} {
		t.Run(c.name, func(t *testing.T) {
			inFreshNetns(t, func(netns.NsHandle) {
				name := cni.LockName("bridge", "net", "c1", "eth0")
				cmd := exec.Command(bin, "-test.run", "^TestAttachmentLockStranger$")
				cmd.Env = append(os.Environ(), "CNIBOX_LOCK_SQUATTER="+name)
				if c.listen {
					cmd.Env = append(cmd.Env, "CNIBOX_LOCK_SQUATTER_LISTEN=1")
				}
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.uid, Gid: c.uid}}
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
				buf := make([]byte, 5)
				if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "held") {
					t.Fatalf("squatter did not bind %s: %q %v", name, buf, err)
				}
				// Waiting the whole 30 s would end in code 11 instead.
				_, err = cni.LockAttachment("bridge", "net", "c1", "eth0", 30*time.Second)
				var unavailable *cni.LockUnavailableError
				if !errors.As(err, &unavailable) {
					t.Fatalf("lock squatted by a stranger: %v, want LockUnavailableError", err)
				}
			})
		})
	}
}

// BenchmarkAttachmentLock is what the lock adds to every ADD, CHECK and
// DEL when nobody else holds it: a socket, a bind, a listen and a close.
//
//	go test -run '^$' -bench AttachmentLock ./shared/cni/
func BenchmarkAttachmentLock(b *testing.B) {
	inFreshNetns(b, func(h netns.NsHandle) {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			l, err := cni.LockAttachment("bridge", "net", "0123456789abcdef0123456789abcdef", "eth0", time.Second)
			if err != nil {
				b.Fatal(err)
			}
			l.Release()
		}
	})
}

// BenchmarkAttachmentLockHandoff: how long a waiter (asleep in poll on
// the holder's socket) takes to get the lock once its holder releases it.
// ns/op includes the set-up of each round; µs-handoff is the mean hand-off.
func BenchmarkAttachmentLockHandoff(b *testing.B) {
	inFreshNetns(b, func(h netns.NsHandle) {
		var total time.Duration
		for i := 0; i < b.N; i++ {
			l, err := cni.LockAttachment("bridge", "net", "c", "eth0", time.Second)
			if err != nil {
				b.Fatal(err)
			}
			got := make(chan time.Time)
			go inNetns(h, func() {
				w, err := cni.LockAttachment("bridge", "net", "c", "eth0", 10*time.Second)
				if err != nil {
					b.Error(err)
				}
				got <- time.Now()
				w.Release()
			})
			time.Sleep(200 * time.Microsecond) // the waiter is in poll
			released := time.Now()
			l.Release()
			total += (<-got).Sub(released)
		}
		b.ReportMetric(float64(total.Microseconds())/float64(b.N), "µs-handoff")
	})
}
