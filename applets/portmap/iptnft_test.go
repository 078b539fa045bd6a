package portmap

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/testing/iptablestest"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestNFTStateEquivalence walks a node through real states (written by
// iptables-restore, iptables and nft, as ADDs, users and other tools
// write them) and asks both planners each time: the netlink planner's
// batches must equal the iptables -S planner's, or it must decline. Where
// the state is one it is meant to recognize, declining is a failure too.
func TestNFTStateEquivalence(t *testing.T) {
	iptablestest.NeedNFT(t)
	node := testnet.NewNS(t, "node")
	// compare asks both planners about a in both families.
	// want says whether the netlink planner must recognize the state, in
	// IPv4 and IPv6.
	compare := func(step string, a *attachment, want4, want6 bool) {
		t.Helper()
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			wantRecognized := iptablestest.Want(f, want4, want6)
			var slowNat, slowFilter, fastNat, fastFilter *iptables.Batch
			var ok bool
			err := node.Do(func() error {
				d, err := loadHere(a, f)
				if err != nil {
					return err
				}
				slowNat, slowFilter = planAdd(d, a, f)
				var s addState
				if s, ok = stateOfNFT(a, f); ok {
					fastNat, fastFilter = planFrom(s, a, f)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			switch {
			case !ok && wantRecognized:
				t.Errorf("%s, %s: the netlink planner declined a state it should recognize:\n%s", step, f.Name(), node.MustRun(f.Name()+"-save"))
			case ok && !wantRecognized:
				t.Errorf("%s, %s: the netlink planner recognized a state it must decline", step, f.Name())
			case ok && (iptablestest.Text(fastNat) != iptablestest.Text(slowNat) || iptablestest.Text(fastFilter) != iptablestest.Text(slowFilter)):
				t.Errorf("%s, %s: batches differ\nnetlink:\n%s%s\niptables -S:\n%s%s", step, f.Name(), iptablestest.Text(fastNat), iptablestest.Text(fastFilter), iptablestest.Text(slowNat), iptablestest.Text(slowFilter))
			}
		}
	}
	add := func(a *attachment) {
		t.Helper()
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			if err := node.Do(func() error { return addHere(a, f) }); err != nil {
				t.Fatal(err)
			}
		}
	}

	// del asks both DEL planners about the pod: when the netlink one says
	// there is nothing to remove, the iptables -S one must plan nothing.
	del := func(step string, a *attachment, want4, want6 bool) {
		t.Helper()
		chains := []string{dnChain(a.net, a.id), chainName("CNI-SN-", a.net, a.id)}
		entries := []string{dnatChain, oldSNATChain}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			var nothing bool
			var slow *iptables.Batch
			if err := node.Do(func() error {
				nt, err := iptables.LoadChains(f, "nat", append(entries, chains...)...)
				if err != nil {
					return err
				}
				slow = planRemove(nt, chains)
				view, err := iptables.ReadNFT(f, "nat", append(entries, chains...)...)
				if err != nil {
					return err
				}
				rules, drop, ok := planRemoveNFT(view, entries, chains)
				nothing = ok && len(rules) == 0 && len(drop) == 0
				if ok && !nothing && slow.Empty() {
					t.Errorf("%s, %s: netlink plans to delete %v and chains %v, iptables -S nothing", step, f.Name(), rules, drop)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if nothing && !slow.Empty() {
				t.Errorf("%s, %s: netlink says nothing to remove, iptables -S plans\n%s", step, f.Name(), slow)
			}
			if wantNothing := iptablestest.Want(f, want4, want6); nothing != wantNothing {
				t.Errorf("%s, %s: nothing to remove = %v, want %v", step, f.Name(), nothing, wantNothing)
			}
		}
	}

	del("DEL on an empty node", pod("p1", 13), true, true)
	compare("empty node", pod("p1", 13), true, true)
	add(pod("p1", 13))
	compare("after one pod", pod("p2", 13), true, true)
	del("DEL of that pod", pod("p1", 13), false, false)
	del("DEL of another pod", pod("p2", 13), true, true)
	compare("repeated ADD", pod("p1", 13), false, false)
	add(pod("p2", 13))
	compare("after two pods", pod("p3", 13), true, true)

	node.MustRun("iptables", "-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", dnatChain)
	node.MustRun("ip6tables", "-t", "nat", "-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", dnatChain)
	compare("a user deleted a jump", pod("p3", 13), true, true)

	// Other tools' rules in the entry chains: kube-proxy's and docker's.
	node.MustRun("iptables", "-t", "nat", "-N", "KUBE-SERVICES")
	node.MustRun("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
	node.MustRun("iptables", "-t", "nat", "-N", "DOCKER")
	node.MustRun("iptables", "-t", "nat", "-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER")
	node.MustRun("iptables", "-t", "filter", "-A", "INPUT", "-i", "eth9", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
	compare("kube-proxy and docker rules", pod("p3", 13), true, true)

	// SETMARK with another mark bit (a node that ran with markMasqBit 14).
	node.MustRun("iptables", "-t", "nat", "-A", setMarkChain, "-m", "comment", "--comment", "CNI portfwd masquerade mark", "-j", "MARK", "--set-xmark", "0x4000/0x4000")
	node.MustRun("iptables", "-t", "nat", "-A", masqChain, "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE")
	compare("SETMARK with another mark bit", pod("p3", 13), true, true)
	compare("SETMARK with another mark bit, that bit", pod("p3", 14), true, true)
	compare("a bit no rule has", pod("p3", 3), true, true)

	// A pod without snat, and one marking into another chain.
	noSNAT := pod("p4", 13)
	noSNAT.snat = false
	compare("snat false", noSNAT, true, true)
	ext := pod("p5", 13)
	ext.masqAll, ext.markJump = true, "KUBE-MARK-MASQ"
	compare("externalSetMarkChain", ext, true, true)

	// Shapes the recognizer does not know: it must decline.
	node.MustRun("iptables", "-t", "nat", "-A", setMarkChain, "-s", "10.1.0.0/16", "-m", "comment", "--comment", "CNI portfwd masquerade mark", "-j", "MARK", "--set-xmark", "0x2000/0x2000")
	compare("SETMARK rule with an extra match", pod("p3", 13), false, true)
	node.MustRun("iptables", "-t", "nat", "-D", setMarkChain, "-s", "10.1.0.0/16", "-m", "comment", "--comment", "CNI portfwd masquerade mark", "-j", "MARK", "--set-xmark", "0x2000/0x2000")
	compare("extra rule gone", pod("p3", 13), true, true)
	node.MustRun("iptables", "-t", "filter", "-A", guardChain, "-d", "127.0.0.0/8", "-j", "LOG")
	compare("GUARD with a LOG rule (another target)", pod("p3", 13), true, true)
	node.MustRun("iptables", "-t", "filter", "-D", guardChain, "-d", "127.0.0.0/8", "-j", "LOG")
	node.MustRun("iptables", "-t", "filter", "-A", guardChain, "-d", "127.0.0.0/8", "-j", "DROP")
	compare("GUARD with another DROP rule", pod("p3", 13), false, true)
	node.MustRun("iptables", "-t", "filter", "-D", guardChain, "-d", "127.0.0.0/8", "-j", "DROP")
	// A rule iptables cannot list makes its chain unknown.
	node.MustRun("nft", "add", "rule", "ip", "nat", "OUTPUT", "ct", "state", "new", "counter")
	compare("a native nft rule in OUTPUT", pod("p3", 13), false, true)
	node.MustRun("nft", "flush", "chain", "ip", "nat", "OUTPUT")
	compare("OUTPUT flushed", pod("p3", 13), true, true)
	node.MustRun("nft", "add", "rule", "ip", "nat", dnatChain, "ip", "daddr", "1.2.3.4", "tcp", "dport", "{1,2}", "counter")
	compare("a set lookup in CNI-HOSTPORT-DNAT", pod("p3", 13), false, true)
	del("DEL with a set lookup in CNI-HOSTPORT-DNAT", pod("p9", 13), false, true)
	node.MustRun("ip6tables", "-t", "nat", "-A", masqChain, "-m", "mark", "--mark", "0x2000", "-j", "MASQUERADE")
	compare("ip6 MASQ rule without a mask", pod("p3", 13), false, false)
	node.MustRun("ip6tables", "-t", "nat", "-N", dnChain("net", "p9"))
	del("ip6 DEL, a chain without entry rules", pod("p9", 13), false, false)
	node.MustRun("ip6tables", "-t", "nat", "-A", dnatChain, "-j", dnChain("net", "p9"))
	del("ip6 DEL, an entry rule", pod("p9", 13), false, false)
}

// TestNFTDetection: NFT follows the tools' symlinks: xtables-nft-multi is
// nft, xtables-legacy-multi or a missing tool is not.
func TestNFTDetection(t *testing.T) {
	multi := func(name string) string {
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
			if p := filepath.Join(dir, name); fileExists(p) {
				return p
			}
		}
		return ""
	}
	nftMulti, legacyMulti := multi("xtables-nft-multi"), multi("xtables-legacy-multi")
	if nftMulti == "" || legacyMulti == "" {
		t.Skip("needs xtables-nft-multi and xtables-legacy-multi")
	}
	for _, tc := range []struct {
		target string
		tools  []string
		want   bool
	}{
		{nftMulti, []string{"iptables", "iptables-restore"}, true},
		{legacyMulti, []string{"iptables", "iptables-restore"}, false},
		{nftMulti, []string{"iptables"}, false}, // no iptables-restore
	} {
		dir := t.TempDir()
		for _, tool := range tc.tools {
			// Two hops, as Debian's alternatives do.
			if err := os.Symlink(tc.target, filepath.Join(dir, tool+"-alt")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(dir, tool+"-alt"), filepath.Join(dir, tool)); err != nil {
				t.Fatal(err)
			}
		}
		if got := iptables.NFTIn(dir, iptables.IPv4); got != tc.want {
			t.Errorf("%s -> %s: NFT = %v", strings.Join(tc.tools, ","), tc.target, got)
		}
	}
}

// loadHere is loadForAdd with every listing started from the calling
// thread (loadForAdd lists the filter table from another goroutine, which
// in a test is another network namespace).
func loadHere(a *attachment, f iptables.Family) (iptables.Dump, error) {
	d := iptables.Dump{}
	var err error
	if d["nat"], err = iptables.LoadChains(f, "nat", natChains...); err != nil {
		return nil, err
	}
	if f == iptables.IPv4 && a.snat {
		if d["filter"], err = iptables.LoadChains(f, "filter", filterChains...); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// addHere is ADD's iptables path for a in family f, in the calling
// thread's netns.
func addHere(a *attachment, f iptables.Family) error {
	d, err := loadHere(a, f)
	if err != nil {
		return err
	}
	nat, filter := planAdd(d, a, f)
	return iptables.Apply(f, nat, filter)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestNFTRemoveEquivalence runs DEL's two paths on twin nodes built alike,
// the iptables -S + iptables-restore one on node a and the netlink one on
// node b, and compares what iptables-save prints afterwards.
func TestNFTRemoveEquivalence(t *testing.T) {
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	add := func(a *attachment) {
		t.Helper()
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			tw.Do(t, func() error { return addHere(a, f) })
		}
	}
	entries := []string{dnatChain, oldSNATChain}
	del := func(step, id string, want4, want6 bool) {
		t.Helper()
		chains := []string{dnChain("net", id), chainName("CNI-SN-", "net", id)}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			tw.Delete(t, step, f, iptablestest.Want(f, want4, want6), func() error {
				nt, err := iptables.LoadChains(f, "nat", append(entries, chains...)...)
				if err != nil {
					return err
				}
				return iptables.Apply(f, planRemove(nt, chains))
			}, func() bool { return removeNFT(f, entries, chains) })
		}
		tw.Same(t, step)
	}

	add(pod("p1", 13))
	add(pod("p2", 13))
	del("DEL of one of two pods", "p1", true, true)
	del("repeated DEL", "p1", true, true)
	p3 := pod("p3", 13)
	add(p3)
	entry := entryRules(p3, iptables.IPv4)[0]
	tw.Run("sh", "-c", "iptables -t nat -A "+dnatChain+" "+entry)
	del("DEL with a duplicate entry rule", "p3", true, true)
	// The old reference's SNAT chain and a pod chain of it.
	sn := chainName("CNI-SN-", "net", "p4")
	tw.Run("iptables", "-t", "nat", "-N", oldSNATChain)
	tw.Run("iptables", "-t", "nat", "-N", sn)
	tw.Run("iptables", "-t", "nat", "-A", oldSNATChain, "-s", "10.88.0.4/32", "-j", sn)
	tw.Run("iptables", "-t", "nat", "-A", sn, "-j", "MASQUERADE")
	add(pod("p4", 13))
	del("DEL with an old SNAT chain", "p4", true, true)
	// A chain DEL does not read still jumps to the pod's chain: both
	// paths fail and change nothing.
	add(pod("p5", 13))
	tw.Run("iptables", "-t", "nat", "-N", "USER")
	tw.Run("iptables", "-t", "nat", "-A", "USER", "-j", dnChain("net", "p5"))
	del("DEL of a chain still referenced", "p5", false, true)
	tw.Run("iptables", "-t", "nat", "-F", "USER")
	del("DEL after the reference is gone", "p5", true, true)
	del("DEL of the last pod", "p2", true, true)
}

func pod(id string, bit int) *attachment {
	a := testAttachment()
	a.id, a.markBit = id, bit
	return a
}

// TestAddWritesInProcess: with iptables-nft, ADD writes its batches
// without an iptables-restore process, from a fresh node on, and the node
// comes out as iptables-restore leaves it. A repeated ADD, which deletes
// its old entry rules by their text, still runs iptables-restore.
func TestAddWritesInProcess(t *testing.T) {
	iptablestest.NeedNFT(t)
	tw := iptablestest.NewTwins(t)
	first, second := testAttachment(), testAttachment()
	second.id = "cid2"
	second.v4 = &net.IPNet{IP: net.ParseIP("10.88.0.3").To4(), Mask: second.v4.Mask}
	second.v6 = &net.IPNet{IP: net.ParseIP("fd88::3"), Mask: second.v6.Mask}
	second.maps = []Mapping{{8081, 80, "tcp", ""}}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		tw.Write(t, "first pod, "+f.Name(), true, func() error { return addHere(first, f) })
		tw.Write(t, "second pod, "+f.Name(), true, func() error { return addHere(second, f) })
		tw.Write(t, "first pod again, "+f.Name(), false, func() error { return addHere(first, f) })
	}
}

// TestCheckInProcess: CHECK of rules that iptables-restore wrote is
// answered over netlink, with no iptables process; once a rule is gone,
// CHECK asks iptables and names what is missing.
func TestCheckInProcess(t *testing.T) {
	a := testAttachment()
	chain := dnChain(a.net, a.id)
	iptablestest.CheckInProcess(t, func(f iptables.Family) error { return addHere(a, f) }, func() error { return iptBackend{}.check(a) },
		[]string{"iptables", "-t", "nat", "-D", chain, "-p", "tcp", "-m", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.88.0.2:80"}, chain)
}
