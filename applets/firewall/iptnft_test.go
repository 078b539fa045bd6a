package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testnet"
)

func pod(admin string, ips ...string) *attachment {
	a := &attachment{Admin: admin}
	for _, ip := range ips {
		a.IPs = append(a.IPs, netip.MustParsePrefix(ip))
	}
	return a
}

func text(b *iptables.Batch) string {
	if b == nil {
		return "(none)\n"
	}
	return b.String()
}

// TestNFTStateEquivalence walks a node through real states and asks both
// ADD planners each time: the netlink planner's batch must equal the
// iptables -S planner's, or it must decline; where the state is one it is
// meant to recognize, declining is a failure too.
func TestNFTStateEquivalence(t *testing.T) {
	if !iptables.NFT(iptables.IPv4) || !iptables.NFT(iptables.IPv6) {
		t.Skip("iptables here is not iptables-nft")
	}
	node := testnet.NewNS(t, "node")
	compare := func(step string, a *attachment, want4, want6 bool) {
		t.Helper()
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			slow, fast := iptables.NewBatch("filter"), iptables.NewBatch("filter")
			var ok bool
			if err := node.Do(func() error {
				tb, err := iptables.LoadChains(f, "filter", addChains(a)...)
				if err != nil {
					return err
				}
				planAdd(tb, a, f, slow)
				var s addState
				if s, ok = stateOfNFT(a, f); ok {
					planFrom(s, a, f, fast)
				}
				return nil
			}); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			want := want4
			if f == iptables.IPv6 {
				want = want6
			}
			switch {
			case !ok && want:
				t.Errorf("%s, %s: the netlink planner declined a state it should recognize:\n%s", step, f.Name(), node.MustRun(f.Name()+"-save", "-t", "filter"))
			case ok && !want:
				t.Errorf("%s, %s: the netlink planner recognized a state it must decline", step, f.Name())
			case ok && text(fast) != text(slow):
				t.Errorf("%s, %s: batches differ\nnetlink:\n%s\niptables -S:\n%s", step, f.Name(), text(fast), text(slow))
			}
		}
	}
	add := func(a *attachment) {
		t.Helper()
		for _, f := range a.families() {
			if err := node.Do(func() error {
				tb, err := iptables.LoadChains(f, "filter", addChains(a)...)
				if err != nil {
					return err
				}
				b := iptables.NewBatch("filter")
				planAdd(tb, a, f, b)
				return iptables.Apply(f, b)
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	p1 := pod("CNI-ADMIN", "10.0.0.2/32", "fd00::2/128")
	compare("empty node", p1, true, true)
	add(p1)
	compare("after one pod", pod("CNI-ADMIN", "10.0.0.3/32", "fd00::3/128"), true, true)
	compare("repeated ADD", p1, true, true)
	compare("another admin chain", pod("MY-ADMIN", "10.0.0.3/32"), true, true)
	compare("the same address twice", pod("CNI-ADMIN", "10.0.0.3/32", "10.0.0.3/32"), true, true)

	// Docker's and a host firewall's rules in FORWARD; an admin's own
	// rules in the admin chain; a wider rule in CNI-FORWARD.
	node.MustRun("iptables", "-N", "DOCKER-USER")
	node.MustRun("iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
	node.MustRun("iptables", "-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	node.MustRun("iptables", "-A", "FORWARD", "-m", "comment", "--comment", "CNI firewall plugin rules", "-j", "DOCKER-USER")
	node.MustRun("iptables", "-A", "CNI-ADMIN", "-s", "10.9.9.9/32", "-j", "DROP")
	node.MustRun("iptables", "-A", "CNI-FORWARD", "-s", "10.0.0.0/24", "-j", "ACCEPT")
	node.MustRun("ip6tables", "-A", "CNI-FORWARD", "-d", "fd00::3/128", "-j", "ACCEPT")
	compare("other tools' rules", pod("CNI-ADMIN", "10.0.0.3/32", "fd00::3/128"), true, true)
	compare("other tools' rules, repeated ADD", p1, true, true)

	// Shapes the recognizer does not know: it must decline.
	node.MustRun("iptables", "-A", "CNI-FORWARD", "-i", "eth0", "-j", "ACCEPT")
	compare("an ACCEPT rule of another shape", p1, false, true)
	node.MustRun("iptables", "-D", "CNI-FORWARD", "-i", "eth0", "-j", "ACCEPT")
	compare("that rule gone", p1, true, true)
	node.MustRun("nft", "add", "rule", "ip6", "filter", "FORWARD", "ct", "state", "new", "counter")
	compare("a native nft rule in FORWARD", p1, true, false)
}

// TestNFTDelEquivalence runs DEL's two paths on twin nodes built alike and
// compares what iptables-save prints afterwards.
func TestNFTDelEquivalence(t *testing.T) {
	if !iptables.NFT(iptables.IPv4) || !iptables.NFT(iptables.IPv6) {
		t.Skip("iptables here is not iptables-nft")
	}
	na, nb := testnet.NewNS(t, "node"), testnet.NewNS(t, "node")
	both := func(cmd ...string) {
		t.Helper()
		na.MustRun(cmd[0], cmd[1:]...)
		nb.MustRun(cmd[0], cmd[1:]...)
	}
	add := func(a *attachment) {
		t.Helper()
		for _, n := range []*testnet.NS{na, nb} {
			for _, f := range a.families() {
				if err := n.Do(func() error {
					tb, err := iptables.LoadChains(f, "filter", addChains(a)...)
					if err != nil {
						return err
					}
					b := iptables.NewBatch("filter")
					planAdd(tb, a, f, b)
					return iptables.Apply(f, b)
				}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	save := func(n *testnet.NS) string {
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
	del := func(step string, a *attachment, want4, want6 bool) {
		t.Helper()
		for _, f := range a.families() {
			var slowErr error
			if err := na.Do(func() error {
				tb, err := iptables.LoadChains(f, "filter", forwardChain)
				if err != nil {
					return err
				}
				b := iptables.NewBatch("filter")
				planDel(tb, a, f, b)
				slowErr = iptables.Apply(f, b)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			before := save(nb)
			var done bool
			if err := nb.Do(func() error { done = delNFT(a, f); return nil }); err != nil {
				t.Fatal(err)
			}
			want := want4
			if f == iptables.IPv6 {
				want = want6
			}
			if done != want {
				t.Errorf("%s, %s: netlink DEL done = %v, want %v", step, f.Name(), done, want)
			}
			if !done {
				if after := save(nb); after != before {
					t.Errorf("%s, %s: a declined netlink DEL changed the node", step, f.Name())
				}
				err := nb.Do(func() error {
					tb, err := iptables.LoadChains(f, "filter", forwardChain)
					if err != nil {
						return err
					}
					b := iptables.NewBatch("filter")
					planDel(tb, a, f, b)
					return iptables.Apply(f, b)
				})
				if (err != nil) != (slowErr != nil) {
					t.Errorf("%s, %s: fallback error %v, iptables path error %v", step, f.Name(), err, slowErr)
				}
			}
		}
		if a, b := save(na), save(nb); a != b {
			t.Errorf("%s: after DEL the nodes differ\niptables path:\n%s\nnetlink path:\n%s", step, a, b)
		}
	}
	p1 := pod("CNI-ADMIN", "10.0.0.2/32", "fd00::2/128")
	p2 := pod("CNI-ADMIN", "10.0.0.3/32", "fd00::3/128")
	add(p1)
	add(p2)
	del("DEL of one of two pods", p1, true, true)
	del("repeated DEL", p1, true, true)
	// A rule added twice (by hand, or by an old ADD racing) goes twice.
	both("iptables", "-A", forwardChain, "-s", "10.0.0.3/32", "-j", "ACCEPT")
	both("iptables", "-A", forwardChain, "-i", "eth0", "-j", "ACCEPT")
	del("DEL with a duplicate rule and a rule of another shape", p2, false, true)
	both("iptables", "-D", forwardChain, "-i", "eth0", "-j", "ACCEPT")
	add(p1)
	both("iptables", "-A", forwardChain, "-s", "10.0.0.2/32", "-j", "ACCEPT")
	del("DEL of the last pod, its rule twice", p1, true, true)
	del("DEL on a node without the chain", pod("CNI-ADMIN", "10.1.0.2/32"), true, true)
}
