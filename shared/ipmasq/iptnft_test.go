package ipmasq

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testing/iptablestest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTTeardownEquivalence runs teardown's two paths on twin nodes built
// alike, iptables-restore (and iptables-save) on node a and netlink on
// node b, and compares what iptables-save prints afterwards.
func TestNFTTeardownEquivalence(t *testing.T) {
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	setup := func(a Attachment, ipns []*net.IPNet) {
		t.Helper()
		tw.Do(t, func() error { return Setup(IPTables, a, ipns) })
	}
	teardown := func(step string, a Attachment, ipns []*net.IPNet, want4, want6 bool) {
		t.Helper()
		chain := ChainName(a.Network, a.ContainerID)
		comment := strconv.Quote(Comment(a.Network, a.ContainerID))
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			var fips []*net.IPNet
			for _, ipn := range ipns {
				if family(ipn.IP) == f {
					fips = append(fips, ipn)
				}
			}
			if ipns != nil && fips == nil {
				continue // teardownIPT leaves a family the addresses do not name
			}
			tw.Delete(t, step, f, iptablestest.Want(f, want4, want6),
				func() error { return teardownIn(f, chain, comment, jumps{ips: fips}) },
				func() bool { return teardownIPTNFT(f, chain, jumps{ips: fips}) })
		}
		tw.Same(t, step)
	}
	a1 := Attachment{Network: "mnet", ContainerID: "c1", IfName: "eth0"}
	a2 := Attachment{Network: "mnet", ContainerID: "c2", IfName: "eth0"}
	a3 := Attachment{Network: "mnet", ContainerID: "c3", IfName: "eth0"}
	ip1, ip2, ip3 := ips("10.1.0.2/24", "fd00::2/64"), ips("10.1.0.3/24"), ips("10.1.0.4/24")
	setup(a1, ip1)
	setup(a2, ip2)
	teardown("teardown of one of two", a1, ip1, true, true)
	teardown("repeated teardown", a1, ip1, true, true)
	setup(a2, ip2) // a repeated ADD: the POSTROUTING jump twice
	teardown("teardown after a repeated ADD", a2, ip2, true, true)
	setup(a1, ip1)
	teardown("teardown without the addresses", a1, nil, true, true)
	setup(a3, ip3)
	tw.Run("iptables", "-t", "nat", "-N", "USER")
	tw.Run("iptables", "-t", "nat", "-A", "USER", "-j", ChainName("mnet", "c3"))
	teardown("teardown of a chain still used elsewhere", a3, ip3, false, true)
	tw.Run("iptables", "-t", "nat", "-F", "USER")
	teardown("teardown once it is not", a3, ip3, true, true)
	// Two interfaces of one container on the network share its chain:
	// DEL of one (with its addresses) leaves the other's jump and the
	// chain; the other's DEL removes both.
	net1 := Attachment{Network: "mnet", ContainerID: "c1", IfName: "net1"}
	ip5 := ips("10.1.0.5/24")
	setup(a1, ip1)
	setup(net1, ip5)
	eth0Kept := func(step string) {
		t.Helper()
		tw.Do(t, func() error {
			if out, _ := iptables.Save(iptables.IPv4, "nat"); !strings.Contains(out, "-A POSTROUTING -s 10.1.0.2/32") || !strings.Contains(out, ":"+ChainName("mnet", "c1")) {
				t.Errorf("%s took eth0's masquerade:\n%s", step, out)
			}
			return nil
		})
	}
	teardown("teardown of one of a container's two interfaces", net1, ip5, true, true)
	eth0Kept("DEL of net1")
	// Without net1's addresses, beside eth0's (TeardownBeside).
	setup(net1, ip5)
	beside := jumps{keep: []net.IP{ip1[0].IP, ip1[1].IP}}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		chain := ChainName("mnet", "c1")
		comment := strconv.Quote(Comment("mnet", "c1"))
		tw.Delete(t, "teardown beside eth0", f, true,
			func() error { return teardownIn(f, chain, comment, beside) },
			func() bool { return teardownIPTNFT(f, chain, beside) })
	}
	tw.Same(t, "teardown beside eth0")
	eth0Kept("DEL of net1 without its addresses")
	teardown("teardown of the other", a1, ip1, true, true)
}

// TestNFTCheckEquivalence: where the netlink CHECK passes, the
// iptables-save one must pass too; where it cannot tell, the iptables-save
// one decides.
func TestNFTCheckEquivalence(t *testing.T) {
	iptablestest.NeedNFT(t)
	node := testnet.NewNS(t, "node")
	a1 := Attachment{Network: "mnet", ContainerID: "c1", IfName: "eth0"}
	ip1 := []*net.IPNet{{IP: net.ParseIP("10.1.0.2").To4(), Mask: net.CIDRMask(24, 32)}, {IP: net.ParseIP("fd00::2"), Mask: net.CIDRMask(64, 128)}}
	check := func(step string, ipns []*net.IPNet, wantNFT, wantOK bool) {
		t.Helper()
		var fast bool
		var slow error
		if err := node.Do(func() error {
			fast = checkIPTNFT(a1, ipns)
			slow = checkIPTSave(a1, ipns)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if fast && slow != nil {
			t.Errorf("%s: netlink CHECK passes, iptables-save CHECK fails: %v", step, slow)
		}
		if fast != wantNFT || (slow == nil) != wantOK {
			t.Errorf("%s: netlink %v (want %v), iptables-save %v (want ok %v)", step, fast, wantNFT, slow, wantOK)
		}
	}
	check("before ADD", ip1, false, false)
	if err := node.Do(func() error { return Setup(IPTables, a1, ip1) }); err != nil {
		t.Fatal(err)
	}
	check("after ADD", ip1, true, true)
	check("another address", []*net.IPNet{{IP: net.ParseIP("10.1.0.9").To4(), Mask: net.CIDRMask(24, 32)}}, false, false)
	// A rule iptables cannot list anywhere in the table hides the table
	// from iptables-save.
	node.MustRun("nft", "add", "chain", "ip", "nat", "NATIVE")
	node.MustRun("nft", "add", "rule", "ip", "nat", "NATIVE", "ct", "state", "new", "accept")
	check("a native rule elsewhere in nat", ip1, false, false)
	node.MustRun("nft", "delete", "chain", "ip", "nat", "NATIVE")
	check("native rule gone", ip1, true, true)
	node.MustRun("iptables", "-t", "nat", "-D", "POSTROUTING", "-s", "10.1.0.2/32", "-m", "comment", "--comment", Comment("mnet", "c1"), "-j", ChainName("mnet", "c1"))
	check("the jump deleted", ip1, false, false)
	check("IPv6 only", ip1[1:], true, true)
}

// TestSetupWritesInProcess: with iptables-nft, Setup (through Prestart,
// as bridge runs it) writes its rules without an iptables-restore
// process, from a fresh node on, and the node comes out as
// iptables-restore leaves it.
func TestSetupWritesInProcess(t *testing.T) {
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	for i, ipn := range [][]*net.IPNet{ips("10.1.0.2/24", "fd00::2/64"), ips("10.1.0.3/24"), ips("fd00::4/64")} {
		a := Attachment{Network: "mnet", ContainerID: "c" + strconv.Itoa(i), IfName: "eth0"}
		tw.Write(t, "pod "+a.ContainerID, true, func() error { return Prestart(IPTables).Setup(a, ipn) })
	}
}
