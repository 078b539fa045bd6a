package conformance

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// normalizer rewrites what must differ between two runs of the same case
// into placeholders. Each rule says why that part differs for reasons
// that are not behaviour.
type normalizer struct {
	// keep are the MACs and link-local addresses the case's own input
	// names: a plugin must set those exactly, so they are not rewritten.
	keep map[string]bool
	// dhcp: the case leases its address from the dhcp fixture.
	dhcp bool
}

var (
	// Network namespaces are made per run with random names
	// (cnibox-pod-<hex>), so the pod's netns path in a result's sandbox
	// and a link's netns differ by name only.
	nsNameRe = regexp.MustCompile(`cnibox-(pod|node|outside|devpeer|dhcpsrv)-[0-9a-f]{8}`)
	// Host veth names: the reference picks "veth"+8 random hex digits
	// (ip.RandomVethName); cnibox derives the same shape from a hash of
	// the container ID and ifname (shared/veth.HostName) so that a
	// crashed ADD's leftover can be found. Same shape, different digits.
	vethRe = regexp.MustCompile(`\bveth[0-9a-f]{8}\b`)
	// The veth that gives a bridge VLAN its gateway: the reference names
	// it like any veth (random), cnibox "vgw"+8 hex digits of a hash so
	// that DEL and GC find it again.
	vgwRe = regexp.MustCompile(`\bvgw[0-9a-f]{8}\b`)
	// MACs are random per veth, macvlan, ipvlan and bridge unless the
	// case asks for one (capabilityArgs.mac, args MAC=, a config's mac),
	// so only MACs the input does not name are rewritten.
	macRe = regexp.MustCompile(`\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b`)
	// IPv6 link-local addresses are derived from those random MACs (EUI-64).
	linkLocalRe = regexp.MustCompile(`\bfe80::[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,3}\b`)
	// cnibox names every host veth it makes with an alias
	// "cnibox/<network>/<container ID>/<ifname>", and bandwidth's IFBs
	// "cnibox-bandwidth": that is how its crash recovery and GC tell its
	// own links from a stranger's; the reference keeps the same facts only
	// in libcni's cache. The alias is bookkeeping, not network state.
	cniboxAliasRe = regexp.MustCompile(` alias=cnibox(/\S+|-bandwidth\b)`)
	// tuning's backup records the pod's netns as "device:inode" (so that
	// DEL restores only in the netns ADD changed): inodes are per-run
	// kernel counters, as the namespaces' names are per-run random.
	backupNetnsRe = regexp.MustCompile(`(netns\\?"\s*:\s*\\?")\d+:\d+`)
	// Link-netns ids and peer ifindexes ("eth0@if12") are kernel counters.
	peerIdxRe = regexp.MustCompile(`@if\d+\b`)
	// The rules of iptables-nft's own tables (ip/ip6 filter, nat, mangle,
	// raw, security) are compared rule by rule in the iptables and
	// ip6tables sections; "nft list ruleset" shows the same rules again
	// in whichever encoding the writing tool chose (a native expression
	// or an xtables-compat target, "XT target DNAT not found"), which
	// differs between iptables and iptables-restore and between families
	// for the same rule. Their tables and chains stay in the nft section.
	xtRuleRe = regexp.MustCompile(`^(node|pod) nft: table ip6? (filter|nat|mangle|raw|security) / chain [^/]+ / `)
)

// leaseRe matches the addresses the dhcp fixture's dnsmasq leases
// (10.99.0.100-200): it picks one from a hash of the client's random MAC.
var leaseRe = regexp.MustCompile(`\b10\.99\.0\.(1\d\d|200)\b`)

func newNormalizer(c *Case) *normalizer {
	n := &normalizer{keep: map[string]bool{}, dhcp: c.hasNode("dhcp")}
	raw, _ := json.Marshal(c)
	text := string(raw) + string(c.Conflist) + string(c.Config)
	for _, m := range macRe.FindAllString(text, -1) {
		n.keep[strings.ToLower(m)] = true
	}
	for _, m := range linkLocalRe.FindAllString(text, -1) {
		n.keep[m] = true
	}
	return n
}

// str normalises one string (a snapshot line or a JSON string value).
func (n *normalizer) str(s string) string {
	s = nsNameRe.ReplaceAllString(s, "cnibox-$1-*")
	s = vethRe.ReplaceAllString(s, "veth*")
	s = vgwRe.ReplaceAllString(s, "veth*")
	s = macRe.ReplaceAllStringFunc(s, func(m string) string {
		if n.keep[strings.ToLower(m)] || strings.EqualFold(m, "ff:ff:ff:ff:ff:ff") || m == "00:00:00:00:00:00" {
			return strings.ToLower(m)
		}
		return "<mac>"
	})
	s = linkLocalRe.ReplaceAllStringFunc(s, func(m string) string {
		if n.keep[m] {
			return m
		}
		return "fe80::<eui64>"
	})
	s = cniboxAliasRe.ReplaceAllString(s, "")
	if n.dhcp {
		s = leaseRe.ReplaceAllString(s, "10.99.0.<lease>")
	}
	s = peerIdxRe.ReplaceAllString(s, "")
	s = backupNetnsRe.ReplaceAllString(s, "${1}<netns>")
	return s
}

// state normalises a snapshot.
func (n *normalizer) state(s state) []string {
	out := make([]string, 0, len(s))
	for _, l := range s {
		if l = n.str(l); !eui64Addr.MatchString(l) && !xtRuleRe.MatchString(l) {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// result flattens a result JSON into sorted "path = value" lines with
// every string normalised, so that two results compare line by line.
func (n *normalizer) result(raw []byte) []string {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return []string{"(not JSON) " + n.str(string(raw))}
	}
	var out []string
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if len(x) == 0 {
				out = append(out, path+" = {}")
			}
			for k, e := range x {
				walk(path+"."+k, e)
			}
		case []any:
			if len(x) == 0 {
				out = append(out, path+" = []")
			}
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		case string:
			out = append(out, path+" = "+n.str(x))
		default:
			b, _ := json.Marshal(x)
			out = append(out, path+" = "+string(b))
		}
	}
	walk("", v)
	// An empty DNS object and none mean the same (types.DNS's zero
	// value); plugins differ in whether they print "dns": {}.
	kept := out[:0]
	for _, l := range out {
		if l != ".dns = {}" {
			kept = append(kept, l)
		}
	}
	sort.Strings(kept)
	return kept
}

// diff returns the lines only a has and the lines only b has, as
// multisets.
func diff(a, b []string) (onlyA, onlyB []string) {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	for l, c := range count {
		for ; c > 0; c-- {
			onlyA = append(onlyA, l)
		}
		for ; c < 0; c++ {
			onlyB = append(onlyB, l)
		}
	}
	sort.Strings(onlyA)
	sort.Strings(onlyB)
	return onlyA, onlyB
}
