// Package macvlan is the macvlan applet: it gives the pod a macvlan link
// on a master interface of the node, with its own MAC, created directly in
// the pod's netns under a temporary name and then renamed.
package macvlan

import (
	"fmt"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is macvlan's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "macvlan",
	Kind:    "main",
	Summary: "a macvlan link on a node interface",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is macvlan's configuration. Every key of the reference plugin is
// accepted with the same meaning; sourceMacs is new.
type Config struct {
	cni.NetConf
	// Master is the parent interface; empty means the interface of the
	// default route (in the pod's netns with linkInContainer).
	Master string `json:"master"`
	// Mode is bridge (default), private, vepa, passthru or source.
	Mode string `json:"mode"`
	// MTU of the macvlan; 0 is the kernel's default (the master's). It may
	// not exceed the master's MTU.
	MTU int `json:"mtu"`
	// MAC is a static MAC for the link; CNI_ARGS MAC= and runtimeConfig.mac
	// override it (in that order of precedence, runtimeConfig first).
	MAC string `json:"mac"`
	// LinkInContainer says the master lives in the pod's netns.
	LinkInContainer bool `json:"linkInContainer"`
	// BCQueueLen is the macvlan broadcast queue length; 0 is the kernel's.
	BCQueueLen uint32 `json:"bcqueuelen"`
	// SourceMACs is the allow list of mode "source" (which the reference
	// lacks): the link receives only frames whose source MAC is listed
	// (set as the kernel's IFLA_MACVLAN_MACADDR_DATA, "ip link ... macaddr
	// set"). Required with mode source, refused with any other mode.
	SourceMACs []string `json:"sourceMacs"`

	RuntimeConfig struct {
		MAC string `json:"mac"`
	} `json:"runtimeConfig"`
}

type args struct {
	cni.CommonArgs
	MAC types.UnmarshallableString
}

var modes = map[string]netlink.MacvlanMode{
	"":         netlink.MACVLAN_MODE_BRIDGE,
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
	"source":   netlink.MACVLAN_MODE_SOURCE,
}

// conf is Config validated: what ADD and CHECK act on.
type conf struct {
	*Config
	mode   netlink.MacvlanMode
	mac    net.HardwareAddr
	source []net.HardwareAddr
}

func load(req *cni.Request) (*conf, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	out := &conf{Config: c}
	mode, ok := modes[c.Mode]
	if !ok {
		return nil, cni.ConfigError("mode: %q is not one of bridge, private, vepa, passthru, source", c.Mode)
	}
	out.mode = mode
	if c.MTU < 0 {
		return nil, cni.ConfigError("mtu: %d is negative", c.MTU)
	}
	for i, s := range c.SourceMACs {
		mac, err := iface.ParseMAC(fmt.Sprintf("sourceMacs[%d]", i), s)
		if err != nil {
			return nil, err
		}
		out.source = append(out.source, mac)
	}
	if mode == netlink.MACVLAN_MODE_SOURCE && len(out.source) == 0 {
		return nil, cni.ConfigError("sourceMacs: mode source needs at least one source MAC")
	}
	if mode != netlink.MACVLAN_MODE_SOURCE && len(out.source) > 0 {
		return nil, cni.ConfigError("sourceMacs: only valid with mode source, not %q", c.Mode)
	}
	var a args
	if err := req.LoadArgs(&a); err != nil {
		return nil, err
	}
	field, mac := "mac", c.MAC
	if a.MAC != "" {
		field, mac = "CNI_ARGS MAC", string(a.MAC)
	}
	if c.RuntimeConfig.MAC != "" {
		field, mac = "runtimeConfig.mac", c.RuntimeConfig.MAC
	}
	parsed, err := iface.ParseMAC(field, mac)
	if err != nil {
		return nil, err
	}
	out.mac = parsed
	return out, nil
}

// Add creates the macvlan in the pod, runs IPAM (after the link exists, as
// dhcp needs it) and configures the link. On failure it leaves nothing
// behind: the link is deleted and the IPAM allocation released.
func Add(req *cni.Request) (types.Result, error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	netns, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer netns.Close()

	var masterNS ns.NetNS
	if c.LinkInContainer {
		masterNS = netns
	}
	master, err := iface.Master(masterNS, c.Master)
	if err != nil {
		return nil, err
	}
	if err := iface.CheckMTU("mtu", c.MTU, master); err != nil {
		return nil, err
	}
	link, err := iface.Create(req, "macvlan", netns, &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{
			ParentIndex:  master.Attrs().Index,
			MTU:          c.MTU,
			HardwareAddr: c.mac,
		},
		Mode:       c.mode,
		BCQueueLen: c.BCQueueLen,
	}, c.LinkInContainer)
	if err != nil {
		return nil, fmt.Errorf("macvlan on %q: %w", master.Attrs().Name, err)
	}
	res, err := setUp(req, c, netns, link)
	if err != nil {
		if derr := iface.DeleteCreated(netns, link); derr != nil {
			req.Log.Warnf("roll back: %v", derr)
		}
		return nil, err
	}
	return res, nil
}

// setUp does the part of ADD after the link exists: source MACs, IPAM,
// addresses and routes.
func setUp(req *cni.Request, c *conf, netns ns.NetNS, link netlink.Link) (*current.Result, error) {
	if len(c.source) > 0 {
		err := netns.Do(func(ns.NetNS) error { return netlink.MacvlanMACAddrSet(link, c.source) })
		if err != nil {
			return nil, fmt.Errorf("macvlan: set sourceMacs on %q: %w", req.IfName, err)
		}
	}
	return iface.SetUp(req, "macvlan", &c.NetConf, nil, netns, link, iface.NotifyAll)
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
	return iface.Del(req, "macvlan", c.IPAM.Type)
}

// Check verifies what ADD made against prevResult and the config: the
// master exists, the link is a macvlan on it with the configured mode,
// MTU, source MACs and broadcast queue length, the result's MAC, and every
// address and route of the result.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	pod, err := iface.StartCheck(req, "macvlan", prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	var masterNS ns.NetNS
	if c.LinkInContainer {
		masterNS = pod.Netns
	}
	master, err := iface.Master(masterNS, c.Master)
	if err != nil {
		return err
	}
	want := iface.Want{
		Type:        "macvlan",
		MAC:         pod.Interface.Mac,
		MTU:         c.MTU,
		ParentIndex: master.Attrs().Index,
		Extra: func(l netlink.Link) error {
			m := l.(*netlink.Macvlan)
			if m.Mode != c.mode {
				return fmt.Errorf("macvlan mode is %s, the config says %s", modeName(m.Mode), modeName(c.mode))
			}
			if c.BCQueueLen != 0 && m.BCQueueLen != c.BCQueueLen {
				return fmt.Errorf("bcqueuelen is %d, the config says %d", m.BCQueueLen, c.BCQueueLen)
			}
			if c.mode == netlink.MACVLAN_MODE_SOURCE && !sameMACs(m.MACAddrs, c.source) {
				return fmt.Errorf("source MACs are %v, the config says %v", m.MACAddrs, c.SourceMACs)
			}
			return nil
		},
	}
	return pod.Link(want)
}

// GC passes GC on to the IPAM plugin, which owns the only state macvlan
// leaves outside pods.
func GC(req *cni.Request) error { return delegate.IPAMGC(req, &Config{}) }

// Status says whether ADD can work: the master must exist (unless it lives
// in the pod), then IPAM answers.
func Status(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	if !c.LinkInContainer {
		if _, err := iface.Master(nil, c.Master); err != nil {
			return cni.NotAvailable("macvlan: %v", cni.AsError(err).Msg)
		}
	}
	if c.IPAM.Type == "" {
		return nil
	}
	return delegate.Status(req, c.IPAM.Type)
}

func modeName(m netlink.MacvlanMode) string {
	for name, mode := range modes {
		if mode == m && name != "" {
			return name
		}
	}
	return fmt.Sprintf("mode %d", m)
}

func sameMACs(a, b []net.HardwareAddr) bool {
	as := make([]string, len(a))
	for i, m := range a {
		as[i] = m.String()
	}
	bs := make([]string, len(b))
	for i, m := range b {
		bs[i] = m.String()
	}
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}
