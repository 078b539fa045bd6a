// Apply puts an IPAM result on an interface: the addresses meant for it,
// link up, and the result's routes. It is what every main applet (bridge,
// ptp, macvlan, ipvlan, vlan, host-device) does after IPAM, and Verify is
// what their CHECK does.
//
// It differs from the reference's ConfigureIface in ways that matter per
// pod: IPv6 addresses skip duplicate address detection unless the caller
// asks for it (DAD costs 1.5–2 s per pod); with DAD the addresses are
// optimistic (RFC 4429: usable at once while DAD runs) where the kernel
// has optimistic DAD, and ADD waits for DAD only when the addresses have an
// IPv6 gateway (the reference's rule), on netlink address events rather
// than by polling; and route mtu/advmss from the result are honoured.
//
// Both act on the current netns: call them inside ns.Do.
package iface

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Options tune Apply.
type Options struct {
	// DAD runs IPv6 duplicate address detection (accept_dad=1,
	// enhanced_dad=1, optimistic where the kernel can). When an IPv6
	// address has a gateway, Apply waits up to DADTimeout for DAD to
	// finish and fails if it found a duplicate, as the reference does;
	// otherwise it does not wait. Without DAD, addresses are added with
	// IFA_F_NODAD and usable at once.
	DAD        bool
	DADTimeout time.Duration // default 5 s
	// NoUp leaves the link down (with its addresses).
	NoUp bool
	// NoPrefixRoute adds addresses without the kernel's subnet route
	// (IFA_F_NOPREFIXROUTE), for links that reach their subnet through a
	// gateway, as ptp's do.
	NoPrefixRoute bool
	// KeepAcceptDAD leaves the link's accept_dad as it is when DAD is
	// off: the addresses are still added without DAD, but the sysctl is
	// the one the reference leaves (its ptp never sets it), so addresses
	// added later by others behave as they would there.
	KeepAcceptDAD bool
}

// Apply configures ifName with the addresses of res that belong to it
// (IPConfig.Interface pointing at an interface of that name, or no
// interface index at all) and every route of res. A route without a
// gateway goes via the first gateway of its family, or on-link when there
// is none. Addresses and routes that already exist are fine.
func Apply(ifName string, res *current.Result, o Options) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifName, err)
	}
	ips := Addresses(ifName, res)
	var v4gw, v6gw net.IP
	v6 := false
	for _, ipc := range ips {
		if ipc.Address.IP.To4() == nil {
			v6 = true
			if v6gw == nil {
				v6gw = ipc.Gateway
			}
		} else if v4gw == nil {
			v4gw = ipc.Gateway
		}
	}
	optimistic := false
	if v6 {
		if optimistic, err = enableIPv6(ifName, o.DAD, o.KeepAcceptDAD); err != nil {
			return err
		}
	}
	for _, ipc := range ips {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}}
		if ipc.Address.IP.To4() == nil {
			if !o.DAD {
				addr.Flags |= syscall.IFA_F_NODAD
			} else if optimistic {
				addr.Flags |= unix.IFA_F_OPTIMISTIC
			}
		}
		if o.NoPrefixRoute {
			addr.Flags |= unix.IFA_F_NOPREFIXROUTE
		}
		err := netlink.AddrAdd(link, addr)
		if errors.Is(err, syscall.EINVAL) && addr.Flags&unix.IFA_F_OPTIMISTIC != 0 {
			addr.Flags &^= unix.IFA_F_OPTIMISTIC // refused here: plain DAD
			err = netlink.AddrAdd(link, addr)
		}
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add address %s to %s: %w", ipc.Address.String(), ifName, err)
		}
	}
	if !o.NoUp {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", ifName, err)
		}
		if v6gw != nil && o.DAD {
			if err := settle(link, o.DADTimeout); err != nil {
				return err
			}
		}
	}
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			if r.Dst.IP.To4() != nil {
				gw = v4gw
			} else {
				gw = v6gw
			}
		}
		if err := AddRoute(link, r, gw); err != nil {
			return fmt.Errorf("add route %s to %s: %w", r, ifName, err)
		}
	}
	return nil
}

// Addresses returns the IPs of res meant for ifName.
func Addresses(ifName string, res *current.Result) []*current.IPConfig {
	var out []*current.IPConfig
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Name != ifName {
				continue
			}
		}
		out = append(out, ipc)
	}
	return out
}

// AddRoute adds r through link via gw (nil: on-link), with the route's
// metric, table, scope, mtu and advmss. An existing identical route is fine.
func AddRoute(link netlink.Link, r *types.Route, gw net.IP) error {
	dst := r.Dst
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &dst,
		Gw:        gw,
		Priority:  r.Priority,
		MTU:       r.MTU,
		AdvMSS:    r.AdvMSS,
	}
	if r.Table != nil {
		route.Table = *r.Table
	}
	if r.Scope != nil {
		route.Scope = netlink.Scope(*r.Scope)
	} else if gw == nil {
		route.Scope = netlink.SCOPE_LINK
	}
	if err := netlink.RouteAdd(route); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

// enableIPv6 makes the link able to carry IPv6 (lo too, as the reference
// does), keeps addresses across down/up, and sets DAD as asked. With DAD it
// also turns on optimistic DAD and the use of optimistic addresses, and
// reports whether the kernel has them (CONFIG_IPV6_OPTIMISTIC_DAD).
func enableIPv6(ifName string, dad, keepAcceptDAD bool) (optimistic bool, err error) {
	for _, dev := range []string{"lo", ifName} {
		if err := setIfDifferent("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", "0"); err != nil {
			return false, fmt.Errorf("enable IPv6 on %s: %w", dev, err)
		}
	}
	conf := "/proc/sys/net/ipv6/conf/" + ifName + "/"
	dadv := "0"
	if dad {
		dadv = "1"
		if err := setIfDifferent(conf+"enhanced_dad", "1"); err != nil {
			return false, fmt.Errorf("set enhanced_dad on %s: %w", ifName, err)
		}
		if _, err := os.Stat(conf + "optimistic_dad"); err == nil {
			optimistic = setIfDifferent(conf+"optimistic_dad", "1") == nil &&
				setIfDifferent(conf+"use_optimistic", "1") == nil
		}
	}
	for k, v := range map[string]string{"keep_addr_on_down": "1", "accept_dad": dadv} {
		if k == "accept_dad" && keepAcceptDAD && !dad {
			continue
		}
		if err := setIfDifferent(conf+k, v); err != nil {
			return false, fmt.Errorf("set %s=%s on %s: %w", k, v, ifName, err)
		}
	}
	return optimistic, nil
}

// setIfDifferent writes value to a sysctl file unless it already holds it.
// A missing file (no IPv6 in this kernel, an older kernel's knob) is fine.
func setIfDifferent(path, value string) error {
	cur, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil && string(cur) == value+"\n" {
		return nil
	}
	return os.WriteFile(path, []byte(value), 0o644)
}

// settle waits until no IPv6 address of link is tentative. It looks again
// whenever the kernel announces an address change (DAD finishing is one),
// not on a timer.
func settle(link netlink.Link, timeout time.Duration) error {
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	deadline := time.Now().Add(timeout)
	// Subscribed before the first look, so no change in between is missed.
	events, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_IPV6_IFADDR)
	if err != nil {
		events = nil // poll instead
	} else {
		defer events.Close()
	}
	for {
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&syscall.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("%s: address %s failed duplicate address detection", link.Attrs().Name, a.IP)
			}
			if a.Flags&syscall.IFA_F_TENTATIVE != 0 {
				tentative = true
			}
		}
		if !tentative {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%s: addresses still tentative after %v", link.Attrs().Name, timeout)
		}
		if events == nil {
			time.Sleep(min(left, 20*time.Millisecond))
			continue
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := events.SetReceiveTimeout(&tv); err != nil {
			events.Close()
			events = nil
			continue
		}
		// Any message (or the timeout) means: look again.
		if _, _, err := events.Receive(); err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			events.Close()
			events = nil
		}
	}
}

// Verify checks that ifName still has the addresses of res meant for it
// and that every route of res exists: what CHECK asserts.
func Verify(ifName string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s: %w", ifName, err)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifName, err)
	}
	if ipc := missingAddr(addrs, Addresses(ifName, res)); ipc != nil {
		return fmt.Errorf("%s: address %s is missing", ifName, ipc.Address.String())
	}
	moved := MovedTables(link, addrs)
	for _, r := range res.Routes {
		if err := verifyRoute(r, moved); err != nil {
			return err
		}
	}
	return nil
}

// missingAddr returns the first of ips that addrs lacks (same address
// and prefix length), or nil.
func missingAddr(addrs []netlink.Addr, ips []*current.IPConfig) *current.IPConfig {
	for _, ipc := range ips {
		found := false
		for _, a := range addrs {
			if a.IP.Equal(ipc.Address.IP) && a.Mask.String() == ipc.Address.Mask.String() {
				found = true
				break
			}
		}
		if !found {
			return ipc
		}
	}
	return nil
}

// verifyRoute looks for r in its table; one without a table may also be
// in one of moved (the tables vrf or sbr moved the interface's routes to).
func verifyRoute(r *types.Route, moved map[int]bool) error {
	family := netlink.FAMILY_V4
	if r.Dst.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	filter := &netlink.Route{Table: syscall.RT_TABLE_MAIN}
	if r.Table != nil {
		filter.Table = *r.Table
	} else if len(moved) > 0 {
		filter.Table = syscall.RT_TABLE_UNSPEC // all tables; filtered below
	}
	all, err := netlinksafe.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	var routes []netlink.Route
	for _, rt := range all {
		if filter.Table != syscall.RT_TABLE_UNSPEC || rt.Table == syscall.RT_TABLE_MAIN || moved[rt.Table] {
			routes = append(routes, rt)
		}
	}
	want := r.Dst.String()
	for _, rt := range routes {
		dst := "0.0.0.0/0"
		if family == netlink.FAMILY_V6 {
			dst = "::/0"
		}
		if rt.Dst != nil {
			dst = rt.Dst.String()
		}
		if dst != want {
			continue
		}
		if r.GW == nil || rt.Gw.Equal(r.GW) {
			return nil
		}
		for _, nh := range rt.MultiPath {
			if nh.Gw.Equal(r.GW) {
				return nil
			}
		}
	}
	return fmt.Errorf("route %s is missing", r)
}
