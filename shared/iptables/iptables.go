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
	"os/exec"
	"strconv"
	"strings"
	"time"

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
				return cni.ConfigError("iptables %s: refusing a rule with a line break or NUL: %q", b.Table, line)
			}
		}
		in.WriteString(b.String())
	}
	if in.Len() == 0 {
		return nil
	}
	wait := int(LockWait / time.Second)
	if wait < 1 {
		wait = 1
	}
	cmd := exec.Command(f.tool("-restore"), "--noflush", "-w", strconv.Itoa(wait))
	cmd.Stdin = strings.NewReader(in.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "holding the xtables lock") || strings.Contains(msg, "Another app is currently holding") {
			return cni.TryAgain("%s: %v (waited %v)", f.tool("-restore"), ErrLocked, LockWait)
		}
		return fmt.Errorf("%s --noflush: %w: %s\ninput:\n%s", f.tool("-restore"), err, msg, in.String())
	}
	return nil
}
