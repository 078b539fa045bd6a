package firewall

import (
	"fmt"

	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/iptables"
)

// With iptables-nft, ADD and DEL read CNI-FORWARD (and FORWARD and the
// admin chain) over netlink instead of one "iptables -S" per chain, when
// every rule they must tell apart is of a shape printed here exactly;
// otherwise they take the iptables path. See portmap's iptnft.go.

// stateOfNFT reads ADD's addState over netlink; ok is false when any part
// of it is not positively known.
func stateOfNFT(a *attachment, f iptables.Family) (s addState, ok bool) {
	t, err := iptables.ReadNFT(f, "filter", addChains(a)...)
	if err != nil {
		return s, false
	}
	return stateFromNFT(t, a, f)
}

// stateFromNFT is stateOfTable for a table read over netlink.
func stateFromNFT(t *iptables.NFTTable, a *attachment, f iptables.Family) (s addState, ok bool) {
	ok = true
	know := func(v, known bool) bool {
		ok = ok && known
		return v
	}
	know2 := func(v map[string][]uint64, known bool) map[string][]uint64 {
		ok = ok && known
		return v
	}
	has := func(chain, want string) bool {
		return know(t.Chain(chain).Has(want, func(r iptables.NFTRule) (string, bool) { return render(r, f) }))
	}
	s = addState{chains: map[string]bool{}, podRules: map[string]bool{}}
	for _, c := range []string{forwardChain, a.Admin} {
		s.chains[c] = t.Chain(c) != nil
	}
	s.forwardJump = has("FORWARD", forwardJump)
	s.adminJump = has(forwardChain, fmt.Sprintf(adminJumpFmt, a.Admin))
	var wants []string
	for _, ip := range a.IPs {
		if familyOf(ip) == f {
			wants = append(wants, podRules(ip)...)
		}
	}
	found := know2(t.Chain(forwardChain).FindAll(wants, func(r iptables.NFTRule) (string, bool) { return render(r, f) }))
	for _, w := range wants {
		s.podRules[w] = len(found[w]) > 0
	}
	return s, ok
}

// delNFT is DEL over netlink: it deletes the pod's rules from CNI-FORWARD
// by handle in one transaction (a DEL with nothing to delete changes
// nothing), false when it declined or failed (nothing changed then).
func delNFT(a *attachment, f iptables.Family) bool {
	t, err := iptables.ReadNFT(f, "filter", forwardChain)
	if err != nil {
		return false
	}
	var wants []string
	for _, ip := range a.IPs {
		if familyOf(ip) == f {
			wants = append(wants, podRules(ip)...)
		}
	}
	found, known := t.Chain(forwardChain).FindAll(wants, func(r iptables.NFTRule) (string, bool) { return render(r, f) })
	if !known {
		return false
	}
	var refs []iptables.NFTRuleRef
	used := map[string]bool{}
	for _, w := range wants {
		if used[w] {
			// The same address twice: the iptables path would delete
			// the rule twice, and fail.
			return false
		}
		used[w] = true
		for _, h := range found[w] {
			refs = append(refs, iptables.NFTRuleRef{Chain: forwardChain, Handle: h})
		}
	}
	if len(refs) == 0 {
		return true
	}
	return iptables.DeleteNFT(f, t, refs, nil) == nil
}

// render prints the rules of FORWARD and CNI-FORWARD that ADD and DEL
// look for as iptables -S does, for the exact shapes iptables-nft 1.8
// writes them in; ok is false for anything else.
func render(r iptables.NFTRule, f iptables.Family) (string, bool) {
	if r.Userdata {
		return "", false
	}
	e := r.Exprs
	switch {
	// -m comment --comment C -j CHAIN
	case len(e) == 2 && len(r.Comments) == 1:
		m, ok1 := e[0].(*expr.Match)
		v, ok2 := e[1].(*expr.Verdict)
		if ok1 && ok2 && m.Name == "comment" && v.Kind == expr.VerdictJump {
			return "-m comment --comment " + iptables.SaveString(r.Comments[0]) + " -j " + v.Chain, true
		}
	// -s ADDR -j ACCEPT
	case len(e) == 3 && len(r.Comments) == 0:
		p, ok1 := e[0].(*expr.Payload)
		c, ok2 := e[1].(*expr.Cmp)
		v, ok3 := e[2].(*expr.Verdict)
		if ok1 && ok2 && ok3 && v.Kind == expr.VerdictAccept {
			if addr, ok := iptables.AddrMatch(p, c, f); ok {
				return addr + " -j ACCEPT", true
			}
		}
	// -d ADDR -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
	case len(e) == 4 && len(r.Comments) == 0:
		p, ok1 := e[0].(*expr.Payload)
		c, ok2 := e[1].(*expr.Cmp)
		m, ok3 := e[2].(*expr.Match)
		v, ok4 := e[3].(*expr.Verdict)
		if ok1 && ok2 && ok3 && ok4 && v.Kind == expr.VerdictAccept {
			addr, ok := iptables.AddrMatch(p, c, f)
			states, invert, isCt := iptables.CtState(m)
			if ok && isCt && !invert && states == iptables.CtStateRelated|iptables.CtStateEstablished {
				return addr + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", true
			}
		}
	}
	return "", false
}
