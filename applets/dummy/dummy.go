// Package dummy is the dummy applet: it gives the pod a dummy link (an
// interface with no wire behind it) carrying the IPAM result's addresses
// and routes, the usual anchor of routed setups (an address the pod owns
// whatever its other interfaces do).
package dummy

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
)

// Applet is dummy's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "dummy",
	Kind:    "main",
	Summary: "a dummy link in the pod with the IPAM addresses",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is dummy's configuration: the common keys only, with ipam
// required (a dummy link without addresses serves nothing).
type Config struct {
	cni.NetConf
}

func load(req *cni.Request) (*Config, error) {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, cni.ConfigError("ipam: missing: a dummy interface needs an IPAM configuration")
	}
	return c, nil
}

// Add creates the dummy in the pod, runs IPAM and applies the result. On
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
	link, err := iface.Create(req, "dummy", netns, &netlink.Dummy{}, false)
	if err != nil {
		return nil, fmt.Errorf("dummy: %w", err)
	}
	rollback := func() {
		if derr := iface.DeleteCreated(netns, link); derr != nil {
			req.Log.Warnf("roll back: %v", derr)
		}
	}
	ipRes, err := iface.AddIPAM(req, "dummy", c.IPAM.Type)
	if err != nil {
		rollback()
		return nil, err
	}
	res := iface.NewResult(ipRes, c.DNS, link, req.Netns)
	// No duplicate address detection: a dummy link has no neighbours
	// that could hold the address, so the addresses are usable at once.
	err = netns.Do(func(ns.NetNS) error {
		return iface.Apply(req.IfName, res, iface.Options{KeepAcceptDAD: true})
	})
	if err != nil {
		iface.ReleaseIPAM(req, c.IPAM.Type)
		rollback()
		return nil, fmt.Errorf("dummy: configure %q: %w", req.IfName, err)
	}
	return res, nil
}

// Del releases the IPAM allocation, then deletes the link; a netns or
// link that is gone is fine.
func Del(req *cni.Request) error {
	c := &Config{}
	if err := req.Decode(c); err != nil {
		return err
	}
	return iface.Del(req, "dummy", c.IPAM.Type)
}

// Check verifies what ADD made: IPAM's own CHECK, then the link is a
// dummy with the result's MAC, up, with the result's addresses and routes.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	pod, err := iface.StartCheck(req, "dummy", prev, c.IPAM.Type)
	if err != nil {
		return err
	}
	defer pod.Netns.Close()
	want := iface.Want{Type: "dummy", MAC: pod.Interface.Mac, Extra: func(l netlink.Link) error {
		if l.Attrs().Flags&net.FlagUp == 0 {
			return errors.New("is down")
		}
		return nil
	}}
	return pod.Link(want)
}

// GC passes GC on to the IPAM plugin, which owns the only state dummy
// leaves outside pods.
func GC(req *cni.Request) error { return delegate.IPAMGC(req, &Config{}) }

// Status asks the IPAM plugin, as the reference does.
func Status(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	return delegate.Status(req, c.IPAM.Type)
}
