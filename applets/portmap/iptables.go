package portmap

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
)

// The reference's chain names (nat table). They must never change: a node
// that switches between cnibox and the reference keeps its rules.
const (
	dnatChain    = "CNI-HOSTPORT-DNAT"    // PREROUTING, OUTPUT -> per-pod entry rules
	setMarkChain = "CNI-HOSTPORT-SETMARK" // marks connections to masquerade
	masqChain    = "CNI-HOSTPORT-MASQ"    // POSTROUTING: masquerades marked connections
	oldSNATChain = "CNI-HOSTPORT-SNAT"    // of old reference versions; torn down on DEL
	// guardChain (filter INPUT) is cnibox's: the martian guard for route_localnet.
	guardChain = "CNI-HOSTPORT-GUARD"
)

// The rules are written exactly as iptables-save prints them, so CHECK can
// compare text and ADD can tell which shared rules already exist.
const (
	topJump      = "-m addrtype --dst-type LOCAL -j " + dnatChain
	masqJump     = `-m comment --comment "CNI portfwd requiring masquerade" -j ` + masqChain
	guardJump    = "-j " + guardChain
	guardComment = "cnibox portmap: drop martians to 127.0.0.0/8 that route_localnet lets in"
	guardRule    = `-d 127.0.0.0/8 ! -i lo -m comment --comment "` + guardComment + `" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`
	setMarkFmt   = `-m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark %#x/%#x`
	masqRuleFmt  = "-m mark --mark %#x/%#x -j MASQUERADE"
	maxMultiport = 15
)

// chainName is the reference's per-container chain name: prefix plus the
// hex SHA-512 of network name and container ID, 28 characters in all.
func chainName(prefix, net, id string) string {
	sum := sha512.Sum512([]byte(net + id))
	return (prefix + hex.EncodeToString(sum[:]))[:28]
}

func dnChain(net, id string) string { return chainName("CNI-DN-", net, id) }

// comment is the reference's entry rule comment, as iptables-save quotes it.
func entryComment(net, id string) string {
	c := fmt.Sprintf(`dnat name: "%s" id: "%s"`, net, id)
	if len(c) > 255 {
		// The kernel keeps 255 bytes of a comment: the reference's
		// cut-short comment names nobody. Long names are hashed, as
		// in ipmasq.Comment, so that CHECK, DEL and GC still match.
		c = fmt.Sprintf(`dnat name: "%s" id: "%s"`, commentNetwork(net), cni.HashField(id))
	}
	return `"` + strings.ReplaceAll(c, `"`, `\"`) + `"`
}

// The regexps are compiled on first use, not at start-up of every applet.
var entryCommentRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`--comment "dnat name: \\"([^"\\]*)\\" id: \\"([^"\\]*)\\"`)
})

type iptBackend struct{}

// usable lists one small chain: cheap even on a node with a huge table
// (STATUS runs often).
func (iptBackend) usable() error {
	if !iptables.Installed(iptables.IPv4) {
		return fmt.Errorf("iptables-restore is not installed")
	}
	return iptables.CanList(iptables.IPv4, "nat", "OUTPUT")
}

// families returns the iptables families for the pod's addresses.
func (a *attachment) families() []iptables.Family {
	var out []iptables.Family
	if a.v4 != nil {
		out = append(out, iptables.IPv4)
	}
	if a.v6 != nil {
		out = append(out, iptables.IPv6)
	}
	return out
}

func (a *attachment) podNet(f iptables.Family) *net.IPNet {
	if f == iptables.IPv6 {
		return a.v6
	}
	return a.v4
}

// add writes the attachment's rules. The families are independent
// (iptables and ip6tables, each its own tables), so they run concurrently;
// like every exec of this applet they run in the process's netns, which is
// the runtime's.
func (iptBackend) add(a *attachment) error {
	// ADD always ends in one iptables-restore per family: they start
	// first, so that their start-up overlaps with the lock and the reads.
	fams := a.families()
	restores := make([]*iptables.Restore, len(fams))
	for i, f := range fams {
		restores[i] = iptables.StartRestore(f)
		defer restores[i].Close()
	}
	unlock, err := iptables.Lock("portmap")
	if err != nil {
		return err
	}
	defer unlock()
	errs := make([]error, len(fams))
	var wg sync.WaitGroup
	for i, f := range fams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nat, filter, err := planAddIn(a, f)
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = restores[i].Apply(nat, filter)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// planAddIn reads the family's chains and plans ADD's batches: over
// netlink when iptables is iptables-nft and every rule read is recognized,
// else by listing the chains with iptables.
func planAddIn(a *attachment, f iptables.Family) (nat, filter *iptables.Batch, err error) {
	if iptables.NFT(f) {
		if s, ok := stateOfNFT(a, f); ok {
			nat, filter = planFrom(s, a, f)
			return nat, filter, nil
		}
	}
	d, err := loadForAdd(a, f)
	if err != nil {
		return nil, nil, err
	}
	nat, filter = planAdd(d, a, f)
	return nat, filter, nil
}

// loadForAdd reads the chains ADD looks at (never the whole table: on a
// node with kube-proxy's rules iptables-save takes seconds), the nat and
// filter chains in one round.
func loadForAdd(a *attachment, f iptables.Family) (iptables.Dump, error) {
	d := iptables.Dump{}
	var filterErr error
	var wg sync.WaitGroup
	if f == iptables.IPv4 && a.snat {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d["filter"], filterErr = iptables.LoadChains(f, "filter", filterChains...)
		}()
	}
	nt, err := iptables.LoadChains(f, "nat", natChains...)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if filterErr != nil {
		return nil, filterErr
	}
	d["nat"] = nt
	return d, nil
}

// planAdd computes the nat (and for IPv4 with snat, filter) batch that
// brings the dump d to the attachment's rules, whatever part of them
// already exists (a repeated ADD replaces the pod's rules).
func planAdd(d iptables.Dump, a *attachment, f iptables.Family) (nat, filter *iptables.Batch) {
	return planFrom(stateOfDump(d, a, f), a, f)
}

// addState is what ADD needs to know of one family's chains: which of the
// shared chains, rules and jumps exist, and the pod's stale entry rules.
type addState struct {
	setMarkChain, setMarkRule             bool
	masqChain, masqRule, postroutingJump  bool
	dnatChain, preroutingJump, outputJump bool
	// stale are the rules of CNI-HOSTPORT-DNAT (as iptables -S prints
	// them) that jump to the pod's chain: a repeated ADD replaces them.
	stale                            []string
	guardChain, guardRule, inputJump bool
}

// stateOfDump reads the addState from the listed chains.
func stateOfDump(d iptables.Dump, a *attachment, f iptables.Family) addState {
	var s addState
	nt := d["nat"]
	if a.snat && a.markJump == setMarkChain {
		mark := uint32(1) << a.markBit
		s.setMarkChain = nt.HasChain(setMarkChain)
		s.setMarkRule = slices.Contains(nt.Rules(setMarkChain), fmt.Sprintf(setMarkFmt, mark, mark))
		s.masqChain = nt.HasChain(masqChain)
		s.masqRule = slices.Contains(nt.Rules(masqChain), fmt.Sprintf(masqRuleFmt, mark, mark))
		s.postroutingJump = jumpsTo(nt.Rules("POSTROUTING"), masqChain)
	}
	s.dnatChain = nt.HasChain(dnatChain)
	s.preroutingJump = jumpsTo(nt.Rules("PREROUTING"), dnatChain)
	s.outputJump = jumpsTo(nt.Rules("OUTPUT"), dnatChain)
	chain := dnChain(a.net, a.id)
	for _, r := range nt.Rules(dnatChain) {
		if iptables.Jumps(r, chain) {
			s.stale = append(s.stale, r)
		}
	}
	if f == iptables.IPv4 && a.snat {
		ft := d["filter"]
		s.guardChain = ft.HasChain(guardChain)
		s.guardRule = slices.Contains(ft.Rules(guardChain), guardRule)
		s.inputJump = jumpsTo(ft.Rules("INPUT"), guardChain)
	}
	return s
}

// planFrom computes ADD's batches from the state of the chains.
func planFrom(s addState, a *attachment, f iptables.Family) (nat, filter *iptables.Batch) {
	nat = iptables.NewBatch("nat")
	if a.snat && a.markJump == setMarkChain {
		mark := uint32(1) << a.markBit
		if !s.setMarkChain {
			nat.Chain(setMarkChain)
		}
		if !s.setMarkRule {
			nat.Rule("-A %s %s", setMarkChain, fmt.Sprintf(setMarkFmt, mark, mark))
		}
		if !s.masqChain {
			nat.Chain(masqChain)
		}
		if !s.masqRule {
			nat.Rule("-A %s %s", masqChain, fmt.Sprintf(masqRuleFmt, mark, mark))
		}
		// Prepended, as the reference does: bridge's and ptp's own
		// masquerade rules must not see these connections first.
		if !s.postroutingJump {
			nat.Rule("-I POSTROUTING 1 %s", masqJump)
		}
	}
	if !s.dnatChain {
		nat.Chain(dnatChain)
	}
	// Appended, never prepended (CVE-2019-9946): a host firewall's rules
	// in PREROUTING and OUTPUT come first.
	if !s.preroutingJump {
		nat.Rule("-A %s %s", "PREROUTING", topJump)
	}
	if !s.outputJump {
		nat.Rule("-A %s %s", "OUTPUT", topJump)
	}
	chain := dnChain(a.net, a.id)
	for _, r := range s.stale {
		nat.Rule("-D %s %s", dnatChain, r)
	}
	nat.Chain(chain) // created, or flushed when it exists
	for _, r := range dnRules(a, f) {
		nat.Rule("-A %s %s", chain, r)
	}
	for _, r := range entryRules(a, f) {
		nat.Rule("-A %s %s", dnatChain, r)
	}

	if f == iptables.IPv4 && a.snat {
		filter = iptables.NewBatch("filter")
		if !s.guardChain {
			filter.Chain(guardChain)
		}
		if !s.guardRule {
			filter.Rule("-A %s %s", guardChain, guardRule)
		}
		// First in INPUT: it only drops what must never be accepted.
		if !s.inputJump {
			filter.Rule("-I INPUT 1 %s", guardJump)
		}
	}
	return nat, filter
}

func jumpsTo(rules []string, chain string) bool {
	for _, r := range rules {
		if iptables.Jumps(r, chain) {
			return true
		}
	}
	return false
}

// entryRules are the pod's rules in CNI-HOSTPORT-DNAT: one per protocol
// and group of at most 15 host ports, jumping to the pod's chain.
func entryRules(a *attachment, f iptables.Family) []string {
	byProto := map[string][]string{}
	for _, m := range a.maps {
		byProto[m.Protocol] = append(byProto[m.Protocol], strconv.Itoa(m.HostPort))
	}
	protos := make([]string, 0, len(byProto))
	for p := range byProto {
		protos = append(protos, p)
	}
	sort.Strings(protos)
	cond := a.cond4
	if f == iptables.IPv6 {
		cond = a.cond6
	}
	comment := entryComment(a.net, a.id)
	var out []string
	for _, p := range protos {
		ports := byProto[p]
		for len(ports) > 0 {
			n := min(len(ports), maxMultiport)
			r := fmt.Sprintf("-p %s -m comment --comment %s -m multiport --dports %s", p, comment, strings.Join(ports[:n], ","))
			for _, c := range cond {
				r += " " + restoreArg(c)
			}
			out = append(out, r+" -j "+dnChain(a.net, a.id))
			ports = ports[n:]
		}
	}
	return out
}

// restoreArg writes one argument as iptables-restore reads it: the
// reference passes each condition as one argv entry, so one with a space
// (a comment, say) must stay one token.
func restoreArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// dnRules are the rules of the pod's CNI-DN- chain: per mapping, mark
// hairpin and (IPv4) localhost connections for masquerade, then DNAT.
func dnRules(a *attachment, f iptables.Family) []string {
	pod := a.podNet(f)
	v6 := f == iptables.IPv6
	var out []string
	for _, m := range mapsFor(a.maps, v6) {
		match := fmt.Sprintf("-p %s -m %s --dport %d", m.Protocol, m.Protocol, m.HostPort)
		if h, ok := m.hostAddr(); ok {
			match = fmt.Sprintf("-d %s/%d ", h, h.BitLen()) + match
		}
		if a.snat {
			if a.masqAll {
				out = append(out, match+" -j "+a.markJump)
			} else {
				subnet := &net.IPNet{IP: pod.IP.Mask(pod.Mask), Mask: pod.Mask}
				out = append(out, "-s "+subnet.String()+" "+match+" -j "+a.markJump)
				if !v6 {
					out = append(out, "-s 127.0.0.1/32 "+match+" -j "+a.markJump)
				}
			}
		}
		out = append(out, match+" -j DNAT --to-destination "+net.JoinHostPort(pod.IP.String(), strconv.Itoa(m.ContainerPort)))
	}
	return out
}

func (iptBackend) check(a *attachment) error {
	for _, f := range a.families() {
		if iptables.HoldsNFT(f, "nat", checkWants(a, f)) {
			continue // read in process: no iptables to run
		}
		chain := dnChain(a.net, a.id)
		nt, err := iptables.LoadChains(f, "nat", "PREROUTING", "OUTPUT", "POSTROUTING", dnatChain, setMarkChain, masqChain, chain)
		if err != nil {
			return err
		}
		if !nt.HasChain(chain) {
			return fmt.Errorf("%s: chain %s is missing", f.Name(), chain)
		}
		if got, want := nt.Rules(chain), dnRules(a, f); !slices.Equal(got, want) {
			return fmt.Errorf("%s: chain %s has rules %q, want %q", f.Name(), chain, got, want)
		}
		for _, c := range []string{"PREROUTING", "OUTPUT"} {
			if !slices.Contains(nt.Rules(c), topJump) {
				return fmt.Errorf("%s: nat %s has no rule %q", f.Name(), c, topJump)
			}
		}
		have := nt.Rules(dnatChain)
		for _, want := range entryRules(a, f) {
			if !slices.ContainsFunc(have, func(r string) bool { return sameEntry(r, want) }) {
				return fmt.Errorf("%s: chain %s has no rule %q", f.Name(), dnatChain, want)
			}
		}
		if a.snat && a.markJump == setMarkChain {
			mark := uint32(1) << a.markBit
			if !slices.Contains(nt.Rules(setMarkChain), fmt.Sprintf(setMarkFmt, mark, mark)) ||
				!slices.Contains(nt.Rules(masqChain), fmt.Sprintf(masqRuleFmt, mark, mark)) ||
				!jumpsTo(nt.Rules("POSTROUTING"), masqChain) {
				return fmt.Errorf("%s: the masquerade chains %s and %s are incomplete", f.Name(), setMarkChain, masqChain)
			}
		}
	}
	return nil
}

// checkWants is what check requires of the family's nat table, for
// iptables.HoldsNFT.
func checkWants(a *attachment, f iptables.Family) []iptables.Want {
	w := []iptables.Want{
		{Chain: dnChain(a.net, a.id), Rules: dnRules(a, f), Exact: true},
		{Chain: "PREROUTING", Rules: []string{topJump}},
		{Chain: "OUTPUT", Rules: []string{topJump}},
		{Chain: dnatChain, Rules: entryRules(a, f)},
	}
	if a.snat && a.markJump == setMarkChain {
		mark := uint32(1) << a.markBit
		w = append(w, iptables.Want{Chain: setMarkChain, Rules: []string{fmt.Sprintf(setMarkFmt, mark, mark)}},
			iptables.Want{Chain: masqChain, Rules: []string{fmt.Sprintf(masqRuleFmt, mark, mark)}},
			iptables.Want{Chain: "POSTROUTING", Jumps: []string{masqChain}})
	}
	return w
}

// sameEntry compares an entry rule from iptables-save with the one we
// wrote. Without conditions the text is identical; conditions are user
// tokens that iptables-save may print in another place, so then the rule
// only has to have the same protocol, comment, ports and target.
func sameEntry(have, want string) bool {
	if have == want {
		return true
	}
	fields := strings.Fields(want)
	ports := dportsRE().FindString(want)
	for _, tok := range []string{"-p " + fields[1] + " ", ports + " ", "-j " + fields[len(fields)-1]} {
		if !strings.Contains(have, tok) {
			return false
		}
	}
	return strings.Contains(have, want[strings.Index(want, "--comment"):strings.Index(want, " -m multiport")])
}

var dportsRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`--dports \S+`) })

func (b iptBackend) del(net, id string, pods []netip.Addr) error {
	chains := []string{dnChain(net, id), chainName("CNI-SN-", net, id)}
	return b.remove(chains, nil, delFamilies(pods))
}

// delFamilies are the families DEL looks in: those of the pod's addresses
// (from the record or prevResult) when there are any, since ADD writes a
// family's chains only for an address of it (so does the reference); both
// when none is known. An IPv4-only pod's DEL then lists nothing of
// ip6tables: one netlink dump (or iptables -S) less per DEL.
func delFamilies(pods []netip.Addr) []iptables.Family {
	if len(pods) == 0 {
		return []iptables.Family{iptables.IPv4, iptables.IPv6}
	}
	var out []iptables.Family
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		for _, p := range pods {
			if p.Unmap().Is4() == (f == iptables.IPv4) {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// gc removes the chains of the network's containers that are not kept,
// found through the entry rules' comments.
func (b iptBackend) gc(net string, keep map[string]bool) error {
	keepHashed := map[string]bool{}
	for id := range keep {
		keepHashed[cni.HashField(id)] = true
	}
	return b.remove(nil, func(nt *iptables.Table) []string {
		var out []string
		for _, r := range nt.Rules(dnatChain) {
			m := entryCommentRE().FindStringSubmatch(r)
			if m == nil || (m[1] != net && m[1] != commentNetwork(net)) || keep[m[2]] || keepHashed[m[2]] {
				continue
			}
			fields := strings.Fields(r)
			if c := fields[len(fields)-1]; !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
		return out
	}, []iptables.Family{iptables.IPv4, iptables.IPv6})
}

// remove deletes chains (every rule that jumps to them, then the chains)
// from the nat table of both families, the two families concurrently. When
// the chains are known (DEL) they are listed with the entry chains in one
// round of "iptables -S CHAIN"; otherwise pick finds them in the entry
// chains first (GC). Then at most one iptables-restore runs per family.
func (iptBackend) remove(known []string, pick func(*iptables.Table) []string, families []iptables.Family) error {
	unlock, err := iptables.Lock("portmap")
	if err != nil {
		return err
	}
	defer unlock()
	loadErrs := make([]error, len(families))
	errs := make([]error, len(families))
	var wg sync.WaitGroup
	for i, f := range families {
		if !iptables.Installed(f) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			loadErrs[i], errs[i] = removeIn(f, known, pick)
		}()
	}
	wg.Wait()
	var failed []string
	usable := 0
	for i, f := range families {
		if !iptables.Installed(f) {
			continue
		}
		if errs[i] != nil {
			return errs[i]
		}
		if loadErrs[i] != nil {
			failed = append(failed, loadErrs[i].Error())
			continue
		}
		usable++
	}
	if usable == 0 && len(failed) > 0 {
		return fmt.Errorf("neither iptables nor ip6tables is usable: %s", strings.Join(failed, "; "))
	}
	return nil
}

// removeIn is remove for one family. loadErr says the family's nat table
// could not be read at all (that family is skipped); err is a failure to
// change it.
func removeIn(f iptables.Family, known []string, pick func(*iptables.Table) []string) (loadErr, err error) {
	entries := []string{dnatChain, oldSNATChain}
	chains := known
	if pick == nil && iptables.NFT(f) && removeNFT(f, entries, chains) {
		return nil, nil
	}
	if pick != nil {
		t, err := iptables.LoadChains(f, "nat", entries...)
		if err != nil {
			return err, nil
		}
		if chains = pick(t); len(chains) == 0 {
			return nil, nil
		}
	}
	nt, err := iptables.LoadChains(f, "nat", append(entries, chains...)...)
	if err != nil {
		if pick == nil {
			return err, nil
		}
		return nil, err
	}
	if b := planRemove(nt, chains); !b.Empty() {
		return nil, iptables.Apply(f, b)
	}
	return nil, nil
}

// planRemove deletes the rules of the loaded chains that jump to chains,
// then flushes and deletes those of chains that exist.
func planRemove(nt *iptables.Table, chains []string) *iptables.Batch {
	b := iptables.NewBatch("nat")
	for _, chain := range chains {
		for _, c := range nt.Chains() {
			for _, r := range nt.Rules(c) {
				if iptables.Jumps(r, chain) {
					b.Rule("-D %s %s", c, r)
				}
			}
		}
		if nt.HasChain(chain) {
			b.Rule("-F %s", chain)
			b.Rule("-X %s", chain)
		}
	}
	return b
}

func commentNetwork(net string) string {
	if len(net) > 64 {
		return cni.HashField(net)
	}
	return net
}
