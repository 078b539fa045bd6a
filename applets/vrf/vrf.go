// Package vrf is the vrf applet: chained after a main plugin, it puts the
// pod's interface into a VRF (an L3 master device with a routing table of
// its own) inside the pod, creating the VRF on first use, so several
// interfaces of a pod can live in separate routing domains. The
// interface's routes move into the VRF's table; DEL takes the interface
// out and deletes the VRF when its last interface leaves.
package vrf

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is vrf's entry in cnibox's applet table. Like the reference it
// serves spec 0.3.1 and later; it keeps no state outside the pod, so GC
// and STATUS have nothing to do.
var Applet = &cni.Applet{
	Name:     "vrf",
	Kind:     "meta",
	Versions: cni.VersionsFrom("0.3.1"),
	Summary:  "put the pod's interface into a VRF",
	Add:      Add,
	Del:      Del,
	Check:    Check,
}

// Config is vrf's configuration: the reference's keys.
type Config struct {
	cni.NetConf
	// VRFName is the VRF device in the pod; created when absent.
	VRFName string `json:"vrfname"`
	// Table is the VRF's routing table. Zero means: the VRF's table when
	// it exists, else the lowest table no other VRF in the pod uses, from
	// 1 on. An existing VRF with another table is an error.
	Table uint32 `json:"table"`
}

func load(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.VRFName == "" {
		return nil, cni.ConfigError("vrfname: missing: the VRF to put the interface in")
	}
	if len(c.VRFName) >= unix.IFNAMSIZ {
		return nil, cni.ConfigError("vrfname: %q is longer than %d bytes", c.VRFName, unix.IFNAMSIZ-1)
	}
	return c, nil
}

// Add enslaves CNI_IFNAME to the VRF and moves its routes into the VRF's
// table, then passes prevResult on. On failure the interface is back out
// of the VRF, and a VRF this ADD created is gone.
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
		return nil, cni.ConfigError("prevResult: missing: vrf must be chained after a plugin that makes the interface")
	}
	netns, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		vrf, created, err := ensureVRF(c)
		if err != nil {
			return err
		}
		if err := enslave(vrf, req.IfName); err != nil {
			if created {
				_ = netlink.LinkDel(vrf)
			}
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("vrf: %w", err)
	}
	return prev, nil
}

// findVRF (inside the netns) returns the VRF called name, nil when there
// is no link of that name, and an error when the link is something else.
func findVRF(name string) (*netlink.Vrf, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up %q: %w", name, err)
	}
	vrf, ok := l.(*netlink.Vrf)
	if !ok {
		return nil, cni.ConfigError("vrfname: %q is a %s link in the pod, not a VRF", name, l.Type())
	}
	return vrf, nil
}

// ensureVRF (inside the netns) finds or creates the VRF and reports
// whether it created it.
func ensureVRF(c *Config) (*netlink.Vrf, bool, error) {
	vrf, err := findVRF(c.VRFName)
	if err != nil {
		return nil, false, err
	}
	if vrf != nil {
		if c.Table != 0 && vrf.Table != c.Table {
			return nil, false, cni.ConfigError("table: VRF %q exists with table %d, the config says %d", c.VRFName, vrf.Table, c.Table)
		}
		return vrf, false, nil
	}
	table := c.Table
	if table == 0 {
		if table, err = freeTable(); err != nil {
			return nil, false, err
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = c.VRFName
	vrf = &netlink.Vrf{LinkAttrs: attrs, Table: table}
	if err := netlink.LinkAdd(vrf); err != nil {
		return nil, false, fmt.Errorf("create VRF %q with table %d: %w", c.VRFName, table, err)
	}
	l, err := netlinksafe.LinkByName(c.VRFName)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		_ = netlink.LinkDel(vrf)
		return nil, false, fmt.Errorf("set VRF %q up: %w", c.VRFName, err)
	}
	return l.(*netlink.Vrf), true, nil
}

// freeTable (inside the netns) is the lowest table, from 1 on, that no
// VRF of the pod uses, as the reference picks it.
func freeTable() (uint32, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	used := map[uint32]bool{}
	for _, l := range links {
		if v, ok := l.(*netlink.Vrf); ok {
			used[v.Table] = true
		}
	}
	t := uint32(1)
	for used[t] {
		t++
	}
	return t, nil
}

// enslave (inside the netns) makes ifName a port of vrf. Enslaving
// flushes the interface's routes, and its global IPv6 addresses unless
// keep_addr_on_down is set: it notes both first, puts the missing
// addresses back, waits for the kernel to make their local routes in the
// VRF's table, and adds the routes there. An interface already in this
// VRF is fine (a repeated ADD); one with another master is an error.
func enslave(vrf *netlink.Vrf, ifName string) error {
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %q: %w", ifName, err)
	}
	if m := l.Attrs().MasterIndex; m != 0 {
		if m == vrf.Index {
			return nil
		}
		name := fmt.Sprint(m)
		if ml, err := netlink.LinkByIndex(m); err == nil {
			name = ml.Attrs().Name
		}
		return fmt.Errorf("%q already has a master, %s", ifName, name)
	}
	before, err := globalV6(l)
	if err != nil {
		return err
	}
	// The routes the kernel will flush: not the local and connected ones
	// (scope host and link), which it remakes in the VRF's table.
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_UNIVERSE}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_SCOPE)
	if err != nil {
		return fmt.Errorf("list routes of %q: %w", ifName, err)
	}
	if err := netlink.LinkSetMaster(l, vrf); err != nil {
		return fmt.Errorf("put %q into VRF %q: %w", ifName, vrf.Name, err)
	}
	fail := func(err error) error {
		_ = netlink.LinkSetNoMaster(l)
		return err
	}
	after, err := globalV6(l)
	if err != nil {
		return fail(err)
	}
	for _, a := range before {
		if slicesContainsAddr(after, a) {
			continue
		}
		if err := netlink.AddrAdd(l, &a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fail(fmt.Errorf("restore address %s on %q: %w", a.IPNet, ifName, err))
		}
		if err := waitLocal(l, vrf.Table, a.IP); err != nil {
			return fail(err)
		}
	}
	for _, r := range routes {
		r.Table = int(vrf.Table)
		if err := netlink.RouteReplace(&r); err != nil {
			return fail(fmt.Errorf("add route %s to VRF table %d: %w", r, vrf.Table, err))
		}
	}
	return nil
}

func slicesContainsAddr(addrs []netlink.Addr, a netlink.Addr) bool {
	for _, b := range addrs {
		if b.Equal(a) {
			return true
		}
	}
	return false
}

func globalV6(l netlink.Link) ([]netlink.Addr, error) {
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %q: %w", l.Attrs().Name, err)
	}
	var out []netlink.Addr
	for _, a := range addrs {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) {
			out = append(out, a)
		}
	}
	return out, nil
}

// waitLocal waits (up to about 2.5 s, as the reference) until the kernel
// has the local route of a restored address in the VRF's table: routes
// through that address fail before it.
func waitLocal(l netlink.Link, table uint32, ip net.IP) error {
	filter := &netlink.Route{Dst: &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}, Table: int(table), LinkIndex: l.Attrs().Index}
	for delay := 10 * time.Millisecond; ; delay *= 2 {
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil {
			return fmt.Errorf("list routes of table %d: %w", table, err)
		}
		if len(routes) > 0 {
			return nil
		}
		if delay > 1280*time.Millisecond {
			return fmt.Errorf("the local route of %s did not appear in table %d", ip, table)
		}
		time.Sleep(delay)
	}
}

// Del takes CNI_IFNAME out of the VRF and deletes the VRF when no
// interface is left in it. A netns, VRF or interface that is gone is
// fine, and so is a config without vrfname: its ADD made nothing. When
// CNI_IFNAME exists but is not in the VRF, the attachment never joined
// it, and the VRF (someone else's, maybe empty) stays; the reference
// deletes it then.
func Del(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	if req.Netns == "" || c.VRFName == "" {
		return nil
	}
	netns, err := iface.OpenNetns(req.Netns)
	if iface.NetnsGone(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		vrf, err := findVRF(c.VRFName)
		if err != nil || vrf == nil {
			var cerr *types.Error
			if errors.As(err, &cerr) {
				return nil // a link of that name that is no VRF is not ours
			}
			return err
		}
		if l, err := netlinksafe.LinkByName(req.IfName); err == nil {
			if l.Attrs().MasterIndex != vrf.Index {
				// This attachment never joined (its ADD failed): the VRF
				// is not its to delete, even when it is empty.
				return nil
			}
			if err := netlink.LinkSetNoMaster(l); err != nil {
				return fmt.Errorf("take %q out of VRF %q: %w", req.IfName, c.VRFName, err)
			}
		}
		members, err := members(vrf)
		if err != nil {
			return err
		}
		if len(members) == 0 {
			if err := netlink.LinkDel(vrf); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete VRF %q: %w", c.VRFName, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vrf: %w", err)
	}
	return nil
}

// members (inside the netns) lists vrf's ports.
func members(vrf *netlink.Vrf) ([]string, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == vrf.Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// Check verifies that the VRF exists (with the configured table, when
// set) and that CNI_IFNAME is one of its ports.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	if _, err := cni.CheckPrevResult(&c.NetConf); err != nil {
		return err
	}
	netns, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		vrf, err := findVRF(c.VRFName)
		if err != nil {
			return err
		}
		if vrf == nil {
			return fmt.Errorf("VRF %q does not exist", c.VRFName)
		}
		if c.Table != 0 && vrf.Table != c.Table {
			return fmt.Errorf("VRF %q has table %d, the config says %d", c.VRFName, vrf.Table, c.Table)
		}
		l, err := netlinksafe.LinkByName(req.IfName)
		if err != nil {
			return fmt.Errorf("find %q: %w", req.IfName, err)
		}
		if l.Attrs().MasterIndex != vrf.Index {
			return fmt.Errorf("%q is not in VRF %q", req.IfName, c.VRFName)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vrf: %w", err)
	}
	return nil
}
