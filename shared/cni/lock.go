package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// LockWait bounds how long an invocation waits for another invocation of
// the same attachment to finish before it answers "try again" (11).
// Another ADD or DEL of one attachment normally holds the lock for
// milliseconds; a dhcp ADD can hold it for the daemon's whole exchange.
var LockWait = 60 * time.Second

// AttachmentLock is the exclusive lock of one attachment (applet, network,
// container ID, interface name), held for a whole ADD, CHECK or DEL.
//
// Runtimes retry ADD after a timeout, sometimes while the first ADD is
// still running; without the lock the two would each take what the other
// made for its own (the same veth name, the same masquerade chain) and
// undo it on failure. With it they run one after the other, and the
// second finds the first's attachment complete.
//
// The lock is an abstract unix socket bound in the process's network
// namespace, the node's, where runtimes run plugins: binding is the
// acquisition, and the kernel releases it when the process ends, however
// it ends (SIGKILL included), with no file to go stale and no disk to
// write. A waiter connects to the holder's listening socket and sleeps in
// poll until the holder's end goes away, so it wakes as soon as the lock
// is free, not at the next tick of a timer. The applet's name is part of
// the key: bridge holds its lock while it runs host-local or dhcp with the
// same container ID and interface, as their own processes.
type AttachmentLock struct{ fd int }

// lockName is the abstract socket address of an attachment's lock.
func lockName(applet, network, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return "@cnibox/lock/" + applet + "/" + hex.EncodeToString(sum[:16])
}

// LockAttachment takes the attachment's lock, waiting up to wait for
// another holder to release it; then it fails with code 11. A lock that
// cannot be taken at all is a *LockUnavailableError.
func LockAttachment(applet, network, containerID, ifName string, wait time.Duration) (*AttachmentLock, error) {
	return lockAbstract(lockName(applet, network, containerID, ifName),
		"attachment "+network+"/"+containerID+"/"+ifName, wait)
}

// LockNamed takes the lock called name in the calling thread's network
// namespace (an abstract socket "@cnibox/NAME"), as LockAttachment does:
// for state shared by a node's attachments, such as a table's chains.
func LockNamed(name string, wait time.Duration) (*AttachmentLock, error) {
	return lockAbstract("@cnibox/"+name, name, wait)
}

func lockAbstract(name, what string, wait time.Duration) (*AttachmentLock, error) {
	addr := &unix.SockaddrUnix{Name: name}
	deadline := time.Now().Add(wait)
	var refusedSince time.Time
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, &LockUnavailableError{fmt.Errorf("socket: %w", err)}
		}
		if err = unix.Bind(fd, addr); err == nil {
			if err = unix.Listen(fd, 128); err == nil {
				return &AttachmentLock{fd: fd}, nil
			}
		}
		unix.Close(fd)
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, &LockUnavailableError{err}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, Errorf(ErrTryAgain, "%s: another invocation still holds its lock after %v (ss -xlp shows it: %s); try again",
				what, wait, addr.Name)
		}
		switch waitRelease(addr, left) {
		case heldByStranger:
			return nil, &LockUnavailableError{fmt.Errorf("%s is held by a process of another user, not by a cnibox invocation", addr.Name)}
		case refused:
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			} else if time.Since(refusedSince) > refusedGrace {
				return nil, &LockUnavailableError{fmt.Errorf("%s is bound but not listening: not a cnibox invocation", addr.Name)}
			}
		default:
			refusedSince = time.Time{}
		}
	}
}

// Abstract unix sockets have no permissions: any process in the node's
// netns can bind a lock's name. A holder that is not a cnibox invocation
// (another user's process, seen in SO_PEERCRED; or a socket that stays
// bound without listening, which a cnibox holder does for microseconds)
// must not stall ADDs and DELs until LockWait: the lock is then
// unavailable, and the dispatcher runs the verb without it.
var refusedGrace = time.Second

// What waitRelease saw.
const (
	released       = iota // the holder's socket closed, or the wait ended
	refused               // bound, not listening: look again shortly
	heldByStranger        // listening, but owned by another user
)

// LockUnavailableError says the lock could not be taken at all (a
// sandbox that forbids unix sockets, say), as opposed to being held: the
// dispatcher then runs the verb unlocked, with a warning, rather than
// failing every pod start.
type LockUnavailableError struct{ Err error }

func (e *LockUnavailableError) Error() string { return "attachment lock unavailable: " + e.Err.Error() }
func (e *LockUnavailableError) Unwrap() error { return e.Err }

// waitRelease returns when the holder of addr has (probably) released it,
// or after at most left.
func waitRelease(addr *unix.SockaddrUnix, left time.Duration) int {
	short := min(left, time.Millisecond)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		time.Sleep(short)
		return released
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, addr); err != nil {
		// ECONNREFUSED: released, or bound and not yet listening; EAGAIN:
		// its backlog is full. Either way, look again a little later.
		time.Sleep(min(left, 100*time.Microsecond))
		if errors.Is(err, unix.EAGAIN) {
			time.Sleep(short)
			return released
		}
		return refused
	}
	if cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil && cred.Uid != uint32(os.Geteuid()) {
		return heldByStranger
	}
	// Connected to the holder's backlog: when its socket closes, ours is
	// reset, which poll reports.
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	ms := int(left / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	for {
		_, err := unix.Poll(fds, ms)
		if !errors.Is(err, unix.EINTR) {
			return released
		}
	}
}

// Release frees the lock; releasing twice is fine.
func (l *AttachmentLock) Release() {
	if l == nil || l.fd < 0 {
		return
	}
	unix.Close(l.fd)
	l.fd = -1
}
