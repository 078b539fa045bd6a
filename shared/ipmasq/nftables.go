package ipmasq

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// The reference's table and chains, so that either implementation finds
// and removes the other's rules.
const (
	nftTable      = "cni_plugins_masquerade"
	nftChain      = "masq_checks"
	nftPostroute  = "postrouting"
	maxCommentLen = 128 // what nft itself accepts
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

func ruleComment(r *nftables.Rule) string {
	c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return c
}

// rulesWithPrefix lists the masq_checks rules whose comment starts with
// prefix. A missing table or chain holds no rules.
func rulesWithPrefix(c *nftables.Conn, prefix string) ([]*nftables.Rule, error) {
	rules, err := c.GetRules(table, &nftables.Chain{Name: nftChain, Table: table})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipMasq: list nftables chain %s: %w", nftChain, err)
	}
	var out []*nftables.Rule
	for _, r := range rules {
		if strings.HasPrefix(ruleComment(r), prefix) {
			out = append(out, r)
		}
	}
	return out, nil
}

func setupNFT(a Attachment, ips []*net.IPNet) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
	stale, err := rulesWithPrefix(c, hashForInstance(a))
	if err != nil {
		return err
	}
	c.AddTable(table)
	checks := c.AddChain(&nftables.Chain{Name: nftChain, Table: table})
	post := c.AddChain(&nftables.Chain{
		Name: nftPostroute, Table: table,
		Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	// The reference rewrites this chain on every setup; so do we, with the
	// same three rules: multicast is left alone, the rest goes to the checks.
	c.FlushChain(post)
	c.AddRule(&nftables.Rule{Table: table, Chain: post,
		Exprs: append(matchNet(unix.NFPROTO_IPV4, 16, mustCIDR("224.0.0.0/4"), expr.CmpOpEq), &expr.Verdict{Kind: expr.VerdictReturn})})
	c.AddRule(&nftables.Rule{Table: table, Chain: post,
		Exprs: append(matchNet(unix.NFPROTO_IPV6, 24, mustCIDR("ff00::/8"), expr.CmpOpEq), &expr.Verdict{Kind: expr.VerdictReturn})})
	c.AddRule(&nftables.Rule{Table: table, Chain: post,
		Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: nftChain}}})
	for _, r := range stale {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("ipMasq: delete stale rule: %w", err)
		}
	}
	ud := userdata.AppendString(nil, userdata.TypeComment, nftComment(a))
	for _, ipn := range ips {
		c.AddRule(&nftables.Rule{Table: table, Chain: checks, Exprs: masqExprs(ipn), UserData: ud})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
	return nil
}

// masqExprs is "ip saddr == <ip> ip daddr != <subnet> masquerade".
func masqExprs(ipn *net.IPNet) []expr.Any {
	proto, src, dst := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16)
	ip := ipn.IP.To4()
	if ip == nil {
		proto, src, dst, ip = unix.NFPROTO_IPV6, 8, 24, ipn.IP.To16()
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: src, Len: uint32(len(ip))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(ip)},
	}
	e = append(e, matchNet(proto, dst, subnet(ipn), expr.CmpOpNeq)[2:]...)
	return append(e, &expr.Masq{})
}

// matchNet is "<family> daddr <op> <net>", with daddr at offset off.
func matchNet(proto byte, off uint32, n *net.IPNet, op expr.CmpOp) []expr.Any {
	ip := n.IP.To4()
	mask := []byte(n.Mask)
	if proto == unix.NFPROTO_IPV6 {
		ip = n.IP.To16()
	}
	if len(mask) != len(ip) {
		mask = mask[len(mask)-len(ip):]
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(ip))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(ip)), Mask: mask, Xor: make([]byte, len(ip))},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(ip.Mask(n.Mask))},
	}
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func checkNFT(a Attachment, ips []*net.IPNet) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
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
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("ipMasq: nftables: %w", err)
	}
	rules, err := rulesWithPrefix(c, "")
	if err != nil {
		return err
	}
	n := 0
	for _, r := range rules {
		if match(ruleComment(r)) {
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
