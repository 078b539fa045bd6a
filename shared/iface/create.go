package iface

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/veth"
)

// Create adds link (a *netlink.Macvlan, *netlink.IPVlan, *netlink.Vlan...
// with ParentIndex and any MTU, MAC or type options set) directly in netns
// under a temporary name and renames it to CNI_IFNAME there, so a link of
// the same name in the node's netns can never collide with it, and the
// pod sees only the final name. With masterInNetns (linkInContainer)
// ParentIndex is an index in netns and everything happens inside it.
//
// The temporary name is StagingName(applet, req): a plugin killed between
// the creation and the rename leaves a link of that name in the pod, which
// the next ADD or DEL of the same attachment removes (DeleteLink, and
// Create when the name is taken). Only the same attachment's invocations
// use that name, and cni.Run holds the attachment's lock around each of
// them, so the link found there is never one that another invocation is
// still making; another attachment's staged link, or a working one, has
// another name and is never touched.
//
// The link's alias is Mark(req), so that a DEL of another attachment
// (the runtime's DEL of a container whose ADD was refused because the
// pod's CNI_IFNAME was taken) can tell it is not its own.
//
// It returns the link as netns sees it. On failure nothing is left behind.
// A CNI_IFNAME that already exists in the pod (a repeated ADD, or another
// attachment's interface) is an error naming CNI_IFNAME, and the existing
// link is left alone. To undo a successful Create, use DeleteCreated.
func Create(req *cni.Request, applet string, netns ns.NetNS, link netlink.Link, masterInNetns bool) (netlink.Link, error) {
	ifName := req.IfName
	attrs := link.Attrs()
	if attrs.TxQLen == 0 {
		// The kernel's default queue length (1000), as the reference's
		// netlink.NewLinkAttrs asks for: a zero LinkAttrs would send 0.
		attrs.TxQLen = -1
	}
	tmp := StagingName(applet, req)
	add := func() error {
		for try := 0; ; try++ {
			attrs.Name = tmp
			err := netlink.LinkAdd(link)
			if errors.Is(err, unix.EEXIST) && try == 0 && removeLink(netns, tmp) {
				continue // left by a killed plugin of the same attachment
			}
			if errors.Is(err, unix.EEXIST) && HasLink(netns, ifName) {
				// A VLAN ID or MAC that the pod's own ifName holds: a
				// repeated ADD.
				return ifNameTaken(ifName)
			}
			if err != nil {
				return fmt.Errorf("create %s link: %w", link.Type(), err)
			}
			return nil
		}
	}
	if masterInNetns {
		attrs.Namespace = nil
		if err := netns.Do(func(ns.NetNS) error { return add() }); err != nil {
			return nil, err
		}
	} else {
		attrs.Namespace = netlink.NsFd(int(netns.Fd()))
		if err := add(); err != nil {
			return nil, err
		}
	}
	var out netlink.Link
	err := netns.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(tmp)
		if err != nil {
			return fmt.Errorf("find new %s link %q: %w", link.Type(), tmp, err)
		}
		if err := netlink.LinkSetAlias(l, Mark(req)); err != nil {
			_ = netlink.LinkDel(l)
			return fmt.Errorf("set alias of new %s link %q: %w", link.Type(), tmp, err)
		}
		if err := netlink.LinkSetName(l, ifName); err != nil {
			_ = netlink.LinkDel(l)
			if errors.Is(err, unix.EEXIST) {
				return ifNameTaken(ifName)
			}
			return fmt.Errorf("rename %s link %q to %q: %w", link.Type(), tmp, ifName, err)
		}
		out, err = netlinksafe.LinkByName(ifName)
		if err != nil {
			_ = netlink.LinkDel(l)
			return fmt.Errorf("find %s link %q after rename: %w", link.Type(), ifName, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// StagingName is the name Create gives a link of applet on its way to
// CNI_IFNAME in the pod: "cni" + 10 hex digits of a hash of the
// attachment (applet, network, container ID, interface name: the key of
// cni.Run's attachment lock), 13 bytes, within IFNAMSIZ. It is the same
// for every invocation of one attachment, so a link that a killed plugin
// left under it is found again, and differs between attachments, so two
// ADDs that may run at once (another container ID or network with the same
// CNI_IFNAME in one pod) never meet under it.
func StagingName(applet string, req *cni.Request) string {
	sum := sha256.Sum256([]byte(applet + "\x00" + req.Name + "\x00" + req.ContainerID + "\x00" + req.IfName))
	return "cni" + hex.EncodeToString(sum[:5])
}

// Mark is the alias of the pod link Create makes for an attachment:
// "cnibox/<network>/<container ID>/<ifname>", the format of the host
// veths' aliases (veth.Alias), which conformance runs normalise away.
func Mark(req *cni.Request) string {
	return veth.Alias(req.Name, req.ContainerID, req.IfName)
}

// ifNameTaken is the error of an ADD whose CNI_IFNAME the pod has (code 4).
func ifNameTaken(ifName string) error {
	return cni.Errorf(cni.ErrInvalidEnv, "CNI_IFNAME: %q already exists in the pod", ifName)
}

// HasLink reports whether netns has a link called name.
func HasLink(netns ns.NetNS, name string) bool {
	found := false
	_ = netns.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(name)
		found = err == nil
		return nil
	})
	return found
}

// removeLink deletes the link name in netns and reports whether there was
// one.
func removeLink(netns ns.NetNS, name string) bool {
	found := false
	_ = netns.Do(func(ns.NetNS) error {
		if l, err := netlinksafe.LinkByName(name); err == nil {
			found = netlink.LinkDel(l) == nil
		}
		return nil
	})
	return found
}

// DeleteLink deletes CNI_IFNAME in CNI_NETNS, and a link Create left
// under StagingName(applet, req) when a plugin of the same attachment was
// killed before the rename. A netns or a link that does not exist (any
// more) is success: DEL must be idempotent, and a deleted netns takes its
// virtual links with it.
//
// CNI_IFNAME is deleted only when it is tied to this attachment: its
// alias is the attachment's Mark, or, for a link without our mark (made by
// the reference, or by an older cnibox), its MAC is the one prevResult
// (the runtime's record of the attachment) gives it. A runtime DELs the
// container whose ADD was refused because the pod's ifname was taken, and
// a confused runtime may pass another pod's netns: neither DEL may take
// that pod's interface. An untied link that is in fact this attachment's
// dies with its netns.
func DeleteLink(req *cni.Request, applet string) error {
	nspath, ifName := req.Netns, req.IfName
	if nspath == "" {
		return nil
	}
	netns, err := ns.GetNS(nspath)
	if err != nil {
		if NetnsGone(err) {
			return nil
		}
		return fmt.Errorf("open netns %q: %w", nspath, err)
	}
	defer netns.Close()
	removeLink(netns, StagingName(applet, req))
	podMAC := req.Recorded().PodMAC
	return netns.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				return nil
			}
			return fmt.Errorf("look up %q: %w", ifName, err)
		}
		alias := l.Attrs().Alias
		_, _, _, marked := veth.ParseAlias(alias)
		if marked && alias != Mark(req) {
			return nil // another attachment's
		}
		if !marked && (podMAC == "" || !strings.EqualFold(l.Attrs().HardwareAddr.String(), podMAC)) {
			return nil // not tied to this attachment: left alone
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete %q: %w", ifName, err)
		}
		return nil
	})
}

// DeleteCreated is the roll-back of a successful Create when a later step
// of ADD fails: it deletes that very link in netns, found by its index
// (which the kernel does not reuse while it exists), never whatever link
// now has its name.
func DeleteCreated(netns ns.NetNS, link netlink.Link) error {
	return netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(link.Attrs().Index)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				return nil
			}
			return fmt.Errorf("look up the new link %q: %w", link.Attrs().Name, err)
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete the new link %q: %w", link.Attrs().Name, err)
		}
		return nil
	})
}
