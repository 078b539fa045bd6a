// Package tap is the tap applet: it gives the pod a persistent tap device
// that a VM runtime (Kata, KubeVirt) opens through /dev/net/tun and
// feeds its guest's frames into, optionally as a port of a bridge inside
// the pod, with the IPAM result on it.
package tap

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"unsafe"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is tap's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "tap",
	Kind:    "main",
	Summary: "a tap device in the pod for a VM runtime",
	Main:    helperMain,
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is tap's configuration: every key of the reference plugin, with
// the same meaning.
type Config struct {
	cni.NetConf
	// MultiQueue makes a multi-queue tap (IFF_MULTI_QUEUE): the VM
	// runtime opens it once per queue.
	MultiQueue bool `json:"multiQueue"`
	// MTU of the tap; 0 is the kernel's (1500).
	MTU int `json:"mtu"`
	// MAC is a static MAC; CNI_ARGS MAC= and runtimeConfig.mac override it.
	MAC string `json:"mac"`
	// Owner and Group are the uid and gid allowed to open the tap besides
	// CAP_NET_ADMIN; unset means anyone with CAP_NET_ADMIN only.
	Owner *uint32 `json:"owner"`
	Group *uint32 `json:"group"`
	// SelinuxContext is the SELinux label the tap is created under (the
	// reference's docs spell it selinuxcontext; JSON keys match without
	// case).
	SelinuxContext string `json:"selinuxContext"`
	// Bridge is a bridge inside the pod that the tap becomes a port of.
	Bridge string `json:"bridge"`

	RuntimeConfig struct {
		MAC string `json:"mac"`
	} `json:"runtimeConfig"`
}

type args struct {
	cni.CommonArgs
	MAC types.UnmarshallableString
}

func load(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.MTU < 0 {
		return nil, cni.ConfigError("mtu: %d is negative", c.MTU)
	}
	var a args
	if err := req.LoadArgs(&a); err != nil {
		return nil, err
	}
	field := "mac"
	if a.MAC != "" {
		field, c.MAC = "CNI_ARGS MAC", string(a.MAC)
	}
	if c.RuntimeConfig.MAC != "" {
		field, c.MAC = "runtimeConfig.mac", c.RuntimeConfig.MAC
	}
	if _, err := iface.ParseMAC(field, c.MAC); err != nil {
		return nil, err
	}
	return c, nil
}

// Add creates the tap in the pod, runs IPAM and configures the link. On
// failure it leaves nothing behind.
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
	var link netlink.Link
	if err := netns.Do(func(ns.NetNS) (err error) {
		link, err = create(req, c)
		return err
	}); err != nil {
		return nil, fmt.Errorf("tap: %w", err)
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

// create (inside the pod's netns) makes the tap under a staging name, sets
// its MTU, MAC and alias, renames it to CNI_IFNAME and enslaves it to the
// configured bridge. On failure nothing is left.
func create(req *cni.Request, c *Config) (netlink.Link, error) {
	if _, err := netlinksafe.LinkByName(req.IfName); err == nil {
		return nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_IFNAME: %q already exists in the pod", req.IfName)
	}
	var bridge netlink.Link
	if c.Bridge != "" {
		var err error
		if bridge, err = netlinksafe.LinkByName(c.Bridge); err != nil {
			return nil, cni.ConfigError("bridge: no link %q in the pod: %v", c.Bridge, err)
		}
	}
	tmp := iface.StagingName("tap", req)
	if l, err := netlinksafe.LinkByName(tmp); err == nil {
		_ = netlink.LinkDel(l) // left by a killed ADD of this attachment
	}
	if err := makeTap(tmp, c); err != nil {
		return nil, err
	}
	l, err := netlinksafe.LinkByName(tmp)
	if err != nil {
		return nil, fmt.Errorf("find new tap %q: %w", tmp, err)
	}
	if err := configure(req, c, l, bridge); err != nil {
		_ = netlink.LinkDel(l)
		return nil, err
	}
	return netlinksafe.LinkByName(req.IfName)
}

func configure(req *cni.Request, c *Config, l netlink.Link, bridge netlink.Link) error {
	if err := netlink.LinkSetAlias(l, iface.Mark(req)); err != nil {
		return fmt.Errorf("set alias of new tap: %w", err)
	}
	if c.MTU != 0 {
		if err := netlink.LinkSetMTU(l, c.MTU); err != nil {
			return cni.ConfigError("mtu: set %d: %v", c.MTU, err)
		}
	}
	if mac, _ := iface.ParseMAC("mac", c.MAC); mac != nil {
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("set MAC %s: %w", mac, err)
		}
	}
	if err := netlink.LinkSetName(l, req.IfName); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return cni.Errorf(cni.ErrInvalidEnv, "CNI_IFNAME: %q already exists in the pod", req.IfName)
		}
		return fmt.Errorf("rename tap to %q: %w", req.IfName, err)
	}
	if bridge != nil {
		if err := netlink.LinkSetMaster(l, bridge); err != nil {
			return fmt.Errorf("make %q a port of bridge %q: %w", req.IfName, c.Bridge, err)
		}
	}
	return nil
}

// tunFlags are the tap's flags as the reference makes them: it creates a
// tap through netlink (with a virtio-net header) when both owner and group
// are set and there is no SELinux label, and with "ip tuntap" (no
// packet-information header) otherwise. An opener's TUNSETIFF sets both
// headers as it needs them; only multi-queue must match.
func tunFlags(c *Config) uint16 {
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if c.SelinuxContext == "" && c.Owner != nil && c.Group != nil {
		flags = unix.IFF_TAP | unix.IFF_VNET_HDR
	}
	if c.MultiQueue {
		flags |= unix.IFF_MULTI_QUEUE | unix.IFF_NO_PI
	}
	return flags
}

// makeTap (inside the pod's netns: a tap is born in its opener's netns)
// creates the persistent tap name. With selinuxContext the creation runs
// in a child process exec'd under that label, as the device takes the
// label of the task that creates it.
func makeTap(name string, c *Config) error {
	owner, group := int64(-1), int64(-1)
	if c.Owner != nil {
		owner = int64(*c.Owner)
	}
	if c.Group != nil {
		group = int64(*c.Group)
	}
	flags := tunFlags(c)
	if c.SelinuxContext == "" {
		return mktap(name, flags, owner, group)
	}
	return mktapLabelled(c.SelinuxContext, name, flags, owner, group)
}

// mktap opens /dev/net/tun, attaches it to a new tap name with flags,
// sets its owner and group (-1: not set), makes it persistent and closes
// it again: the tap stays, carrier off, until a VM runtime opens it.
func mktap(name string, flags uint16, owner, group int64) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	var req [unix.IFNAMSIZ + 24]byte // struct ifreq
	copy(req[:unix.IFNAMSIZ-1], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = flags
	if err := ioctl(fd, unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); err != nil {
		return fmt.Errorf("create tap %q (TUNSETIFF): %w", name, err)
	}
	if owner >= 0 {
		if err := ioctl(fd, unix.TUNSETOWNER, uintptr(owner)); err != nil {
			return fmt.Errorf("set owner %d of tap %q: %w", owner, name, err)
		}
	}
	if group >= 0 {
		if err := ioctl(fd, unix.TUNSETGROUP, uintptr(group)); err != nil {
			return fmt.Errorf("set group %d of tap %q: %w", group, name, err)
		}
	}
	if err := ioctl(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("make tap %q persistent: %w", name, err)
	}
	return nil
}

func ioctl(fd int, req, arg uintptr) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg); errno != 0 {
		return errno
	}
	return nil
}

// helperArg is the first argument of "tap <helperArg> NAME FLAGS OWNER
// GROUP": the child that mktapLabelled execs to create the tap under an
// SELinux label.
const helperArg = "--mktap"

// mktapLabelled sets label as the exec label of this (locked, in the pod's
// netns) thread and execs this binary to create the tap: the child is born
// in the thread's netns, under the label. The reference does the same
// with "ip tuntap"; cnibox needs no ip(8).
func mktapLabelled(label, name string, flags uint16, owner, group int64) error {
	runtime.LockOSThread() // already locked by netns.Do; the label is per thread
	defer runtime.UnlockOSThread()
	const attr = "/proc/thread-self/attr/exec"
	if err := os.WriteFile(attr, []byte(label), 0); err != nil {
		return cni.ConfigError("selinuxContext: set exec label %q: %v", label, err)
	}
	defer os.WriteFile(attr, nil, 0) // back to the default for later execs
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary to create the tap: %w", err)
	}
	cmd := exec.Command(self, "tap", helperArg, name, strconv.Itoa(int(flags)),
		strconv.FormatInt(owner, 10), strconv.FormatInt(group, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("create tap %q under SELinux label %q: %w: %s", name, label, err, out)
	}
	return nil
}

// helperMain is the child of mktapLabelled.
func helperMain(args []string) int {
	if len(args) != 5 || args[0] != helperArg {
		fmt.Fprintln(os.Stderr, "usage: tap (with the CNI environment, no arguments)")
		return 2
	}
	flags, err1 := strconv.ParseUint(args[2], 10, 16)
	owner, err2 := strconv.ParseInt(args[3], 10, 64)
	group, err3 := strconv.ParseInt(args[4], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := mktap(args[1], uint16(flags), owner, group); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// setUp runs IPAM and puts its result on the tap: arp_notify, addresses
// (without waiting for IPv6 duplicate address detection: a tap has no
// carrier until the VM runtime opens it, so DAD could not finish; the
// reference waits 5 s for it in vain), link up, routes.
func setUp(req *cni.Request, c *Config, netns ns.NetNS, link netlink.Link) (*current.Result, error) {
	ipRes, err := iface.AddIPAM(req, "tap", c.IPAM.Type)
	if err != nil {
		return nil, err
	}
	res := iface.NewResult(ipRes, c.DNS, link, req.Netns)
	err = netns.Do(func(ns.NetNS) error {
		if ipRes != nil {
			// Best effort, as the reference: a kernel without IPv4 lacks it.
			_ = os.WriteFile("/proc/sys/net/ipv4/conf/"+req.IfName+"/arp_notify", []byte("1"), 0o644)
		}
		return iface.Apply(req.IfName, res, iface.Options{KeepAcceptDAD: true})
	})
	if err != nil {
		iface.ReleaseIPAM(req, c.IPAM.Type)
		return nil, fmt.Errorf("tap: configure %q: %w", req.IfName, err)
	}
	return res, nil
}

// Del releases the IPAM allocation, then deletes the tap; a netns or tap
// that is gone is fine. It reads only the ipam type, so that a config
// whose ADD was refused still tears down.
func Del(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	return iface.Del(req, "tap", c.IPAM.Type)
}

// Check verifies what ADD made: the tap exists with the result's MAC, the
// configured MTU, owner, group, multi-queue flag and bridge, and every
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
	pod, err := iface.StartCheck(req, "tap", prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	want := iface.Want{Type: "tuntap", MAC: pod.Interface.Mac, MTU: c.MTU, Extra: func(l netlink.Link) error { return checkTap(c, l) }}
	return pod.Link(want)
}

// checkTap (inside the netns) compares the tap's attributes with the config.
func checkTap(c *Config, l netlink.Link) error {
	t, ok := l.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return errors.New("is not a tap device")
	}
	if c.Owner != nil && t.Owner != *c.Owner {
		return fmt.Errorf("owner is %d, the config says %d", t.Owner, *c.Owner)
	}
	if c.Group != nil && t.Group != *c.Group {
		return fmt.Errorf("group is %d, the config says %d", t.Group, *c.Group)
	}
	if mq := t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0; mq != c.MultiQueue {
		return fmt.Errorf("multi-queue is %v, the config says %v", mq, c.MultiQueue)
	}
	if c.Bridge == "" {
		return nil
	}
	if t.MasterIndex == 0 {
		return fmt.Errorf("is no port of bridge %q", c.Bridge)
	}
	m, err := netlink.LinkByIndex(t.MasterIndex)
	if err != nil || m.Attrs().Name != c.Bridge {
		return fmt.Errorf("is not a port of bridge %q", c.Bridge)
	}
	return nil
}

// GC passes GC on to the IPAM plugin, which owns the only state tap
// leaves outside pods.
func GC(req *cni.Request) error { return delegate.IPAMGC(req, &Config{}) }

// Status delegates to the IPAM plugin, as the reference does; a node
// without /dev/net/tun cannot make taps at all.
func Status(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return cni.NotAvailable("tap: /dev/net/tun: %v", err)
	}
	if c.IPAM.Type == "" {
		return nil
	}
	return delegate.Status(req, c.IPAM.Type)
}
