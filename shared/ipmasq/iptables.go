package ipmasq

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
)

func family(ip net.IP) iptables.Family {
	if ip.To4() != nil {
		return iptables.IPv4
	}
	return iptables.IPv6
}

func available(f iptables.Family) bool {
	name := "iptables-save"
	if f == iptables.IPv6 {
		name = "ip6tables-save"
	}
	_, err := exec.LookPath(name)
	return err == nil
}

// natRules is the nat table of one family as iptables-save prints it.
type natRules []string

func saveNAT(f iptables.Family) (natRules, error) {
	out, err := iptables.Save(f, "nat")
	if err != nil {
		return nil, err
	}
	return strings.Split(out, "\n"), nil
}

func (n natRules) hasChain(chain string) bool {
	for _, l := range n {
		if strings.HasPrefix(l, ":"+chain+" ") {
			return true
		}
	}
	return false
}

// jumps returns the POSTROUTING rules that jump to chain.
func (n natRules) jumps(chain string) []string {
	var out []string
	for _, l := range n {
		if strings.HasPrefix(l, "-A POSTROUTING ") && jumpsTo(l, chain) {
			out = append(out, l)
		}
	}
	return out
}

func jumpsTo(line, chain string) bool {
	return strings.HasSuffix(line, " -j "+chain) || strings.Contains(line, " -j "+chain+" ")
}

// setupIPT writes the rules, the IPv4 ones through v4 when the caller
// started that process early (nil: start one now).
func setupIPT(a Attachment, ips []*net.IPNet, v4 *iptables.Restore) error {
	for f, b := range setupBatches(a, ips) {
		apply := func() error { return iptables.Apply(f, b) }
		if f == iptables.IPv4 && v4 != nil {
			apply = func() error { return v4.Apply(b) }
		}
		if err := apply(); err != nil {
			return fmt.Errorf("ipMasq: %w", err)
		}
	}
	return nil
}

// setupBatches are the nat batches of setupIPT, by family.
func setupBatches(a Attachment, ips []*net.IPNet) map[iptables.Family]*iptables.Batch {
	chain := ChainName(a.Network, a.ContainerID)
	comment := strconv.Quote(Comment(a.Network, a.ContainerID))
	byFamily := map[iptables.Family][]*net.IPNet{}
	for _, ipn := range ips {
		byFamily[family(ipn.IP)] = append(byFamily[family(ipn.IP)], ipn)
	}
	out := map[iptables.Family]*iptables.Batch{}
	for f, ipns := range byFamily {
		// No iptables-save first: a new attachment has no rules, and the
		// chain is declared (so emptied) anyway. Only the jumps from
		// POSTROUTING of an earlier ADD of the same attachment would stay
		// twice; teardown removes every one of them.
		b := iptables.NewBatch("nat")
		b.Chain(chain)
		for _, ipn := range ipns {
			b.Rule("-A %s -d %s -m comment --comment %s -j ACCEPT", chain, subnet(ipn), comment)
		}
		b.Rule("-A %s ! -d %s -m comment --comment %s -j MASQUERADE", chain, multicast(ipns[0].IP), comment)
		for _, ipn := range ipns {
			b.Rule("-A POSTROUTING -s %s -m comment --comment %s -j %s", ipn.IP, comment, chain)
		}
		out[f] = b
	}
	return out
}

func checkIPT(a Attachment, ips []*net.IPNet) error {
	if checkIPTNFT(a, ips) {
		return nil
	}
	return checkIPTSave(a, ips)
}

// checkIPTNFT reports that checkIPTSave would pass, from the nat table
// read over netlink when iptables is iptables-nft: the chain exists and
// POSTROUTING jumps to it from each address. The whole table must be one
// iptables can list, as iptables-save prints nothing of it otherwise.
// false when it cannot tell: then checkIPTSave runs and says what fails.
func checkIPTNFT(a Attachment, ips []*net.IPNet) bool {
	chain := ChainName(a.Network, a.ContainerID)
	tables := map[iptables.Family]*iptables.NFTTable{}
	srcs := map[iptables.Family]map[string]bool{}
	for _, ipn := range ips {
		f := family(ipn.IP)
		t := tables[f]
		if t == nil {
			if !iptables.NFT(f) {
				return false
			}
			var err error
			if t, err = iptables.ReadNFTTable(f, "nat"); err != nil {
				return false
			}
			for _, c := range t.Chains() {
				if !t.Chain(c).Compatible {
					return false
				}
			}
			tables[f] = t
		}
		post := t.Chain("POSTROUTING")
		if t.Chain(chain) == nil || post == nil {
			return false
		}
		if srcs[f] == nil {
			// The jumps' sources, once per family: one look-up per
			// address, not a scan of POSTROUTING per address.
			srcs[f] = map[string]bool{}
			for _, r := range post.Rules {
				if r.Target == chain && !r.Goto {
					for _, a := range sources(r, f) {
						srcs[f][a] = true
					}
				}
			}
		}
		if !srcs[f][ipn.IP.String()] {
			return false
		}
	}
	return true
}

// hasSource reports whether the rule matches source address ip (any
// prefix length), as iptables-save would print " -s IP/LEN".
func hasSource(r iptables.NFTRule, ip net.IP, f iptables.Family) bool {
	return slices.Contains(sources(r, f), ip.String())
}

// sources returns the source addresses a rule matches ("-s A/len": A).
func sources(r iptables.NFTRule, f iptables.Family) []string {
	var out []string
	for i := 0; i+1 < len(r.Exprs); i++ {
		p, ok1 := r.Exprs[i].(*expr.Payload)
		c, ok2 := r.Exprs[i+1].(*expr.Cmp)
		if !ok1 || !ok2 {
			continue
		}
		if m, ok := iptables.AddrMatch(p, c, f); ok {
			if rest, ok := strings.CutPrefix(m, "-s "); ok {
				if a, _, ok := strings.Cut(rest, "/"); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out
}

// checkIPTSave is checkIPT from iptables-save's output.
func checkIPTSave(a Attachment, ips []*net.IPNet) error {
	chain := ChainName(a.Network, a.ContainerID)
	saved := map[iptables.Family]natRules{}
	srcs := map[iptables.Family]map[string]bool{}
	for _, ipn := range ips {
		f := family(ipn.IP)
		if saved[f] == nil {
			rules, err := saveNAT(f)
			if err != nil {
				return fmt.Errorf("ipMasq: %w", err)
			}
			saved[f] = rules
		}
		if !saved[f].hasChain(chain) {
			return fmt.Errorf("ipMasq: nat chain %s is missing", chain)
		}
		if srcs[f] == nil {
			srcs[f] = map[string]bool{}
			for _, l := range saved[f].jumps(chain) {
				if fields := strings.Fields(l); len(fields) > 3 && fields[2] == "-s" {
					a, _, _ := strings.Cut(fields[3], "/")
					srcs[f][a] = true
				}
			}
		}
		if !srcs[f][ipn.IP.String()] {
			return fmt.Errorf("ipMasq: POSTROUTING has no rule for %s to %s", ipn.IP, chain)
		}
	}
	return nil
}

// teardownIPT removes the attachment's chain and the POSTROUTING rules
// that jump to it, found in iptables-save's output so that neither the
// pod's addresses nor its netns are needed. sel says which jumps are the
// attachment's when another interface of the container shares the chain.
func teardownIPT(a Attachment, sel jumps) error {
	chain := ChainName(a.Network, a.ContainerID)
	comment := strconv.Quote(Comment(a.Network, a.ContainerID))
	families := []iptables.Family{iptables.IPv4, iptables.IPv6}
	byFamily := map[iptables.Family][]*net.IPNet{}
	if len(sel.ips) > 0 {
		families = nil
		for _, ipn := range sel.ips {
			f := family(ipn.IP)
			if byFamily[f] == nil {
				families = append(families, f)
			}
			byFamily[f] = append(byFamily[f], ipn)
		}
	}
	var errs []error
	for _, f := range families {
		if !available(f) {
			continue
		}
		fsel := jumps{ips: byFamily[f], keep: sel.keep}.indexed()
		if iptables.NFT(f) && teardownIPTNFT(f, chain, fsel) {
			continue
		}
		errs = append(errs, teardownIn(f, chain, comment, fsel))
	}
	return errors.Join(errs...)
}

// jumps says which POSTROUTING jumps to an attachment's chain are its
// own. The chain is one per network and container ID (the reference's
// name), so two interfaces of one container on one network share it.
type jumps struct {
	// ips are the attachment's addresses (DEL's prevResult, the result
	// ADD set up): the jumps from them. None: every jump but keep's.
	ips []*net.IPNet
	// keep are the addresses of the pod's other interfaces, whose jumps
	// stay, and with them the chain.
	keep []net.IP
	// set holds ips (or, without ips, keep) as strings, made by indexed:
	// a look-up per rule instead of a scan of thousands of addresses.
	set map[string]bool
}

// indexed returns s with its look-up set made.
func (s jumps) indexed() jumps {
	s.set = map[string]bool{}
	if len(s.ips) > 0 {
		for _, ipn := range s.ips {
			s.set[ipn.IP.String()] = true
		}
	} else {
		for _, ip := range s.keep {
			s.set[ip.String()] = true
		}
	}
	return s
}

// listed reports whether source is among ips (or keep, without ips).
func (s jumps) listed(source string) bool {
	if s.set != nil {
		return s.set[source]
	}
	if len(s.ips) > 0 {
		for _, ipn := range s.ips {
			if ipn.IP.String() == source {
				return true
			}
		}
		return false
	}
	for _, ip := range s.keep {
		if ip.String() == source {
			return true
		}
	}
	return false
}

// mine reports whether a jump from source (an address) is the attachment's.
func (s jumps) mine(source net.IP) bool {
	if len(s.ips) > 0 {
		return s.listed(source.String())
	}
	return !s.listed(source.String())
}

// all says that every jump is the attachment's: nothing to tell apart.
func (s jumps) all() bool { return len(s.ips) == 0 && len(s.keep) == 0 }

// mineNFT is mine for a rule read over netlink.
func (s jumps) mineNFT(r iptables.NFTRule, f iptables.Family) bool {
	if s.all() {
		return true
	}
	for _, src := range sources(r, f) {
		if s.listed(src) {
			return len(s.ips) > 0
		}
	}
	return len(s.ips) == 0
}

// mineSaved is mine for a line of iptables-save ("-A POSTROUTING -s
// 10.0.0.2/32 ..."); a jump without a source is the attachment's.
func (s jumps) mineSaved(line string) bool {
	fields := strings.Fields(line)
	if s.all() || len(fields) < 4 || fields[2] != "-s" {
		return true
	}
	ip, _, err := net.ParseCIDR(fields[3])
	if err != nil {
		ip = net.ParseIP(fields[3])
	}
	return ip == nil || s.mine(ip)
}

// teardownIPTNFT is teardownIPT with iptables-nft, over netlink: it deletes the
// POSTROUTING rules that jump to the chain (by handle) and the chain in one
// transaction, no process; what removeChains ends with. Only the jumps sel
// picks go, and the chain only when no other jump to it is left. false
// when it declined (a chain iptables could not list, a goto) or the
// transaction failed (the chain is still used elsewhere, say), nothing
// changed then.
func teardownIPTNFT(f iptables.Family, chain string, sel jumps) bool {
	nt, err := iptables.ReadNFT(f, "nat", "POSTROUTING", chain)
	if err != nil {
		return false
	}
	var refs []iptables.NFTRuleRef
	var drop []string
	if c := nt.Chain(chain); c != nil {
		if !c.Compatible {
			return false
		}
		drop = append(drop, chain)
	}
	if post := nt.Chain("POSTROUTING"); post != nil {
		if !post.Compatible {
			return false
		}
		others := 0
		for _, r := range post.Rules {
			if r.Target == chain {
				if r.Goto {
					return false // iptables-save's -g: removeChains leaves it
				}
				if !sel.mineNFT(r, f) {
					others++
					continue
				}
				refs = append(refs, iptables.NFTRuleRef{Chain: "POSTROUTING", Handle: r.Handle})
			}
		}
		if others > 0 {
			drop = nil
		}
	}
	if len(refs) == 0 && len(drop) == 0 {
		return true
	}
	return iptables.DeleteNFT(f, nt, refs, drop) == nil
}

// teardownIn is teardown of one family with iptables processes.
func teardownIn(f iptables.Family, chain, comment string, sel jumps) error {
	if len(sel.ips) > 0 {
		// The fast path: exactly the rules ADD made, in one restore.
		b := iptables.NewBatch("nat")
		for _, ipn := range sel.ips {
			b.Rule("-D POSTROUTING -s %s -m comment --comment %s -j %s", ipn.IP, comment, chain)
		}
		b.Chain(chain)
		b.Rule("-X %s", chain)
		if iptables.Apply(f, b) == nil {
			return nil
		}
		// A rule was gone already, or another interface of the container
		// on this network still jumps to the chain: remove what is there
		// of these addresses' jumps, and the chain only if unused.
		return removeJumps(f, chain, sel)
	}
	if !sel.all() {
		return removeJumps(f, chain, sel)
	}
	return removeChains(f, func(rules natRules) []string {
		if rules.hasChain(chain) || len(rules.jumps(chain)) > 0 {
			return []string{chain}
		}
		return nil
	})
}

// undoIPT is Undo's iptables part: per family of ips, the POSTROUTING
// jumps to the attachment's chain from those addresses, then the chain
// if nothing else jumps to it.
func undoIPT(a Attachment, ips []*net.IPNet) error {
	chain := ChainName(a.Network, a.ContainerID)
	byFamily := map[iptables.Family][]*net.IPNet{}
	for _, ipn := range ips {
		byFamily[family(ipn.IP)] = append(byFamily[family(ipn.IP)], ipn)
	}
	var errs []error
	for f, fips := range byFamily {
		if available(f) {
			errs = append(errs, removeJumps(f, chain, jumps{ips: fips}.indexed()))
		}
	}
	return errors.Join(errs...)
}

// removeJumps deletes the POSTROUTING jumps to chain that sel picks, and
// the chain when no other jump to it is left, in one iptables-restore
// after one iptables-save (retried once when the table changed between).
func removeJumps(f iptables.Family, chain string, sel jumps) error {
	var err error
	for try := 0; try < 2; try++ {
		var rules natRules
		if rules, err = saveNAT(f); err != nil {
			break
		}
		b := iptables.NewBatch("nat")
		others := 0
		for _, j := range rules.jumps(chain) {
			if sel.mineSaved(j) {
				b.Rule("-D%s", strings.TrimPrefix(j, "-A"))
			} else {
				others++
			}
		}
		if others == 0 && rules.hasChain(chain) {
			b.Chain(chain)
			b.Rule("-X %s", chain)
		}
		if b.Empty() {
			return nil
		}
		if err = iptables.Apply(f, b); err == nil {
			return nil
		}
	}
	return fmt.Errorf("ipMasq teardown: %w", err)
}

// removeChains deletes the chains pick chooses and every POSTROUTING rule
// jumping to them in one iptables-restore. It retries once when the table
// changed between the save and the restore.
func removeChains(f iptables.Family, pick func(natRules) []string) error {
	var err error
	for try := 0; try < 2; try++ {
		var rules natRules
		rules, err = saveNAT(f)
		if err != nil {
			return fmt.Errorf("ipMasq teardown: %w", err)
		}
		chains := pick(rules)
		if len(chains) == 0 {
			return nil
		}
		b := iptables.NewBatch("nat")
		for _, c := range chains {
			for _, j := range rules.jumps(c) {
				b.Rule("-D%s", strings.TrimPrefix(j, "-A"))
			}
		}
		for _, c := range chains {
			if rules.hasChain(c) {
				b.Chain(c) // flushes it, so that -X may delete it
				b.Rule("-X %s", c)
			}
		}
		if err = iptables.Apply(f, b); err == nil {
			return nil
		}
	}
	return fmt.Errorf("ipMasq teardown: %w", err)
}

// commentRE is compiled on first use (GC), not at start-up of every applet.
var commentRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`--comment "name: \\"([^"\\]*)\\" id: \\"([^"\\]*)\\""`)
})

// gcIPT removes the chains of the network whose container is not among
// the valid attachments. A chain is the network's when a rule in it or
// jumping to it carries the network's comment and its name is the hash of
// that network and container ID, so nothing else is ever touched.
func gcIPT(network string, valid map[cni.Attachment]bool) error {
	validCID := map[string]bool{}
	for a := range valid {
		validCID[a.ContainerID] = true
		validCID[cni.HashField(a.ContainerID)] = true
	}
	var errs []error
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if !available(f) {
			continue
		}
		errs = append(errs, removeChains(f, func(rules natRules) []string {
			stale := map[string]bool{}
			for _, l := range rules {
				m := commentRE().FindStringSubmatch(l)
				if m == nil || (m[1] != network && m[1] != commentNetwork(network)) || validCID[m[2]] {
					continue
				}
				if strings.HasPrefix(m[2], "#") {
					// A long container ID, hashed (Comment): the chain
					// is the one the rule is in or jumps to.
					if chain := hashedChain(l); chain != "" {
						stale[chain] = true
					}
					continue
				}
				chain := ChainName(network, m[2])
				if strings.HasPrefix(l, "-A "+chain+" ") || jumpsTo(l, chain) {
					stale[chain] = true
				}
			}
			var out []string
			for c := range stale {
				out = append(out, c)
			}
			return out
		}))
	}
	return errors.Join(errs...)
}

// hashedChain is the attachment chain a rule with a hashed comment is in
// or jumps to: "CNI-" and 24 hex digits, as ChainName makes them.
func hashedChain(l string) string {
	f := strings.Fields(l)
	for i, w := range f {
		if (w == "-A" || w == "-j") && i+1 < len(f) && len(f[i+1]) == 28 && strings.HasPrefix(f[i+1], "CNI-") {
			return f[i+1]
		}
	}
	return ""
}
