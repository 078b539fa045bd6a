package iface

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// Notify is the set of sysctls that make a new link announce itself:
// arp_notify sends a gratuitous ARP and ndisc_notify an unsolicited
// neighbour advertisement when the link comes up or changes its address,
// so peers that cached an old pod's MAC for the same IP learn the new one.
type Notify struct{ ARP, NDisc bool }

// The notify sets of the reference: macvlan and ipvlan set both, vlan and
// host-device neither.
var (
	NotifyAll  = Notify{ARP: true, NDisc: true}
	NotifyNone = Notify{}
)

// Configure (inside the netns) sets the notify sysctls of ifName, then
// applies res as the reference's ipam.ConfigureIface does — IPv6 enabled
// (with keep_addr_on_down) when there is a v6 address, addresses added,
// link up, DAD settled when there is a v6 gateway, routes added (ECMP-safe)
// with their table, scope and priority — and also the route mtu/advmss of
// spec 1.1, which the reference ignores. res may have no IPs (an applet
// without ipam): the link is only set up.
func Configure(ifName string, res *current.Result, notify Notify) error {
	if notify.ARP {
		if err := setSysctl("ipv4/conf/"+ifName+"/arp_notify", "1"); err != nil {
			return err
		}
	}
	if notify.NDisc {
		// Absent when IPv6 is disabled in the kernel: nothing to notify then.
		_ = setSysctl("ipv6/conf/"+ifName+"/ndisc_notify", "1")
	}
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %q: %w", ifName, err)
	}
	var gw4, gw6 net.IP
	v6 := false
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(res.Interfaces) || res.Interfaces[*ipc.Interface].Name != ifName {
			continue
		}
		if ipc.Address.IP.To4() == nil && !v6 {
			v6 = true
			for _, name := range []string{"lo", ifName} {
				if err := setSysctl("ipv6/conf/"+name+"/disable_ipv6", "0"); err != nil {
					return err
				}
			}
			if err := setSysctl("ipv6/conf/"+ifName+"/keep_addr_on_down", "1"); err != nil {
				return err
			}
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add address %s to %q: %w", ipc.Address.String(), ifName, err)
		}
		if ipc.Gateway != nil {
			if ipc.Gateway.To4() != nil && gw4 == nil {
				gw4 = ipc.Gateway
			} else if ipc.Gateway.To4() == nil && gw6 == nil {
				gw6 = ipc.Gateway
			}
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %q up: %w", ifName, err)
	}
	if gw6 != nil {
		if err := settle(l, dadTimeout); err != nil {
			return fmt.Errorf("%q: %w", ifName, err)
		}
	}
	for _, r := range res.Routes {
		route := netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       &net.IPNet{IP: r.Dst.IP, Mask: r.Dst.Mask},
			Gw:        r.GW,
			Priority:  r.Priority,
			MTU:       r.MTU,
			AdvMSS:    r.AdvMSS,
		}
		if route.Gw == nil {
			if r.Dst.IP.To4() != nil {
				route.Gw = gw4
			} else {
				route.Gw = gw6
			}
		}
		if r.Table != nil {
			route.Table = *r.Table
		}
		if r.Scope != nil {
			route.Scope = netlink.Scope(*r.Scope)
		}
		if err := netlink.RouteAddEcmp(&route); err != nil {
			return fmt.Errorf("add route %s via %v dev %s: %w", r.Dst.String(), route.Gw, ifName, err)
		}
	}
	return nil
}

const dadTimeout = 5 * time.Second

// settle waits until l has no tentative IPv6 address, so the pod's first
// packets to its gateway do not leave from an address the kernel still
// refuses to use. A failed DAD is an error (another host has the address).
func settle(l netlink.Link, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list IPv6 addresses: %w", err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("duplicate address detection failed for %s", a.IPNet)
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = true
			}
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IPv6 addresses still tentative after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setSysctl writes a net sysctl of the calling thread's netns (the kernel
// resolves /proc/sys/net at open time against the opener's netns).
func setSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/net/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set net.%s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

// NewResult builds a main applet's result: the one interface it made (in
// sandbox), every IPAM address assigned to it, the IPAM routes, and DNS
// merged from the IPAM result and the config's dns (the reference drops
// the IPAM DNS). ipamRes may be nil (no ipam).
func NewResult(ipamRes *current.Result, confDNS types.DNS, link netlink.Link, sandbox string) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	res.Interfaces = []*current.Interface{{
		Name:    link.Attrs().Name,
		Mac:     link.Attrs().HardwareAddr.String(),
		Sandbox: sandbox,
	}}
	dns := confDNS
	if ipamRes != nil {
		for _, ip := range ipamRes.IPs {
			c := *ip
			c.Interface = current.Int(0)
			res.IPs = append(res.IPs, &c)
		}
		res.Routes = ipamRes.Routes
		dns = MergeDNS(confDNS, ipamRes.DNS)
	}
	res.DNS = dns
	return res
}

// MergeDNS merges the config's dns with the IPAM result's: nameservers,
// search domains and options are the union (config first, no duplicates),
// and the config's domain wins over the IPAM one.
func MergeDNS(conf, fromIPAM types.DNS) types.DNS {
	out := types.DNS{
		Domain:      conf.Domain,
		Nameservers: union(conf.Nameservers, fromIPAM.Nameservers),
		Search:      union(conf.Search, fromIPAM.Search),
		Options:     union(conf.Options, fromIPAM.Options),
	}
	if out.Domain == "" {
		out.Domain = fromIPAM.Domain
	}
	return out
}

func union(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	seen := make(map[string]bool, len(a)+len(b))
	var out []string
	for _, s := range append(append([]string(nil), a...), b...) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// ParseMAC parses a MAC for the key named field; "" gives nil.
func ParseMAC(field, s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, cni.ConfigError("%s: %q is not an Ethernet MAC address", field, s)
	}
	if mac[0]&1 != 0 {
		return nil, cni.ConfigError("%s: %q is a multicast address, a link needs a unicast one", field, s)
	}
	return mac, nil
}
