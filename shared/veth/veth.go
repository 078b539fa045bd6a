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
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
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
	// NoHostDAD sets accept_dad=0 on the host end (the reference leaves
	// the kernel's default). ptp asks for it: until the DAD of the host
	// end's link-local address ends, a routed pod's IPv6 goes nowhere.
	// Measured with two dual-stack ptp pods, the time from the second
	// ADD's return to the first answered ping6 from one pod to the
	// other (ping -6 -c1 -W 0.05 until answered, 3 runs each): 13-173 ms with
	// it, 1.1-2.5 s without, 2.05-2.19 s with the reference's ptp. A
	// bridge port's link-local carries nothing: bridge leaves it.
	NoHostDAD bool
}

// HostName is the host end's first-choice name for an attachment: "veth"
// and eight hex digits of a hash of the container ID and interface name,
// the same shape as the reference plugins' random names. HostNames lists
// the fallbacks used when another attachment holds it.
func HostName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "veth" + hex.EncodeToString(sum[:4])
}

// hostNameTries is how many names HostNames offers an attachment.
const hostNameTries = 4

// HostNames are the names the host end of an attachment may have, in the
// order Create tries them: HostName, then names of 11 base32 digits (55
// bits) of a hash salted with the try's number. 32 bits are few enough
// that two live attachments share a first choice somewhere in a fleet
// (the IDs ...1654 and ...6325 with eth0 do): the second one takes a
// fallback instead of failing. The names stay derived from the attachment
// so that DEL and crash recovery find the host end without the pod's
// netns, by trying each of these few names and comparing the alias.
func HostNames(containerID, ifName string) []string {
	names := []string{HostName(containerID, ifName)}
	for i := 1; i < hostNameTries; i++ {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", containerID, ifName, i)))
		names = append(names, "veth"+strings.ToLower(b32.EncodeToString(sum[:7]))[:11])
	}
	return names
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// maxAlias is the longest alias the kernel keeps (IFALIASZ less the NUL).
const maxAlias = 255

// Alias is the alias of the host end of an attachment:
// "cnibox/<network>/<containerID>/<ifName>" when that fits the kernel's 255
// bytes (always, for the usual names). Otherwise a network name longer
// than 64 bytes, and then a container ID too long for what is left, are
// replaced by "#" and 32 hex digits (128 bits) of their SHA-256: a form no
// valid name can take ('#' is not allowed in either), bounded (at most
// 121 bytes) and as unlikely to collide as the hash. Every reader
// compares whole aliases computed here (or the network field with
// NetworkField), so the long and the short form never need parsing back.
func Alias(network, containerID, ifName string) string {
	full := aliasPrefix + network + "/" + containerID + "/" + ifName
	if len(full) <= maxAlias {
		return full
	}
	nw := NetworkField(network)
	if len(aliasPrefix)+len(nw)+len(containerID)+len(ifName)+2 > maxAlias {
		containerID = cni.HashField(containerID)
	}
	return aliasPrefix + nw + "/" + containerID + "/" + ifName
}

// NetworkField is how an alias names network: the name itself, or its
// hash when it is longer than 64 bytes and the alias did not fit. An
// alias of network has, as its network field, network or NetworkField.
func NetworkField(network string) string {
	if len(network) > 64 {
		return cni.HashField(network)
	}
	return network
}

// OfNetwork reports whether alias is one of ours for network.
func OfNetwork(alias, network string) bool {
	nw, _, _, ok := ParseAlias(alias)
	return ok && (nw == network || nw == NetworkField(network))
}

const aliasPrefix = "cnibox/"

// ParseAlias returns the network, container ID and interface name fields
// of an alias (the network and container ID fields may be hashes, see
// Alias), or ok=false when the alias is not one of ours.
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
// host end has accept_ra=0 before it comes up (CVE-2020-10749: a pod must
// not be able to send router advertisements to the host) and is up; the
// container end is left down for the caller to configure.
//
// The host end takes the first of HostNames that no link holds. A name
// held by a link whose alias is another attachment's (or not ours at all)
// is passed over; one held by this attachment's own host end is refused:
// Create never deletes a link it did not make, and a working attachment
// looks exactly like what a killed ADD left behind, and only the runtime
// knows which it is. After a failed or interrupted ADD runtimes DEL,
// which removes the leftover; a runtime's retry of an ADD that succeeded
// must find its attachment intact. Likewise a pod that already has
// ifName is refused (ErrExists), as the reference does.
func Create(podNS ns.NetNS, o Options) (*Pair, error) {
	alias := Alias(o.Network, o.ContainerID, o.IfName)
	names := HostNames(o.ContainerID, o.IfName)
	free := ""
	var taken []string
	for _, name := range names {
		old, err := netlinksafe.LinkByName(name)
		switch {
		case err == nil && old.Attrs().Alias == alias:
			return nil, fmt.Errorf("create veth %s: it %w: this attachment is up already, or an interrupted ADD left it, which DEL removes", name, ErrExists)
		case err == nil:
			taken = append(taken, fmt.Sprintf("%s (a %s, alias %q)", name, old.Type(), old.Attrs().Alias))
		case !isNotFound(err):
			return nil, fmt.Errorf("look for veth %s: %w", name, err)
		case free == "":
			free = name
		}
	}
	if free == "" {
		return nil, fmt.Errorf("create veth: every host name of the attachment is taken by another device: %s", strings.Join(taken, ", "))
	}
	hostName := free
	if err := addPair(hostName, o, int(podNS.Fd())); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			// The host end was free a moment ago (another attachment
			// may have taken it since: its runtime retries), so it is
			// most likely the pod's ifName.
			if old, err := netlinksafe.LinkByName(hostName); err == nil {
				return nil, fmt.Errorf("create veth %s: the name was taken meanwhile by another device (a %s, alias %q)", hostName, old.Type(), old.Attrs().Alias)
			}
			return nil, existsError(o.IfName, hostName)
		}
		return nil, fmt.Errorf("create veth %s with peer %s in the pod: %w", hostName, o.IfName, err)
	}
	pair, err := finish(podNS, hostName, o.IfName, alias, o.NoHostDAD)
	if err != nil {
		// The pair is ours (LinkAdd made it, and the attachment's lock
		// keeps anyone else of this attachment away): delete it.
		if l, lerr := netlinksafe.LinkByName(hostName); lerr == nil && l.Type() == "veth" {
			_ = netlink.LinkDel(l)
		}
		return nil, err
	}
	return pair, nil
}

// addPair sends the RTM_NEWLINK that makes the pair: the host end in the
// current netns, the peer (the pod's end) in podFd's.
//
// The host end has one TX and one RX queue. Without IFLA_NUM_TX_QUEUES a
// veth gets one queue per possible CPU and veth_newlink then cuts its
// real TX queues to one (netif_set_real_num_tx_queues), which, the device
// being registered, waits for an expedited RCU grace period while holding
// RTNL: every other link change of the node waits too. Measured with 60
// pairs each, interleaved, on the 2-vCPU VM under load 11-13: 0.71-0.92 ms
// p50 per creation with the default, 0.50-0.52 ms with one queue on the
// host end, and no further gain with one on the pod's end as well (its cut
// happens before it is registered). The pod's end keeps the kernel's
// default, so the pod sees exactly what the reference gives it (numtxqueues
// = possible CPUs, one real queue each way); nothing reads the host end's
// queue count (its qdiscs are noqueue or bandwidth's tbf, single-queue).
//
// The queue lengths are the reference's. It makes the pair from the pod's
// side with netlink.NewLinkAttrs (no IFLA_TXQLEN: the kernel's
// DEFAULT_TX_QUEUE_LEN, 1000) for the pod's end and IFLA_TXQLEN 0 for the
// host's. A veth is IFF_NO_QUEUE (noqueue), so the length only matters to
// a qdisc added later that takes its limit from it (pfifo, pfifo_fast): a
// pod's own pfifo gets 1000 packets, as with the reference, not 1.
func addPair(hostName string, o Options, podFd int) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(hostName)))
	if o.MTU > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(o.MTU))))
	}
	req.AddData(nl.NewRtAttr(unix.IFLA_TXQLEN, nl.Uint32Attr(0)))
	req.AddData(nl.NewRtAttr(unix.IFLA_NUM_TX_QUEUES, nl.Uint32Attr(1)))
	req.AddData(nl.NewRtAttr(unix.IFLA_NUM_RX_QUEUES, nl.Uint32Attr(1)))
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(o.IfName))
	peer.AddRtAttr(unix.IFLA_TXQLEN, nl.Uint32Attr(1000))
	if o.MTU > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(o.MTU)))
	}
	if o.MAC != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(o.MAC))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(podFd)))
	req.AddData(info)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// ErrExists is what Create and Absent return, wrapped, when the pod
// already has the interface: the attachment exists (a runtime's retried
// ADD) or another one took the name.
var ErrExists = errors.New("already exists")

// existsError is the reference's message for a pod that already has
// ifName, so that a runtime or an operator sees the same words.
func existsError(ifName, hostName string) error {
	return fmt.Errorf("container veth name (%q) peer provided (%q) %w", ifName, hostName, ErrExists)
}

// Absent fails with the reference's "already exists" error when the pod
// already has ifName. bridge and ptp ask before anything else (before
// IPAM in particular), so that a repeated ADD neither reserves, nor sets
// up rules, nor later undoes anything that belongs to the first.
func Absent(podNS ns.NetNS, containerID, ifName string) error {
	err := podNS.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(ifName)
		return err
	})
	switch {
	case err == nil:
		return existsError(ifName, HostName(containerID, ifName))
	case isNotFound(err):
		return nil
	}
	return fmt.Errorf("look for %s in the pod: %w", ifName, err)
}

// Delete deletes the pair Create made, by the host end's index, as long
// as that index still names it: what a failing ADD undoes.
func (p *Pair) Delete() error {
	if p == nil || p.Host == nil {
		return nil
	}
	l, err := netlink.LinkByIndex(p.Host.Attrs().Index)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("find veth %s: %w", p.Host.Attrs().Name, err)
	}
	if l.Attrs().Name != p.Host.Attrs().Name || l.Attrs().Alias != p.Host.Attrs().Alias {
		return nil // gone, and the index reused
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete veth %s: %w", p.Host.Attrs().Name, err)
	}
	return nil
}

func finish(podNS ns.NetNS, hostName, ifName, alias string, noDAD bool) (*Pair, error) {
	if err := DisableRA(hostName); err != nil {
		return nil, err
	}
	if noDAD {
		err := os.WriteFile("/proc/sys/net/ipv6/conf/"+hostName+"/accept_dad", []byte("0"), 0o644)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("set accept_dad=0 on %s: %w", hostName, err)
		}
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
// netns is gone or unreachable. It looks under each of HostNames and
// deletes the link there whose alias is the attachment's; a missing link,
// or one that belongs to a different attachment, is left alone.
func DeleteHost(network, containerID, ifName string) error {
	alias := Alias(network, containerID, ifName)
	var errs []error
	for _, name := range HostNames(containerID, ifName) {
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			if !isNotFound(err) {
				errs = append(errs, fmt.Errorf("find veth %s: %w", name, err))
			}
			continue
		}
		if l.Attrs().Alias != alias {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Delete removes an attachment's pair: from the pod's side through the
// netns at path (CNI_NETNS; "" when the runtime has none), and by its host
// end (DeleteHost) unless that settled it. Nothing left to delete is not
// an error: DEL must succeed then.
//
// The pod's ifName is deleted only when it can be tied to this
// attachment: its host peer carries the attachment's alias (or none yet,
// under one of the attachment's HostNames: an ADD killed before it set
// the alias), or, for a pair the reference or an older cnibox made
// without our alias, the runtime's record of the attachment (rec, from
// prevResult) names its host peer (name and MAC) or gives the pod's end
// its MAC. Anything else stays: a runtime DELs the
// container whose ADD was refused because the pod's eth0 was another
// container's, and a confused runtime may hand DEL another pod's netns;
// neither DEL may take that pod's eth0. An untied interface that is in
// fact this attachment's dies with its netns.
func Delete(network, containerID, ifName, path string, rec cni.Recorded) error {
	if path != "" {
		done, err := deleteInPod(network, containerID, ifName, path, rec)
		if done || err != nil {
			return err
		}
	}
	return DeleteHost(network, containerID, ifName)
}

// deleteInPod deletes ifName in the netns at path (and with it the host
// end) when it is tied to the attachment (see Delete). A missing netns or
// link is nothing to do. done reports that the pair is deleted, so there
// is nothing left for DeleteHost to look for.
func deleteInPod(network, containerID, ifName, path string, rec cni.Recorded) (done bool, err error) {
	var index, peer int
	var isVeth bool
	var mac string
	look := func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			if isNotFound(err) {
				return nil
			}
			return fmt.Errorf("find %s: %w", ifName, err)
		}
		index, peer, isVeth = l.Attrs().Index, l.Attrs().ParentIndex, l.Type() == "veth"
		mac = l.Attrs().HardwareAddr.String()
		return nil
	}
	err = ns.WithNetNSPath(path, look)
	var missing ns.NSPathNotExistErr
	if errors.As(err, &missing) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("netns %s: %w", path, err)
	}
	if index == 0 {
		return false, nil
	}
	if isVeth && peer != 0 {
		// Its peer, when it is in this netns (the node's).
		if host, err := netlink.LinkByIndex(peer); err == nil && host.Type() == "veth" && host.Attrs().ParentIndex == index {
			alias := host.Attrs().Alias
			_, _, _, ours := ParseAlias(alias)
			// An ADD killed between creating the pair and setting the
			// alias leaves a host end without one, under a name derived
			// from this attachment: that ties it too.
			unfinished := alias == "" && slices.Contains(HostNames(containerID, ifName), host.Attrs().Name)
			if ours && alias != Alias(network, containerID, ifName) {
				return false, nil // another attachment's
			}
			// The record names the host end: a pair the reference
			// made (a chained tuning may have changed the pod end's MAC
			// and, in its DEL, back).
			recMAC, recorded := rec.Host[host.Attrs().Name]
			recorded = recorded && !ours && (recMAC == "" || strings.EqualFold(recMAC, host.Attrs().HardwareAddr.String()))
			if ours || unfinished || recorded {
				if err := netlink.LinkDel(host); err != nil && !isNotFound(err) {
					return false, fmt.Errorf("delete veth %s: %w", host.Attrs().Name, err)
				}
				return true, nil
			}
		}
	}
	if rec.PodMAC == "" || !strings.EqualFold(mac, rec.PodMAC) {
		return false, nil // not tied to this attachment: left alone
	}
	err = ns.WithNetNSPath(path, func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(index)
		if err != nil {
			if isNotFound(err) {
				return nil
			}
			return fmt.Errorf("find %s: %w", ifName, err)
		}
		if l.Attrs().Name != ifName {
			return nil
		}
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s: %w", ifName, err)
		}
		done = true // and its peer with it
		return nil
	})
	if err != nil && !errors.As(err, &missing) {
		return false, fmt.Errorf("netns %s: %w", path, err)
	}
	return done, nil
}

// DeleteStale deletes the host ends of the network's attachments that
// valid does not list, logging each with logf: what GC removes.
func DeleteStale(network string, valid map[cni.Attachment]bool, logf func(string, ...any)) error {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	keep := make(map[string]bool, len(valid))
	for a := range valid {
		keep[Alias(network, a.ContainerID, a.IfName)] = true
	}
	var errs []error
	for _, l := range links {
		alias := l.Attrs().Alias
		if l.Type() != "veth" || !OfNetwork(alias, network) || keep[alias] {
			continue
		}
		_, cid, ifn, _ := ParseAlias(alias)
		logf("GC: deleting %s of %s/%s", l.Attrs().Name, cid, ifn)
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// Check verifies an attachment's pair for CHECK: ifName in the pod's
// netns at path is a veth with the MAC that prev recorded for it, inPod
// (run in that netns; nil for nothing) passes, and the link in the current
// netns on the other end is its peer. It returns that host end.
func Check(path, ifName string, prev *current.Result, inPod func() error) (netlink.Link, error) {
	var wantMAC string
	for _, i := range prev.Interfaces {
		if i.Name == ifName && i.Sandbox != "" {
			wantMAC = i.Mac
		}
	}
	var peer, index int
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return err
		}
		if l.Type() != "veth" {
			return fmt.Errorf("%s is a %s, not a veth", ifName, l.Type())
		}
		if wantMAC != "" && l.Attrs().HardwareAddr.String() != wantMAC {
			return fmt.Errorf("%s has MAC %s, want %s", ifName, l.Attrs().HardwareAddr, wantMAC)
		}
		peer, index = l.Attrs().ParentIndex, l.Attrs().Index
		if inPod == nil {
			return nil
		}
		return inPod()
	})
	if err != nil {
		return nil, fmt.Errorf("pod netns %s: %w", path, err)
	}
	host, err := netlink.LinkByIndex(peer)
	if err != nil {
		return nil, fmt.Errorf("host end of %s (ifindex %d): %w", ifName, peer, err)
	}
	if host.Attrs().ParentIndex != index {
		return nil, fmt.Errorf("%s is not the peer of %s", host.Attrs().Name, ifName)
	}
	return host, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT)
}
