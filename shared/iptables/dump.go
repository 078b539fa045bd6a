package iptables

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/cnibox/cnibox/shared/cni"
)

// Dump is one family's ruleset as iptables-save prints it, by table.
// Reading it costs one process whatever the number of chains, so an
// applet reads the state once per ADD/DEL instead of one "iptables -C"
// per rule.
type Dump map[string]*Table

// Table is one table of a Dump.
type Table struct {
	Name   string
	chains map[string]bool
	order  []string
	rules  map[string][]string
}

// HasChain reports whether the table has the chain (built-in or user).
func (t *Table) HasChain(name string) bool { return t != nil && t.chains[name] }

// Chains returns the table's chain names in iptables-save order.
func (t *Table) Chains() []string {
	if t == nil {
		return nil
	}
	return t.order
}

// Rules returns the chain's rules in iptables-save's canonical form,
// without the leading "-A CHAIN " (e.g. `-s 10.0.0.0/24 -p tcp -m tcp
// --dport 80 -j DNAT --to-destination 10.0.0.2:80`). A rule string can be
// given back as is to a Batch ("-D CHAIN " + rule).
func (t *Table) Rules(chain string) []string {
	if t == nil {
		return nil
	}
	return t.rules[chain]
}

// Load reads the family's tables with one iptables-save run (all tables
// when none are named, which is still one process).
func Load(f Family, tables ...string) (Dump, error) {
	var out string
	var err error
	if len(tables) == 1 {
		out, err = Save(f, tables[0])
	} else {
		out, err = Save(f, "")
	}
	if err != nil {
		return nil, err
	}
	return ParseDump(out), nil
}

// ParseDump parses iptables-save output.
func ParseDump(s string) Dump {
	d := Dump{}
	var t *Table
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			t = &Table{Name: line[1:], chains: map[string]bool{}, rules: map[string][]string{}}
			d[t.Name] = t
		case t == nil:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			t.chains[name] = true
			t.order = append(t.order, name)
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			t.rules[chain] = append(t.rules[chain], rule)
		}
	}
	return d
}

// Jumps reports whether rule ends in "-j target" (or "-g target").
func Jumps(rule, target string) bool {
	return strings.HasSuffix(rule, " -j "+target) || strings.HasSuffix(rule, " -g "+target) ||
		rule == "-j "+target || rule == "-g "+target
}

// Lock serializes cnibox's own read-modify-write of the shared chains of
// a table (read the dump, decide, apply): without it two concurrent ADDs
// could both see a jump missing and both add it. It waits at most
// LockWait and then fails with "try again". The returned func unlocks.
func Lock(name string) (unlock func(), err error) {
	dir := "/run/cnibox"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	file, err := os.OpenFile(dir+"/"+name+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	deadline := time.Now().Add(LockWait)
	for {
		err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { file.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK || time.Now().After(deadline) {
			file.Close()
			if err == syscall.EWOULDBLOCK {
				return nil, cni.TryAgain("lock %s: still busy after %v", name, LockWait)
			}
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
