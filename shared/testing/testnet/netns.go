// Package testnet is cnibox's integration test harness. Every test gets
// throwaway network namespaces — one playing the node, others the pods —
// so nothing touches the machine's own root netns, iptables, nftables or
// /var/lib/cni, and everything is removed when the test ends, failed or not.
// Applets are driven as runtimes drive them: through libcni and through the
// real cnitool, against the built binary behind symlinks.
package testnet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// NS is a network namespace made for one test, mounted at
// /run/netns/<Name> like "ip netns add" does, so ip(8), cnitool and the
// runtimes can all reach it by path.
type NS struct {
	Name string
	Path string
	t    testing.TB
}

// RequireRoot skips the test unless it runs as root: every integration
// test creates namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// NewNS creates a namespace with lo up and deletes it when the test ends.
// prefix says what it plays ("node", "pod", "outside").
func NewNS(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	skipHostTestInVM(t)
	name := "cnibox-" + prefix + "-" + randHex(4)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, Path: filepath.Join("/run/netns", name), t: t}
	t.Cleanup(n.Delete)
	n.MustRun("ip", "link", "set", "lo", "up")
	return n
}

// Delete removes the namespace now (to test a DEL whose netns is gone).
// Deleting twice is fine.
func (n *NS) Delete() {
	if _, err := os.Stat(n.Path); err != nil {
		return
	}
	if out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err != nil {
		n.t.Errorf("ip netns delete %s: %v: %s", n.Name, err, out)
	}
}

// Do runs f on an OS thread that is inside the namespace. Processes that f
// starts (libcni's plugin execs, for one) are born in the namespace too.
func (n *NS) Do(f func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return f() })
}

// Command returns a command that runs inside the namespace (through
// "ip netns exec", which also gives it a /sys of the namespace).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(name string, args ...string) string {
	n.t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// RunBatch runs commands one after the other in one shell inside the
// namespace and returns each one's combined output; it fails when one of
// them fails. One "ip netns exec" for all of them is much cheaper than
// one each when a caller runs many (snapshots).
func (n *NS) RunBatch(cmds [][]string) ([]string, error) {
	const mark = "@@cnibox-batch@@"
	var script strings.Builder
	for i, c := range cmds {
		fmt.Fprintf(&script, "echo '%s %d'; ", mark, i)
		// By path: a busybox sh (the VM's) runs its own applet for a
		// bare "ip" whatever PATH says.
		if p, err := exec.LookPath(c[0]); err == nil {
			c = append([]string{p}, c[1:]...)
		}
		for _, a := range c {
			script.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "' ")
		}
		fmt.Fprintf(&script, "2>&1; echo \"%s rc $?\"\n", mark)
	}
	out, err := n.Run("sh", "-c", script.String())
	if err != nil {
		return nil, err
	}
	outs := make([]string, len(cmds))
	done := make([]bool, len(cmds))
	cur := -1
	for _, part := range strings.Split(out, mark+" ")[1:] {
		head, body, _ := strings.Cut(part, "\n")
		if rc, ok := strings.CutPrefix(head, "rc "); ok {
			if cur < 0 {
				return nil, fmt.Errorf("batch in %s: an exit status before any command", n.Name)
			}
			if rc != "0" {
				return nil, fmt.Errorf("%s in %s: exit %s: %s", strings.Join(cmds[cur], " "), n.Name, rc, strings.TrimSpace(outs[cur]))
			}
			done[cur] = true
			continue
		}
		if _, err := fmt.Sscanf(head, "%d", &cur); err != nil || cur < 0 || cur >= len(cmds) {
			return nil, fmt.Errorf("batch in %s: cannot parse the output's marker %q", n.Name, head)
		}
		outs[cur] = body
	}
	for i, d := range done {
		if !d {
			return nil, fmt.Errorf("batch in %s: %s did not finish", n.Name, strings.Join(cmds[i], " "))
		}
	}
	return outs, nil
}

// Ping sends count pings to addr from inside the namespace and reports
// whether any answer came back.
func (n *NS) Ping(addr string) error {
	args := []string{"-c", "1", "-W", "2", addr}
	if strings.Contains(addr, ":") {
		args = append([]string{"-6"}, args...)
	}
	_, err := n.Run("ping", args...)
	return err
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
