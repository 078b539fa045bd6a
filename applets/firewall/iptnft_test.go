package firewall

import (
	"net/netip"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testing/iptablestest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func pod(admin string, ips ...string) *attachment {
	a := &attachment{Admin: admin}
	for _, ip := range ips {
		a.IPs = append(a.IPs, netip.MustParsePrefix(ip))
	}
	return a
}

// addHere is ADD's iptables path for a in family f, in the calling
// thread's netns.
func addHere(a *attachment, f iptables.Family) error {
	tb, err := iptables.LoadChains(f, "filter", addChains(a)...)
	if err != nil {
		return err
	}
	b := iptables.NewBatch("filter")
	planAdd(tb, a, f, b)
	return iptables.Apply(f, b)
}

// TestNFTStateEquivalence walks a node through real states and asks both
// ADD planners each time: the netlink planner's batch must equal the
// iptables -S planner's, or it must decline; where the state is one it is
// meant to recognize, declining is a failure too.
func TestNFTStateEquivalence(t *testing.T) {
	iptablestest.NeedNFT(t)
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
			want := iptablestest.Want(f, want4, want6)
			switch {
			case !ok && want:
				t.Errorf("%s, %s: the netlink planner declined a state it should recognize:\n%s", step, f.Name(), node.MustRun(f.Name()+"-save", "-t", "filter"))
			case ok && !want:
				t.Errorf("%s, %s: the netlink planner recognized a state it must decline", step, f.Name())
			case ok && iptablestest.Text(fast) != iptablestest.Text(slow):
				t.Errorf("%s, %s: batches differ\nnetlink:\n%s\niptables -S:\n%s", step, f.Name(), iptablestest.Text(fast), iptablestest.Text(slow))
			}
		}
	}
	add := func(a *attachment) {
		t.Helper()
		for _, f := range a.families() {
			if err := node.Do(func() error { return addHere(a, f) }); err != nil {
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
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	add := func(a *attachment) {
		t.Helper()
		for _, f := range a.families() {
			tw.Do(t, func() error { return addHere(a, f) })
		}
	}
	del := func(step string, a *attachment, want4, want6 bool) {
		t.Helper()
		for _, f := range a.families() {
			tw.Delete(t, step, f, iptablestest.Want(f, want4, want6), func() error {
				tb, err := iptables.LoadChains(f, "filter", forwardChain)
				if err != nil {
					return err
				}
				b := iptables.NewBatch("filter")
				planDel(tb, a, f, b)
				return iptables.Apply(f, b)
			}, func() bool { return delNFT(a, f) })
		}
		tw.Same(t, step)
	}
	p1 := pod("CNI-ADMIN", "10.0.0.2/32", "fd00::2/128")
	p2 := pod("CNI-ADMIN", "10.0.0.3/32", "fd00::3/128")
	add(p1)
	add(p2)
	del("DEL of one of two pods", p1, true, true)
	del("repeated DEL", p1, true, true)
	// A rule added twice (by hand, or by an old ADD racing) goes twice.
	tw.Run("iptables", "-A", forwardChain, "-s", "10.0.0.3/32", "-j", "ACCEPT")
	tw.Run("iptables", "-A", forwardChain, "-i", "eth0", "-j", "ACCEPT")
	del("DEL with a duplicate rule and a rule of another shape", p2, false, true)
	tw.Run("iptables", "-D", forwardChain, "-i", "eth0", "-j", "ACCEPT")
	add(p1)
	tw.Run("iptables", "-A", forwardChain, "-s", "10.0.0.2/32", "-j", "ACCEPT")
	del("DEL of the last pod, its rule twice", p1, true, true)
	del("DEL on a node without the chain", pod("CNI-ADMIN", "10.1.0.2/32"), true, true)
}

// TestAddWritesInProcess: with iptables-nft, ADD writes its batch without
// an iptables-restore process, from a fresh node on, and the node comes
// out as iptables-restore leaves it.
func TestAddWritesInProcess(t *testing.T) {
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		tw.Write(t, "first pod, "+f.Name(), true, func() error { return addHere(pod("CNI-ADMIN", "10.88.0.2/32", "fd00::2/128"), f) })
		tw.Write(t, "second pod, "+f.Name(), true, func() error { return addHere(pod("CNI-ADMIN", "10.88.0.3/32", "fd00::3/128"), f) })
		tw.Write(t, "another admin chain, "+f.Name(), true, func() error { return addHere(pod("CNI-OTHER-ADMIN", "10.88.0.4/32"), f) })
		// An upper-case name could be a target extension (-j LOG):
		// iptables-restore tells which.
		tw.Write(t, "a user's admin chain, "+f.Name(), false, func() error { return addHere(pod("MY-ADMIN", "10.88.0.5/32"), f) })
	}
}

// TestCheckInProcess: CHECK of rules that iptables-restore wrote is
// answered over netlink, with no iptables process; once a rule is gone,
// CHECK asks iptables and names what is missing.
func TestCheckInProcess(t *testing.T) {
	a := pod("CNI-ADMIN", "10.88.0.2/32", "fd88::2/128")
	iptablestest.CheckInProcess(t, func(f iptables.Family) error { return addHere(a, f) }, func() error { return iptBackend{}.check(a) },
		[]string{"ip6tables", "-D", forwardChain, "-s", "fd88::2/128", "-j", "ACCEPT"}, "fd88::2")
}
