package portmap

import (
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

// The nftables layout, in tables "ip cni_hostport" and "ip6 cni_hostport"
// (the reference's table name; cnibox keys rules by network and container,
// and also removes the reference's container-only keyed rules on DEL):
//
//	prerouting  nat/prerouting/dstnat:  fib daddr type local jump hostports
//	output      nat/output/dstnat:      fib daddr type local jump hostports
//	hostports:  per mapping [conds] [ip daddr HOSTIP] meta l4proto P th dport HP dnat to POD:CP
//	masquerading nat/postrouting/srcnat: per mapping (snat) ip saddr SUBNET|127.0.0.1
//	            ip daddr POD meta l4proto P th dport CP ct status dnat masquerade
//	guard       filter/input/filter (ip only, with snat): iifname != "lo"
//	            ip daddr 127.0.0.0/8 ct status & dnat == 0
//	            ct state & (established|related) == 0 drop
const (
	nftTable     = "cni_hostport"
	nftHostports = "hostports"
	nftMasq      = "masquerading"
	nftGuard     = "guard"
)

type nftBackend struct{}

func (nftBackend) usable() error { return nft.Usable() }

func nftKey(net, id string) string { return "net=" + net + " id=" + id }

func parseKey(c string) (net, id string, ok bool) {
	n, rest, ok1 := strings.Cut(c, " id=")
	if !ok1 || !strings.HasPrefix(n, "net=") {
		return "", "", false
	}
	return n[4:], rest, true
}

type nftFamily struct {
	fam  nftables.TableFamily
	pod  netip.Prefix // the pod's address with its prefix length
	cond []string
	v6   bool
}

func (a *attachment) nftFamilies() []nftFamily {
	var out []nftFamily
	if a.v4 != nil {
		ones, _ := a.v4.Mask.Size()
		addr, _ := netip.AddrFromSlice(a.v4.IP.To4())
		out = append(out, nftFamily{nftables.TableFamilyIPv4, netip.PrefixFrom(addr, ones), a.cond4, false})
	}
	if a.v6 != nil {
		ones, _ := a.v6.Mask.Size()
		addr, _ := netip.AddrFromSlice(a.v6.IP.To16())
		out = append(out, nftFamily{nftables.TableFamilyIPv6, netip.PrefixFrom(addr, ones), a.cond6, true})
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

// nftRules returns the attachment's rules for one family, by chain.
func nftRules(a *attachment, f nftFamily) (map[string][][]expr.Any, error) {
	conds, err := parseConditions(f.cond, f.v6)
	if err != nil {
		return nil, err
	}
	out := map[string][][]expr.Any{}
	pod := f.pod.Addr()
	for _, m := range mapsFor(a.maps, f.v6) {
		var dst []expr.Any
		if h, ok := m.hostAddr(); ok {
			dst = nft.DAddr(netip.PrefixFrom(h, h.BitLen()), false)
		}
		out[nftHostports] = append(out[nftHostports], nft.Concat(conds, dst,
			nft.L4Proto(protoNum(m.Protocol)), nft.DPort(uint16(m.HostPort)),
			nft.DNAT(pod, uint16(m.ContainerPort))))
		if !a.snat {
			continue
		}
		var sources [][]expr.Any
		switch {
		case a.masqAll:
			sources = [][]expr.Any{nil}
		case f.v6:
			sources = [][]expr.Any{nft.SAddr(f.pod.Masked(), false)}
		default:
			sources = [][]expr.Any{nft.SAddr(f.pod.Masked(), false),
				nft.SAddr(netip.MustParsePrefix("127.0.0.1/32"), false)}
		}
		for _, src := range sources {
			out[nftMasq] = append(out[nftMasq], nft.Concat(src,
				nft.DAddr(netip.PrefixFrom(pod, pod.BitLen()), false),
				nft.L4Proto(protoNum(m.Protocol)), nft.DPort(uint16(m.ContainerPort)),
				nft.CtStatus(nft.CtStatusDNAT, true), nft.Masquerade()))
		}
	}
	return out, nil
}

// nftBase adds the table and its chains (a no-op for those that exist)
// and rewrites the hook chains' single jump.
func nftBase(c *nftables.Conn, fam nftables.TableFamily, guard bool) (*nftables.Table, map[string]*nftables.Chain) {
	t := c.AddTable(&nftables.Table{Family: fam, Name: nftTable})
	ch := map[string]*nftables.Chain{}
	ch[nftHostports] = c.AddChain(&nftables.Chain{Table: t, Name: nftHostports})
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}} {
		hc := c.AddChain(&nftables.Chain{Table: t, Name: hook.name, Type: nftables.ChainTypeNAT,
			Hooknum: hook.hook, Priority: nftables.ChainPriorityNATDest})
		c.FlushChain(hc)
		c.AddRule(&nftables.Rule{Table: t, Chain: hc, Exprs: nft.Concat(nft.DAddrLocal(), nft.Jump(nftHostports))})
		ch[hook.name] = hc
	}
	ch[nftMasq] = c.AddChain(&nftables.Chain{Table: t, Name: nftMasq, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	if guard {
		g := c.AddChain(&nftables.Chain{Table: t, Name: nftGuard, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
		c.FlushChain(g)
		c.AddRule(&nftables.Rule{Table: t, Chain: g, UserData: nft.Comment("cnibox portmap: drop martians to 127.0.0.0/8 that route_localnet lets in"),
			Exprs: nft.Concat(nft.IIfName("lo", true), nft.DAddr(netip.MustParsePrefix("127.0.0.0/8"), false),
				nft.CtStatus(nft.CtStatusDNAT, false), nft.CtState(nft.CtStateEstablished|nft.CtStateRelated, false), nft.Drop())})
		ch[nftGuard] = g
	}
	return t, ch
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
	key := nftKey(a.net, a.id)
	for _, f := range a.nftFamilies() {
		rules, err := nftRules(a, f)
		if err != nil {
			return err
		}
		// A repeated ADD replaces the pod's rules.
		if err := b.queueDelete(c, f.fam, func(comment string) bool { return comment == key }); err != nil {
			return err
		}
		t, chains := nftBase(c, f.fam, a.snat && !f.v6)
		for _, name := range []string{nftHostports, nftMasq} {
			for _, ex := range rules[name] {
				c.AddRule(&nftables.Rule{Table: t, Chain: chains[name], Exprs: ex, UserData: nft.Comment(key)})
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

// queueDelete queues the deletion of every rule of the per-pod chains whose
// comment matches; the caller flushes.
func (nftBackend) queueDelete(c *nftables.Conn, fam nftables.TableFamily, match func(comment string) bool) error {
	ok, err := nft.TableExists(c, fam, nftTable)
	if err != nil || !ok {
		return err
	}
	t := &nftables.Table{Family: fam, Name: nftTable}
	chains, err := nft.Chains(c, t)
	if err != nil {
		return err
	}
	for _, name := range []string{nftHostports, nftMasq} {
		ch := chains[name]
		if ch == nil {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("nftables: list %s %s %s: %w", famName(fam), nftTable, name, err)
		}
		for _, r := range rules {
			if match(nft.CommentOf(r)) {
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
func (b nftBackend) remove(match func(string) bool) error {
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
		left := false
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
			if err := b.queueDelete(c, fam, func(s string) bool {
				if match(s) {
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

func (b nftBackend) del(net, id string) error {
	key := nftKey(net, id)
	// The reference keys its rules by container ID alone.
	return b.remove(func(c string) bool { return c == key || c == id })
}

func (b nftBackend) gc(net string, keep map[string]bool) error {
	return b.remove(func(c string) bool {
		n, id, ok := parseKey(c)
		return ok && n == net && !keep[id]
	})
}

// check verifies that each per-pod chain holds exactly the attachment's
// rules (by comment and count) and that the hook chains jump to hostports.
func (nftBackend) check(a *attachment) error {
	c, err := nft.Open()
	if err != nil {
		return err
	}
	key := nftKey(a.net, a.id)
	for _, f := range a.nftFamilies() {
		want, err := nftRules(a, f)
		if err != nil {
			return err
		}
		t := &nftables.Table{Family: f.fam, Name: nftTable}
		chains, err := nft.Chains(c, t)
		if err != nil {
			return err
		}
		for _, name := range []string{"prerouting", "output", nftHostports, nftMasq} {
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
			if name == "prerouting" || name == "output" {
				if !slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return ruleJumpsTo(r, nftHostports) }) {
					return fmt.Errorf("nftables: %s %s: chain %s does not jump to %s", famName(f.fam), nftTable, name, nftHostports)
				}
				continue
			}
			var have []*nftables.Rule
			for _, r := range rules {
				if nft.CommentOf(r) == key {
					have = append(have, r)
				}
			}
			if len(have) != len(want[name]) {
				return fmt.Errorf("nftables: %s %s: chain %s has %d rules of %s, want %d", famName(f.fam), nftTable, name, len(have), key, len(want[name]))
			}
			for i, r := range have {
				if !nft.SameExprs(f.fam, r.Exprs, want[name][i]) {
					return fmt.Errorf("nftables: %s %s: chain %s: rule %d of %s (handle %d) is not what ADD wrote", famName(f.fam), nftTable, name, i, key, r.Handle)
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
