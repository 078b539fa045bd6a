// Package loopback is the loopback applet: it brings up "lo" in the pod's
// network namespace. Runtimes call it for every pod (containerd adds a
// loopback network of its own, at cniVersion 0.3.1).
package loopback

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
)

// Applet is loopback's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "loopback",
	Kind:    "main",
	Summary: "bring up lo in the pod",
	Add:     Add,
	Del:     Del,
	Check:   Check,
}

// Config is loopback's configuration: loopback has no keys of its own.
type Config struct {
	cni.NetConf
}

// Add sets lo up. Chained after another plugin it passes the previous
// result through; alone it reports lo and its addresses.
func Add(req *cni.Request) (types.Result, error) {
	conf, err := load(req)
	if err != nil {
		return nil, err
	}
	var v4, v6 *net.IPNet
	err = ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of lo: %w", err)
		}
		for _, a := range addrs {
			if !a.IP.IsLoopback() {
				return fmt.Errorf("lo has a non-loopback address %s", a.IPNet)
			}
			if a.IP.To4() != nil && v4 == nil {
				v4 = a.IPNet
			} else if a.IP.To4() == nil && v6 == nil {
				v6 = a.IPNet
			}
		}
		return nil
	})
	if err != nil {
		return nil, netnsError(req.Netns, err)
	}

	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		return prev, nil
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: req.Netns}},
		DNS:        conf.DNS,
	}
	zero := 0
	for _, a := range []*net.IPNet{v4, v6} {
		if a != nil {
			res.IPs = append(res.IPs, &current.IPConfig{Interface: &zero, Address: *a})
		}
	}
	return res, nil
}

// Del sets lo down. A missing or empty netns means there is nothing left
// to undo, so Del succeeds.
func Del(req *cni.Request) error {
	if _, err := load(req); err != nil {
		return err
	}
	if req.Netns == "" {
		return nil
	}
	if req.OtherNetns() {
		req.Log.Warnf("CNI_NETNS %s is not the network namespace of prevResult: leaving its lo alone", req.Netns)
		return nil
	}
	err := ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetDown(lo); err != nil {
			return fmt.Errorf("set lo down: %w", err)
		}
		return nil
	})
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return nil
	}
	if err != nil {
		return netnsError(req.Netns, err)
	}
	return nil
}

// Check verifies that lo is up.
func Check(req *cni.Request) error {
	if _, err := load(req); err != nil {
		return err
	}
	err := ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return errors.New("lo is down")
		}
		return nil
	})
	if err != nil {
		return netnsError(req.Netns, err)
	}
	return nil
}

func load(req *cni.Request) (*Config, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, err
	}
	return conf, nil
}

// netnsError gives a namespace that does not exist the spec's "unknown
// container" code, so the runtime knows there is nothing to clean up.
func netnsError(path string, err error) error {
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return cni.Errorf(cni.ErrUnknownContainer, "loopback: netns %q: %v", path, err)
	}
	return fmt.Errorf("loopback: netns %q: %w", path, err)
}
