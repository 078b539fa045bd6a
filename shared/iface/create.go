package iface

import (
	"crypto/sha256"
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
// The temporary name is StagingName(ifName): a plugin killed between the
// creation and the rename leaves a link of that name in the pod, which
// DeleteLink removes and the next Create replaces.
//
// It returns the link as netns sees it. On failure nothing is left behind.
// An ifName that already exists in the pod is an error naming CNI_IFNAME.
func Create(netns ns.NetNS, link netlink.Link, ifName string, masterInNetns bool) (netlink.Link, error) {
	attrs := link.Attrs()
	tmp := StagingName(ifName)
	add := func() error {
		for try := 0; ; try++ {
			attrs.Name = tmp
			err := netlink.LinkAdd(link)
			if errors.Is(err, unix.EEXIST) && try == 0 && removeLink(netns, tmp) {
				continue // left by a killed ADD for the same ifName
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

// StagingName is the name Create gives a link on its way to ifName in the
// pod ("cni" + 10 hex digits of a hash of ifName: 13 bytes, within
// IFNAMSIZ). It is the same for every ADD of ifName, so a link that a
// killed plugin left under it is found again; one pod has one attachment
// per ifName, so two ADDs never race for it.
func StagingName(ifName string) string {
	sum := sha256.Sum256([]byte(ifName))
	return "cni" + hex.EncodeToString(sum[:5])
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

// DeleteLink deletes ifName in the netns at nspath, and a link Create left
// under StagingName(ifName) when its plugin was killed before the rename.
// A netns or a link that does not exist (any more) is success: DEL must be
// idempotent, and a deleted netns takes its virtual links with it.
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
	removeLink(netns, StagingName(ifName))
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
