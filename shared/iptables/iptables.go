// Package iptables applies iptables rules in batches: one iptables-restore
// process per table and family instead of one iptables process per rule
// (a portmap DEL of the reference plugins runs ~15 of them), always with a
// bounded wait for the xtables lock so that a wedged lock makes the call
// fail with "try again" instead of hanging the plugin.
//
// Rules are written in iptables-save syntax, so the chains and rules cnibox
// creates are exactly the reference plugins' and a node can switch between
// the two implementations.
package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/shared/cni"
)

// Family selects iptables (IPv4) or ip6tables (IPv6).
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) tool(suffix string) string {
	if f == IPv6 {
		return "ip6tables" + suffix
	}
	return "iptables" + suffix
}

// Name is the family's command name, for messages: "iptables" or "ip6tables".
func (f Family) Name() string { return f.tool("") }

// LockWait bounds how long a call waits for the xtables lock.
var LockWait = 10 * time.Second

// WriteInProcess lets Apply write a batch over netlink when iptables is
// iptables-nft (see writeNFT). Tests turn it off to compare with
// iptables-restore.
var WriteInProcess = true

var restores atomic.Int64

// Restores is how many iptables-restore processes this process started:
// tests read it to prove that a path wrote in process.
func Restores() int64 { return restores.Load() }

var listings atomic.Int64

// Listings is how many "iptables -S" processes LoadChains started: tests
// read it to prove that a path read in process.
func Listings() int64 { return listings.Load() }

// Installed reports whether the family's iptables-restore is in PATH; it
// runs no process.
func Installed(f Family) bool {
	_, err := exec.LookPath(f.tool("-restore"))
	return err == nil
}

// Usable reports whether the family's iptables works here: the binaries
// exist and the filter table can be read.
func Usable(f Family) bool {
	if _, err := exec.LookPath(f.tool("-restore")); err != nil {
		return false
	}
	_, err := Save(f, "filter")
	return err == nil
}

// Save returns the table in iptables-save format; every table when table
// is "".
func Save(f Family, table string) (string, error) {
	cmd := exec.Command(f.tool("-save"))
	if table != "" {
		cmd.Args = append(cmd.Args, "-t", table)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s -t %s: %w: %s", f.tool("-save"), table, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Batch is the input of one iptables-restore --noflush run for one table.
type Batch struct {
	Table  string
	chains []string
	rules  []string
}

// NewBatch starts a batch for table ("nat", "filter", ...).
func NewBatch(table string) *Batch { return &Batch{Table: table} }

// Chain declares a user chain (":NAME - [0:0]"), creating it if missing.
// Even with --noflush, iptables-restore flushes a declared chain that
// exists, so declare only chains the batch rewrites whole (and never a
// built-in chain); add rules to a shared chain without declaring it.
func (b *Batch) Chain(name string) { b.chains = append(b.chains, name) }

// Rule appends a rule line, e.g. "-A CNI-FORWARD -s 10.0.0.2/32 -j ACCEPT",
// "-I FORWARD 1 ...", "-D ...", "-X CHAIN", "-F CHAIN".
func (b *Batch) Rule(format string, a ...any) {
	b.rules = append(b.rules, fmt.Sprintf(format, a...))
}

// Empty reports whether the batch would change nothing.
func (b *Batch) Empty() bool { return len(b.chains) == 0 && len(b.rules) == 0 }

// String renders the batch in iptables-restore syntax.
func (b *Batch) String() string {
	var s strings.Builder
	s.WriteString("*" + b.Table + "\n")
	for _, c := range b.chains {
		s.WriteString(":" + c + " - [0:0]\n")
	}
	for _, r := range b.rules {
		s.WriteString(r + "\n")
	}
	s.WriteString("COMMIT\n")
	return s.String()
}

// ErrLocked is returned (wrapped in a CNI "try again" error) when the
// xtables lock stayed busy for LockWait.
var ErrLocked = errors.New("xtables lock is busy")

// Apply runs the batches (one per table) in a single iptables-restore
// --noflush process. It is atomic per table: either every line of a
// table's batch applies or none does.
func Apply(f Family, batches ...*Batch) error {
	in, err := render(batches)
	if err != nil || in == "" {
		return err
	}
	if WriteInProcess && NFT(f) && writeNFT(f, batches) == nil {
		return nil
	}
	r := newRestore(f)
	r.start() // on this thread: in its netns, as callers expect
	return r.apply(in)
}

// render checks the batches and writes them in iptables-restore syntax;
// "" when there is nothing to do.
func render(batches []*Batch) (string, error) {
	var in strings.Builder
	for _, b := range batches {
		if b == nil || b.Empty() {
			continue
		}
		// One line is one rule: a line break inside a rule (from a
		// user-given condition, say) would smuggle a second rule, or a
		// COMMIT and another table, into iptables-restore.
		for _, line := range append(append([]string{}, b.chains...), b.rules...) {
			if strings.ContainsAny(line, "\n\r\x00") {
				return "", cni.ConfigError("iptables %s: refusing a rule with a line break or NUL: %q", b.Table, line)
			}
		}
		in.WriteString(b.String())
	}
	return in.String(), nil
}

// Restore is an iptables-restore --noflush process started before its
// input is known. Starting it (exec, dynamic linking, loading the xtables
// extensions) is most of its cost, so a caller that will need it starts it
// first and lets that overlap with its other work (bridge starts it while
// IPAM and the veth are made). It reads nothing until Apply; a Restore
// that is not needed after all must be closed.
type Restore struct {
	mu      sync.Mutex // Apply and Close may race when a caller gives up
	f       Family
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  bytes.Buffer
	err     error         // from starting it
	started chan struct{} // closed once cmd.Start returned
	done    bool
	lazy    bool // not started: Apply tries writing in process first
}

// StartRestore starts iptables-restore for the family in the calling
// thread's network namespace, as Apply does. It does not wait for the
// exec, which takes a millisecond or so: that happens on another goroutine,
// which enters the same netns first. With iptables-nft it starts nothing:
// Apply writes the batch in process, and runs iptables-restore only for a
// batch it cannot write.
func StartRestore(f Family) *Restore {
	r := newRestore(f)
	if WriteInProcess && NFT(f) {
		r.lazy = true
		return r
	}
	here, err := ns.GetCurrentNS()
	if err != nil {
		r.start()
		return r
	}
	go func() {
		defer here.Close()
		if err := here.Do(func(ns.NetNS) error { r.start(); return nil }); err != nil {
			select {
			case <-r.started:
			default: // entering the netns failed before start ran
				r.err = err
				close(r.started)
			}
		}
	}()
	return r
}

func newRestore(f Family) *Restore {
	r := &Restore{f: f, started: make(chan struct{})}
	wait := strconv.Itoa(max(1, int(LockWait/time.Second)))
	r.cmd = exec.Command(f.tool("-restore"), "--noflush", "-w", wait)
	r.cmd.Stderr = &r.stderr
	return r
}

func (r *Restore) start() {
	defer close(r.started)
	restores.Add(1)
	if r.stdin, r.err = r.cmd.StdinPipe(); r.err == nil {
		r.err = r.cmd.Start()
	}
}

// Apply hands the batches to the process and waits for it: what the
// package-level Apply does, minus the start.
func (r *Restore) Apply(batches ...*Batch) error {
	in, err := render(batches)
	if err != nil {
		r.Close()
		return err
	}
	if r.lazy {
		r.mu.Lock()
		if r.done {
			r.mu.Unlock()
			return fmt.Errorf("%s: already used", r.f.tool("-restore"))
		}
		if in == "" || writeNFT(r.f, batches) == nil {
			r.done = true
			r.mu.Unlock()
			return nil
		}
		r.lazy = false
		r.start()
		r.mu.Unlock()
	}
	return r.apply(in)
}

// Close ends a process that got no input; it applies nothing. Closing one
// that has run is a no-op.
func (r *Restore) Close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.done = true
	if r.lazy {
		return
	}
	<-r.started
	if r.err == nil {
		r.stdin.Close()
		_ = r.cmd.Wait()
	}
}

func (r *Restore) apply(in string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return fmt.Errorf("%s: already used", r.f.tool("-restore"))
	}
	r.done = true
	<-r.started
	if r.err != nil {
		return fmt.Errorf("%s --noflush: %w", r.f.tool("-restore"), r.err)
	}
	_, werr := io.WriteString(r.stdin, in)
	r.stdin.Close()
	if err := r.cmd.Wait(); err != nil {
		msg := strings.TrimSpace(r.stderr.String())
		if strings.Contains(msg, "holding the xtables lock") || strings.Contains(msg, "Another app is currently holding") {
			return cni.TryAgain("%s: %v (waited %v)", r.f.tool("-restore"), ErrLocked, LockWait)
		}
		return fmt.Errorf("%s --noflush: %w: %s\ninput:\n%s", r.f.tool("-restore"), err, msg, in)
	}
	if werr != nil {
		return fmt.Errorf("%s --noflush: write input: %w", r.f.tool("-restore"), werr)
	}
	return nil
}
