package iface

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

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
// applies res with Apply: addresses, link up, routes (with their
// table, scope, metric, mtu and advmss). IPv6 duplicate address detection
// runs: these links sit on a real L2 segment shared with other machines,
// where a duplicate address is a real risk, unlike a bridge's private
// veths. As in the reference, ADD waits for it (up to 5 s) only when an
// IPv6 address has a gateway; without one the addresses are optimistic
// (usable at once while DAD runs) and nothing waits. res may have no IPs
// (an applet without ipam): the link is only set up.
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
	if err := Apply(ifName, res, Options{DAD: true}); err != nil {
		return fmt.Errorf("configure %q: %w", ifName, err)
	}
	return nil
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

// SetUp is the part of ADD after the applet's link exists: ADD of the
// config's IPAM plugin (after the link, as dhcp needs it), the result for
// link (with fallback's addresses and routes when the config has no IPAM;
// fallback may be nil), and Configure with notify inside netns. When
// Configure fails the IPAM allocation is released. Errors name applet.
func SetUp(req *cni.Request, applet string, conf *cni.NetConf, fallback *current.Result, netns ns.NetNS, link netlink.Link, notify Notify) (*current.Result, error) {
	ipRes, err := AddIPAM(req, applet, conf.IPAM.Type)
	if err != nil {
		return nil, err
	}
	if ipRes == nil {
		ipRes = fallback
	}
	res := NewResult(ipRes, conf.DNS, link, req.Netns)
	if len(res.IPs) == 0 {
		// An L2-only link has no address to announce; like the
		// reference (macvlan without ipam), leave the sysctls alone.
		notify = NotifyNone
	}
	if err := netns.Do(func(ns.NetNS) error { return Configure(req.IfName, res, notify) }); err != nil {
		ReleaseIPAM(req, conf.IPAM.Type)
		return nil, fmt.Errorf("%s: %w", applet, err)
	}
	return res, nil
}
