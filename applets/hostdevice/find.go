package hostdevice

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// sysfs finds devices under a sysfs root: "/sys" in production, a fake
// tree in unit tests.
//
// sysfs shows the netdevs of the netns that mounted it, which for a plugin
// (started by the runtime, without "ip netns exec") is the node's /sys,
// not necessarily its own netns. So every name sysfs gives is checked with
// netlink in the calling netns, and PCI and auxiliary devices are also
// found without sysfs, through the bus_info of ethtool's drvinfo, which a
// PCI NIC (and virtio-net) reports as its PCI address and an auxiliary
// device (an mlx5 SF, say) as its auxiliary device name.
type sysfs struct{ root string }

var hostSysfs = sysfs{root: "/sys"}

// dpdkDrivers are the PCI drivers that take a NIC away from the kernel: a
// device bound to one has no netdev to move.
var dpdkDrivers = []string{"vfio-pci", "uio_pci_generic", "igb_uio"}

// pciAddr is compiled on first use: every applet of the binary would pay
// for a package-level regexp at start-up.
var pciAddr = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$`)
})

// selector is the one way the config picks the device.
type selector struct {
	field string // the key it came from, for errors
	kind  string // "device", "hwaddr", "kernelpath", "pci", "aux"
	value string
}

func (s selector) String() string { return fmt.Sprintf("%s %q", s.field, s.value) }

// validID refuses bus IDs that would walk out of their sysfs directory.
func validID(field, id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") {
		return cni.ConfigError("%s: %q is not a device ID", field, id)
	}
	return nil
}

// classify says whether a runtime deviceID is a PCI address or an
// auxiliary-bus device.
func (s sysfs) classify(id string) (string, error) {
	if err := validID("runtimeConfig.deviceID", id); err != nil {
		return "", err
	}
	if pciAddr().MatchString(id) || exists(filepath.Join(s.root, "bus/pci/devices", id)) {
		return "pci", nil
	}
	if exists(filepath.Join(s.root, "bus/auxiliary/devices", id)) || strings.Contains(id, ".") {
		return "aux", nil
	}
	return "", cni.ConfigError("runtimeConfig.deviceID: %q is neither a PCI address nor an auxiliary device", id)
}

// dpdk returns the DPDK driver a PCI device is bound to, or "".
func (s sysfs) dpdk(sel selector) string {
	if sel.kind != "pci" {
		return ""
	}
	target, err := os.Readlink(filepath.Join(s.root, "bus/pci/devices", sel.value, "driver"))
	if err != nil {
		return ""
	}
	if d := filepath.Base(target); slices.Contains(dpdkDrivers, d) {
		return d
	}
	return ""
}

// find returns the link sel names in the calling netns.
func (s sysfs) find(sel selector) (netlink.Link, error) {
	switch sel.kind {
	case "device":
		return byName(sel, sel.value)
	case "hwaddr":
		return byMAC(sel)
	case "kernelpath":
		names := s.netNames(filepath.Join(s.root, strings.TrimPrefix(sel.value, "/sys"), "net"))
		return firstPresent(sel, names)
	case "pci":
		dev := filepath.Join(s.root, "bus/pci/devices", sel.value)
		names := s.netNames(filepath.Join(dev, "net"))
		if virtio, _ := filepath.Glob(filepath.Join(dev, "virtio*", "net")); len(virtio) > 0 {
			names = append(names, s.netNames(virtio[0])...)
		}
		if l, err := firstPresent(sel, names); err == nil {
			return l, nil
		}
		return byBusInfo(sel)
	case "aux":
		names := s.netNames(filepath.Join(s.root, "bus/auxiliary/devices", sel.value, "net"))
		if l, err := firstPresent(sel, names); err == nil {
			return l, nil
		}
		return byBusInfo(sel)
	}
	return nil, fmt.Errorf("%s: unknown selector", sel)
}

func (s sysfs) netNames(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// firstPresent returns the first of names that is a link of this netns.
func firstPresent(sel selector, names []string) (netlink.Link, error) {
	for _, n := range names {
		if l, err := netlinksafe.LinkByName(n); err == nil {
			return l, nil
		}
	}
	if len(names) == 0 {
		return nil, notFound(sel, "no network device under it in sysfs")
	}
	return nil, notFound(sel, fmt.Sprintf("sysfs lists %v, none of them in this netns", names))
}

func byName(sel selector, name string) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, notFound(sel, "no such link")
		}
		return nil, fmt.Errorf("%s: %w", sel, err)
	}
	return l, nil
}

func byMAC(sel selector) (netlink.Link, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), sel.value) {
			return l, nil
		}
	}
	return nil, notFound(sel, "no link has this MAC")
}

// byBusInfo finds the link whose driver reports sel's bus ID.
func byBusInfo(sel selector) (netlink.Link, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	for _, l := range links {
		if BusInfo(fd, l.Attrs().Name) == sel.value {
			return l, nil
		}
	}
	return nil, notFound(sel, "no link in this netns, in sysfs or by ethtool bus info")
}

// BusInfo returns what ethtool -i says is name's bus-info ("" when none).
func BusInfo(fd int, name string) string {
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
	if err != nil {
		return ""
	}
	return unix.ByteSliceToString(info.Bus_info[:])
}

// notFound is a device that is not in the node's netns: not a config
// error (it may be in another pod, or not plugged yet), so code 999 with
// the selector named.
func notFound(sel selector, why string) error {
	return fmt.Errorf("%s: device not found in the node's netns: %s", sel, why)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
