package iptables

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestBatchRendering(t *testing.T) {
	b := NewBatch("nat")
	if !b.Empty() {
		t.Fatal("new batch is not empty")
	}
	b.Chain("CNI-abc")
	b.Rule("-A CNI-abc -d %s -j ACCEPT", "10.0.0.0/24")
	b.Rule("-A POSTROUTING -s 10.0.0.2 -j CNI-abc")
	want := "*nat\n:CNI-abc - [0:0]\n-A CNI-abc -d 10.0.0.0/24 -j ACCEPT\n-A POSTROUTING -s 10.0.0.2 -j CNI-abc\nCOMMIT\n"
	if got := b.String(); got != want {
		t.Errorf("batch =\n%s\nwant\n%s", got, want)
	}
}

// TestApply runs real batches in a throwaway netns, for both families: a
// batch applies whole, a bad line applies nothing.
func TestApply(t *testing.T) {
	node := testnet.NewNS(t, "node")
	for _, f := range []Family{IPv4, IPv6} {
		err := node.Do(func() error {
			if !Usable(f) {
				t.Skipf("%s not usable here", f.tool(""))
			}
			b := NewBatch("filter")
			b.Chain("CNIBOX-TEST")
			b.Rule("-A CNIBOX-TEST -m comment --comment %q -j ACCEPT", `name: "n" id: "c"`)
			b.Rule("-A FORWARD -j CNIBOX-TEST")
			if err := Apply(f, b); err != nil {
				return err
			}
			saved, err := Save(f, "filter")
			if err != nil {
				return err
			}
			for _, w := range []string{":CNIBOX-TEST - [0:0]", `-A CNIBOX-TEST -m comment --comment "name: \"n\" id: \"c\"" -j ACCEPT`, "-A FORWARD -j CNIBOX-TEST"} {
				if !strings.Contains(saved, w) {
					t.Errorf("%s: saved table lacks %q:\n%s", f.tool(""), w, saved)
				}
			}
			bad := NewBatch("filter")
			bad.Rule("-A FORWARD -m comment --comment CNIBOX-OTHER-MARKER -j ACCEPT")
			bad.Rule("-A FORWARD -j NO-SUCH-CHAIN")
			if err := Apply(f, bad); err == nil {
				t.Errorf("%s: a batch with a bad line applied", f.tool(""))
			}
			saved, _ = Save(f, "filter")
			if strings.Contains(saved, "CNIBOX-OTHER-MARKER") {
				t.Errorf("%s: part of a failed batch applied", f.tool(""))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoad: LoadChains and Load read what Apply wrote, in iptables-save's
// canonical form; chains that do not exist are absent, not errors.
func TestLoad(t *testing.T) {
	node := testnet.NewNS(t, "node")
	err := node.Do(func() error {
		if !Usable(IPv4) {
			t.Skip("iptables not usable here")
		}
		nat := NewBatch("nat")
		nat.Chain("CNIBOX-A")
		nat.Rule("-A CNIBOX-A -p tcp --dport 80 -s 10.0.0.2 -j DNAT --to-destination 10.0.0.3:80")
		nat.Rule("-A PREROUTING -j CNIBOX-A")
		filter := NewBatch("filter")
		filter.Chain("CNIBOX-B")
		if err := Apply(IPv4, nat, filter); err != nil {
			return err
		}
		tb, err := LoadChains(IPv4, "nat", "PREROUTING", "CNIBOX-A", "CNIBOX-MISSING")
		if err != nil {
			return err
		}
		want := "-s 10.0.0.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.3:80"
		if got := tb.Rules("CNIBOX-A"); len(got) != 1 || got[0] != want {
			t.Errorf("CNIBOX-A = %q, want %q", got, want)
		}
		if !tb.HasChain("PREROUTING") || !tb.HasChain("CNIBOX-A") || tb.HasChain("CNIBOX-MISSING") {
			t.Errorf("chains = %q", tb.Chains())
		}
		if r := tb.Rules("PREROUTING"); len(r) != 1 || !Jumps(r[0], "CNIBOX-A") {
			t.Errorf("PREROUTING = %q", r)
		}
		d, err := Load(IPv4)
		if err != nil {
			return err
		}
		if !d["filter"].HasChain("CNIBOX-B") || d["nat"].Rules("CNIBOX-A")[0] != want {
			t.Errorf("Load: filter chains %q, nat CNIBOX-A %q", d["filter"].Chains(), d["nat"].Rules("CNIBOX-A"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestApplyRefusesLineBreaks: a rule (or chain) carrying a line break,
// from a user-given condition say, is refused with code 7 before
// iptables-restore runs, so it cannot smuggle a second rule or a COMMIT
// and another table in; nothing of the batch applies.
func TestApplyRefusesLineBreaks(t *testing.T) {
	node := testnet.NewNS(t, "node")
	err := node.Do(func() error {
		if !Usable(IPv4) {
			t.Skip("iptables not usable here")
		}
		for _, evil := range []string{
			"-A FORWARD -s 10.1.1.1 -j ACCEPT\n-A INPUT -m comment --comment CNIBOX-INJECTED -j DROP",
			"-A FORWARD -j ACCEPT\nCOMMIT\n*nat\n-A PREROUTING -m comment --comment CNIBOX-INJECTED -j ACCEPT",
			"-A FORWARD -j ACCEPT\r-A INPUT -m comment --comment CNIBOX-INJECTED -j DROP",
		} {
			b := NewBatch("filter")
			b.Rule("-A FORWARD -m comment --comment CNIBOX-INJECTED -j ACCEPT")
			b.Rule("%s", evil)
			err := Apply(IPv4, b)
			if e := cni.AsError(err); err == nil || e.Code != cni.ErrInvalidConfig || !strings.Contains(e.Msg, "line break") {
				t.Errorf("Apply(%q) = %v, want code 7 naming the line break", evil, err)
			}
			saved, _ := Save(IPv4, "")
			if strings.Contains(saved, "CNIBOX-INJECTED") {
				t.Errorf("Apply(%q) changed the tables:\n%s", evil, saved)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStartRestore: a process started ahead of its input runs in the
// caller's netns (here the test's node, never the machine's), applies
// exactly what Apply gives it, and one that is closed unused applies
// nothing and can no longer be used.
func TestStartRestore(t *testing.T) {
	node := testnet.NewNS(t, "node")
	err := node.Do(func() error {
		if !Usable(IPv4) {
			t.Skip("iptables not usable here")
		}
		r := StartRestore(IPv4)
		b := NewBatch("filter")
		b.Chain("CNIBOX-EARLY")
		b.Rule("-A CNIBOX-EARLY -j ACCEPT")
		if err := r.Apply(b); err != nil {
			return err
		}
		r.Close() // a no-op after Apply
		if err := r.Apply(b); err == nil {
			t.Error("a Restore applied twice")
		}

		unused := StartRestore(IPv4)
		unused.Close()
		unused.Close()
		late := NewBatch("filter")
		late.Chain("CNIBOX-UNUSED")
		if err := unused.Apply(late); err == nil {
			t.Error("a closed Restore applied a batch")
		}

		saved, err := Save(IPv4, "filter")
		if err != nil {
			return err
		}
		if !strings.Contains(saved, "-A CNIBOX-EARLY -j ACCEPT") {
			t.Errorf("the early process did not apply its batch in the node:\n%s", saved)
		}
		if strings.Contains(saved, "CNIBOX-UNUSED") {
			t.Errorf("a closed process applied something:\n%s", saved)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("iptables-save", "-t", "filter").Output(); err == nil && strings.Contains(string(out), "CNIBOX-EARLY") {
		t.Fatal("the early process wrote to the machine's own iptables")
	}
}
