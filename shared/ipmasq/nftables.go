package ipmasq

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/nft"
)

// The reference's table and chains, so that either implementation finds
// and removes the other's rules.
const (
	nftTable      = "cni_plugins_masquerade"
	nftChain      = "masq_checks"
	nftPostroute  = "postrouting"
	maxCommentLen = 128 // what nft itself accepts

	// The reference's comments on the table and on masq_checks.
	nftTableComment = "Masquerading for plugins from github.com/containernetworking/plugins"
	nftChainComment = "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"
)

var table = &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTable}

func hashForNetwork(network string) string { return hashHex(network, 16) }

func hashForInstance(a Attachment) string {
	return hashForNetwork(a.Network) + "-" + hashHex(a.IfName+":"+a.ContainerID, 16)
}

// nftComment is the comment of an attachment's rules: the hash that
// identifies it, then a readable description.
func nftComment(a Attachment) string {
	c := fmt.Sprintf("%s, net: %s, if: %s, id: %s", hashForInstance(a),
		strings.ReplaceAll(a.Network, `"`, ``), strings.ReplaceAll(a.IfName, `"`, ``),
		strings.ReplaceAll(a.ContainerID, `"`, ``))
	if len(c) > maxCommentLen {
		c = c[:maxCommentLen]
	}
	return c
}

// rulesWithPrefix lists the masq_checks rules whose comment starts with
// prefix. A missing table or chain holds no rules.
func rulesWithPrefix(c *nftables.Conn, prefix string) ([]*nftables.Rule, error) {
	rules, err := c.GetRules(table, &nftables.Chain{Name: nftChain, Table: table})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) {
		return nil, nil // no table yet, or no nf_tables in this kernel
	}
	if err != nil {
		return nil, fmt.Errorf("ipMasq: list nftables chain %s: %w", nftChain, err)
	}
	var out []*nftables.Rule
	for _, r := range rules {
		if strings.HasPrefix(nft.CommentOf(r), prefix) {
			out = append(out, r)
		}
	}
	return out, nil
}

func setupNFT(a Attachment, ips []*net.IPNet) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	defer nft.Close(c)
	stale, err := rulesWithPrefix(c, hashForInstance(a))
	if err != nil {
		return err
	}
	have, err := nft.Chains(c, table)
	if err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	// Only what is missing is created, and postrouting rewritten only where
	// it differs (see nft.Rewrite): then this commit adds rules only, and
	// neither it nor the process's exit waits for an RCU grace period.
	if have[nftChain] == nil {
		if err := nft.CreateCommented(table.Family, nftTable, nftTableComment, 5*time.Second,
			nft.Chain{Name: nftChain, Comment: nftChainComment}); err != nil {
			return fmt.Errorf("ipMasq: nftables: create table %s: %w", nftTable, err)
		}
	}
	checks := &nftables.Chain{Name: nftChain, Table: table}
	post := &nftables.Chain{
		Name: nftPostroute, Table: table,
		Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	}
	// The reference rewrites this chain on every setup to the same three
	// rules: multicast is left alone, the rest goes to the checks.
	var postRules []*nftables.Rule
	for _, mcast := range []string{"224.0.0.0/4", "ff00::/8"} {
		p := netip.MustParsePrefix(mcast)
		postRules = append(postRules, &nftables.Rule{
			Exprs: nft.Concat(nfproto(p.Addr()), nft.DAddr(p, false), []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}})})
	}
	postRules = append(postRules, &nftables.Rule{
		Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: nftChain}}})
	if err := nft.Rewrite(c, have, post, postRules); err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	for _, r := range stale {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("ipMasq: delete stale rule: %w", err)
		}
	}
	ud := nft.Comment(nftComment(a))
	for _, ipn := range ips {
		c.AddRule(&nftables.Rule{Table: table, Chain: checks, Exprs: masqExprs(ipn), UserData: ud})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
	return nil
}

// masqExprs is "ip saddr <ip> ip daddr != <subnet> masquerade".
func masqExprs(ipn *net.IPNet) []expr.Any {
	ip, _ := netip.AddrFromSlice(ipn.IP)
	ip = ip.Unmap()
	ones, _ := ipn.Mask.Size()
	return nft.Concat(nfproto(ip), nft.SAddr(netip.PrefixFrom(ip, ip.BitLen()), false),
		nft.DAddr(netip.PrefixFrom(ip, ones), true), []expr.Any{&expr.Masq{}})
}

// nfproto is the "meta nfproto ipv4|ipv6" that an address match needs in
// an inet table (nft(8) adds it implicitly and hides it when listing).
func nfproto(a netip.Addr) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if a.Is6() {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func checkNFT(a Attachment, ips []*net.IPNet) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	defer nft.Close(c)
	rules, err := rulesWithPrefix(c, hashForInstance(a))
	if err != nil {
		return err
	}
	if len(rules) < len(ips) {
		return fmt.Errorf("ipMasq: nftables table inet %s has %d rules for this attachment, want %d", nftTable, len(rules), len(ips))
	}
	return nil
}

func teardownNFT(a Attachment) error {
	return deleteNFT(func(comment string) bool { return strings.HasPrefix(comment, hashForInstance(a)) })
}

func gcNFT(network string, valid map[cni.Attachment]bool) error {
	keep := map[string]bool{}
	for v := range valid {
		keep[nftComment(Attachment{Network: network, ContainerID: v.ContainerID, IfName: v.IfName})] = true
	}
	prefix := hashForNetwork(network) + "-"
	return deleteNFT(func(comment string) bool { return strings.HasPrefix(comment, prefix) && !keep[comment] })
}

func deleteNFT(match func(comment string) bool) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	defer nft.Close(c)
	rules, err := rulesWithPrefix(c, "")
	if err != nil {
		return err
	}
	n := 0
	for _, r := range rules {
		if match(nft.CommentOf(r)) {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("ipMasq: delete nftables rule: %w", err)
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
	return nil
}
