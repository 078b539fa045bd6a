package portmap

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"

	"github.com/cnibox/cnibox/shared/iptables"
)

// With iptables-nft, ADD and DEL read the chains over netlink (one
// process fewer per chain) when they can positively recognize every rule
// they look at; anything else (legacy iptables, a rule of unknown shape,
// a chain iptables could not list, a repeated ADD whose old entry rules
// must be deleted by their text) takes the "iptables -S" path. The state
// read either way is the same addState, so the batch is the same.

// natChains and filterChains are the chains ADD reads.
var (
	natChains    = []string{"PREROUTING", "OUTPUT", "POSTROUTING", dnatChain, setMarkChain, masqChain}
	filterChains = []string{"INPUT", guardChain}
)

// stateOfNFT reads the addState over netlink; ok is false when any part
// of it is not positively known.
func stateOfNFT(a *attachment, f iptables.Family) (s addState, ok bool) {
	nt, err := iptables.ReadNFT(f, "nat", natChains...)
	if err != nil {
		return s, false
	}
	var ft *iptables.NFTTable
	if f == iptables.IPv4 && a.snat {
		if ft, err = iptables.ReadNFT(f, "filter", filterChains...); err != nil {
			return s, false
		}
	}
	return stateFromNFT(nt, ft, a, f)
}

// stateFromNFT is stateOfDump for tables read over netlink.
func stateFromNFT(nt, ft *iptables.NFTTable, a *attachment, f iptables.Family) (s addState, ok bool) {
	ok = true
	know := func(v, known bool) bool {
		ok = ok && known
		return v
	}
	if a.snat && a.markJump == setMarkChain {
		mark := uint32(1) << a.markBit
		s.setMarkChain = nt.Chain(setMarkChain) != nil
		s.setMarkRule = know(hasRule(nt.Chain(setMarkChain), f, fmt.Sprintf(setMarkFmt, mark, mark)))
		s.masqChain = nt.Chain(masqChain) != nil
		s.masqRule = know(hasRule(nt.Chain(masqChain), f, fmt.Sprintf(masqRuleFmt, mark, mark)))
		s.postroutingJump = know(nt.Chain("POSTROUTING").JumpsTo(masqChain))
	}
	s.dnatChain = nt.Chain(dnatChain) != nil
	s.preroutingJump = know(nt.Chain("PREROUTING").JumpsTo(dnatChain))
	s.outputJump = know(nt.Chain("OUTPUT").JumpsTo(dnatChain))
	// A repeated ADD deletes its old entry rules by their text, which
	// only iptables prints: that is the slow path's job.
	if stale := know(nt.Chain(dnatChain).JumpsTo(dnChain(a.net, a.id))); stale {
		return s, false
	}
	if f == iptables.IPv4 && a.snat {
		s.guardChain = ft.Chain(guardChain) != nil
		s.guardRule = know(hasRule(ft.Chain(guardChain), f, guardRule))
		s.inputJump = know(ft.Chain("INPUT").JumpsTo(guardChain))
	}
	return s, ok
}

// hasRule reports whether the chain has a rule that iptables -S prints as
// want; known is false when that is not certain.
func hasRule(c *iptables.NFTChain, f iptables.Family, want string) (has, known bool) {
	return c.Has(want, func(r iptables.NFTRule) (string, bool) { return render(r, f) })
}

// render prints the rules of the shared chains (SETMARK, MASQ, GUARD) as
// iptables -S does, for the exact shapes iptables-nft 1.8 writes them in;
// ok is false for anything else.
func render(r iptables.NFTRule, f iptables.Family) (text string, ok bool) {
	if r.Userdata {
		return "", false
	}
	e := r.Exprs
	// -m comment --comment C -j MARK --set-xmark V/M
	if n := len(e); n >= 1 && n <= 2 && len(r.Comments) == n-1 {
		t, isTarget := e[n-1].(*expr.Target)
		if isTarget && t.Name == "MARK" && t.Rev == 2 {
			raw, isRaw := t.Info.(*xt.Unknown)
			if !isRaw || len(*raw) != 8 {
				return "", false
			}
			text = fmt.Sprintf("-j MARK --set-xmark %#x/%#x", binary.NativeEndian.Uint32((*raw)[0:4]), binary.NativeEndian.Uint32((*raw)[4:8]))
			if n == 2 {
				if m, isMatch := e[0].(*expr.Match); !isMatch || m.Name != "comment" {
					return "", false
				}
				text = "-m comment --comment " + iptables.SaveString(r.Comments[0]) + " " + text
			}
			return text, true
		}
	}
	// -m mark --mark V/M -j MASQUERADE
	if len(e) == 4 && len(r.Comments) == 0 {
		meta, ok1 := e[0].(*expr.Meta)
		bw, ok2 := e[1].(*expr.Bitwise)
		cmp, ok3 := e[2].(*expr.Cmp)
		t, ok4 := e[3].(*expr.Target)
		if ok1 && ok2 && ok3 && ok4 && meta.Key == expr.MetaKeyMARK && !meta.SourceRegister &&
			bw.SourceRegister == meta.Register && bw.DestRegister == meta.Register && bw.Len == 4 &&
			len(bw.Mask) == 4 && slices.Equal(bw.Xor, []byte{0, 0, 0, 0}) &&
			cmp.Op == expr.CmpOpEq && cmp.Register == meta.Register && len(cmp.Data) == 4 &&
			t.Name == "MASQUERADE" && t.Rev == 0 && plainMasquerade(t.Info) {
			mask := binary.NativeEndian.Uint32(bw.Mask)
			if mask == 0xffffffff {
				return "", false // printed without the mask
			}
			return fmt.Sprintf("-m mark --mark %#x/%#x -j MASQUERADE", binary.NativeEndian.Uint32(cmp.Data), mask), true
		}
		return "", false
	}
	// The martian guard, exactly.
	if f == iptables.IPv4 && len(e) == 7 && slices.Equal(r.Comments, []string{guardComment}) {
		meta, ok1 := e[0].(*expr.Meta)
		ifc, ok2 := e[1].(*expr.Cmp)
		pl, ok3 := e[2].(*expr.Payload)
		dst, ok4 := e[3].(*expr.Cmp)
		cm, ok5 := e[4].(*expr.Match)
		ct, ok6 := e[5].(*expr.Match)
		v, ok7 := e[6].(*expr.Verdict)
		if ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 &&
			meta.Key == expr.MetaKeyIIFNAME && ifc.Register == meta.Register && ifc.Op == expr.CmpOpNeq && string(ifc.Data) == "lo\x00" &&
			pl.Base == expr.PayloadBaseNetworkHeader && pl.Offset == 16 && pl.Len == 1 &&
			dst.Register == pl.DestRegister && dst.Op == expr.CmpOpEq && slices.Equal(dst.Data, []byte{127}) &&
			cm.Name == "comment" && ct.Name == "conntrack" && guardConntrack(ct) &&
			v.Kind == expr.VerdictDrop {
			return guardRule, true
		}
	}
	return "", false
}

// plainMasquerade reports whether a MASQUERADE target has no options.
func plainMasquerade(info xt.InfoAny) bool {
	switch x := info.(type) {
	case *xt.NatIPv4MultiRangeCompat:
		if len(*x) != 1 {
			return false
		}
		r := (*x)[0]
		return r.Flags == 0 && (len(r.MinIP) == 0 || r.MinIP.IsUnspecified()) &&
			(len(r.MaxIP) == 0 || r.MaxIP.IsUnspecified()) && r.MinPort == 0 && r.MaxPort == 0
	case *xt.Unknown:
		for _, b := range *x {
			if b != 0 {
				return false
			}
		}
		return true
	}
	return false
}

// guardConntrack reports whether the match is exactly
// "! --ctstate RELATED,ESTABLISHED,DNAT".
func guardConntrack(m *expr.Match) bool {
	states, invert, ok := iptables.CtState(m)
	return ok && invert && states == iptables.CtStateRelated|iptables.CtStateEstablished|iptables.CtStateDNAT
}

// removeNFT is removeIn over netlink: it reads the entry chains and the
// pod's chains and deletes what planRemove would (the rules that jump to
// the chains, then the chains) by handle, in one transaction. A DEL with
// nothing to delete runs no process; one with something runs none either.
// false when it declined or the transaction failed (nothing changed then):
// the caller takes the iptables path.
func removeNFT(f iptables.Family, entries, chains []string) bool {
	nt, err := iptables.ReadNFT(f, "nat", append(slices.Clip(entries), chains...)...)
	if err != nil {
		return false
	}
	rules, drop, ok := planRemoveNFT(nt, entries, chains)
	if !ok {
		return false
	}
	if len(rules) == 0 && len(drop) == 0 {
		return true
	}
	return iptables.DeleteNFT(f, nt, rules, drop) == nil
}

// planRemoveNFT is planRemove for a table read over netlink: the rules
// (by handle) that jump to chains, and those of chains that exist. ok is
// false when a chain read is one iptables could not list, or when a chain
// to delete jumps to another (planRemove would delete that rule after its
// chain, which fails).
func planRemoveNFT(nt *iptables.NFTTable, entries, chains []string) (rules []iptables.NFTRuleRef, drop []string, ok bool) {
	for _, name := range append(slices.Clip(entries), chains...) {
		c := nt.Chain(name)
		if c == nil {
			continue
		}
		if !c.Compatible {
			return nil, nil, false
		}
		for _, r := range c.Rules {
			if !slices.Contains(chains, r.Target) {
				continue
			}
			if slices.Contains(chains, name) {
				return nil, nil, false
			}
			rules = append(rules, iptables.NFTRuleRef{Chain: name, Handle: r.Handle})
		}
	}
	for _, name := range chains {
		if nt.Chain(name) != nil {
			drop = append(drop, name)
		}
	}
	return rules, drop, true
}
