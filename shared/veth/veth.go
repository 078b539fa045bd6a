// Package veth makes the veth pairs of bridge and ptp. The host end is
// created in the host netns and the container end directly in the pod's
// netns (IFLA_NET_NS_FD on the peer), so no device is ever moved between
// namespaces: a move unregisters and re-registers the device under the
// rtnl lock, which is what made bursts of pod starts slow elsewhere.
//
// The host end gets a name derived from the attachment (container ID and
// interface name) and an alias naming the network and attachment, so that
// DEL can find it without the pod's netns and GC can find the veths of
// attachments that no longer exist.
package veth

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Pair describes a veth pair that Create made.
type Pair struct {
	Host      *netlink.Veth // in the current (host) netns, up
	Container *netlink.Veth // in the pod's netns, down
}

// Options say how to make a pair.
type Options struct {
	Network     string // network name, recorded in the host end's alias
	ContainerID string
	IfName      string           // container end name
	MTU         int              // 0: the kernel default
	MAC         net.HardwareAddr // container end MAC; nil: random
}

// HostName is the host end's name for an attachment: "veth" and eight hex
// digits of a hash of the container ID and interface name, the same shape
// as the reference plugins' random names.
func HostName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "veth" + hex.EncodeToString(sum[:4])
}

// Alias is the alias of the host end of an attachment.
func Alias(network, containerID, ifName string) string {
	return aliasPrefix + network + "/" + containerID + "/" + ifName
}

const aliasPrefix = "cnibox/"

// ParseAlias returns the network, container ID and interface name an alias
// names, or ok=false when the alias is not one of ours.
func ParseAlias(alias string) (network, containerID, ifName string, ok bool) {
	rest, found := strings.CutPrefix(alias, aliasPrefix)
	if !found {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// Create makes the pair from the current netns, which is the host's. The
// host end has accept_ra=0 and accept_dad=0 before it comes up (CVE-2020-10749: a pod must
// not be able to send router advertisements to the host) and is up; the
// container end is left down for the caller to configure.
//
// A host end left by an earlier attempt for the same attachment is
// replaced; a name taken by anything else is an error.
func Create(podNS ns.NetNS, o Options) (*Pair, error) {
	hostName := HostName(o.ContainerID, o.IfName)
	if old, err := netlinksafe.LinkByName(hostName); err == nil {
		_, cid, ifn, ok := ParseAlias(old.Attrs().Alias)
		if !ok || cid != o.ContainerID || ifn != o.IfName {
			return nil, fmt.Errorf("create veth %s: the name is taken by another device (alias %q)", hostName, old.Attrs().Alias)
		}
		if err := netlink.LinkDel(old); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete stale veth %s: %w", hostName, err)
		}
	}
	v := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:   hostName,
			TxQLen: -1,
			MTU:    o.MTU,
		},
		PeerName:         o.IfName,
		PeerHardwareAddr: o.MAC,
		PeerNamespace:    netlink.NsFd(int(podNS.Fd())),
	}
	if o.MTU > 0 {
		v.PeerMTU = uint32(o.MTU)
	}
	if err := netlink.LinkAdd(v); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("create veth %s/%s: %s already exists in the pod", hostName, o.IfName, o.IfName)
		}
		return nil, fmt.Errorf("create veth %s with peer %s in the pod: %w", hostName, o.IfName, err)
	}
	pair, err := finish(podNS, hostName, o.IfName, Alias(o.Network, o.ContainerID, o.IfName))
	if err != nil {
		if l, lerr := netlinksafe.LinkByName(hostName); lerr == nil {
			_ = netlink.LinkDel(l)
		}
		return nil, err
	}
	return pair, nil
}

func finish(podNS ns.NetNS, hostName, ifName, alias string) (*Pair, error) {
	if err := DisableRA(hostName); err != nil {
		return nil, err
	}
	// No DAD for the host end's link-local address either: until DAD ends
	// the node cannot send neighbour solicitations on it, and a routed
	// (ptp) pod would wait a second or two for its first IPv6 packet.
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+hostName+"/accept_dad", []byte("0"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("set accept_dad=0 on %s: %w", hostName, err)
	}
	host, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find new veth %s: %w", hostName, err)
	}
	// LinkAdd does not send the alias of a veth; set it on its own.
	if err := netlink.LinkSetAlias(host, alias); err != nil {
		return nil, fmt.Errorf("set alias of %s: %w", hostName, err)
	}
	host.Attrs().Alias = alias
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set %s up: %w", hostName, err)
	}
	var cont netlink.Link
	err = podNS.Do(func(ns.NetNS) error {
		var err error
		cont, err = netlinksafe.LinkByName(ifName)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("find new veth %s in the pod: %w", ifName, err)
	}
	hv, ok1 := host.(*netlink.Veth)
	cv, ok2 := cont.(*netlink.Veth)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("veth %s/%s: not a veth pair", hostName, ifName)
	}
	return &Pair{Host: hv, Container: cv}, nil
}

// DisableRA sets accept_ra=0 on a link of the current netns. A kernel
// without IPv6 has nothing to disable.
func DisableRA(link string) error {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+link+"/accept_ra", []byte("0"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("set accept_ra=0 on %s: %w", link, err)
	}
	return nil
}

// DeleteHost deletes the host end of an attachment from the current netns,
// which deletes the pod's end too. It is how DEL cleans up when the pod's
// netns is gone or unreachable. A missing link, or one that belongs to a
// different attachment, is left alone.
func DeleteHost(network, containerID, ifName string) error {
	name := HostName(containerID, ifName)
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("find veth %s: %w", name, err)
	}
	if l.Attrs().Alias != Alias(network, containerID, ifName) {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s: %w", name, err)
	}
	return nil
}

// Stale returns the host ends of the network's attachments that valid
// does not contain: what GC deletes.
func Stale(network string, valid func(containerID, ifName string) bool) ([]netlink.Link, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Type() != "veth" {
			continue
		}
		net, cid, ifn, ok := ParseAlias(l.Attrs().Alias)
		if ok && net == network && !valid(cid, ifn) {
			out = append(out, l)
		}
	}
	return out, nil
}

// DeleteInPod deletes the interface ifName in the pod's netns at path (and
// with it the host end). A netns or link that no longer exists is not an
// error: DEL must succeed when there is nothing to delete. gone reports
// whether the netns itself was missing.
func DeleteInPod(path, ifName string) (gone bool, err error) {
	err = ns.WithNetNSPath(path, func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			if isNotFound(err) {
				return nil
			}
			return fmt.Errorf("find %s: %w", ifName, err)
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s: %w", ifName, err)
		}
		return nil
	})
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("netns %s: %w", path, err)
	}
	return false, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT)
}
