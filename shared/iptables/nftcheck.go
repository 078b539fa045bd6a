package iptables

import (
	"bytes"
	"slices"

	"github.com/google/nftables/expr"
)

// Want is what a CHECK expects of one chain of a table. Rules are rules as
// "iptables -S" prints them without "-A CHAIN": the chain must hold each
// of them, and, when Exact, exactly these in this order. Jumps are chains
// some rule of it must jump or go to. A Want with neither only asks that
// the chain exist.
type Want struct {
	Chain string
	Rules []string
	Exact bool
	Jumps []string
}

// HoldsNFT answers a CHECK without iptables' processes where iptables is
// iptables-nft: it reads the chains over netlink and compares each rule
// read with the expressions iptables-nft writes for the wanted text
// (the writer's own encoding, byte for byte once both are marshalled). It
// only ever answers "yes" for sure: false means "not shown here" (a chain
// or rule missing, a shape the writer does not know, a rule written some
// other way, a read that failed), and the caller then asks iptables
// itself, whose answer is authoritative and names what is wrong.
func HoldsNFT(f Family, table string, wants []Want) bool {
	if !NFT(f) {
		return false
	}
	names := make([]string, len(wants))
	for i, w := range wants {
		names[i] = w.Chain
	}
	t, err := ReadNFT(f, table, names...)
	if err != nil {
		return false
	}
	fam := f.nfproto()
	for _, w := range wants {
		c := t.Chain(w.Chain)
		if c == nil || !c.Compatible || (w.Exact && len(c.Rules) != len(w.Rules)) {
			return false
		}
		for i, text := range w.Rules {
			want, ok := encodeRule(f, table, w.Chain, text)
			if !ok {
				return false
			}
			is := func(r NFTRule) bool { return !r.Userdata && sameExprs(fam, r.Exprs, want) }
			if w.Exact && !is(c.Rules[i]) || !w.Exact && !slices.ContainsFunc(c.Rules, is) {
				return false
			}
		}
		for _, target := range w.Jumps {
			if jumps, known := c.JumpsTo(target); !jumps || !known {
				return false
			}
		}
	}
	return true
}

// encodeRule returns the marshalled expressions (without the counter)
// that iptables-nft writes for the rule text in the chain.
func encodeRule(f Family, table, chain, text string) ([][]byte, bool) {
	op, err := compileLine(f, table, "-A "+chain+" "+text)
	if err != nil {
		return nil, false
	}
	return marshalExprs(f.nfproto(), op.exprs)
}

func marshalExprs(fam byte, exprs []expr.Any) ([][]byte, bool) {
	var out [][]byte
	for _, e := range exprs {
		if _, isCounter := e.(*expr.Counter); isCounter {
			continue
		}
		b, err := expr.Marshal(fam, e)
		if err != nil {
			return nil, false
		}
		out = append(out, b)
	}
	return out, true
}

// sameExprs compares a rule's expressions, as read (and unmarshalled),
// with encoded ones: both go through the same marshalling, so that the
// kernel's order of attributes within an expression does not matter.
func sameExprs(fam byte, have []expr.Any, want [][]byte) bool {
	got, ok := marshalExprs(fam, have)
	return ok && slices.EqualFunc(got, want, bytes.Equal)
}
