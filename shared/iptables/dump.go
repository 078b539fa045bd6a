package iptables

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
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
// could both see a jump missing and both add it. The chains belong to one
// network namespace, and so does the lock: an abstract unix socket
// "@cnibox/iptables/NAME" (cni.LockNamed) bound in the calling thread's
// netns, so ADDs in other network namespaces (other nodes on one kernel,
// tests) never wait for each other, the kernel drops it when the process
// dies, and no file is left in /run. It waits for at most LockWait and
// then fails with "try again". A lock that cannot be taken at all (a
// sandbox without unix sockets) is skipped, as the attachment lock is.
// The returned func unlocks.
func Lock(name string) (unlock func(), err error) {
	l, err := cni.LockNamed("iptables/"+name, LockWait)
	var unavailable *cni.LockUnavailableError
	switch {
	case errors.As(err, &unavailable):
		return func() {}, nil
	case err != nil:
		return nil, err
	}
	return l.Release, nil
}

// CanList reports, as an error, whether the chain of the family's table
// can be listed: over netlink where iptables is iptables-nft (no process:
// STATUS asks this often), else with "iptables -S". A chain that does not
// exist is listed as empty.
func CanList(f Family, table, chain string) error {
	if NFT(f) {
		if _, err := ReadNFT(f, table, chain); err == nil {
			return nil
		}
	}
	_, err := LoadChains(f, table, chain)
	return err
}

// LoadChains reads only the named chains of a table, one "iptables -S
// CHAIN" each, run concurrently. On a busy table (kube-proxy's tens of
// thousands of rules) iptables-save takes seconds with the nf_tables
// backend, while listing a small chain takes milliseconds. Chains that do
// not exist are simply absent from the result.
func LoadChains(f Family, table string, chains ...string) (*Table, error) {
	t := &Table{Name: table, chains: map[string]bool{}, rules: map[string][]string{}}
	// Every process is started from the calling thread, so that they run
	// in its network namespace, and then waited for together.
	cmds := make([]*exec.Cmd, len(chains))
	outs := make([]bytes.Buffer, len(chains))
	errOuts := make([]bytes.Buffer, len(chains))
	wait := strconv.Itoa(max(1, int(LockWait/time.Second)))
	var errs []error
	for i, c := range chains {
		cmds[i] = exec.Command(f.tool(""), "-w", wait, "-t", table, "-S", c)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &errOuts[i]
		listings.Add(1)
		if err := cmds[i].Start(); err != nil {
			errs = append(errs, fmt.Errorf("%s -t %s -S %s: %w", f.tool(""), table, c, err))
			cmds[i] = nil
		}
	}
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		if err := cmd.Wait(); err != nil {
			msg := strings.TrimSpace(errOuts[i].String())
			var exit *exec.ExitError
			if errors.As(err, &exit) && exit.ExitCode() == 1 &&
				(strings.Contains(msg, "No chain/target/match") || strings.Contains(msg, "does not exist") ||
					// iptables-nft 1.8.9 says this of a chain that does not exist.
					strings.Contains(msg, "is incompatible, use 'nft' tool")) {
				outs[i].Reset() // no such chain
				continue
			}
			errs = append(errs, fmt.Errorf("%s -t %s -S %s: %w: %s", f.tool(""), table, chains[i], err, msg))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i := range outs {
		for _, line := range strings.Split(outs[i].String(), "\n") {
			switch {
			case strings.HasPrefix(line, "-N "), strings.HasPrefix(line, "-P "):
				name, _, _ := strings.Cut(line[3:], " ")
				if !t.chains[name] {
					t.chains[name] = true
					t.order = append(t.order, name)
				}
			case strings.HasPrefix(line, "-A "):
				chain, rule, _ := strings.Cut(line[3:], " ")
				t.rules[chain] = append(t.rules[chain], rule)
			}
		}
	}
	return t, nil
}
