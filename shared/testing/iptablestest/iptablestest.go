// Package iptablestest holds what the tests of the iptables-nft netlink
// paths (firewall, portmap, ipmasq) share: they run a netlink path and the
// iptables path it replaces on real nodes and compare what iptables-save
// prints. For tests only.
package iptablestest

import (
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// NeedNFT skips the test unless iptables and ip6tables here are
// iptables-nft.
func NeedNFT(t testing.TB) {
	t.Helper()
	if !iptables.NFT(iptables.IPv4) || !iptables.NFT(iptables.IPv6) {
		t.Skip("iptables here is not iptables-nft")
	}
}

// Want picks want4 or want6 by family.
func Want(f iptables.Family, want4, want6 bool) bool {
	if f == iptables.IPv6 {
		return want6
	}
	return want4
}

// Text prints a planned batch; "(none)" when nothing was planned.
func Text(b *iptables.Batch) string {
	if b == nil {
		return "(none)\n"
	}
	return b.String()
}

// Save returns what iptables-save and ip6tables-save print in n, without
// their comment lines (which carry the time).
func Save(n *testnet.NS) string {
	var out []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(n.MustRun(tool), "\n") {
			if !strings.HasPrefix(line, "#") {
				out = append(out, line)
			}
		}
	}
	return strings.Join(out, "\n")
}

// Twins are two nodes built alike: the iptables path runs in A, the
// netlink path in B.
type Twins struct{ A, B *testnet.NS }

// NewTwins makes two node netns.
func NewTwins(t testing.TB) *Twins {
	t.Helper()
	return &Twins{testnet.NewNS(t, "node"), testnet.NewNS(t, "node")}
}

// Run runs a command in both nodes.
func (tw *Twins) Run(cmd ...string) {
	tw.A.MustRun(cmd[0], cmd[1:]...)
	tw.B.MustRun(cmd[0], cmd[1:]...)
}

// Do runs f in both nodes; an error fails the test.
func (tw *Twins) Do(t testing.TB, f func() error) {
	t.Helper()
	for _, n := range []*testnet.NS{tw.A, tw.B} {
		if err := n.Do(f); err != nil {
			t.Fatal(err)
		}
	}
}

// Delete runs one family's deletion both ways: slow (the iptables path)
// in A, fast (the netlink path, which reports whether it did the job) in
// B. want says whether fast must do it. When fast declines it must leave
// B as it was, and slow then runs in B and must fail where it failed in A.
func (tw *Twins) Delete(t testing.TB, step string, f iptables.Family, want bool, slow func() error, fast func() bool) {
	t.Helper()
	var slowErr error
	if err := tw.A.Do(func() error { slowErr = slow(); return nil }); err != nil {
		t.Fatal(err)
	}
	before := Save(tw.B)
	var done bool
	if err := tw.B.Do(func() error { done = fast(); return nil }); err != nil {
		t.Fatal(err)
	}
	if done != want {
		t.Errorf("%s, %s: netlink path done = %v, want %v", step, f.Name(), done, want)
	}
	if done {
		return
	}
	if after := Save(tw.B); after != before {
		t.Errorf("%s, %s: a declined netlink path changed the node:\n%s\nwas:\n%s", step, f.Name(), after, before)
	}
	var err error
	if e := tw.B.Do(func() error { err = slow(); return nil }); e != nil {
		t.Fatal(e)
	}
	if (err != nil) != (slowErr != nil) {
		t.Errorf("%s, %s: fallback error %v, iptables path error %v", step, f.Name(), err, slowErr)
	}
}

// Write runs add in both nodes: in A with every batch through
// iptables-restore, in B written in process. B must run no iptables-restore
// process when inProcess says so, and the nodes must come out the same.
func (tw *Twins) Write(t testing.TB, step string, inProcess bool, add func() error) {
	t.Helper()
	iptables.WriteInProcess = false
	err := tw.A.Do(add)
	iptables.WriteInProcess = true
	if err != nil {
		t.Fatalf("%s, iptables-restore: %v", step, err)
	}
	before := iptables.Restores()
	if err := tw.B.Do(add); err != nil {
		t.Fatalf("%s, in process: %v", step, err)
	}
	if ran := iptables.Restores() - before; inProcess && ran != 0 {
		t.Errorf("%s: %d iptables-restore processes ran, want the batches written in process", step, ran)
	}
	tw.Same(t, step)
}

// Same fails the test when iptables-save prints the nodes differently.
func (tw *Twins) Same(t testing.TB, step string) {
	t.Helper()
	if a, b := Save(tw.A), Save(tw.B); a != b {
		t.Errorf("%s: the nodes differ\niptables path:\n%s\nnetlink path:\n%s", step, a, b)
	}
}

// CheckInProcess proves that a CHECK answers from netlink where iptables
// is iptables-nft. In a fresh node, add writes both families' rules
// through iptables-restore; check must pass without running "iptables
// -S". Then the iptables command breakRule deletes one of the rules, and
// check must ask iptables and fail naming want.
func CheckInProcess(t testing.TB, add func(iptables.Family) error, check func() error, breakRule []string, want string) {
	t.Helper()
	NeedNFT(t)
	node := testnet.NewNS(t, "node")
	iptables.WriteInProcess = false
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if err := node.Do(func() error { return add(f) }); err != nil {
			iptables.WriteInProcess = true
			t.Fatalf("%s through iptables-restore: %v", f.Name(), err)
		}
	}
	iptables.WriteInProcess = true
	before := iptables.Listings()
	if err := node.Do(check); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if ran := iptables.Listings() - before; ran != 0 {
		t.Errorf("CHECK ran %d iptables listings, want none", ran)
	}
	node.MustRun(breakRule[0], breakRule[1:]...)
	before = iptables.Listings()
	if err := node.Do(check); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("CHECK after %v: %v, want an error naming %s", breakRule, err, want)
	}
	if iptables.Listings() == before {
		t.Errorf("CHECK after %v did not ask iptables", breakRule)
	}
}
