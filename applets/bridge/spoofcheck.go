package bridge

import (
	"errors"
	"fmt"
	"net"
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
func setupSpoofCheck(id, hostVeth string, mac net.HardwareAddr) error {
	c, err := nft.Open()
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	if err := deleteSpoofJumps(c, id); err != nil {
		return err
	}
	ifaceName, macName := spoofChains(id)
	c.AddTable(natTable)
	policy := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: preroutingChain, Table: natTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &policy})
	iface := c.AddChain(&nftables.Chain{Name: ifaceName, Table: natTable})
	macc := c.AddChain(&nftables.Chain{Name: macName, Table: natTable})
	c.FlushChain(iface)
	c.FlushChain(macc)
	ud := spoofComment(id)
	c.AddRule(&nftables.Rule{Table: natTable, Chain: pre, UserData: ud, Exprs: nft.Concat(
		nft.IIfName(hostVeth, false), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ifaceName}})})
	c.AddRule(&nftables.Rule{Table: natTable, Chain: iface, UserData: ud, Exprs: []expr.Any{
		&expr.Verdict{Kind: expr.VerdictJump, Chain: macName},
	}})
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
