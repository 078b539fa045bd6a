package iptables

import (
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
	read := map[string][]string{} // each chain's rules, encoded once
	for _, w := range wants {
		c := t.Chain(w.Chain)
		if c == nil || !c.Compatible || (w.Exact && len(c.Rules) != len(w.Rules)) {
			return false
		}
		have, done := read[w.Chain]
		if !done {
			for _, r := range c.Rules {
				enc, ok := encodeExprs(fam, r.Exprs)
				if !ok || r.Userdata {
					enc = "" // matches no wanted rule
				}
				have = append(have, enc)
			}
			read[w.Chain] = have
		}
		for i, text := range w.Rules {
			want, ok := encodeRule(f, table, w.Chain, text)
			if !ok {
				return false
			}
			if w.Exact && have[i] != want || !w.Exact && !slices.Contains(have, want) {
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
func encodeRule(f Family, table, chain, text string) (string, bool) {
	op, err := compileLine(f, table, "-A "+chain+" "+text)
	if err != nil {
		return "", false
	}
	return encodeExprs(f.nfproto(), op.exprs)
}

// encodeExprs marshals expressions, without the counter, one after the
// other (each is a netlink attribute carrying its length). A rule read
// and a rule compiled go through the same marshalling, so the kernel's
// order of attributes within an expression does not matter.
func encodeExprs(fam byte, exprs []expr.Any) (string, bool) {
	var b []byte
	for _, e := range exprs {
		if _, isCounter := e.(*expr.Counter); isCounter {
			continue
		}
		m, err := expr.Marshal(fam, e)
		if err != nil {
			return "", false
		}
		b = append(b, m...)
	}
	return string(b), len(b) > 0
}
