package iface

import (
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FindInterface returns the index and entry of the result's interface
// named ifName in sandbox: CHECK starts from it.
func FindInterface(res *current.Result, ifName, sandbox string) (int, *current.Interface, error) {
	if res == nil {
		return -1, nil, fmt.Errorf("prevResult: missing: CHECK needs the result of ADD")
	}
	for i, ifc := range res.Interfaces {
		if ifc.Name == ifName && ifc.Sandbox == sandbox {
			return i, ifc, nil
		}
	}
	return -1, nil, fmt.Errorf("prevResult: no interface %q in sandbox %q", ifName, sandbox)
}

// Want is what CHECK expects of a link; zero fields are not checked.
type Want struct {
	Type        string // netlink type: "macvlan", "ipvlan", "vlan", "device"...
	MAC         string // from the result
	MTU         int    // from the config
	ParentIndex int    // the master's index
	// Extra checks type-specific attributes (mode, vlan id) of the link.
	Extra func(netlink.Link) error
}

// CheckLink (inside the netns) finds ifName and compares it with want.
func CheckLink(ifName string, want Want) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("find %q: %w", ifName, err)
	}
	a := l.Attrs()
	if want.Type != "" && l.Type() != want.Type {
		return nil, fmt.Errorf("%q is a %s link, want %s", ifName, l.Type(), want.Type)
	}
	if want.MAC != "" {
		mac, err := net.ParseMAC(want.MAC)
		if err != nil {
			return nil, fmt.Errorf("prevResult: interface %q: bad mac %q", ifName, want.MAC)
		}
		if a.HardwareAddr.String() != mac.String() {
			return nil, fmt.Errorf("%q has MAC %s, the result says %s", ifName, a.HardwareAddr, mac)
		}
	}
	if want.MTU != 0 && a.MTU != want.MTU {
		return nil, fmt.Errorf("%q has MTU %d, the config says %d", ifName, a.MTU, want.MTU)
	}
	if want.ParentIndex != 0 && a.ParentIndex != want.ParentIndex {
		return nil, fmt.Errorf("%q has parent link %d, want the master's index %d", ifName, a.ParentIndex, want.ParentIndex)
	}
	if want.Extra != nil {
		if err := want.Extra(l); err != nil {
			return nil, fmt.Errorf("%q: %w", ifName, err)
		}
	}
	return l, nil
}

// CheckIPs (inside the netns) checks that every address the result gives
// interface index idx is on ifName, and that every result route is in the
// routing table through ifName (with its gateway, when it names one). It is
// Verify for a link that has the result's routes to itself (macvlan,
// ipvlan, vlan, host-device); Verify accepts a route through any link.
func CheckIPs(ifName string, idx int, res *current.Result) error {
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %q: %w", ifName, err)
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", ifName, err)
	}
	var ips []*current.IPConfig
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && *ipc.Interface == idx {
			ips = append(ips, ipc)
		}
	}
	if ipc := missingAddr(addrs, ips); ipc != nil {
		return fmt.Errorf("%q lacks address %s of the result", ifName, ipc.Address.String())
	}
	if len(res.Routes) == 0 {
		return nil
	}
	routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes of %q: %w", ifName, err)
	}
	moved := MovedTables(l, addrs)
	for _, want := range res.Routes {
		if !hasRoute(routes, want.Dst, want.GW, want.Table, moved) {
			via := ""
			if want.GW != nil {
				via = " via " + want.GW.String()
			}
			return fmt.Errorf("route %s%s dev %s of the result is missing", want.Dst.String(), via, ifName)
		}
	}
	return nil
}

// hasRoute reports whether routes has dst (via gw, when set) in table, or
// when table is nil in the main table or one of moved.
func hasRoute(routes []netlink.Route, dst net.IPNet, gw net.IP, table *int, moved map[int]bool) bool {
	wantOnes, wantBits := dst.Mask.Size()
	for _, r := range routes {
		if table != nil && r.Table != *table {
			continue
		}
		if table == nil && r.Table != 254 && !moved[r.Table] {
			continue
		}
		if r.Dst == nil {
			if wantOnes != 0 || !dst.IP.IsUnspecified() || (dst.IP.To4() != nil) != (r.Family == netlink.FAMILY_V4) {
				continue
			}
		} else {
			ones, bits := r.Dst.Mask.Size()
			if ones != wantOnes || bits != wantBits || !r.Dst.IP.Equal(dst.IP.Mask(dst.Mask)) {
				continue
			}
		}
		if gw != nil && !gw.Equal(r.Gw) && !multipathHas(r, gw) {
			continue
		}
		return true
	}
	return false
}

func multipathHas(r netlink.Route, gw net.IP) bool {
	for _, nh := range r.MultiPath {
		if gw.Equal(nh.Gw) {
			return true
		}
	}
	return false
}

// MovedTables (inside the netns) returns the tables a chained plugin may
// have moved link's routes to: the table of the VRF link is a port of
// (vrf), and the tables that policy rules whose source is one of addrs
// (link's) look up (sbr). CHECK of such a chain finds the result's routes
// there; the reference's CHECK looks in the main table only and fails on
// every such chain.
func MovedTables(link netlink.Link, addrs []netlink.Addr) map[int]bool {
	out := map[int]bool{}
	if m := link.Attrs().MasterIndex; m != 0 {
		if vrf, err := netlink.LinkByIndex(m); err == nil {
			if v, ok := vrf.(*netlink.Vrf); ok {
				out[int(v.Table)] = true
			}
		}
	}
	rules, err := netlinksafe.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return out
	}
	for _, r := range rules {
		if r.Src == nil || r.Table == 0 {
			continue
		}
		for _, a := range addrs {
			if r.Src.IP.Equal(a.IP) {
				out[r.Table] = true
			}
		}
	}
	return out
}
