package portmap

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"

	"github.com/containernetworking/cni/pkg/utils"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/nft"
)

// The nftables layout is the reference's (v1.9.1 portmap_nftables.go), so
// that a node can switch between cnibox and the reference and either one's
// CHECK and DEL find the other's rules. Tables "ip cni_hostport" and
// "ip6 cni_hostport" (comment "CNI portmap plugin"):
//
//	prerouting   nat/prerouting/dstnat:  [conditions] fib daddr type local jump hostports_all
//	output       nat/output/dstnat:      [conditions] fib daddr type local jump hostports_all
//	hostports_all:    jump hostip_hostports; jump hostports
//	hostip_hostports: empty (the reference keeps it for upgrades)
//	hostports:   per mapping [ip daddr HOSTIP] P dport HP dnat to POD:CP
//	masquerading nat/postrouting/srcnat (snat): ip saddr POD ip daddr POD masquerade,
//	             and for IPv4 ip saddr 127.0.0.1 ip daddr POD masquerade
//
// Every per-pod rule's comment is the container ID alone: the reference
// counts (CHECK) and deletes (DEL) the rules whose comment is the ID. cnibox
// adds, in the same tables:
//
//	masquerading (masqAll): per mapping ip daddr POD P dport CP ct status dnat masquerade
//	guard        filter/input/filter (ip only, with snat): iifname != "lo"
//	             ip daddr 127.0.0.0/8 ct status & dnat == 0
//	             ct state & (established|related) == 0 drop
//
// A container attached to two networks has rules with the same comment in
// both; cnibox's DEL and GC take only the rules that also name the
// attachment's pod addresses (from prevResult or ADD's record), where the
// reference's DEL takes them all.
const (
	nftTable           = "cni_hostport"
	nftTableComment    = "CNI portmap plugin"
	nftHostportsAll    = "hostports_all"
	nftHostIPHostports = "hostip_hostports"
	nftHostports       = "hostports"
	nftMasq            = "masquerading"
	nftGuard           = "guard"
)

// nftPodChains are the chains that hold per-pod rules.
var nftPodChains = []string{nftHostports, nftHostIPHostports, nftMasq}

type nftBackend struct{}

func (nftBackend) usable() error { return nft.Usable() }

// oldKey is the comment of the rules cnibox wrote before it used the
// reference's layout; DEL and GC still remove them.
func oldKey(net, id string) string { return "net=" + net + " id=" + id }

func parseOldKey(c string) (net, id string, ok bool) {
	n, rest, ok1 := strings.Cut(c, " id=")
	if !ok1 || !strings.HasPrefix(n, "net=") {
		return "", "", false
	}
	return n[4:], rest, true
}

type nftFamily struct {
	fam  nftables.TableFamily
	pod  netip.Addr
	cond []string
	v6   bool
}

func (a *attachment) nftFamilies() []nftFamily {
	var out []nftFamily
	if a.v4 != nil {
		addr, _ := netip.AddrFromSlice(a.v4.IP.To4())
		out = append(out, nftFamily{nftables.TableFamilyIPv4, addr, a.cond4, false})
	}
	if a.v6 != nil {
		addr, _ := netip.AddrFromSlice(a.v6.IP.To16())
		out = append(out, nftFamily{nftables.TableFamilyIPv6, addr, a.cond6, true})
	}
	return out
}

// podAddrs returns the attachment's pod addresses.
func (a *attachment) podAddrs() []netip.Addr {
	var out []netip.Addr
	for _, f := range a.nftFamilies() {
		out = append(out, f.pod)
	}
	return out
}

func protoNum(p string) byte {
	switch p {
	case "udp":
		return nft.UDP
	case "sctp":
		return nft.SCTP
	}
	return nft.TCP
}

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// nftRules returns the attachment's per-pod rules for one family, by chain.
func nftRules(a *attachment, f nftFamily) map[string][][]expr.Any {
	out := map[string][][]expr.Any{}
	for _, m := range mapsFor(a.maps, f.v6) {
		var dst []expr.Any
		if h, ok := m.hostAddr(); ok {
			dst = nft.DAddr(host(h), false)
		}
		out[nftHostports] = append(out[nftHostports], nft.Concat(dst,
			nft.L4Proto(protoNum(m.Protocol)), nft.DPort(uint16(m.HostPort)),
			nft.DNAT(f.pod, uint16(m.ContainerPort))))
	}
	if !a.snat {
		return out
	}
	out[nftMasq] = append(out[nftMasq], nft.Concat(nft.SAddr(host(f.pod), false), nft.DAddr(host(f.pod), false), nft.Masquerade()))
	if !f.v6 {
		out[nftMasq] = append(out[nftMasq], nft.Concat(nft.SAddr(netip.MustParsePrefix("127.0.0.1/32"), false),
			nft.DAddr(host(f.pod), false), nft.Masquerade()))
	}
	if a.masqAll {
		for _, m := range mapsFor(a.maps, f.v6) {
			out[nftMasq] = append(out[nftMasq], nft.Concat(nft.DAddr(host(f.pod), false),
				nft.L4Proto(protoNum(m.Protocol)), nft.DPort(uint16(m.ContainerPort)),
				nft.CtStatus(nft.CtStatusDNAT, true), nft.Masquerade()))
		}
	}
	return out
}

// nftBase adds the table's chains that are missing and makes the hook
// chains' single jump, hostports_all and the guard what the reference's
// ADD rewrites them to. have is the table's chains: those that exist, with
// the rules wanted, are not sent again (nft.Rewrite), so that a commit
// that finds them in place adds rules only and waits for no grace period.
func nftBase(c *nftables.Conn, have map[string]*nftables.Chain, fam nftables.TableFamily, conds []expr.Any, snat, guard bool) (map[string]*nftables.Chain, error) {
	t := &nftables.Table{Family: fam, Name: nftTable}
	ch := map[string]*nftables.Chain{}
	ch[nftHostports] = nft.EnsureChain(c, have, &nftables.Chain{Table: t, Name: nftHostports})
	ch[nftHostIPHostports] = nft.EnsureChain(c, have, &nftables.Chain{Table: t, Name: nftHostIPHostports})
	if err := nft.Rewrite(c, have, &nftables.Chain{Table: t, Name: nftHostportsAll}, []*nftables.Rule{
		{Exprs: nft.Jump(nftHostIPHostports)}, {Exprs: nft.Jump(nftHostports)}}); err != nil {
		return nil, err
	}
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}} {
		if err := nft.Rewrite(c, have, &nftables.Chain{Table: t, Name: hook.name, Type: nftables.ChainTypeNAT,
			Hooknum: hook.hook, Priority: nftables.ChainPriorityNATDest},
			[]*nftables.Rule{{Exprs: nft.Concat(conds, nft.DAddrLocal(), nft.Jump(nftHostportsAll))}}); err != nil {
			return nil, err
		}
	}
	if snat {
		ch[nftMasq] = nft.EnsureChain(c, have, &nftables.Chain{Table: t, Name: nftMasq, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	}
	if guard {
		if err := nft.Rewrite(c, have, &nftables.Chain{Table: t, Name: nftGuard, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter},
			[]*nftables.Rule{{UserData: nft.Comment("cnibox portmap: drop martians to 127.0.0.0/8 that route_localnet lets in"),
				Exprs: nft.Concat(nft.IIfName("lo", true), nft.DAddr(netip.MustParsePrefix("127.0.0.0/8"), false),
					nft.CtStatus(nft.CtStatusDNAT, false), nft.CtState(nft.CtStateEstablished|nft.CtStateRelated, false), nft.Drop())}}); err != nil {
			return nil, err
		}
	}
	return ch, nil
}

// ownedBy returns the matcher of an attachment's rules: comment id (or
// cnibox's older "net=N id=ID") and, when the pod's addresses are known,
// naming one of them.
func ownedBy(net, id string, pods []netip.Addr) func(*nftables.Rule) bool {
	return func(r *nftables.Rule) bool {
		switch nft.CommentOf(r) {
		case oldKey(net, id):
			return true
		case id:
			return len(pods) == 0 || slices.ContainsFunc(pods, func(p netip.Addr) bool { return namesAddr(r, p) })
		}
		return false
	}
}

// namesAddr reports whether a rule compares with or loads the address
// (ip saddr/daddr, dnat to).
func namesAddr(r *nftables.Rule, a netip.Addr) bool {
	b := a.AsSlice()
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Cmp:
			if bytes.Equal(e.Data, b) {
				return true
			}
		case *expr.Immediate:
			if bytes.Equal(e.Data, b) {
				return true
			}
		}
	}
	return false
}

func (b nftBackend) add(a *attachment) error {
	unlock, err := iptables.Lock("portmap-nft")
	if err != nil {
		return err
	}
	defer unlock()
	c, err := nft.Open()
	if err != nil {
		return err
	}
	defer nft.Close(c)
	own := ownedBy(a.net, a.id, a.podAddrs())
	for _, f := range a.nftFamilies() {
		conds, err := parseConditions(f.cond, f.v6)
		if err != nil {
			return err
		}
		ok, err := nft.TableExists(c, f.fam, nftTable)
		if err != nil {
			return err
		}
		if !ok {
			if err := nft.CreateCommented(f.fam, nftTable, nftTableComment, iptables.LockWait); err != nil {
				return fmt.Errorf("nftables: create table %s %s: %w", famName(f.fam), nftTable, err)
			}
		}
		// A repeated ADD replaces the pod's rules.
		if err := b.queueDelete(c, f.fam, own); err != nil {
			return err
		}
		have, err := nft.Chains(c, &nftables.Table{Family: f.fam, Name: nftTable})
		if err != nil {
			return err
		}
		rules := nftRules(a, f)
		chains, err := nftBase(c, have, f.fam, conds, a.snat, a.snat && !f.v6)
		if err != nil {
			return fmt.Errorf("%s table %s: %w", famName(f.fam), nftTable, err)
		}
		for _, name := range []string{nftHostports, nftMasq} {
			for _, ex := range rules[name] {
				c.AddRule(&nftables.Rule{Table: chains[name].Table, Chain: chains[name], Exprs: ex, UserData: nft.Comment(a.id)})
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: %s table %s: %w", famName(f.fam), nftTable, err)
		}
	}
	return nil
}

func famName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// queueDelete queues the deletion of every rule of the per-pod chains that
// match; the caller flushes.
func (nftBackend) queueDelete(c *nftables.Conn, fam nftables.TableFamily, match func(*nftables.Rule) bool) error {
	ok, err := nft.TableExists(c, fam, nftTable)
	if err != nil || !ok {
		return err
	}
	t := &nftables.Table{Family: fam, Name: nftTable}
	chains, err := nft.Chains(c, t)
	if err != nil {
		return err
	}
	for _, name := range nftPodChains {
		ch := chains[name]
		if ch == nil {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("nftables: list %s %s %s: %w", famName(fam), nftTable, name, err)
		}
		for _, r := range rules {
			if match(r) {
				if err := c.DelRule(r); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// remove deletes the matching rules of both families. cnibox's own writers
// are serialized by a lock, and the listing is repeated after the delete:
// a rule dump interrupted by another writer can come back short.
func (b nftBackend) remove(match func(*nftables.Rule) bool) error {
	unlock, err := iptables.Lock("portmap-nft")
	if err != nil {
		return err
	}
	defer unlock()
	for try := 0; ; try++ {
		c, err := nft.Open()
		if err != nil {
			return err
		}
		defer nft.Close(c)
		left := false
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
			if err := b.queueDelete(c, fam, func(r *nftables.Rule) bool {
				if match(r) {
					left = true
					return true
				}
				return false
			}); err != nil {
				return err
			}
		}
		if !left {
			return nil
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("nftables: delete rules: %w", err)
		}
		if try == 3 {
			return nil
		}
	}
}

func (b nftBackend) del(net, id string, pods []netip.Addr) error {
	return b.remove(ownedBy(net, id, pods))
}

// gc removes the rules of the network's recorded attachments that are not
// in keep (a rule's comment names only the container, so the network's
// attachments are those ADD recorded), and cnibox's older "net=N id=ID"
// rules of the network.
func (b nftBackend) gc(net string, keep map[string]bool) error {
	gone := map[string][]netip.Addr{}
	for _, id := range recordedIDs(net) {
		if !keep[id] {
			_, pods := recalledState(net, id)
			gone[id] = pods
		}
	}
	return b.remove(func(r *nftables.Rule) bool {
		c := nft.CommentOf(r)
		if n, id, ok := parseOldKey(c); ok {
			return n == net && !keep[id]
		}
		pods, ok := gone[c]
		return ok && ownedBy(net, c, pods)(r)
	})
}

// check verifies the reference's chain structure and that the per-pod
// chains hold exactly the attachment's rules.
func (nftBackend) check(a *attachment) error {
	c, err := nft.Open()
	if err != nil {
		return err
	}
	defer nft.Close(c)
	own := ownedBy(a.net, a.id, a.podAddrs())
	for _, f := range a.nftFamilies() {
		want := nftRules(a, f)
		t := &nftables.Table{Family: f.fam, Name: nftTable}
		chains, err := nft.Chains(c, t)
		if err != nil {
			return err
		}
		for _, name := range []string{"prerouting", "output", nftHostportsAll, nftHostports, nftMasq} {
			if chains[name] == nil {
				if name == nftMasq && len(want[nftMasq]) == 0 {
					continue
				}
				return fmt.Errorf("nftables: %s %s: chain %s is missing", famName(f.fam), nftTable, name)
			}
			rules, err := c.GetRules(t, chains[name])
			if err != nil {
				return fmt.Errorf("nftables: list %s: %w", name, err)
			}
			switch name {
			case "prerouting", "output":
				if !slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return ruleJumpsTo(r, nftHostportsAll) }) {
					return fmt.Errorf("nftables: %s %s: chain %s does not jump to %s", famName(f.fam), nftTable, name, nftHostportsAll)
				}
				continue
			case nftHostportsAll:
				if !slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return ruleJumpsTo(r, nftHostports) }) {
					return fmt.Errorf("nftables: %s %s: chain %s does not jump to %s", famName(f.fam), nftTable, name, nftHostports)
				}
				continue
			}
			var have []*nftables.Rule
			for _, r := range rules {
				if own(r) {
					have = append(have, r)
				}
			}
			if len(have) != len(want[name]) {
				return fmt.Errorf("nftables: %s %s: chain %s has %d rules of container %s for %s, want %d", famName(f.fam), nftTable, name, len(have), a.id, f.pod, len(want[name]))
			}
			for i, r := range have {
				if !nft.SameExprs(f.fam, r.Exprs, want[name][i]) {
					return fmt.Errorf("nftables: %s %s: chain %s: rule %d of container %s (handle %d) is not what ADD wrote", famName(f.fam), nftTable, name, i, a.id, r.Handle)
				}
			}
		}
	}
	return nil
}

func ruleJumpsTo(r *nftables.Rule, chain string) bool {
	for _, e := range r.Exprs {
		if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump && v.Chain == chain {
			return true
		}
	}
	return false
}

// parseConditions turns conditionsV4/V6 into expressions. cnibox builds
// rules over netlink, without nft's parser, so it understands the matches
// that make sense before a DNAT: "ip saddr|daddr [!=] ADDR[/LEN]" ("ip6"
// for IPv6) and "iifname|oifname [!=] NAME".
func parseConditions(conds []string, v6 bool) ([]expr.Any, error) {
	toks := strings.Fields(strings.Join(conds, " "))
	var out []expr.Any
	for len(toks) > 0 {
		neg := len(toks) > 1 && toks[1] == "!="
		if len(toks) > 1 && (toks[1] == "!=" || toks[1] == "==") {
			toks = append(toks[:1:1], toks[2:]...)
		}
		switch toks[0] {
		case "ip", "ip6":
			if (toks[0] == "ip6") != v6 {
				return nil, fmt.Errorf("%q matches the other address family", toks[0])
			}
			if len(toks) < 3 || (toks[1] != "saddr" && toks[1] != "daddr") {
				return nil, fmt.Errorf("%q: want %s saddr|daddr [!=] ADDRESS[/LEN]", strings.Join(toks, " "), toks[0])
			}
			neg = len(toks) > 3 && toks[2] == "!="
			if len(toks) > 3 && (toks[2] == "!=" || toks[2] == "==") {
				toks = append(toks[:2:2], toks[3:]...)
			}
			p, err := parsePrefix(toks[2])
			if err != nil || p.Addr().Is6() != v6 {
				return nil, fmt.Errorf("%q is not an %s address or prefix", toks[2], toks[0])
			}
			if toks[1] == "saddr" {
				out = append(out, nft.SAddr(p, neg)...)
			} else {
				out = append(out, nft.DAddr(p, neg)...)
			}
			toks = toks[3:]
		case "iifname", "oifname":
			if len(toks) < 2 {
				return nil, fmt.Errorf("%s needs an interface name", toks[0])
			}
			name := strings.Trim(toks[1], `"`)
			// The kernel compares IFNAMSIZ bytes: a longer name would be
			// cut into another one, and nft's "eth*" prefix match is not
			// what a literal compare does.
			if e := utils.ValidateInterfaceName(name); e != nil || strings.ContainsFunc(name, func(r rune) bool { return r == '*' || unicode.IsControl(r) }) {
				return nil, fmt.Errorf("%s %q is not an interface name (1-15 characters, no '/', ':', space, control character or wildcard)", toks[0], toks[1])
			}
			if toks[0] == "iifname" {
				out = append(out, nft.IIfName(name, neg)...)
			} else {
				out = append(out, nft.OIfName(name, neg)...)
			}
			toks = toks[2:]
		default:
			return nil, fmt.Errorf("%q: cnibox's nftables backend understands ip/ip6 saddr/daddr and iifname/oifname matches", strings.Join(toks, " "))
		}
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
