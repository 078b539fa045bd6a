// Package sbr is the sbr (source-based routing) applet: chained after a
// main plugin, it makes the pod answer out of the interface a packet came
// in on. Each address of the interface gets a policy rule "from <ip>
// lookup <table>" and a routing table of its own holding the interface's
// routes and a default route via the address's gateway; the routes leave
// the main table. With "table" it only adds the rules, to a table the
// user manages.
package sbr

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is sbr's entry in cnibox's applet table. sbr keeps no state
// outside the pod, so GC and STATUS have nothing to do.
var Applet = &cni.Applet{
	Name:    "sbr",
	Kind:    "meta",
	Summary: "source-based routing: a routing table per pod address",
	Add:     Add,
	Del:     Del,
	Check:   Check,
}

// Config is sbr's configuration: the reference's one key.
type Config struct {
	cni.NetConf
	// Table, when set, is the table every rule looks up; sbr then adds
	// only the rules and moves no route. Unset, each address gets the
	// first free table from 100 on.
	Table *int `json:"table"`
}

// firstTable is where the search for free tables starts, as in the
// reference (tables below 100 are left to the administrator).
const firstTable = 100

func load(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.Table != nil && (*c.Table <= 0 || *c.Table > int(^uint32(0)>>1)) {
		return nil, cni.ConfigError("table: %d is not a routing table id", *c.Table)
	}
	return c, nil
}

// Add adds the rules (and with automatic tables, moves the routes) for
// the addresses prevResult gives CNI_IFNAME, and passes prevResult on. On
// failure the pod's routing is left as it was.
func Add(req *cni.Request) (types.Result, error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cni.ConfigError("prevResult: missing: sbr must be chained after a plugin that configures the interface")
	}
	if len(prev.IPs) == 0 {
		return nil, cni.ConfigError("prevResult: no IP addresses for %q", req.IfName)
	}
	ips := addresses(prev, req.IfName)
	err = withLockedNetns(req.Netns, func() error {
		if c.Table != nil {
			_, err := addRules(ips, func(int) int { return *c.Table })
			return err
		}
		return routeByTable(req.IfName, ips)
	})
	if err != nil {
		return nil, fmt.Errorf("sbr: %w", err)
	}
	return prev, nil
}

// addresses returns the IPs of res that belong to ifName, or that name no
// interface at all.
func addresses(res *current.Result, ifName string) []*current.IPConfig {
	var out []*current.IPConfig
	for _, ip := range res.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Name != ifName {
				continue
			}
		}
		out = append(out, ip)
	}
	return out
}

// withLockedNetns runs f inside the netns at path while holding an
// exclusive flock on that path: the reference takes the same lock, so
// two sbr of either kind choosing free tables in one pod do not pick the
// same one. A netns that does not exist is the spec's code 3.
func withLockedNetns(path string, f func() error) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return cni.Errorf(cni.ErrUnknownContainer, "netns %q: %v", path, err)
		}
		return fmt.Errorf("open netns %q: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock netns %q: %w", path, err)
	}
	netns, err := iface.OpenNetns(path)
	if err != nil {
		return err
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return f() })
}

// hostRoute is ip as a /32 or /128.
func hostRoute(ip net.IP) *net.IPNet {
	if ip4 := ip.To4(); ip4 != nil {
		return &net.IPNet{IP: ip4, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}

// addRules (inside the netns) adds "from <ip> lookup table(i)" for the
// i-th address, with the kernel choosing the priority as for the
// reference's rules. On failure it removes what it added; it returns the
// rules it added.
func addRules(ips []*current.IPConfig, table func(i int) int) ([]*netlink.Rule, error) {
	var added []*netlink.Rule
	for i, ip := range ips {
		rule := netlink.NewRule()
		rule.Src = hostRoute(ip.Address.IP)
		rule.Table = table(i)
		if err := netlink.RuleAdd(rule); err != nil {
			delRules(added)
			return nil, fmt.Errorf("add rule from %s lookup %d: %w", rule.Src, rule.Table, err)
		}
		added = append(added, rule)
	}
	return added, nil
}

func delRules(rules []*netlink.Rule) {
	for _, r := range rules {
		_ = netlink.RuleDel(r)
	}
}

// routeByTable (inside the netns) gives each address a free table from
// 100 on, a rule for it, a default route via its gateway there, and a
// copy of the link's routes that belong to it (those with the address's
// subnet as source or gateway, and those with neither); then it removes
// the link's routes from the main table. On failure it undoes everything.
func routeByTable(ifName string, ips []*current.IPConfig) error {
	if len(ips) == 0 {
		return nil
	}
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %q: %w", ifName, err)
	}
	used, err := usedTables()
	if err != nil {
		return err
	}
	tables := make([]int, len(ips))
	next := firstTable
	for i := range ips {
		for used[next] {
			next++
		}
		tables[i] = next
		used[next] = true
	}
	mainRoutes, err := netlinksafe.RouteList(link, netlink.FAMILY_ALL) // the main table's
	if err != nil {
		return fmt.Errorf("list routes of %q: %w", ifName, err)
	}
	rules, err := addRules(ips, func(i int) int { return tables[i] })
	if err != nil {
		return err
	}
	var added []netlink.Route
	undo := func() {
		for _, r := range added {
			_ = netlink.RouteDel(&r)
		}
		delRules(rules)
	}
	for i, ip := range ips {
		if ip.Gateway != nil {
			dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if ip.Address.IP.To4() == nil {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			r := netlink.Route{Dst: dst, Gw: ip.Gateway, Table: tables[i], LinkIndex: link.Attrs().Index}
			if err := netlink.RouteAdd(&r); err != nil {
				undo()
				return fmt.Errorf("add default route via %s to table %d: %w", ip.Gateway, tables[i], err)
			}
			added = append(added, r)
		}
		for _, r := range mainRoutes {
			if !ip.Address.Contains(r.Src) && !ip.Address.Contains(r.Gw) && (r.Src != nil || r.Gw != nil) {
				continue
			}
			r.Table = tables[i]
			r.Flags = 0 // a kernel-made route's flags are refused on add
			if err := netlink.RouteReplace(&r); err != nil {
				undo()
				return fmt.Errorf("copy route %s to table %d: %w", r, tables[i], err)
			}
			added = append(added, r)
		}
	}
	for i, r := range mainRoutes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			for _, back := range mainRoutes[:i] {
				_ = netlink.RouteAdd(&back)
			}
			undo()
			return fmt.Errorf("remove route %s from the main table: %w", r, err)
		}
	}
	return nil
}

// usedTables (inside the netns) is the set of tables a rule looks up or a
// route is in. The reference looks at rules and the main table only, so
// it may pick a table that holds routes without a rule (a VRF's).
func usedTables() (map[int]bool, error) {
	rules, err := netlinksafe.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	used := map[int]bool{}
	for _, r := range rules {
		used[r.Table] = true
	}
	for _, r := range routes {
		used[r.Table] = true
	}
	return used, nil
}

// Del removes the rules whose source is an address of CNI_IFNAME (only
// those of the configured table, when there is one), and the routes
// through CNI_IFNAME in the tables sbr chose for them. A netns or link
// that is gone is success: there is nothing left to remove. It reads the
// config without judging it: a DEL after a refused ADD must succeed.
func Del(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	if req.Netns == "" {
		return nil
	}
	err := withLockedNetns(req.Netns, func() error { return tidy(req.IfName, c.Table) })
	if iface.NetnsGone(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sbr: %w", err)
	}
	return nil
}

// tidy (inside the netns) is DEL's work. It tries every rule and returns
// the errors together.
func tidy(ifName string, table *int) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("find %q: %w", ifName, err)
	}
	rules, err := ownRules(link, table)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule from %s lookup %d: %w", r.Src, r.Table, err))
		}
		if table != nil {
			continue // the user's table: its routes are not ours
		}
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: r.Table, LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes of table %d: %w", r.Table, err))
			continue
		}
		for _, rt := range routes {
			if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s from table %d: %w", rt, r.Table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ownRules (inside the netns) returns the rules whose source is one of
// link's addresses, in table when it is set.
func ownRules(link netlink.Link, table *int) ([]netlink.Rule, error) {
	filter, mask := &netlink.Rule{}, uint64(0)
	if table != nil {
		filter.Table, mask = *table, netlink.RT_FILTER_TABLE
	}
	rules, err := netlinksafe.RuleListFiltered(netlink.FAMILY_ALL, filter, mask)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %q: %w", link.Attrs().Name, err)
	}
	var out []netlink.Rule
	for _, r := range rules {
		if r.Src == nil {
			continue
		}
		for _, a := range addrs {
			if r.Src.IP.Equal(a.IP) {
				out = append(out, r)
				break
			}
		}
	}
	return out, nil
}

// Check verifies that every address prevResult gives CNI_IFNAME has its
// rule (to the configured table, when set) and, with automatic tables,
// the default route via its gateway in that table. The reference's CHECK
// does nothing.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.CheckPrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	ips := addresses(prev, req.IfName)
	netns, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		rules, err := netlinksafe.RuleList(netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		for _, ip := range ips {
			rule := findRule(rules, ip.Address.IP, c.Table)
			if rule == nil {
				return fmt.Errorf("no rule from %s", ip.Address.IP)
			}
			if c.Table != nil || ip.Gateway == nil {
				continue
			}
			routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: rule.Table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return fmt.Errorf("list routes of table %d: %w", rule.Table, err)
			}
			if !hasDefaultVia(routes, ip.Gateway) {
				return fmt.Errorf("table %d of %s has no default route via %s", rule.Table, ip.Address.IP, ip.Gateway)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sbr: %w", err)
	}
	return nil
}

func findRule(rules []netlink.Rule, ip net.IP, table *int) *netlink.Rule {
	for i, r := range rules {
		if r.Src == nil || !r.Src.IP.Equal(ip) {
			continue
		}
		if ones, bits := r.Src.Mask.Size(); ones != bits {
			continue
		}
		if table != nil && r.Table != *table {
			continue
		}
		return &rules[i]
	}
	return nil
}

func hasDefaultVia(routes []netlink.Route, gw net.IP) bool {
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.Gw.Equal(gw) {
			return true
		}
	}
	return false
}
