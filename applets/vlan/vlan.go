// Package vlan is the vlan applet: it gives the pod an 802.1Q (or 802.1ad)
// VLAN link on a master interface, created directly in the pod's netns
// under a temporary name and then renamed.
package vlan

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is vlan's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "vlan",
	Kind:    "main",
	Summary: "an 802.1Q/802.1ad VLAN link on a node interface",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is vlan's configuration. Every key of the reference plugin is
// accepted with the same meaning; protocol is new.
type Config struct {
	cni.NetConf
	// Master is the parent interface (required), in the pod's netns with
	// linkInContainer.
	Master string `json:"master"`
	// VlanID is the VLAN id, 0 to 4094.
	VlanID int `json:"vlanId"`
	// Protocol is the tag's protocol: 802.1Q (default) or 802.1ad (a
	// service tag, for QinQ), which the reference lacks.
	Protocol string `json:"protocol"`
	// MTU of the VLAN link; 0 is the kernel's default (the master's). It
	// may not exceed the master's MTU.
	MTU int `json:"mtu"`
	// LinkInContainer says the master lives in the pod's netns.
	LinkInContainer bool `json:"linkInContainer"`
}

var protocols = map[string]netlink.VlanProtocol{
	"":        netlink.VLAN_PROTOCOL_8021Q,
	"802.1Q":  netlink.VLAN_PROTOCOL_8021Q,
	"802.1q":  netlink.VLAN_PROTOCOL_8021Q,
	"802.1ad": netlink.VLAN_PROTOCOL_8021AD,
	"802.1AD": netlink.VLAN_PROTOCOL_8021AD,
}

// conf is Config validated: what ADD and CHECK act on.
type conf struct {
	*Config
	protocol netlink.VlanProtocol
}

func load(req *cni.Request) (*conf, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.Master == "" {
		return nil, cni.ConfigError("master: required: the interface to put the VLAN on")
	}
	if c.VlanID < 0 || c.VlanID > 4094 {
		return nil, cni.ConfigError("vlanId: %d is out of range 0-4094", c.VlanID)
	}
	p, ok := protocols[c.Protocol]
	if !ok {
		return nil, cni.ConfigError("protocol: %q is not 802.1Q or 802.1ad", c.Protocol)
	}
	if c.MTU < 0 {
		return nil, cni.ConfigError("mtu: %d is negative", c.MTU)
	}
	return &conf{Config: c, protocol: p}, nil
}

// master finds the master link, in the pod's netns with linkInContainer.
func (c *conf) master(netns ns.NetNS) (netlink.Link, error) {
	if !c.LinkInContainer {
		netns = nil
	}
	return iface.Master(netns, c.Master)
}

// Add creates the VLAN link in the pod, runs IPAM and configures the link.
// On failure it leaves nothing behind: the link is deleted and the IPAM
// allocation released.
func Add(req *cni.Request) (types.Result, error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, cni.ConfigError("ipam: required: vlan needs an IPAM plugin for the pod's addresses")
	}
	netns, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer netns.Close()

	master, err := c.master(netns)
	if err != nil {
		return nil, err
	}
	if err := iface.CheckMTU("mtu", c.MTU, master); err != nil {
		return nil, err
	}
	link, err := iface.Create(req, "vlan", netns, &netlink.Vlan{
		LinkAttrs:    netlink.LinkAttrs{ParentIndex: master.Attrs().Index, MTU: c.MTU},
		VlanId:       c.VlanID,
		VlanProtocol: c.protocol,
	}, c.LinkInContainer)
	if err != nil {
		return nil, fmt.Errorf("vlan %d on %q: %w", c.VlanID, master.Attrs().Name, err)
	}
	// Like the reference, vlan sets no arp_notify/ndisc_notify.
	res, err := iface.SetUp(req, "vlan", &c.NetConf, nil, netns, link, iface.NotifyNone)
	if err != nil {
		if derr := iface.DeleteCreated(netns, link); derr != nil {
			req.Log.Warnf("roll back: %v", derr)
		}
		return nil, err
	}
	return res, nil
}

// Del releases the IPAM allocation, then deletes the link. Both are
// tried even when one fails, and a netns or link that is already gone is
// fine: the IPAM release must still happen (for one, after a node
// reboot). It reads only what it needs, the ipam type: a runtime DELs a
// container whose ADD was refused for a bad key (a mode, a MAC), and that
// DEL must succeed, as the reference's does, or the pod is never torn
// down.
func Del(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	return iface.Del(req, "vlan", c.IPAM.Type)
}

// Check verifies what ADD made against prevResult and the config: the
// master exists, the link is a VLAN on it with the configured id,
// protocol and MTU, the result's MAC, and every address and route of the
// result.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	pod, err := iface.StartCheck(req, "vlan", prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	master, err := c.master(pod.Netns)
	if err != nil {
		return err
	}
	want := iface.Want{
		Type:        "vlan",
		MAC:         pod.Interface.Mac,
		MTU:         c.MTU,
		ParentIndex: master.Attrs().Index,
		Extra: func(l netlink.Link) error {
			v := l.(*netlink.Vlan)
			if v.VlanId != c.VlanID {
				return fmt.Errorf("vlan id is %d, the config says %d", v.VlanId, c.VlanID)
			}
			if v.VlanProtocol != c.protocol {
				return fmt.Errorf("vlan protocol is %s, the config says %s", v.VlanProtocol, c.protocol)
			}
			return nil
		},
	}
	return pod.Link(want)
}

// GC passes GC on to the IPAM plugin, which owns the only state vlan
// leaves outside pods.
func GC(req *cni.Request) error { return delegate.IPAMGC(req, &Config{}) }

// Status says whether ADD can work: the master must exist (unless it lives
// in the pod), then IPAM answers.
func Status(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	if !c.LinkInContainer {
		if _, err := iface.Master(nil, c.Master); err != nil {
			return cni.NotAvailable("vlan: %v", cni.AsError(err).Msg)
		}
	}
	if c.IPAM.Type == "" {
		return nil
	}
	return delegate.Status(req, c.IPAM.Type)
}
