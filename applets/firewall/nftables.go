package firewall

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/nft"
)

// The native nftables backend: table inet cni_firewall.
//
//	forward     filter/forward/filter: jump isolation1; jump admin; jump pods
//	admin       the admin's own rules; created empty, never touched again
//	pods        per address: ip daddr X ct state established,related accept;
//	            ip saddr X accept (comment "net=N id=C if=I")
//	isolation1  per bridge: iifname B oifname != B jump isolation2;
//	            isolated: iifname B oifname B drop (comment "bridge=B ...")
//	isolation2  per bridge: oifname B drop
//
// As with any nftables table, an accept here ends the packet's walk only
// through this table's chain: a drop policy in another table (iptables-nft's
// FORWARD, say) still applies. The backend is for nodes whose policy lives
// in nftables; the admin adds it to chain "admin" or to its own table.
const (
	fwTable  = "cni_firewall"
	fwPods   = "pods"
	fwAdmin  = "admin"
	fwIso1   = "isolation1"
	fwIso2   = "isolation2"
	fwFilter = "forward"
)

type nftBackend struct{}

func (nftBackend) usable() error { return nft.Usable() }

func podKey(a *attachment) string { return "net=" + a.Net + " id=" + a.ID + " if=" + a.IfName }

func bridgeKey(bridge string) string { return "bridge=" + bridge + " " }

// base adds the table and the chains that are missing and makes the
// forward hook chain's rules its three jumps. Chains that exist, and a
// forward chain that has the jumps, are not sent again (nft.Rewrite): a
// commit that finds them in place adds rules only, and neither it nor the
// process's exit waits for the kernel to free an update or a flush.
func base(c *nftables.Conn) (*nftables.Table, map[string]*nftables.Chain, error) {
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: fwTable})
	have, err := nft.Chains(c, t)
	if err != nil {
		return nil, nil, err
	}
	ch := map[string]*nftables.Chain{}
	for _, name := range []string{fwAdmin, fwPods, fwIso1, fwIso2} {
		ch[name] = nft.EnsureChain(c, have, &nftables.Chain{Table: t, Name: name})
	}
	var jumps []*nftables.Rule
	for _, to := range []string{fwIso1, fwAdmin, fwPods} {
		jumps = append(jumps, &nftables.Rule{Exprs: nft.Jump(to)})
	}
	if err := nft.Rewrite(c, have, &nftables.Chain{Table: t, Name: fwFilter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}, jumps); err != nil {
		return nil, nil, err
	}
	return t, ch, nil
}

func podExprs(a *attachment) [][]expr.Any {
	var out [][]expr.Any
	for _, ip := range a.IPs {
		v6 := ip.Addr().Is6()
		out = append(out,
			nft.Concat(nft.NFProto(v6), nft.DAddr(ip, false), nft.CtState(nft.CtStateEstablished|nft.CtStateRelated, true), nft.Accept()),
			nft.Concat(nft.NFProto(v6), nft.SAddr(ip, false), nft.Accept()))
	}
	return out
}

func (b nftBackend) add(a *attachment) error {
	return commit(func(c *nftables.Conn) error {
		key := podKey(a)
		if _, err := deleteRules(c, []string{fwPods}, func(s string) bool { return s == key }); err != nil {
			return err
		}
		t, ch, err := base(c)
		if err != nil {
			return err
		}
		for _, ex := range podExprs(a) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch[fwPods], Exprs: ex, UserData: nft.Comment(key)})
		}
		return nil
	})
}

// commit runs queue with a netlink connection under the firewall-nft lock
// and sends what it queued as one transaction.
func commit(queue func(c *nftables.Conn) error) error {
	unlock, err := iptables.Lock("firewall-nft")
	if err != nil {
		return err
	}
	defer unlock()
	c, err := nft.Open()
	if err != nil {
		return err
	}
	defer nft.Close(c)
	if err := queue(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: inet %s: %w", fwTable, err)
	}
	return nil
}

// deleteRules queues the deletion of the rules of the chains whose comment
// matches; the caller flushes. left is the number of rules of those chains
// that stay (-1: the table is not there).
func deleteRules(c *nftables.Conn, chains []string, match func(string) bool) (left int, err error) {
	ok, err := nft.TableExists(c, nftables.TableFamilyINet, fwTable)
	if err != nil || !ok {
		return -1, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: fwTable}
	have, err := nft.Chains(c, t)
	if err != nil {
		return 0, err
	}
	for _, name := range chains {
		if have[name] == nil {
			continue
		}
		rules, err := c.GetRules(t, have[name])
		if err != nil {
			return 0, fmt.Errorf("nftables: list %s: %w", name, err)
		}
		for _, r := range rules {
			if !match(nft.CommentOf(r)) {
				left++
				continue
			}
			if err := c.DelRule(r); err != nil {
				return 0, err
			}
		}
	}
	return left, nil
}

// flushDelete deletes the matching rules of chains and, when that leaves
// the table as base made it with no rule of any pod or bridge in it, the
// table, in the same transaction: the last DEL leaves nothing behind, as
// with the iptables backend. Every cnibox writer of the table holds the
// firewall-nft lock across its listing and its transaction, so no ADD can
// put a rule in between; anything else in the table (a rule of the admin
// in chain admin, a chain, set or object of their own, a changed forward
// chain) keeps it.
func flushDelete(chains []string, match func(string) bool) error {
	return commit(func(c *nftables.Conn) error {
		left, err := deleteRules(c, chains, match)
		if err != nil || left != 0 {
			return err
		}
		deleteTableIfUnused(c, chains)
		return nil
	})
}

// deleteTableIfUnused queues the deletion of the table when, but for the
// rules of done that the transaction deletes, it holds only base's
// chains, empty, and the forward chain's jumps. When it cannot tell (a
// listing fails) the table stays: the rules' deletion must not fail on it.
func deleteTableIfUnused(c *nftables.Conn, done []string) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: fwTable}
	have, err := nft.Chains(c, t)
	if err != nil {
		return
	}
	for name, ch := range have {
		if slices.Contains(done, name) {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return
		}
		switch name {
		case fwFilter:
			jumps := []string{fwIso1, fwAdmin, fwPods}
			if len(rules) > len(jumps) {
				return
			}
			for i, r := range rules {
				if !nft.SameExprs(nftables.TableFamilyINet, r.Exprs, nft.Jump(jumps[i])) {
					return
				}
			}
		case fwAdmin, fwPods, fwIso1, fwIso2:
			if len(rules) > 0 {
				return
			}
		default:
			return // a chain of someone else's
		}
	}
	if sets, err := c.GetSets(t); err != nil || len(sets) > 0 {
		return
	}
	if objs, err := c.GetObjects(t); err != nil || len(objs) > 0 {
		return
	}
	if fts, err := c.ListFlowtables(t); err != nil || len(fts) > 0 {
		return
	}
	c.DelTable(t)
}

func (nftBackend) del(a *attachment) error {
	key := podKey(a)
	return flushDelete([]string{fwPods}, func(s string) bool { return s == key })
}

// nftGC removes the rules of the network's attachments that are not valid.
func nftGC(net string, valid map[cni.Attachment]bool) error {
	return flushDelete([]string{fwPods}, func(s string) bool {
		rest, ok := strings.CutPrefix(s, "net="+net+" id=")
		if !ok {
			return false
		}
		id, ifname, ok := strings.Cut(rest, " if=")
		return ok && !valid[cni.Attachment{ContainerID: id, IfName: ifname}]
	})
}

// rulesOf returns the rules of a chain.
func rulesOf(chain string) ([]*nftables.Rule, error) {
	c, err := nft.Open()
	if err != nil {
		return nil, err
	}
	defer nft.Close(c)
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: fwTable}
	have, err := nft.Chains(c, t)
	if err != nil {
		return nil, err
	}
	if have[chain] == nil {
		return nil, fmt.Errorf("nftables: inet %s: chain %s is missing", fwTable, chain)
	}
	rules, err := c.GetRules(t, have[chain])
	if err != nil {
		return nil, fmt.Errorf("nftables: list %s: %w", chain, err)
	}
	return rules, nil
}

// checkRules verifies that the rules of chain commented key are exactly want.
func checkRules(chain, key string, want [][]expr.Any) error {
	rules, err := rulesOf(chain)
	if err != nil {
		return err
	}
	var have []*nftables.Rule
	for _, r := range rules {
		if nft.CommentOf(r) == key {
			have = append(have, r)
		}
	}
	if len(have) != len(want) {
		return fmt.Errorf("nftables: inet %s: chain %s has %d rules of %s, want %d", fwTable, chain, len(have), key, len(want))
	}
	for i, r := range have {
		if !nft.SameExprs(nftables.TableFamilyINet, r.Exprs, want[i]) {
			return fmt.Errorf("nftables: inet %s: chain %s: rule %d of %s (handle %d) is not what ADD wrote", fwTable, chain, i, key, r.Handle)
		}
	}
	return nil
}

func (nftBackend) check(a *attachment) error {
	if err := checkRules(fwPods, podKey(a), podExprs(a)); err != nil {
		return err
	}
	jumps, err := rulesOf(fwFilter)
	if err != nil {
		return err
	}
	for i, to := range []string{fwIso1, fwAdmin, fwPods} {
		if len(jumps) != 3 || !nft.SameExprs(nftables.TableFamilyINet, jumps[i].Exprs, nft.Jump(to)) {
			return fmt.Errorf("nftables: inet %s: chain %s is not the 3 jumps ADD wrote", fwTable, fwFilter)
		}
	}
	return nil
}

func isolationExprs(bridge, policy string) (s1, s2 [][]expr.Any) {
	s1 = [][]expr.Any{nft.Concat(nft.IIfName(bridge, false), nft.OIfName(bridge, true), nft.Jump(fwIso2))}
	if policy == policyIsolated {
		s1 = append(s1, nft.Concat(nft.IIfName(bridge, false), nft.OIfName(bridge, false), nft.Drop()))
	}
	s2 = [][]expr.Any{nft.Concat(nft.OIfName(bridge, false), nft.Drop())}
	return s1, s2
}

func (nftBackend) isolate(a *attachment) error {
	return commit(func(c *nftables.Conn) error {
		key := bridgeKey(a.Bridge)
		if _, err := deleteRules(c, []string{fwIso1, fwIso2}, func(s string) bool { return strings.HasPrefix(s, key) }); err != nil {
			return err
		}
		t, ch, err := base(c)
		if err != nil {
			return err
		}
		s1, s2 := isolationExprs(a.Bridge, a.Policy)
		comment := nft.Comment(key + "ingressPolicy=" + a.Policy)
		for _, ex := range s1 {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch[fwIso1], Exprs: ex, UserData: comment})
		}
		for _, ex := range s2 {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch[fwIso2], Exprs: ex, UserData: comment})
		}
		return nil
	})
}

func (nftBackend) unisolate(a *attachment) error {
	key := bridgeKey(a.Bridge)
	return flushDelete([]string{fwIso1, fwIso2}, func(s string) bool { return strings.HasPrefix(s, key) })
}

func (nftBackend) checkIsolation(a *attachment) error {
	s1, s2 := isolationExprs(a.Bridge, a.Policy)
	key := bridgeKey(a.Bridge) + "ingressPolicy=" + a.Policy
	if err := checkRules(fwIso1, key, s1); err != nil {
		return err
	}
	return checkRules(fwIso2, key, s2)
}
