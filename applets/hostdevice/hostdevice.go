// Package hostdevice is the host-device applet: it moves an existing
// network device of the node into the pod, and back on DEL.
//
// A physical device moves through a temporary netns that nobody watches:
// the device is renamed there (to the pod's interface name, with its
// original name kept in the link alias), so udev or NetworkManager never
// see a renamed device on the node, and no name in the node or the pod
// can collide with it half-way. A virtual device (veth, macvlan...) is
// destroyed with the netns it is in, and the temporary netns dies with a
// plugin that is killed: it moves straight between the node and the pod
// and is renamed in the pod (where no udev watches), so that a kill at
// any point leaves it in the node or the pod, where DEL finds it (in the
// pod under its pod name, or under its original name with the alias set).
// Every step is undone when a later one fails.
//
// When the pod's netns is gone at DEL, the kernel has already dealt with
// the device: a physical device is returned to the initial netns (the
// node's, in production) under the pod's interface name, or "devN" when
// that is taken, with its alias still set; a virtual device (veth,
// macvlan...) is destroyed with the netns. DEL then finds a device of
// this config in the node's netns whose alias is set, renames it back to
// its alias and clears the alias; a destroyed device needs nothing. In
// every case DEL still releases the IPAM allocation (the reference returns
// early without a netns and leaks it, cni#1167).
package hostdevice

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
	"github.com/cnibox/cnibox/shared/veth"
)

// Applet is host-device's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "host-device",
	Kind:    "main",
	Summary: "move a node network device into the pod",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is host-device's configuration, the reference's keys. One
// selector is needed; the runtime's deviceID overrides them, and among
// the others the first set one in this order is used: device, hwaddr,
// kernelpath, pciBusID.
type Config struct {
	cni.NetConf
	// Device is the device's name in the node's netns.
	Device string `json:"device"`
	// HWAddr selects the device by MAC.
	HWAddr string `json:"hwaddr"`
	// KernelPath is the device's sysfs path, /sys/devices/...; the first
	// netdev under its net/ directory is used.
	KernelPath string `json:"kernelpath"`
	// PCIBusID is a PCI address (0000:03:00.1). A device bound to a DPDK
	// driver (vfio-pci, uio_pci_generic, igb_uio) is not moved: ADD only
	// returns the IPAM result.
	PCIBusID string `json:"pciBusID"`

	RuntimeConfig struct {
		// DeviceID (capability "deviceID", from a device plugin) is a PCI
		// address or an auxiliary-bus device name.
		DeviceID string `json:"deviceID"`
	} `json:"runtimeConfig"`
}

func load(req *cni.Request) (*Config, selector, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, selector{}, err
	}
	sel, err := c.selector(hostSysfs)
	return c, sel, err
}

func (c *Config) selector(s sysfs) (selector, error) {
	switch {
	case c.RuntimeConfig.DeviceID != "":
		kind, err := s.classify(c.RuntimeConfig.DeviceID)
		return selector{"runtimeConfig.deviceID", kind, c.RuntimeConfig.DeviceID}, err
	case c.Device != "":
		return selector{"device", "device", c.Device}, cni.LinkName("device", c.Device)
	case c.HWAddr != "":
		mac, err := iface.ParseMAC("hwaddr", c.HWAddr)
		if err != nil {
			return selector{}, err
		}
		return selector{"hwaddr", "hwaddr", mac.String()}, nil
	case c.KernelPath != "":
		if err := validKernelPath(c.KernelPath); err != nil {
			return selector{}, err
		}
		return selector{"kernelpath", "kernelpath", c.KernelPath}, nil
	case c.PCIBusID != "":
		return selector{"pciBusID", "pci", c.PCIBusID}, validID("pciBusID", c.PCIBusID)
	}
	return selector{}, cni.ConfigError(`device: one of "device", "hwaddr", "kernelpath", "pciBusID" or runtimeConfig.deviceID is required`)
}

func validKernelPath(p string) error {
	if !strings.HasPrefix(p, "/sys/devices/") {
		return cni.ConfigError("kernelpath: %q must start with /sys/devices/", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return cni.ConfigError("kernelpath: %q must not contain . or .. segments", p)
		}
	}
	return nil
}

// Add moves the device into the pod, then runs IPAM and configures it.
func Add(req *cni.Request) (types.Result, error) {
	c, sel, err := load(req)
	if err != nil {
		return nil, err
	}
	if drv := hostSysfs.dpdk(sel); drv != "" {
		// No netdev: the pod's DPDK application drives the device, and
		// only needs its addresses.
		return dpdkResult(req, c)
	}
	pod, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer pod.Close()
	node, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("host-device: open the node's netns: %w", err)
	}
	defer node.Close()

	if err := ifNameFree(pod, req.IfName); err != nil {
		return nil, err
	}
	dev, err := hostSysfs.find(sel)
	if err != nil {
		return nil, fmt.Errorf("host-device: %w", err)
	}
	link, err := moveIn(node, pod, dev, req.IfName)
	if err != nil {
		return nil, fmt.Errorf("host-device: %w", err)
	}
	res, err := iface.SetUp(req, "host-device", &c.NetConf, nil, pod, link, iface.NotifyNone)
	if err != nil {
		if uerr := moveOut(node, pod, req.IfName, dev.Attrs().Name); uerr != nil {
			req.Log.Warnf("roll back: %v", uerr)
		}
		return nil, err
	}
	return res, nil
}

// ifNameFree refuses an ADD into a pod that has ifName already: a
// runtime's repeated ADD (its device is in the pod as ifName, and no
// longer on the node to be found), or another attachment's interface. It
// is checked before anything moves, so the existing link is never
// touched; a device of ours that meets an ifName taken meanwhile is sent
// home by moveIn.
func ifNameFree(pod ns.NetNS, ifName string) error {
	var alias string
	found := false
	_ = pod.Do(func(ns.NetNS) error {
		if l, err := netlinksafe.LinkByName(ifName); err == nil {
			found, alias = true, l.Attrs().Alias
		}
		return nil
	})
	_, _, _, marked := veth.ParseAlias(alias) // another applet's link
	switch {
	case !found:
		return nil
	case alias != "" && !marked:
		return cni.Errorf(cni.ErrInvalidEnv, "host-device: CNI_IFNAME: %q already exists in the pod: it is device %q, moved in by an earlier ADD", ifName, alias)
	}
	return fmt.Errorf("host-device: %w", ifNameTaken(ifName))
}

// ifNameTaken is the error of an ADD whose CNI_IFNAME the pod has (code 4).
func ifNameTaken(ifName string) error {
	return cni.Errorf(cni.ErrInvalidEnv, "CNI_IFNAME: %q already exists in the pod", ifName)
}

// dpdkResult is ADD for a device bound to a DPDK driver: IPAM only.
func dpdkResult(req *cni.Request, c *Config) (types.Result, error) {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, DNS: c.DNS}
	if c.IPAM.Type == "" {
		return res, nil
	}
	r, err := delegate.Add(req, c.IPAM.Type)
	if err != nil {
		return nil, err
	}
	r.DNS = iface.MergeDNS(c.DNS, r.DNS)
	return r, nil
}

// virtual reports whether the kernel destroys l with its netns rather
// than handing it back to the initial one: a link with a kind (veth,
// macvlan, dummy...), not a bare hardware device.
func virtual(l netlink.Link) bool { return l.Type() != "device" }

// moveIn moves dev from node to pod as ifName, with its original name as
// alias: a virtual device straight (moveInDirect), a physical one, or a
// virtual one whose name the pod already has, through a temporary netns
// where it is renamed.
func moveIn(node, pod ns.NetNS, dev netlink.Link, ifName string) (netlink.Link, error) {
	if virtual(dev) {
		link, err := moveInDirect(node, pod, dev, ifName)
		if err != errNameInPod {
			return link, err
		}
	}
	orig := dev.Attrs().Name
	tmp, err := ns.TempNetNS()
	if err != nil {
		return nil, fmt.Errorf("create a temporary netns: %w", err)
	}
	defer tmp.Close()
	if err := netlink.LinkSetNsFd(dev, int(tmp.Fd())); err != nil {
		return nil, fmt.Errorf("move %q out of the node's netns: %w", orig, err)
	}
	err = tmp.Do(func(ns.NetNS) error {
		l, err := aliasAndRename("temporary netns", orig, ifName)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(l, int(pod.Fd())); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return ifNameTaken(ifName)
			}
			return fmt.Errorf("move %q into the pod as %q: %w", orig, ifName, err)
		}
		return nil
	})
	if err != nil {
		if uerr := sendHome(tmp, node, ifName, orig); uerr != nil {
			return nil, fmt.Errorf("%w (and putting it back failed: %v)", err, uerr)
		}
		return nil, err
	}
	var link netlink.Link
	err = pod.Do(func(ns.NetNS) (err error) {
		link, err = netlinksafe.LinkByName(ifName)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("find %q in the pod: %w", ifName, err)
	}
	return link, nil
}

// errNameInPod: the pod has a link of the device's name; nothing was done.
var errNameInPod = errors.New("the pod has a link of that name")

// moveInDirect moves a virtual device into the pod under its own name
// (errNameInPod when the pod has that name), sets its alias and renames
// it to ifName there. On failure it is back on the node.
func moveInDirect(node, pod ns.NetNS, dev netlink.Link, ifName string) (netlink.Link, error) {
	orig := dev.Attrs().Name
	if err := netlink.LinkSetNsFd(dev, int(pod.Fd())); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, errNameInPod
		}
		return nil, fmt.Errorf("move %q into the pod: %w", orig, err)
	}
	var link netlink.Link
	err := pod.Do(func(ns.NetNS) error {
		if _, err := aliasAndRename("pod", orig, ifName); err != nil {
			return err
		}
		var err error
		link, err = netlinksafe.LinkByName(ifName)
		return err
	})
	if err != nil {
		if uerr := pod.Do(func(ns.NetNS) error { return sendHomeDirect(node, orig, ifName) }); uerr != nil {
			return nil, fmt.Errorf("%w (and putting it back failed: %v)", err, uerr)
		}
		return nil, err
	}
	return link, nil
}

// sendHomeDirect (rollback of moveInDirect, in the pod) renames the
// device, named orig or ifName with alias orig, to orig, clears its alias
// and moves it to node.
func sendHomeDirect(node ns.NetNS, orig, ifName string) error {
	l, err := netlinksafe.LinkByName(orig)
	if err != nil || l.Attrs().Alias != orig {
		if l, err = netlinksafe.LinkByName(ifName); err != nil || l.Attrs().Alias != orig {
			return fmt.Errorf("find %q in the pod: %v", orig, err)
		}
	}
	return sendBack(l, node, ifName, orig)
}

// aliasAndRename finds the device orig in the current netns (where, for
// errors), keeps orig as its alias (what DEL names it back to) and renames
// it to ifName.
func aliasAndRename(where, orig, ifName string) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(orig)
	if err != nil {
		return nil, fmt.Errorf("find %q in the %s: %w", orig, where, err)
	}
	if err := netlink.LinkSetAlias(l, orig); err != nil {
		return nil, fmt.Errorf("set alias of %q: %w", orig, err)
	}
	if ifName != orig {
		if err := netlink.LinkSetName(l, ifName); err != nil {
			if errors.Is(err, unix.EEXIST) && where == "pod" {
				return nil, ifNameTaken(ifName)
			}
			return nil, fmt.Errorf("rename %q to %q in the %s: %w", orig, ifName, where, err)
		}
	}
	return l, nil
}

// sendHome (rollback of moveIn) gives the device in tmp, named ifName or
// orig, its original name back, clears the alias and moves it to node.
func sendHome(tmp, node ns.NetNS, ifName, orig string) error {
	return tmp.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			if l, err = netlinksafe.LinkByName(orig); err != nil {
				return fmt.Errorf("find %q in the temporary netns: %w", orig, err)
			}
		}
		return sendBack(l, node, ifName, orig)
	})
}

// sendBack gives l, named ifName or orig, its original name back, clears
// its alias and moves it to node.
func sendBack(l netlink.Link, node ns.NetNS, ifName, orig string) error {
	if l.Attrs().Name != orig {
		if err := netlink.LinkSetName(l, orig); err != nil {
			return fmt.Errorf("rename %q back to %q: %w", ifName, orig, err)
		}
	}
	_ = netlink.LinkSetAlias(l, "")
	if err := netlink.LinkSetNsFd(l, int(node.Fd())); err != nil {
		return fmt.Errorf("move %q back to the node's netns: %w", orig, err)
	}
	return nil
}

var errNotInPod = errors.New("not in the pod")

// moveOut moves ifName from pod back to node under its original name
// (its alias, or fallback when the alias is empty): a virtual device
// straight, renamed in the pod, a physical one through a temporary netns.
// A device a killed ADD or DEL left half-way, in the pod under its
// original name, is moved back too. When the node already has a link of
// that name, the device goes back into the pod and the error says so.
//
// fallback, when set, is the name of this attachment's device: an ifName
// whose alias names another device is another attachment's (the DEL that
// a runtime sends after an ADD refused for a taken CNI_IFNAME finds the
// first attachment's device there) and is left alone.
func moveOut(node, pod ns.NetNS, ifName, fallback string) error {
	var orig string
	direct := false
	// With the device home already, a link in the pod without an alias
	// is not it (another plugin's eth0, the pod's own link of that name).
	home := fallback != "" && iface.HasLink(node, fallback)
	err := pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				return fmt.Errorf("find %q in the pod: %w", ifName, err)
			}
			l = nil
		}
		if l != nil && fallback != "" && l.Attrs().Alias != "" && l.Attrs().Alias != fallback {
			l = nil // device Alias, not ours
		}
		if l != nil && l.Attrs().Alias == "" && home {
			l = nil
		}
		if l == nil {
			if l = halfMoved(fallback, home); l == nil {
				return errNotInPod
			}
			ifName = l.Attrs().Name
		}
		orig = l.Attrs().Alias
		if orig == "" {
			orig = fallback
		}
		if orig == "" {
			return fmt.Errorf("%q has no alias: its name on the node is unknown", ifName)
		}
		if !virtual(l) {
			return nil
		}
		_ = netlink.LinkSetDown(l)
		if l.Attrs().Name != orig {
			if err := netlink.LinkSetName(l, orig); err != nil {
				if errors.Is(err, unix.EEXIST) {
					return nil // the pod has a link named orig: through a temporary netns
				}
				return fmt.Errorf("rename %q back to %q in the pod: %w", ifName, orig, err)
			}
		}
		direct = true
		if err := netlink.LinkSetNsFd(l, int(node.Fd())); err != nil {
			if orig != ifName {
				_ = netlink.LinkSetName(l, ifName)
			}
			return fmt.Errorf("move %q back to the node's netns as %q: %w", ifName, orig, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if direct {
		clearAlias(node, orig)
		return nil
	}
	tmp, err := ns.TempNetNS()
	if err != nil {
		return fmt.Errorf("create a temporary netns: %w", err)
	}
	defer tmp.Close()
	err = pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %q in the pod: %w", ifName, err)
		}
		_ = netlink.LinkSetDown(l)
		if err := netlink.LinkSetNsFd(l, int(tmp.Fd())); err != nil {
			return fmt.Errorf("move %q out of the pod: %w", ifName, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tmp.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %q in the temporary netns: %w", ifName, err)
		}
		if orig != ifName {
			if err := netlink.LinkSetName(l, orig); err != nil {
				return errors.Join(fmt.Errorf("rename %q back to %q: %w", ifName, orig, err), backToPod(l, pod))
			}
		}
		if err := netlink.LinkSetNsFd(l, int(node.Fd())); err != nil {
			err = fmt.Errorf("move %q back to the node's netns as %q: %w", ifName, orig, err)
			if l, lerr := netlinksafe.LinkByName(orig); lerr == nil {
				_ = netlink.LinkSetName(l, ifName)
				return errors.Join(err, backToPod(l, pod))
			}
			return err
		}
		clearAlias(node, orig)
		return nil
	})
}

// clearAlias clears the alias of the device that is home as name.
func clearAlias(node ns.NetNS, name string) {
	_ = node.Do(func(ns.NetNS) error {
		if l, err := netlinksafe.LinkByName(name); err == nil && l.Attrs().Alias != "" {
			_ = netlink.LinkSetAlias(l, "")
		}
		return nil
	})
}

// halfMoved (in the pod) finds a device that a killed ADD or DEL left in
// the pod under its original name: named like its alias, or, without an
// alias, named fallback (the config's device) unless that is home. With
// fallback set, only a device of that name: another attachment's device
// named like its alias may be one that its ADD is moving in at this
// moment.
func halfMoved(fallback string, home bool) netlink.Link {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil
	}
	for _, l := range links {
		a := l.Attrs()
		if fallback != "" && a.Name != fallback {
			continue
		}
		if a.Alias == a.Name || (fallback != "" && a.Alias == "" && !home) {
			return l
		}
	}
	return nil
}

func backToPod(l netlink.Link, pod ns.NetNS) error {
	if err := netlink.LinkSetNsFd(l, int(pod.Fd())); err != nil {
		return fmt.Errorf("and putting it back into the pod failed: %w", err)
	}
	return nil
}

// Del releases the IPAM allocation, then moves the device back to the
// node (or, when the pod's netns is gone, restores a device the kernel
// returned to the node). The release comes first, as in the reference,
// while the device is still the pod's interface: dhcp sends its
// DHCPRELEASE out of it. Both are tried whatever happens to the other.
//
// A config whose device selector ADD refused (a malformed hwaddr,
// kernelpath or pciBusID, or none at all) moved nothing in: its DEL, which
// a runtime sends for the refused container, only releases IPAM and
// succeeds (the reference's DEL fails on some of those, and moves out
// whatever the pod's ifname is on others).
func Del(req *cni.Request) error {
	c, sel, err := load(req)
	if err != nil && c != nil && cni.AsError(err).Code == cni.ErrInvalidConfig {
		req.Log.Warnf("host-device: DEL: %v: no device of this config can be in the pod", err)
		return iface.DelIPAM(req, c.IPAM.Type)
	}
	if err != nil {
		return err
	}
	ipamErr := iface.DelIPAM(req, c.IPAM.Type)
	var devErr error
	if hostSysfs.dpdk(sel) == "" {
		devErr = bringBack(req, sel)
		if devErr != nil {
			devErr = fmt.Errorf("host-device: %w", devErr)
		}
	}
	return errors.Join(devErr, ipamErr)
}

func bringBack(req *cni.Request, sel selector) error {
	node, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("open the node's netns: %w", err)
	}
	defer node.Close()
	if req.Netns != "" {
		pod, err := ns.GetNS(req.Netns)
		switch {
		case err == nil:
			fallback := ""
			if sel.kind == "device" {
				fallback = sel.value
			}
			err = moveOut(node, pod, req.IfName, fallback)
			pod.Close()
			if !errors.Is(err, errNotInPod) {
				return err
			}
		case !iface.NetnsGone(err):
			return fmt.Errorf("open netns %q: %w", req.Netns, err)
		}
	}
	return restoreReturned(sel)
}

// restoreReturned (in the node's netns) renames a device of this config
// that the kernel returned from a destroyed pod netns back to its alias.
func restoreReturned(sel selector) error {
	var l netlink.Link
	if sel.kind == "device" {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, cand := range links {
			if cand.Attrs().Alias == sel.value {
				l = cand
				break
			}
		}
	} else if found, err := hostSysfs.find(sel); err == nil {
		l = found
	}
	if l == nil || l.Attrs().Alias == "" {
		return nil // gone with the pod, or home
	}
	if l.Attrs().Alias == l.Attrs().Name {
		// Home, but a DEL was killed before it cleared the alias.
		if err := netlink.LinkSetAlias(l, ""); err != nil {
			return fmt.Errorf("clear alias of %q: %w", l.Attrs().Name, err)
		}
		return nil
	}
	orig, name := l.Attrs().Alias, l.Attrs().Name
	if _, err := netlinksafe.LinkByName(orig); err == nil {
		return fmt.Errorf("%q came back from the deleted pod, but its name %q is taken on the node", name, orig)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %q down to rename it: %w", name, err)
	}
	if err := netlink.LinkSetName(l, orig); err != nil {
		return fmt.Errorf("rename %q back to %q: %w", name, orig, err)
	}
	if err := netlink.LinkSetAlias(l, ""); err != nil {
		return fmt.Errorf("clear alias of %q: %w", orig, err)
	}
	return nil
}

// Check verifies the device is in the pod with the result's MAC, addresses
// and routes.
func Check(req *cni.Request) error {
	c, sel, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	if hostSysfs.dpdk(sel) != "" {
		// A DPDK-bound device has no netdev to check: only its IPAM.
		if c.IPAM.Type != "" {
			return delegate.Check(req, c.IPAM.Type)
		}
		return nil
	}
	pod, err := iface.StartCheck(req, "host-device", prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	return pod.Link(iface.Want{MAC: pod.Interface.Mac})
}

// GC restores this network's device if the kernel returned it to the node
// from a pod netns that was destroyed without a DEL (it carries the pod's
// interface name and its original name in the alias), then passes GC on
// to the IPAM plugin.
func GC(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	var devErr error
	if sel, err := c.selector(hostSysfs); err == nil && hostSysfs.dpdk(sel) == "" {
		if devErr = restoreReturned(sel); devErr != nil {
			devErr = fmt.Errorf("host-device: %w", devErr)
		}
	}
	if c.IPAM.Type == "" {
		return devErr
	}
	return errors.Join(devErr, delegate.GC(req, c.IPAM.Type))
}

// Status checks the config and asks IPAM. It does not require the device
// to be on the node: while a pod has it, it is not, and runtimes take a
// failing STATUS as "the node's network is not ready" for every pod — one
// pod holding its device must not take the node down.
func Status(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	if c.RuntimeConfig.DeviceID == "" {
		if _, err := c.selector(hostSysfs); err != nil {
			return err
		}
	}
	if c.IPAM.Type == "" {
		return nil
	}
	return delegate.Status(req, c.IPAM.Type)
}
