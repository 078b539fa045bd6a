package iface

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
)

// Create adds link (a *netlink.Macvlan, *netlink.IPVlan, *netlink.Vlan...
// with ParentIndex and any MTU, MAC or type options set) directly in netns
// under a temporary name and renames it to ifName there, so a link of the
// same name in the node's netns can never collide with it, and the pod sees
// only the final name. With masterInNetns (linkInContainer) ParentIndex is
// an index in netns and everything happens inside it.
//
// It returns the link as netns sees it. On failure nothing is left behind.
// An ifName that already exists in the pod is an error naming CNI_IFNAME.
func Create(netns ns.NetNS, link netlink.Link, ifName string, masterInNetns bool) (netlink.Link, error) {
	attrs := link.Attrs()
	var tmp string
	add := func() error {
		for try := 0; ; try++ {
			tmp = TempName()
			attrs.Name = tmp
			err := netlink.LinkAdd(link)
			if errors.Is(err, unix.EEXIST) && try < 3 {
				continue // a temporary name collided: draw another
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
		if err := netlink.LinkSetName(l, ifName); err != nil {
			_ = netlink.LinkDel(l)
			if errors.Is(err, unix.EEXIST) {
				return cni.Errorf(cni.ErrInvalidEnv, "CNI_IFNAME: %q already exists in the pod", ifName)
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

// TempName returns a random interface name for a link on its way to its
// final name ("cni" + 10 hex digits: 13 bytes, within IFNAMSIZ).
func TempName() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "cni" + hex.EncodeToString(b)
}

// DeleteLink deletes ifName in the netns at nspath. A netns or a link that
// does not exist (any more) is success: DEL must be idempotent, and a
// deleted netns takes its virtual links with it.
func DeleteLink(nspath, ifName string) error {
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
	return netns.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				return nil
			}
			return fmt.Errorf("look up %q: %w", ifName, err)
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete %q: %w", ifName, err)
		}
		return nil
	})
}
