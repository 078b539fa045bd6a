// Package ipvlan is the ipvlan applet: it gives the pod an ipvlan link on a
// master interface (sharing the master's MAC), created directly in the
// pod's netns under a temporary name and then renamed.
package ipvlan

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is ipvlan's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "ipvlan",
	Kind:    "main",
	Summary: "an ipvlan link on a node interface",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is ipvlan's configuration. Every key of the reference plugin is
// accepted with the same meaning; flag is new.
type Config struct {
	cni.NetConf
	// Master is the parent interface. Empty means: chained, the single
	// interface of prevResult; alone, the interface of the default route
	// (in the pod's netns with linkInContainer).
	Master string `json:"master"`
	// Mode is l2 (default), l3 or l3s.
	Mode string `json:"mode"`
	// Flag is the ipvlan flag of "ip link add ... type ipvlan mode M FLAG",
	// which the reference lacks: bridge (default: slaves of one master
	// reach each other directly), private (they do not) or vepa (their
	// traffic goes out through the master and back).
	Flag string `json:"flag"`
	// MTU of the ipvlan; 0 is the kernel's default (the master's). It may
	// not exceed the master's MTU (the reference does not check, and the
	// kernel refuses it).
	MTU int `json:"mtu"`
	// LinkInContainer says the master lives in the pod's netns.
	LinkInContainer bool `json:"linkInContainer"`
}

var modes = map[string]netlink.IPVlanMode{
	"":    netlink.IPVLAN_MODE_L2,
	"l2":  netlink.IPVLAN_MODE_L2,
	"l3":  netlink.IPVLAN_MODE_L3,
	"l3s": netlink.IPVLAN_MODE_L3S,
}

var flags = map[string]netlink.IPVlanFlag{
	"":        netlink.IPVLAN_FLAG_BRIDGE,
	"bridge":  netlink.IPVLAN_FLAG_BRIDGE,
	"private": netlink.IPVLAN_FLAG_PRIVATE,
	"vepa":    netlink.IPVLAN_FLAG_VEPA,
}

// conf is Config validated: what ADD and CHECK act on.
type conf struct {
	*Config
	mode netlink.IPVlanMode
	flag netlink.IPVlanFlag
	// prev is the previous result when chained.
	prev *current.Result
}

func load(req *cni.Request) (*conf, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	out := &conf{Config: c}
	var ok bool
	if out.mode, ok = modes[c.Mode]; !ok {
		return nil, cni.ConfigError("mode: %q is not one of l2, l3, l3s", c.Mode)
	}
	if out.flag, ok = flags[c.Flag]; !ok {
		return nil, cni.ConfigError("flag: %q is not one of bridge, private, vepa", c.Flag)
	}
	if c.MTU < 0 {
		return nil, cni.ConfigError("mtu: %d is negative", c.MTU)
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return nil, err
	}
	out.prev = prev
	return out, nil
}

// masterName is the configured master or, when chained without one, the
// single interface of prevResult.
func (c *conf) masterName() (string, error) {
	if c.Master != "" || c.prev == nil {
		return c.Master, nil
	}
	if len(c.prev.Interfaces) != 1 || c.prev.Interfaces[0].Name == "" {
		return "", cni.ConfigError("master: not set, and prevResult has %d interfaces where a chained ipvlan needs exactly one to take it from", len(c.prev.Interfaces))
	}
	return c.prev.Interfaces[0].Name, nil
}

// master finds the master link, in the pod's netns with linkInContainer.
func (c *conf) master(netns ns.NetNS) (netlink.Link, error) {
	name, err := c.masterName()
	if err != nil {
		return nil, err
	}
	if !c.LinkInContainer {
		netns = nil
	}
	return iface.Master(netns, name)
}

// Add creates the ipvlan in the pod, gets its addresses (from IPAM, or
// when chained without ipam from prevResult) and configures the link. On
// failure it leaves nothing behind: the link is deleted and the IPAM
// allocation released.
func Add(req *cni.Request) (types.Result, error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" && (c.prev == nil || len(c.prev.IPs) == 0) {
		return nil, cni.ConfigError("ipam: required, unless ipvlan is chained after a plugin whose result has IP addresses")
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
	link, err := iface.Create(req, "ipvlan", netns, &netlink.IPVlan{
		LinkAttrs: netlink.LinkAttrs{ParentIndex: master.Attrs().Index, MTU: c.MTU},
		Mode:      c.mode,
		Flag:      c.flag,
	}, c.LinkInContainer)
	if err != nil {
		return nil, fmt.Errorf("ipvlan on %q: %w", master.Attrs().Name, err)
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

// setUp does the part of ADD after the link exists: IPAM (after the link,
// as dhcp needs it), addresses and routes.
func setUp(req *cni.Request, c *conf, netns ns.NetNS, link netlink.Link) (*current.Result, error) {
	res, err := iface.SetUp(req, "ipvlan", &c.NetConf, c.prev, netns, link, iface.NotifyAll)
	if err != nil {
		return nil, err
	}
	if c.prev != nil {
		return chainedResult(c, res), nil
	}
	return res, nil
}

// chainedResult appends our interface to the previous result instead of
// replacing it, as the reference does: the master stays in the result
// (CHECK finds it there), and addresses taken over from prevResult now
// point at our link.
func chainedResult(c *conf, own *current.Result) *current.Result {
	out := *c.prev
	out.CNIVersion = current.ImplementedSpecVersion
	idx := len(out.Interfaces)
	out.Interfaces = append(append([]*current.Interface(nil), out.Interfaces...), own.Interfaces[0])
	if c.IPAM.Type == "" {
		out.IPs = nil // the same addresses, now on our link
	} else {
		out.IPs = append([]*current.IPConfig(nil), out.IPs...)
		out.Routes = append(append([]*types.Route(nil), out.Routes...), own.Routes...)
	}
	for _, ip := range own.IPs {
		ipc := *ip
		ipc.Interface = current.Int(idx)
		out.IPs = append(out.IPs, &ipc)
	}
	out.DNS = own.DNS
	return &out
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
	return iface.Del(req, "ipvlan", c.IPAM.Type)
}

// Check verifies what ADD made against prevResult and the config: the
// master exists, the link is an ipvlan on it with the configured mode,
// flag and MTU, the result's MAC, and every address and route of the
// result.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	pod, err := iface.StartCheck(req, "ipvlan", c.prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	// Chained, prevResult holds the master and our link; alone, only ours.
	if c.Master == "" {
		c.Master = otherInterface(c.prev, pod.Index)
	}
	var masterNS ns.NetNS
	if c.LinkInContainer {
		masterNS = pod.Netns
	}
	master, err := iface.Master(masterNS, c.Master)
	if err != nil {
		return err
	}
	want := iface.Want{
		Type:        "ipvlan",
		MAC:         pod.Interface.Mac,
		MTU:         c.MTU,
		ParentIndex: master.Attrs().Index,
		Extra: func(l netlink.Link) error {
			v := l.(*netlink.IPVlan)
			if v.Mode != c.mode {
				return fmt.Errorf("ipvlan mode is %s, the config says %s", modeName(v.Mode), modeName(c.mode))
			}
			if v.Flag != c.flag {
				return fmt.Errorf("ipvlan flag is %s, the config says %s", flagName(v.Flag), flagName(c.flag))
			}
			return nil
		},
	}
	return pod.Link(want)
}

// otherInterface returns the name of the one interface of res other than
// index idx, or "" when there is not exactly one.
func otherInterface(res *current.Result, idx int) string {
	name := ""
	for i, ifc := range res.Interfaces {
		if i == idx {
			continue
		}
		if name != "" {
			return ""
		}
		name = ifc.Name
	}
	return name
}

// GC passes GC on to the IPAM plugin, which owns the only state ipvlan
// leaves outside pods.
func GC(req *cni.Request) error { return delegate.IPAMGC(req, &Config{}) }

// Status says whether ADD can work: the master must exist (unless it lives
// in the pod, or comes from a chain's prevResult), then IPAM answers.
func Status(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	chained := c.Master == "" && c.IPAM.Type == ""
	if !c.LinkInContainer && !chained {
		if _, err := iface.Master(nil, c.Master); err != nil {
			return cni.NotAvailable("ipvlan: %v", cni.AsError(err).Msg)
		}
	}
	if c.IPAM.Type == "" {
		return nil
	}
	return delegate.Status(req, c.IPAM.Type)
}

func modeName(m netlink.IPVlanMode) string {
	for name, mode := range modes {
		if mode == m && name != "" {
			return name
		}
	}
	return fmt.Sprintf("mode %d", m)
}

func flagName(f netlink.IPVlanFlag) string {
	for name, flag := range flags {
		if flag == f && name != "" {
			return name
		}
	}
	return fmt.Sprintf("flag %d", f)
}
