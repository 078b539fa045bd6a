package iptables

import (
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestSaveString(t *testing.T) {
	for in, want := range map[string]string{
		"abc_1-2": "abc_1-2", "a b": `"a b"`, `say "hi"`: `"say \"hi\""`, `it's`: `"it\'s"`, `a\b`: `"a\\b"`, "": `""`, "x:y": `"x:y"`,
	} {
		if got := SaveString(in); got != want {
			t.Errorf("SaveString(%q) = %s, want %s", in, got, want)
		}
	}
	for rule, want := range map[string]string{
		"-j ACCEPT": "ACCEPT", "-s 1.2.3.4/32 -j MARK --set-xmark 0x1/0x1": "MARK", "-m comment --comment x": "", `-m comment --comment "a -j B" -j C`: "C",
	} {
		if got := targetOf(rule); got != want {
			t.Errorf("targetOf(%q) = %q, want %q", rule, got, want)
		}
	}
}

// TestReadNFT reads chains that iptables wrote, and ones nft(8) wrote
// that iptables cannot list, and finds rules by their text.
func TestReadNFT(t *testing.T) {
	if !NFT(IPv4) {
		t.Skip("iptables here is not iptables-nft")
	}
	node := testnet.NewNS(t, "node")
	b := NewBatch("filter")
	b.Chain("MINE")
	b.Rule(`-A MINE -s 10.0.0.2/32 -m comment --comment "a comment" -j ACCEPT`)
	b.Rule("-A MINE -d 10.0.0.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	b.Rule("-A MINE -j RETURN")
	b.Rule("-A FORWARD -g MINE")
	b.Rule("-A INPUT -j MINE")
	if err := node.Do(func() error { return Apply(IPv4, b) }); err != nil {
		t.Fatal(err)
	}
	node.MustRun("nft", "add", "chain", "ip", "filter", "NATIVE")
	node.MustRun("nft", "add", "rule", "ip", "filter", "NATIVE", "ct", "state", "new", "accept")
	var tb *NFTTable
	if err := node.Do(func() (err error) {
		tb, err = ReadNFT(IPv4, "filter", "MINE", "FORWARD", "INPUT", "OUTPUT", "NATIVE", "ABSENT")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if tb.Chain("ABSENT") != nil {
		t.Error("an absent chain was read")
	}
	mine := tb.Chain("MINE")
	if mine == nil || !mine.Compatible || len(mine.Rules) != 3 {
		t.Fatalf("MINE: %+v", mine)
	}
	if r := mine.Rules[0]; len(r.Comments) != 1 || r.Comments[0] != "a comment" || r.Handle == 0 || !r.Compatible {
		t.Errorf("first rule: %+v", r)
	}
	if j, known := tb.Chain("INPUT").JumpsTo("MINE"); !j || !known {
		t.Error("INPUT does not jump to MINE")
	}
	if r := tb.Chain("FORWARD").Rules[0]; r.Target != "MINE" || !r.Goto {
		t.Errorf("goto: %+v", r)
	}
	// iptables-nft makes only the base chains it needs: OUTPUT has no
	// rules either way.
	if j, known := tb.Chain("OUTPUT").JumpsTo("MINE"); j || !known {
		t.Errorf("OUTPUT: %+v", tb.Chain("OUTPUT"))
	}
	if c := tb.Chain("NATIVE"); c == nil || c.Compatible {
		t.Errorf("a chain with a native ct rule is compatible: %+v", c)
	}
	if _, known := tb.Chain("NATIVE").JumpsTo("X"); known {
		t.Error("jumps of an incompatible chain are known")
	}
	// A built-in chain with another priority is not one iptables made:
	// the reader does not vouch for it (iptables 1.8.9 lists it anyway;
	// declining only costs the iptables path).
	node.MustRun("nft", "add", "table", "ip", "nat")
	node.MustRun("nft", "add", "chain", "ip", "nat", "PREROUTING", "{ type nat hook prerouting priority 0; }")
	if err := node.Do(func() error {
		nat, err := ReadNFT(IPv4, "nat", "PREROUTING")
		if c := nat.Chain("PREROUTING"); err == nil && (c == nil || c.Compatible) {
			t.Errorf("PREROUTING of priority 0: %+v", c)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Find: a rule of another target is told apart without rendering;
	// one with the same target needs the renderer.
	none := func(NFTRule) (string, bool) { return "", false }
	if h, known := mine.Find("-j DROP", none); len(h) != 0 || !known {
		t.Errorf("Find(-j DROP) = %v, %v", h, known)
	}
	if _, known := mine.Find("-s 10.0.0.3/32 -j ACCEPT", none); known {
		t.Error("Find of an ACCEPT rule without a renderer is known")
	}
}

// TestDeleteNFT: the deletion applies only to the state that was read; a
// commit in between makes the kernel refuse it, and nothing changes.
func TestDeleteNFT(t *testing.T) {
	if !NFT(IPv4) {
		t.Skip("iptables here is not iptables-nft")
	}
	node := testnet.NewNS(t, "node")
	b := NewBatch("filter")
	b.Chain("MINE")
	b.Rule("-A MINE -j ACCEPT")
	b.Rule("-A INPUT -j MINE")
	b.Rule("-A INPUT -j MINE")
	read := func() *NFTTable {
		var tb *NFTTable
		if err := node.Do(func() (err error) { tb, err = ReadNFT(IPv4, "filter", "INPUT", "MINE"); return err }); err != nil {
			t.Fatal(err)
		}
		return tb
	}
	del := func(tb *NFTTable) error {
		var refs []NFTRuleRef
		for _, r := range tb.Chain("INPUT").Rules {
			if r.Target == "MINE" {
				refs = append(refs, NFTRuleRef{Chain: "INPUT", Handle: r.Handle})
			}
		}
		return node.Do(func() error { return DeleteNFT(IPv4, tb, refs, []string{"MINE"}) })
	}
	if err := node.Do(func() error { return Apply(IPv4, b) }); err != nil {
		t.Fatal(err)
	}
	before := read()
	node.MustRun("iptables", "-A", "INPUT", "-s", "10.9.9.9/32", "-j", "DROP")
	if err := del(before); err == nil {
		t.Fatal("a deletion planned before a commit was applied after it")
	}
	if got := node.MustRun("iptables", "-S"); !strings.Contains(got, "-N MINE") || strings.Count(got, "-A INPUT -j MINE") != 2 {
		t.Fatalf("a refused deletion changed the table:\n%s", got)
	}
	if err := del(read()); err != nil {
		t.Fatal(err)
	}
	if got := node.MustRun("iptables", "-S"); strings.Contains(got, "MINE") || !strings.Contains(got, "10.9.9.9") {
		t.Fatalf("after the deletion:\n%s", got)
	}
}
