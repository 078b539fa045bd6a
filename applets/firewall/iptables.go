package firewall

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/cnibox/cnibox/shared/iptables"
)

// The reference's chains (filter table) and rules, written as iptables-save
// prints them so that ADD can tell what exists and CHECK can compare text.
const (
	forwardChain = "CNI-FORWARD"
	stage1       = "CNI-ISOLATION-STAGE-1"
	stage2       = "CNI-ISOLATION-STAGE-2"

	forwardJump   = `-m comment --comment "CNI firewall plugin rules" -j ` + forwardChain
	adminJumpFmt  = `-m comment --comment "CNI firewall plugin admin overrides" -j %s`
	policyComment = `-m comment --comment "CNI firewall plugin rules (ingressPolicy: %s)"`
	anyPolicy     = `-m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)"`
	stage1Jump    = anyPolicy + " -j " + stage1
	returnRule    = anyPolicy + " -j RETURN"
)

func podRules(ip netip.Prefix) []string {
	return []string{
		fmt.Sprintf("-d %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", ip),
		fmt.Sprintf("-s %s -j ACCEPT", ip),
	}
}

func familyOf(p netip.Prefix) iptables.Family {
	if p.Addr().Is4() {
		return iptables.IPv4
	}
	return iptables.IPv6
}

// families returns the families of a's addresses, IPv4 first.
func (a *attachment) families() []iptables.Family {
	var out []iptables.Family
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		for _, ip := range a.IPs {
			if familyOf(ip) == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

type iptBackend struct{}

// usable lists one small chain: cheap even on a node with a huge table
// (STATUS runs often).
func (iptBackend) usable() error {
	if !iptables.Installed(iptables.IPv4) {
		return fmt.Errorf("iptables-restore is not installed")
	}
	return iptables.CanList(iptables.IPv4, "filter", "FORWARD")
}

// apply runs plan against each family of a's addresses, with the chains it
// looks at listed (concurrently, never the whole table), then at most one
// iptables-restore per family, under cnibox's lock. fast, when given, is
// tried first with iptables-nft: it returns the batch without listing (or
// does the change itself and returns an empty batch), ok false to decline.
// With early, each family's iptables-restore starts before the lock is
// taken and the chains are read (ADD always ends in one, and its start-up
// then overlaps with the reads).
func apply(a *attachment, chains []string, early bool, fast func(f iptables.Family) (*iptables.Batch, bool), plan func(t *iptables.Table, f iptables.Family, b *iptables.Batch)) error {
	restores := map[iptables.Family]*iptables.Restore{}
	for _, f := range a.families() {
		if early && iptables.Installed(f) {
			restores[f] = iptables.StartRestore(f)
			defer restores[f].Close()
		}
	}
	applyIn := func(f iptables.Family, b *iptables.Batch) error {
		if r := restores[f]; r != nil {
			return r.Apply(b)
		}
		return iptables.Apply(f, b)
	}
	unlock, err := iptables.Lock("firewall")
	if err != nil {
		return err
	}
	defer unlock()
	for _, f := range a.families() {
		if !iptables.Installed(f) {
			continue
		}
		if fast != nil && iptables.NFT(f) {
			if b, ok := fast(f); ok {
				if err := applyIn(f, b); err != nil {
					return err
				}
				continue
			}
		}
		t, err := iptables.LoadChains(f, "filter", chains...)
		if err != nil {
			return err
		}
		b := iptables.NewBatch("filter")
		plan(t, f, b)
		if err := applyIn(f, b); err != nil {
			return err
		}
	}
	return nil
}

func (iptBackend) add(a *attachment) error {
	fast := func(f iptables.Family) (*iptables.Batch, bool) {
		s, ok := stateOfNFT(a, f)
		if !ok {
			return nil, false
		}
		b := iptables.NewBatch("filter")
		planFrom(s, a, f, b)
		return b, true
	}
	return apply(a, addChains(a), true, fast, func(t *iptables.Table, f iptables.Family, b *iptables.Batch) { planAdd(t, a, f, b) })
}

// addChains are the chains ADD reads.
func addChains(a *attachment) []string { return []string{"FORWARD", forwardChain, a.Admin} }

func planAdd(t *iptables.Table, a *attachment, f iptables.Family, b *iptables.Batch) {
	planFrom(stateOfTable(t, a, f), a, f, b)
}

// addState is what ADD needs to know of one family's filter chains.
type addState struct {
	chains                 map[string]bool // of CNI-FORWARD and the admin chain, those that exist
	forwardJump, adminJump bool
	podRules               map[string]bool // of the pod's rules, those CNI-FORWARD has
}

// stateOfTable reads the addState from the listed chains.
func stateOfTable(t *iptables.Table, a *attachment, f iptables.Family) addState {
	s := addState{chains: map[string]bool{}, podRules: map[string]bool{}}
	for _, c := range []string{forwardChain, a.Admin} {
		s.chains[c] = t.HasChain(c)
	}
	s.forwardJump = slices.Contains(t.Rules("FORWARD"), forwardJump)
	s.adminJump = slices.Contains(t.Rules(forwardChain), fmt.Sprintf(adminJumpFmt, a.Admin))
	have := map[string]bool{}
	for _, r := range t.Rules(forwardChain) {
		have[r] = true
	}
	for _, ip := range a.IPs {
		if familyOf(ip) == f {
			for _, r := range podRules(ip) {
				s.podRules[r] = have[r]
			}
		}
	}
	return s
}

// planFrom computes ADD's batch from the state of the chains.
func planFrom(s addState, a *attachment, f iptables.Family, b *iptables.Batch) {
	for _, c := range []string{forwardChain, a.Admin} {
		if !s.chains[c] {
			b.Chain(c)
		}
	}
	if !s.forwardJump {
		b.Rule("-I FORWARD 1 %s", forwardJump)
	}
	if !s.adminJump {
		b.Rule("-I %s 1 %s", forwardChain, fmt.Sprintf(adminJumpFmt, a.Admin))
	}
	for _, ip := range a.IPs {
		if familyOf(ip) != f {
			continue
		}
		for _, r := range podRules(ip) {
			if !s.podRules[r] {
				b.Rule("-A %s %s", forwardChain, r)
			}
		}
	}
}

func (iptBackend) del(a *attachment) error {
	fast := func(f iptables.Family) (*iptables.Batch, bool) { return iptables.NewBatch("filter"), delNFT(a, f) }
	return apply(a, []string{forwardChain}, false, fast, func(t *iptables.Table, f iptables.Family, b *iptables.Batch) { planDel(t, a, f, b) })
}

// planDel deletes each of the pod's rules as many times as the chain has
// it: one pass over the chain, then one look-up per rule (a pod with
// thousands of addresses made the nested loop quadratic).
func planDel(t *iptables.Table, a *attachment, f iptables.Family, b *iptables.Batch) {
	have := map[string]int{}
	for _, r := range t.Rules(forwardChain) {
		have[r]++
	}
	for _, ip := range a.IPs {
		if familyOf(ip) != f {
			continue
		}
		for _, r := range podRules(ip) {
			for ; have[r] > 0; have[r]-- {
				b.Rule("-D %s %s", forwardChain, r)
			}
		}
	}
}

func (iptBackend) check(a *attachment) error {
	for _, f := range a.families() {
		fwd := []string{fmt.Sprintf(adminJumpFmt, a.Admin)}
		for _, ip := range a.IPs {
			if familyOf(ip) == f {
				fwd = append(fwd, podRules(ip)...)
			}
		}
		wants := []iptables.Want{{Chain: a.Admin}, {Chain: "FORWARD", Rules: []string{forwardJump}}, {Chain: forwardChain, Rules: fwd}}
		if iptables.HoldsNFT(f, "filter", wants) {
			continue // read in process: no iptables to run
		}
		t, err := iptables.LoadChains(f, "filter", "FORWARD", forwardChain, a.Admin)
		if err != nil {
			return err
		}
		if !t.HasChain(a.Admin) {
			return fmt.Errorf("%s: chain %s is missing", f.Name(), a.Admin)
		}
		for _, w := range wants {
			// A set per chain: a pod with thousands of addresses has
			// thousands of rules to look up.
			have := map[string]bool{}
			for _, r := range t.Rules(w.Chain) {
				have[r] = true
			}
			for _, r := range w.Rules {
				if !have[r] {
					return fmt.Errorf("%s: chain %s has no rule %q", f.Name(), w.Chain, r)
				}
			}
		}
	}
	return nil
}

// isolationRules are the bridge's rules in the two stage chains.
func isolationRules(bridge, policy string) (s1, s2 []string) {
	c := fmt.Sprintf(policyComment, policy)
	s1 = []string{fmt.Sprintf("-i %s ! -o %s %s -j %s", bridge, bridge, c, stage2)}
	if policy == policyIsolated {
		s1 = append(s1, fmt.Sprintf("-i %s -o %s %s -j DROP", bridge, bridge, c))
	}
	s2 = []string{fmt.Sprintf("-o %s %s -j DROP", bridge, anyPolicy)}
	return s1, s2
}

func (iptBackend) isolate(a *attachment) error {
	return apply(a, []string{"FORWARD", stage1, stage2}, false, nil, func(t *iptables.Table, f iptables.Family, b *iptables.Batch) {
		for _, c := range []string{stage1, stage2} {
			if !t.HasChain(c) {
				b.Chain(c)
			}
		}
		if !slices.Contains(t.Rules("FORWARD"), stage1Jump) {
			b.Rule("-I FORWARD 1 %s", stage1Jump)
		}
		s1, s2 := isolationRules(a.Bridge, a.Policy)
		for _, x := range []struct {
			chain string
			rules []string
		}{{stage1, s1}, {stage2, s2}} {
			for _, r := range x.rules {
				if !slices.Contains(t.Rules(x.chain), r) {
					b.Rule("-I %s 1 %s", x.chain, r)
				}
			}
			if !slices.Contains(t.Rules(x.chain), returnRule) {
				b.Rule("-A %s %s", x.chain, returnRule)
			}
		}
	})
}

// unisolate removes the bridge's rules; the stage chains and their jump
// stay, as shared base chains.
func (iptBackend) unisolate(a *attachment) error {
	all := &attachment{IPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("::/128")}}
	return apply(all, []string{stage1, stage2}, false, nil, func(t *iptables.Table, f iptables.Family, b *iptables.Batch) {
		done := map[string]bool{}
		for _, policy := range []string{policySameBridge, policyIsolated} {
			s1, s2 := isolationRules(a.Bridge, policy)
			for _, x := range []struct {
				chain string
				rules []string
			}{{stage1, s1}, {stage2, s2}} {
				for _, r := range x.rules {
					if slices.Contains(t.Rules(x.chain), r) && !done[x.chain+r] {
						done[x.chain+r] = true
						b.Rule("-D %s %s", x.chain, r)
					}
				}
			}
		}
	})
}

func (iptBackend) checkIsolation(a *attachment) error {
	s1, s2 := isolationRules(a.Bridge, a.Policy)
	for _, f := range a.families() {
		wants := []iptables.Want{{Chain: "FORWARD", Rules: []string{stage1Jump}}, {Chain: stage1, Rules: s1}, {Chain: stage2, Rules: s2}}
		if iptables.HoldsNFT(f, "filter", wants) {
			continue // read in process: no iptables to run
		}
		t, err := iptables.LoadChains(f, "filter", "FORWARD", stage1, stage2)
		if err != nil {
			return err
		}
		if !slices.Contains(t.Rules("FORWARD"), stage1Jump) {
			return fmt.Errorf("%s: FORWARD does not jump to %s", f.Name(), stage1)
		}
		for _, r := range s1 {
			if !slices.Contains(t.Rules(stage1), r) {
				return fmt.Errorf("%s: chain %s has no rule %q", f.Name(), stage1, r)
			}
		}
		for _, r := range s2 {
			if !slices.Contains(t.Rules(stage2), r) {
				return fmt.Errorf("%s: chain %s has no rule %q", f.Name(), stage2, r)
			}
		}
	}
	return nil
}
