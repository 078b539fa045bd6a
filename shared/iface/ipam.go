package iface

import (
	"errors"
	"fmt"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
)

// AddIPAM runs ADD of the IPAM plugin ipamType once the applet's link
// exists (dhcp needs it). ipamType "" means no ipam: nil, nil. A result
// without addresses is released again and is an error naming applet.
func AddIPAM(req *cni.Request, applet, ipamType string) (*current.Result, error) {
	if ipamType == "" {
		return nil, nil
	}
	res, err := delegate.Add(req, ipamType)
	if err != nil {
		return nil, err
	}
	if len(res.IPs) == 0 {
		ReleaseIPAM(req, ipamType)
		return nil, fmt.Errorf("%s: IPAM plugin %q returned no IP addresses", applet, ipamType)
	}
	return res, nil
}

// ReleaseIPAM is the rollback of AddIPAM when a later step of ADD fails:
// DEL of ipamType ("" = nothing), whose failure is only logged, as the
// error of the step that failed is the one to report.
func ReleaseIPAM(req *cni.Request, ipamType string) {
	if ipamType == "" {
		return
	}
	sub := *req
	sub.Command = cni.CmdDel
	if err := delegate.Del(&sub, ipamType); err != nil {
		req.Log.Warnf("roll back: release IPAM: %v", err)
	}
}

// DelIPAM runs DEL of the IPAM plugin ipamType; "" (no ipam) is nil.
func DelIPAM(req *cni.Request, ipamType string) error {
	if ipamType == "" {
		return nil
	}
	return delegate.Del(req, ipamType)
}

// Del is DEL of an applet whose link only lives in the pod (macvlan,
// ipvlan, vlan): it releases the IPAM allocation, then deletes CNI_IFNAME
// in CNI_NETNS (DeleteLink). The release comes first, as in the
// reference, while the pod's interface still exists: dhcp sends its
// DHCPRELEASE out of it, and the node itself may have no route to the
// server (then the server keeps the lease until it expires). Both are
// tried even when one fails, and a netns or link that is already gone is
// fine: the IPAM release must still happen (for one, after a node reboot).
func Del(req *cni.Request, applet, ipamType string) error {
	ipamErr := DelIPAM(req, ipamType)
	linkErr := DeleteLink(req, applet)
	if linkErr != nil {
		linkErr = fmt.Errorf("%s: %w", applet, linkErr)
	}
	return errors.Join(linkErr, ipamErr)
}

// PodCheck is a main plugin's CHECK past its common start (StartCheck):
// IPAM's own CHECK passed, the result's entry for the pod's interface
// found, the pod's netns open.
type PodCheck struct {
	applet, ifName string
	res            *current.Result
	// Interface is the result's entry for the pod's interface, Index its
	// position in the result's interfaces.
	Interface *current.Interface
	Index     int
	// Netns is the pod's; the caller closes it.
	Netns ns.NetNS
}

// StartCheck is how every main plugin's CHECK begins: IPAM's CHECK
// (ipamType "" when there is none), then prev's entry for CNI_IFNAME in
// CNI_NETNS, then that netns opened. applet names the errors.
func StartCheck(req *cni.Request, applet string, prev *current.Result, ipamType string) (*PodCheck, error) {
	if ipamType != "" {
		if err := delegate.Check(req, ipamType); err != nil {
			return nil, err
		}
	}
	idx, ifc, err := FindInterface(prev, req.IfName, req.Netns)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", applet, err)
	}
	netns, err := OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	return &PodCheck{applet: applet, ifName: req.IfName, res: prev, Index: idx, Interface: ifc, Netns: netns}, nil
}

// Link is the netns part of CHECK: inside the pod's netns, its interface
// is the link want describes (CheckLink) and has the addresses and routes
// the result gives it (CheckIPs).
func (p *PodCheck) Link(want Want) error {
	err := p.Netns.Do(func(ns.NetNS) error {
		if _, err := CheckLink(p.ifName, want); err != nil {
			return err
		}
		return CheckIPs(p.ifName, p.Index, p.res)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", p.applet, err)
	}
	return nil
}
