package cni

import (
	"io"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/logging"
)

// DefaultTimeout bounds one plugin invocation when CNIBOX_TIMEOUT is not
// set. Every wait inside cnibox is bounded already (locks, iptables, the
// dhcp daemon); this is the last line: a plugin that is still running
// after it (a wedged kernel call, a hung helper process) answers "try
// again" (11) and exits instead of hanging the runtime, which would
// otherwise kill it without a word. What it did so far is undone by the
// runtime's DEL or GC, as after any crash.
const DefaultTimeout = 3 * time.Minute

// invocationTimeout reads CNIBOX_TIMEOUT: a Go duration ("30s"), "0" for
// no limit; empty or invalid means DefaultTimeout.
func invocationTimeout(getenv Env) time.Duration {
	s := getenv("CNIBOX_TIMEOUT")
	if s == "" {
		return DefaultTimeout
	}
	if s == "0" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return DefaultTimeout
	}
	return d
}

// deadlineWriter is stdout for a plugin process with a deadline: the
// result and the timeout's error never interleave, and once the timeout
// has spoken nothing else is written.
type deadlineWriter struct {
	mu      sync.Mutex
	w       io.Writer
	written bool
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.written = true
	return d.w.Write(p)
}

// expire writes the timeout error (unless a result or error is already
// out) and ends the process with exit code 1.
func (d *deadlineWriter) expire(a *Applet, getenv Env, limit time.Duration, stderr io.Writer, exit func(int)) {
	d.mu.Lock()
	if d.written {
		d.mu.Unlock()
		return // the answer is out; the process is about to exit
	}
	e := Errorf(types.ErrTryAgainLater, "%s %s did not finish within %v (CNIBOX_TIMEOUT): gave up; DEL or GC removes what it did",
		a.Name, getenv("CNI_COMMAND"), limit)
	log := logging.New(a.Name, stderr)
	log.Errorf("%v", e)
	log.Close()
	writeError(d.w, e, "")
	exit(1) // holds the lock: nothing else is written
}

// runWithDeadline is Run under the invocation's time limit.
func runWithDeadline(a *Applet, getenv Env, stdin io.Reader, stdout, stderr io.Writer, exit func(int)) int {
	limit := invocationTimeout(getenv)
	if limit == 0 {
		return Run(a, getenv, stdin, stdout, stderr)
	}
	out := &deadlineWriter{w: stdout}
	timer := time.AfterFunc(limit, func() { out.expire(a, getenv, limit, stderr, exit) })
	defer timer.Stop()
	return Run(a, getenv, stdin, out, stderr)
}
