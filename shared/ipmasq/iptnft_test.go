package ipmasq

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testnet"
)

// TestNFTTeardownEquivalence runs teardown's two paths on twin nodes built
// alike, iptables-restore (and iptables-save) on node a and netlink on
// node b, and compares what iptables-save prints afterwards.
func TestNFTTeardownEquivalence(t *testing.T) {
	if !iptables.NFT(iptables.IPv4) || !iptables.NFT(iptables.IPv6) {
		t.Skip("iptables here is not iptables-nft")
	}
	na, nb := testnet.NewNS(t, "node"), testnet.NewNS(t, "node")
	ips := func(s ...string) []*net.IPNet {
		var out []*net.IPNet
		for _, x := range s {
			ip, n, _ := net.ParseCIDR(x)
			n.IP = ip
			out = append(out, n)
		}
		return out
	}
	setup := func(a Attachment, ipns []*net.IPNet) {
		t.Helper()
		for _, n := range []*testnet.NS{na, nb} {
			if err := n.Do(func() error { return Setup(IPTables, a, ipns) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	both := func(cmd ...string) {
		t.Helper()
		na.MustRun(cmd[0], cmd[1:]...)
		nb.MustRun(cmd[0], cmd[1:]...)
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
			var slowErr error
			if err := na.Do(func() error { slowErr = teardownIn(f, chain, comment, fips); return nil }); err != nil {
				t.Fatal(err)
			}
			before := save(nb)
			var done bool
			if err := nb.Do(func() error { done = teardownIPTNFT(f, chain); return nil }); err != nil {
				t.Fatal(err)
			}
			want := want4
			if f == iptables.IPv6 {
				want = want6
			}
			if done != want {
				t.Errorf("%s, %s: netlink teardown done = %v, want %v", step, f.Name(), done, want)
			}
			if !done {
				if save(nb) != before {
					t.Errorf("%s, %s: a declined netlink teardown changed the node", step, f.Name())
				}
				var err error
				if e := nb.Do(func() error { err = teardownIn(f, chain, comment, fips); return nil }); e != nil {
					t.Fatal(e)
				}
				if (err != nil) != (slowErr != nil) {
					t.Errorf("%s, %s: fallback error %v, iptables path error %v", step, f.Name(), err, slowErr)
				}
			}
		}
		if a, b := save(na), save(nb); a != b {
			t.Errorf("%s: after teardown the nodes differ\niptables path:\n%s\nnetlink path:\n%s", step, a, b)
		}
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
	both("iptables", "-t", "nat", "-N", "USER")
	both("iptables", "-t", "nat", "-A", "USER", "-j", ChainName("mnet", "c3"))
	teardown("teardown of a chain still used elsewhere", a3, ip3, false, true)
	both("iptables", "-t", "nat", "-F", "USER")
	teardown("teardown once it is not", a3, ip3, true, true)
}

// TestNFTCheckEquivalence: where the netlink CHECK passes, the
// iptables-save one must pass too; where it cannot tell, the iptables-save
// one decides.
func TestNFTCheckEquivalence(t *testing.T) {
	if !iptables.NFT(iptables.IPv4) || !iptables.NFT(iptables.IPv6) {
		t.Skip("iptables here is not iptables-nft")
	}
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
