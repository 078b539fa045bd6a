package iface

import (
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
)

// Master finds the parent link named name, in netns when it is not nil
// (linkInContainer) and in the calling thread's netns otherwise. An empty
// name means the link of the default route there, as the reference does.
// A master that does not exist is a configuration error naming "master".
func Master(netns ns.NetNS, name string) (netlink.Link, error) {
	find := func() (netlink.Link, error) {
		if name == "" {
			return DefaultRouteLink()
		}
		if err := cni.LinkName("master", name); err != nil {
			return nil, err
		}
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				return nil, cni.ConfigError("master: link %q not found", name)
			}
			return nil, fmt.Errorf("master: look up link %q: %w", name, err)
		}
		return l, nil
	}
	if netns == nil {
		return find()
	}
	var l netlink.Link
	err := netns.Do(func(ns.NetNS) (err error) {
		l, err = find()
		return err
	})
	return l, err
}

// DefaultRouteLink returns the link of the main table's IPv4 default route,
// or of the IPv6 one when there is no IPv4 default route.
func DefaultRouteLink() (netlink.Link, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.RouteListFiltered(family, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("master: list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !isDefault(r) {
				continue
			}
			index := r.LinkIndex
			if index == 0 && len(r.MultiPath) > 0 {
				index = r.MultiPath[0].LinkIndex
			}
			if index == 0 {
				continue
			}
			l, err := netlink.LinkByIndex(index)
			if err != nil {
				return nil, fmt.Errorf("master: link %d of the default route: %w", index, err)
			}
			return l, nil
		}
	}
	return nil, cni.ConfigError("master: not set, and there is no default route to take it from")
}

func isDefault(r netlink.Route) bool {
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// CheckMTU checks a configured MTU (field names the key, "mtu") against
// the master's: 0 means the kernel's default (the master's MTU), and a
// larger MTU than the master's cannot work.
func CheckMTU(field string, mtu int, master netlink.Link) error {
	if mtu < 0 {
		return cni.ConfigError("%s: %d is negative", field, mtu)
	}
	if max := master.Attrs().MTU; mtu > max {
		return cni.ConfigError("%s: %d is larger than the MTU %d of master %q", field, mtu, max, master.Attrs().Name)
	}
	return nil
}
