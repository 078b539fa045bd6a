// Package ptp is the ptp applet: a routed point-to-point veth per pod. The
// pod reaches everything, its own subnet included, through the gateway
// that IPAM names; the node's end of the pair holds that gateway address
// (/32, /128) and a host route to each pod address, and forwards.
package ptp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
	"github.com/cnibox/cnibox/shared/ipmasq"
	"github.com/cnibox/cnibox/shared/veth"
)

// Applet is ptp's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:     "ptp",
	Kind:     "main",
	Summary:  "routed point-to-point veth pair per pod",
	Add:      Add,
	Del:      Del,
	DelRules: DelRules,
	Check:    Check,
	GC:       GC,
	Status:   Status,
}

// Config is ptp's configuration; ipam is required and must give gateways.
type Config struct {
	cni.NetConf
	// MTU of both veth ends (kernel default when 0).
	MTU int `json:"mtu"`
	// IPMasq masquerades pod traffic leaving the subnet; IPMasqBackend is
	// "iptables" or "nftables" (default: iptables if installed).
	IPMasq        bool   `json:"ipMasq"`
	IPMasqBackend string `json:"ipMasqBackend"`
}

// decode reads the configuration without judging it: what DEL and GC
// take, as the reference's DEL does. A runtime DELs after every refused
// ADD (a bad mtu or ipMasqBackend) and retries a failed DEL forever; the
// teardown needs only the name, ipam.type and ipMasq.
func decode(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	return c, nil
}

// load reads and validates the configuration for ADD, CHECK and STATUS.
func load(req *cni.Request) (*Config, error) {
	c, err := decode(req)
	if err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, cni.ConfigError("ipam.type: required (ptp has no L2-only mode)")
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return nil, cni.ConfigError("mtu: %d is not between 0 and 65535", c.MTU)
	}
	if c.IPMasq {
		if c.IPMasqBackend, err = ipmasq.Backend(c.IPMasqBackend); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Config) masqAttachment(req *cni.Request) ipmasq.Attachment {
	return ipmasq.Attachment{Network: c.Name, ContainerID: req.ContainerID, IfName: req.IfName}
}

// Add creates the pair and routes the pod through the node.
func Add(req *cni.Request) (_ types.Result, err error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	podNS, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer podNS.Close()
	// A pod that has the interface already is refused before IPAM: a
	// runtime's retried ADD must not reserve (dhcp would hand out the
	// first ADD's lease again) and then release what the first holds.
	if err := veth.Absent(podNS, req.ContainerID, req.IfName); err != nil {
		return nil, fmt.Errorf("ptp: %w", err)
	}
	// The masquerade rules' iptables-restore starts now, so that its
	// start-up overlaps with IPAM and the links.
	var masq *ipmasq.Ready
	if c.IPMasq {
		masq = ipmasq.Prestart(c.IPMasqBackend)
		defer masq.Close() // runs after the undo below, which waits for Setup
	}

	ipamRes, err := delegate.Add(req, c.IPAM.Type)
	if err != nil {
		return nil, err
	}
	// A failure from here on undoes what this invocation made, and only
	// that: the reservation it got, the rules it set up (this
	// attachment's, which had no interface, under its lock) and the pair
	// it created.
	var masqDone func() error
	var pair *veth.Pair
	defer func() {
		if err == nil {
			return
		}
		_ = pair.Delete()
		if masqDone != nil {
			_ = masqDone()
			_ = ipmasq.Undo(c.masqAttachment(req), ipmasq.Nets(ipamRes))
		}
		_ = delegate.Del(req, c.IPAM.Type)
	}()
	if len(ipamRes.IPs) == 0 {
		return nil, fmt.Errorf("ptp: IPAM plugin %q returned no addresses", c.IPAM.Type)
	}
	for _, ipc := range ipamRes.IPs {
		if ipc.Gateway == nil {
			return nil, cni.ConfigError("ipam: address %s has no gateway; ptp routes everything via it", ipc.Address.String())
		}
	}
	// The masquerade rules need only the addresses: they are made while
	// the links are made.
	masqDone = masq.Start(c.masqAttachment(req), ipamRes)

	pair, err = veth.Create(podNS, veth.Options{Network: c.Name, ContainerID: req.ContainerID, IfName: req.IfName, MTU: c.MTU,
		NoHostDAD: true})
	if err != nil {
		return nil, fmt.Errorf("ptp: %w", err)
	}
	host := pair.Host
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: host.Attrs().Name, Mac: host.Attrs().HardwareAddr.String()},
			{Name: req.IfName, Mac: pair.Container.Attrs().HardwareAddr.String(), Sandbox: req.Netns},
		},
		IPs: ipamRes.IPs, Routes: ipamRes.Routes, DNS: ipamRes.DNS,
	}
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(1)
	}
	if c.DNS.Nameservers != nil || c.DNS.Domain != "" || c.DNS.Search != nil || c.DNS.Options != nil {
		result.DNS = c.DNS
	}

	if err := podNS.Do(func(ns.NetNS) error { return configurePod(req.IfName, result) }); err != nil {
		return nil, fmt.Errorf("ptp: configure %s in the pod: %w", req.IfName, err)
	}
	if err := configureHost(host, result); err != nil {
		return nil, fmt.Errorf("ptp: configure %s: %w", host.Attrs().Name, err)
	}
	if masqDone != nil {
		if err := masqDone(); err != nil {
			return nil, err
		}
	}
	return result, nil
}

// configurePod gives the pod its addresses without subnet routes, then
// "gw dev eth0 scope link" and "subnet via gw" per address, then the
// result's routes (via the gateway of their family). Unlike bridge it
// leaves arp_notify alone, as the reference's ptp does: the pod's only
// neighbour is the node's end of the pair, which has no stale entry.
func configurePod(ifName string, res *current.Result) error {
	bare := *res
	bare.Routes = nil
	// No DAD for the pod's addresses (the node's end, its only
	// neighbour, holds only the gateway), but accept_dad stays as the
	// reference leaves it.
	if err := iface.Apply(ifName, &bare, iface.Options{NoPrefixRoute: true, KeepAcceptDAD: true}); err != nil {
		return err
	}
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return err
	}
	for _, ipc := range res.IPs {
		bits := 32
		if ipc.Address.IP.To4() == nil {
			bits = 128
		}
		gwRoute := &netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: ipc.Gateway, Mask: net.CIDRMask(bits, bits)}, Src: ipc.Address.IP}
		subnet := &net.IPNet{IP: ipc.Address.IP.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
		netRoute := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: subnet, Gw: ipc.Gateway, Src: ipc.Address.IP}
		for _, r := range []*netlink.Route{gwRoute, netRoute} {
			if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("add route %s: %w", r.Dst, err)
			}
		}
	}
	for _, r := range res.Routes {
		gw := r.GW
		for _, ipc := range res.IPs {
			if gw == nil && (ipc.Address.IP.To4() == nil) == (r.Dst.IP.To4() == nil) {
				gw = ipc.Gateway
			}
		}
		if err := iface.AddRoute(link, r, gw); err != nil {
			return fmt.Errorf("add route %s: %w", r, err)
		}
	}
	return nil
}

// configureHost puts each gateway on the node's end as a host address,
// routes each pod address to the veth, and enables forwarding.
func configureHost(host netlink.Link, res *current.Result) error {
	for _, ipc := range res.IPs {
		bits, fwd := 32, "/proc/sys/net/ipv4/ip_forward"
		if ipc.Address.IP.To4() == nil {
			bits, fwd = 128, "/proc/sys/net/ipv6/conf/all/forwarding"
		}
		if cur, err := os.ReadFile(fwd); err != nil || string(cur) != "1\n" {
			if err := os.WriteFile(fwd, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("enable forwarding: %w", err)
			}
		}
		gw := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Gateway, Mask: net.CIDRMask(bits, bits)}}
		if bits == 128 {
			gw.Flags = syscall.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(host, gw); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add gateway %s: %w", gw.IPNet, err)
		}
		// Scope host, as the reference's ip.AddHostRoute makes it: what
		// the node's route table shows (and tools compare) is the same.
		r := &netlink.Route{LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_HOST,
			Dst: &net.IPNet{IP: ipc.Address.IP, Mask: net.CIDRMask(bits, bits)}}
		if err := netlink.RouteAdd(r); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add host route %s: %w", r.Dst, err)
		}
	}
	return nil
}

// Del removes the addresses (IPAM), the pair (from the pod, or from the
// node when the pod's netns is gone) and the masquerade rules; each step
// runs even if another failed.
func Del(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	// Independent of the links: let it run while they are deleted.
	masqDone := ipmasq.InBackground(func() error { return c.delRules(req) })
	err = errors.Join(delegate.Del(req, c.IPAM.Type),
		veth.Delete(c.Name, req.ContainerID, req.IfName, req.Netns, req.Recorded()), masqDone())
	if err != nil {
		return fmt.Errorf("ptp: DEL: %w", err)
	}
	return nil
}

// DelRules is the part of Del that touches no link: the masquerade rules
// (see cni.Applet).
func DelRules(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	if err := c.delRules(req); err != nil {
		return fmt.Errorf("ptp: DEL: %w", err)
	}
	return nil
}

func (c *Config) delRules(req *cni.Request) error {
	if !c.IPMasq {
		return nil
	}
	return ipmasq.TeardownFor(&c.NetConf, c.masqAttachment(req), req.Netns)
}

// Check verifies IPAM, the pod's veth, addresses and routes, the node's
// end (peer, gateway address, host route) and the masquerade rules.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.CheckPrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	if err := delegate.Check(req, c.IPAM.Type); err != nil {
		return err
	}
	host, err := veth.Check(req.Netns, req.IfName, prev, func() error {
		// The routes ADD made: "subnet via gw" per address, and the result's.
		want := *prev
		want.Routes = slices.Clone(prev.Routes)
		for _, ipc := range iface.Addresses(req.IfName, prev) {
			subnet := net.IPNet{IP: ipc.Address.IP.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
			want.Routes = append(want.Routes, &types.Route{Dst: subnet, GW: ipc.Gateway})
		}
		return iface.Verify(req.IfName, &want)
	})
	if err != nil {
		return fmt.Errorf("ptp: %w", err)
	}
	addrs, err := netlinksafe.AddrList(host, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("ptp: list addresses of %s: %w", host.Attrs().Name, err)
	}
	for _, ipc := range iface.Addresses(req.IfName, prev) {
		found := false
		for _, a := range addrs {
			found = found || a.IP.Equal(ipc.Gateway)
		}
		if !found {
			return fmt.Errorf("ptp: %s lacks gateway %s", host.Attrs().Name, ipc.Gateway)
		}
	}
	if c.IPMasq {
		if err := ipmasq.Check(c.IPMasqBackend, c.masqAttachment(req), ipmasq.Nets(prev)); err != nil {
			return err
		}
	}
	return nil
}

// GC removes the node ends and masquerade rules of attachments the
// runtime no longer lists, and runs IPAM's GC.
func GC(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	err = errors.Join(veth.DeleteStale(c.Name, valid, req.Log.Infof),
		ipmasq.GC(c.Name, valid), delegate.GC(req, c.IPAM.Type))
	if err != nil {
		return fmt.Errorf("ptp: GC: %w", err)
	}
	return nil
}

// Status is IPAM's status, and whether the masquerade backend works.
func Status(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	if c.IPMasq {
		if err := ipmasq.Usable(c.IPMasqBackend); err != nil {
			return cni.NotAvailable("ptp: ipMasq (%s): %v", c.IPMasqBackend, err)
		}
	}
	return delegate.Status(req, c.IPAM.Type)
}
