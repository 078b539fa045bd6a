package iptables

import (
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestHoldsNFT writes every shape of the corpus with the real
// iptables-restore, then asks HoldsNFT about each chain with the rules
// "iptables -S" prints for it: every one must be recognised in process,
// exactly and in order. Then what is not there must not be: a changed
// rule, one rule too few for an exact chain, a missing chain, a jump that
// no rule makes.
func TestHoldsNFT(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		if !NFT(f) {
			t.Skipf("%s here is not iptables-nft", f.Name())
		}
		t.Run(f.Name(), func(t *testing.T) {
			node := testnet.NewNS(t, "ipt")
			restoreCorpus(t, node, f)
			for _, table := range []string{"nat", "filter"} {
				var wants []Want
				for _, l := range writeCorpus[f][table] {
					if c, ok := strings.CutPrefix(l, ":"); ok {
						wants = append(wants, Want{Chain: c, Exact: true})
					}
				}
				// The built-in chains the corpus writes to (iptables-nft
				// makes only those).
				for c := range builtin[table] {
					for _, l := range writeCorpus[f][table] {
						if strings.HasPrefix(l, "-A "+c+" ") || strings.HasPrefix(l, "-I "+c+" ") {
							wants = append(wants, Want{Chain: c, Exact: true})
							break
						}
					}
				}
				for i, w := range wants {
					for _, line := range strings.Split(node.MustRun(f.tool(""), "-t", table, "-S", w.Chain), "\n") {
						if rule, ok := strings.CutPrefix(line, "-A "+w.Chain+" "); ok {
							wants[i].Rules = append(wants[i].Rules, rule)
						}
					}
				}
				holds := func(ws ...Want) bool { return holdsIn(node, f, table, ws...) }
				for _, w := range wants {
					if !holds(w) {
						t.Errorf("%s %s: rules written by iptables-restore not recognised: %q", table, w.Chain, w.Rules)
					}
					if len(w.Rules) == 0 {
						continue
					}
					if holds(Want{Chain: w.Chain, Rules: w.Rules[1:], Exact: true}) {
						t.Errorf("%s %s: holds exactly without its first rule", table, w.Chain)
					}
					changed := strings.Replace(w.Rules[0], "-j ", "-p tcp -j ", 1)
					if strings.Contains(w.Rules[0], "-p ") {
						changed = strings.Replace(w.Rules[0], "-j ", "! -s 10.1.1.1/32 -j ", 1)
						if f == IPv6 {
							changed = strings.Replace(w.Rules[0], "-j ", "! -s fd00::1/128 -j ", 1)
						}
					}
					if holds(Want{Chain: w.Chain, Rules: []string{changed}}) {
						t.Errorf("%s %s: holds a rule it does not have: %q", table, w.Chain, changed)
					}
				}
				if !holds(wants...) {
					t.Errorf("%s: all the chains together not recognised", table)
				}
				if holds(append(wants, Want{Chain: "CNI-MISSING"})...) {
					t.Errorf("%s: holds a chain that does not exist", table)
				}
			}
			if !holdsIn(node, f, "nat", Want{Chain: "OUTPUT", Jumps: []string{"CNI-HOSTPORT-DNAT"}}) {
				t.Error("nat OUTPUT: its jump to CNI-HOSTPORT-DNAT not recognised")
			}
			if holdsIn(node, f, "nat", Want{Chain: "OUTPUT", Jumps: []string{"CNI-HOSTPORT-MASQ"}}) {
				t.Error("nat OUTPUT: holds a jump to CNI-HOSTPORT-MASQ it does not make")
			}
		})
	}
}

func holdsIn(n *testnet.NS, f Family, table string, ws ...Want) (ok bool) {
	n.Do(func() error { ok = HoldsNFT(f, table, ws); return nil })
	return ok
}

// TestCanList: where iptables is iptables-nft, STATUS's check lists the
// chain over netlink, with no process, whether or not it exists yet.
func TestCanList(t *testing.T) {
	if !NFT(IPv4) {
		t.Skip("iptables here is not iptables-nft")
	}
	node := testnet.NewNS(t, "ipt")
	for _, step := range []string{"fresh node", "after a rule"} {
		before := Listings()
		if err := node.Do(func() error { return CanList(IPv4, "nat", "OUTPUT") }); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if ran := Listings() - before; ran != 0 {
			t.Errorf("%s: %d iptables listings ran, want none", step, ran)
		}
		node.MustRun("iptables", "-t", "nat", "-A", "OUTPUT", "-j", "RETURN")
	}
}
