package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/nft"
)

// macspoofchk: the reference's nftables layout, spoken over netlink. In
// table "bridge nat", base chain PREROUTING (filter, prerouting, -300)
// jumps frames from the pod's host veth to cni-br-iface-<id>, which jumps
// to cni-br-iface-<id>-mac, which returns for the pod's own source MAC and
// drops everything else. Every rule is commented macspoofchk-<id>, with
// <id> = <container ID>-<ifname>, so both implementations find each
// other's rules.

var natTable = &nftables.Table{Family: nftables.TableFamilyBridge, Name: "nat"}

const preroutingChain = "PREROUTING"

func spoofID(containerID, ifName string) string { return containerID + "-" + ifName }

func spoofChains(id string) (iface, mac string) {
	iface = "cni-br-iface-" + id
	return iface, iface + "-mac"
}

func spoofComment(id string) []byte { return nft.Comment("macspoofchk-" + id) }

// setupSpoofCheck lets only frames with source MAC mac in from hostVeth.
// When IPAM gave the pod addresses (ips), cnibox goes further than the
// reference: after the MAC check, the pod's IPv4 and IPv6 packets must
// come from its own addresses (or the unspecified address, for DHCP and
// DAD, or an IPv6 link-local one) and its ARP packets must claim its own
// MAC and IPv4 address, so a pod can neither send as another nor poison
// the neighbour tables of the node and its neighbours. The extra rules
// live in the interface chain (cni-br-iface-<id>), which the reference's
// DEL removes whole, so switching back leaves nothing.
func setupSpoofCheck(id, hostVeth string, mac net.HardwareAddr, ips []netip.Addr) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	defer nft.Close(c)
	if err := deleteSpoofJumps(c, id); err != nil {
		return err
	}
	ifaceName, macName := spoofChains(id)
	have, err := nft.Chains(c, natTable)
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	// Only what is missing or different is sent: re-sending a chain that
	// exists (an update) or flushing one makes the kernel free them after
	// an RCU grace period, which the process's exit waits for.
	c.AddTable(natTable)
	policy := nftables.ChainPolicyAccept
	if p := have[preroutingChain]; p != nil && (p.Policy == nil || *p.Policy != policy) {
		delete(have, preroutingChain) // sent again: its policy is set back
	}
	pre := nft.EnsureChain(c, have, &nftables.Chain{Name: preroutingChain, Table: natTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &policy})
	iface := nft.EnsureChain(c, have, &nftables.Chain{Name: ifaceName, Table: natTable})
	macc := nft.EnsureChain(c, have, &nftables.Chain{Name: macName, Table: natTable})
	for _, ch := range []*nftables.Chain{iface, macc} {
		if have[ch.Name] != nil {
			c.FlushChain(ch)
		}
	}
	ud := spoofComment(id)
	c.AddRule(&nftables.Rule{Table: natTable, Chain: pre, UserData: ud, Exprs: nft.Concat(
		nft.IIfName(hostVeth, false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ifaceName}})})
	c.AddRule(&nftables.Rule{Table: natTable, Chain: iface, UserData: ud, Exprs: []expr.Any{
		&expr.Verdict{Kind: expr.VerdictJump, Chain: macName},
	}})
	for _, exprs := range addressRules(mac, ips) {
		c.AddRule(&nftables.Rule{Table: natTable, Chain: iface, UserData: ud, Exprs: exprs})
	}
	c.AddRule(&nftables.Rule{Table: natTable, Chain: macc, UserData: ud, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(mac)},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}})
	c.AddRule(&nftables.Rule{Table: natTable, Chain: macc, UserData: ud, Exprs: []expr.Any{
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	return nil
}

// Ethertypes, as meta protocol holds them (network byte order).
var (
	etherIPv4   = []byte{0x08, 0x00}
	etherARP    = []byte{0x08, 0x06}
	etherIPv6   = []byte{0x86, 0xdd}
	ether8021Q  = []byte{0x81, 0x00}
	ether8021AD = []byte{0x88, 0xa8}
)

func etherType(t []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: t},
	}
}

// addressRules are the IP and ARP anti-spoofing rules for a pod with
// the given MAC and addresses: per family, "return" for each address the
// pod may send from, then "drop" for the rest of that family. None when
// IPAM gave no address (an L2-only bridge: the pod picks its own).
//
// VLAN tags: the kernel moves a frame's outer 802.1Q or 802.1ad tag into
// the skb's metadata before the bridge sees it, so for a singly tagged
// frame meta protocol and the network header are the inner ones and
// these rules check it like an untagged one (TestIPSpoofCheckTagged).
// Only one tag is taken off: a frame with two or more tags still has a
// VLAN ethertype, and its inner packet would pass unchecked, so such
// frames (QinQ from a pod) are dropped.
func addressRules(mac net.HardwareAddr, ips []netip.Addr) [][]expr.Any {
	if len(ips) == 0 {
		return nil
	}
	var out [][]expr.Any
	allow := func(t []byte, match []expr.Any) {
		out = append(out, nft.Concat(etherType(t), match, nft.Return()))
	}
	// ARP: sender hardware address (offset 8) must be the pod's MAC;
	// sender protocol address (offset 14) one of its IPv4s or 0.0.0.0
	// (an RFC 5227 probe).
	out = append(out, nft.Concat(etherType(etherARP), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)},
	}, nft.Drop()))
	arpSPA := func(a netip.Addr) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
		}
	}
	allow(etherARP, arpSPA(netip.IPv4Unspecified()))
	allow(etherIPv4, nft.SAddr(netip.PrefixFrom(netip.IPv4Unspecified(), 32), false))
	allow(etherIPv6, nft.SAddr(netip.PrefixFrom(netip.IPv6Unspecified(), 128), false))
	allow(etherIPv6, nft.SAddr(netip.MustParsePrefix("fe80::/10"), false))
	for _, a := range ips {
		if a.Is4() {
			allow(etherARP, arpSPA(a))
			allow(etherIPv4, nft.SAddr(netip.PrefixFrom(a, 32), false))
		} else {
			allow(etherIPv6, nft.SAddr(netip.PrefixFrom(a, 128), false))
		}
	}
	for _, t := range [][]byte{etherARP, etherIPv4, etherIPv6, ether8021Q, ether8021AD} {
		out = append(out, nft.Concat(etherType(t), nft.Drop()))
	}
	return out
}

// deleteSpoofJumps queues the deletion of the PREROUTING rules of id.
func deleteSpoofJumps(c *nftables.Conn, id string) error {
	rules, err := preroutingRules(c)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if nft.CommentOf(r) == "macspoofchk-"+id {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("macspoofchk: %w", err)
			}
		}
	}
	return nil
}

// preroutingRules lists bridge nat PREROUTING; a missing table or chain
// (or a kernel without nftables) has no rules.
func preroutingRules(c *nftables.Conn) ([]*nftables.Rule, error) {
	rules, err := c.GetRules(natTable, &nftables.Chain{Name: preroutingChain, Table: natTable})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("macspoofchk: list bridge nat %s: %w", preroutingChain, err)
	}
	return rules, nil
}

// teardownSpoofCheck removes the rules and chains of id, if any.
func teardownSpoofCheck(id string) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	defer nft.Close(c)
	if err := deleteSpoofJumps(c, id); err != nil {
		return err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return nil // no bridge family tables at all
	}
	ifaceName, macName := spoofChains(id)
	for _, ch := range chains {
		if ch.Table.Name == natTable.Name && (ch.Name == ifaceName || ch.Name == macName) {
			c.FlushChain(ch)
		}
	}
	for _, ch := range chains {
		if ch.Table.Name == natTable.Name && (ch.Name == ifaceName || ch.Name == macName) {
			c.DelChain(ch)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("macspoofchk teardown: %w", err)
	}
	return nil
}

// checkSpoofCheck verifies that frames from hostVeth still go through
// the checks of id.
func checkSpoofCheck(id string) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	defer nft.Close(c)
	rules, err := preroutingRules(c)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if nft.CommentOf(r) == "macspoofchk-"+id {
			_, macName := spoofChains(id)
			mr, err := c.GetRules(natTable, &nftables.Chain{Name: macName, Table: natTable})
			if err != nil || len(mr) != 2 {
				return fmt.Errorf("macspoofchk: chain bridge nat %s is missing or changed", macName)
			}
			return nil
		}
	}
	return fmt.Errorf("macspoofchk: bridge nat %s has no rule for %s", preroutingChain, id)
}

// danglingSpoofChecks returns the ids of spoof checks whose PREROUTING
// rule matches an interface that no longer exists: GC removes them.
func danglingSpoofChecks(exists func(ifName string) bool) ([]string, error) {
	c, err := nft.Open()
	if err != nil {
		return nil, fmt.Errorf("macspoofchk: %w", err)
	}
	defer nft.Close(c)
	rules, err := preroutingRules(c)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, r := range rules {
		id, ok := strings.CutPrefix(nft.CommentOf(r), "macspoofchk-")
		if !ok || len(r.Exprs) < 2 {
			continue
		}
		cmp, ok := r.Exprs[1].(*expr.Cmp)
		if !ok {
			continue
		}
		if name := strings.TrimRight(string(cmp.Data), "\x00"); name != "" && !exists(name) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
