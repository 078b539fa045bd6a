// Package ipmasq masquerades the traffic of pod addresses that leaves
// their subnet, for bridge and ptp's ipMasq. It has the reference plugins'
// two backends with the reference's names, so a node can switch between
// implementations and each can clean up the other's rules:
//
//   - iptables: a nat chain CNI-<hash of network and container ID> per
//     attachment, jumped to from POSTROUTING for each pod address, every
//     rule commented `name: "<net>" id: "<cid>"`; applied with one
//     iptables-restore per family (shared/iptables) instead of one
//     iptables process per rule.
//   - nftables: table inet cni_plugins_masquerade, one rule per address in
//     chain masq_checks commented with a hash of the network and the
//     attachment; spoken over netlink, so no nft binary is needed.
//
// Teardown needs neither the pod's netns nor its addresses: rules are found
// by name and comment. GC removes the rules of attachments that are gone.
package ipmasq

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os/exec"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/nft"
)

// The backends.
const (
	IPTables = "iptables"
	NFTables = "nftables"
)

// Attachment names whose rules these are.
type Attachment struct {
	Network     string
	ContainerID string
	IfName      string
}

// Backend resolves the ipMasqBackend key: "" picks iptables when its
// tools are installed and nftables otherwise, as the reference does.
func Backend(requested string) (string, error) {
	switch requested {
	case IPTables, NFTables:
		return requested, nil
	case "":
		if _, err := exec.LookPath("iptables-restore"); err == nil {
			return IPTables, nil
		}
		return NFTables, nil
	}
	return "", cni.ConfigError("ipMasqBackend: %q is neither \"iptables\" nor \"nftables\"", requested)
}

// Usable says whether the backend can work here, for STATUS: iptables
// needs its tools installed, nftables a kernel that answers.
func Usable(backend string) error {
	if backend == NFTables {
		return nft.Usable()
	}
	if !iptables.Installed(iptables.IPv4) {
		return errors.New("iptables-restore is not installed")
	}
	return nil
}

// Setup masquerades traffic from ips (the pod's addresses with their
// subnet mask) to anything outside their subnet, except multicast.
// Setting up the same attachment again replaces its rules.
func Setup(backend string, a Attachment, ips []*net.IPNet) error {
	return (&Ready{backend: backend}).Setup(a, ips)
}

// Ready is a Setup whose slow part was started before the pod's addresses
// were known; see Prestart.
type Ready struct {
	backend string
	v4      *iptables.Restore
}

// Prestart starts what Setup with the backend will need: for iptables,
// the IPv4 iptables-restore process, whose start-up is most of Setup's
// time and can overlap with the caller's link and IPAM work. The caller
// must Close it (after Setup, that is a no-op).
func Prestart(backend string) *Ready {
	r := &Ready{backend: backend}
	if backend != NFTables {
		r.v4 = iptables.StartRestore(iptables.IPv4)
	}
	return r
}

// Setup is the package-level Setup through the prestarted process.
func (r *Ready) Setup(a Attachment, ips []*net.IPNet) error {
	defer r.Close() // an IPv6-only pod leaves the IPv4 process unused
	if len(ips) == 0 {
		return nil
	}
	if r.backend == NFTables {
		return setupNFT(a, ips)
	}
	return setupIPT(a, ips, r.v4)
}

// Start runs Setup for the addresses of res on another goroutine (see
// InBackground) and returns the wait for it; a nil Ready (no ipMasq)
// starts nothing and returns nil.
func (r *Ready) Start(a Attachment, res *current.Result) (wait func() error) {
	if r == nil {
		return nil
	}
	nets := Nets(res)
	return InBackground(func() error { return r.Setup(a, nets) })
}

// Close ends the prestarted process if Setup did not use it.
func (r *Ready) Close() { r.v4.Close() }

// Check verifies that the attachment's rules for ips are in place.
func Check(backend string, a Attachment, ips []*net.IPNet) error {
	if len(ips) == 0 {
		return nil
	}
	if backend == NFTables {
		return checkNFT(a, ips)
	}
	return checkIPT(a, ips)
}

// Teardown removes the attachment's rules from both backends; rules that
// are not there are fine. ips, when known (the prevResult of DEL), are the
// addresses the rules were made for: iptables then deletes them blindly in
// one iptables-restore per family of ips, and reads the table only when
// that fails. Without ips both families' tables are read.
func Teardown(a Attachment, ips []*net.IPNet) error {
	return errors.Join(teardownIPT(a, jumps{ips: ips}), teardownNFT(a))
}

// TeardownBeside is Teardown for a DEL that does not know the attachment's
// addresses (no prevResult: the DEL that follows a failed ADD, say) but
// knows others, the addresses of the pod's other interfaces (OtherAddrs):
// the iptables jumps from those stay, and with them the chain that another
// interface of the container on this network shares.
func TeardownBeside(a Attachment, others []net.IP) error {
	return errors.Join(teardownIPT(a, jumps{keep: others}), teardownNFT(a))
}

// TeardownFor is DEL's teardown: with the addresses of the config's
// prevResult when it has one, and otherwise beside the addresses of the
// pod's other interfaces (in the netns at path, if it still exists).
func TeardownFor(conf *cni.NetConf, a Attachment, path string) error {
	if nets := PrevNets(conf); nets != nil {
		return Teardown(a, nets)
	}
	return TeardownBeside(a, OtherAddrs(path, a.IfName))
}

// OtherAddrs are the addresses of the interfaces of the netns at path other
// than ifName, for TeardownBeside; none when the netns is gone.
func OtherAddrs(path, ifName string) []net.IP {
	if path == "" {
		return nil
	}
	var out []net.IP
	_ = ns.WithNetNSPath(path, func(ns.NetNS) error {
		addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		// Links listed after the addresses: an ifName that DEL deletes
		// meanwhile takes its addresses off this list either way.
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		other := map[int]bool{}
		for _, l := range links {
			if l.Attrs().Name != ifName {
				other[l.Attrs().Index] = true
			}
		}
		for _, a := range addrs {
			if other[a.LinkIndex] && !a.IP.IsLoopback() {
				out = append(out, a.IP)
			}
		}
		return nil
	})
	return out
}

// Undo is the roll-back of a Setup(a, ips) whose ADD failed later: it
// removes what that Setup made and nothing else. nftables rules name the
// interface too, so they are the attachment's own. The iptables chain is
// the reference's, one per network and container ID: a pod attached to
// the same network twice (eth0, net1) shares it, so Undo removes only the
// POSTROUTING jumps of ips, and the chain only when no other jump to it
// is left. Teardown (DEL) does the same when it knows the addresses (from
// prevResult), TeardownBeside keeps the jumps of the pod's other
// interfaces; Teardown without addresses removes the chain and every jump
// to it.
func Undo(a Attachment, ips []*net.IPNet) error {
	return errors.Join(undoIPT(a, ips), teardownNFT(a))
}

// GC removes the rules of the network's attachments that valid does not
// contain, from both backends.
func GC(network string, valid map[cni.Attachment]bool) error {
	return errors.Join(gcIPT(network, valid), gcNFT(network, valid))
}

// Nets are a result's addresses with their subnet masks: what Setup,
// Check and Teardown take. IPv4 addresses come with 4-byte masks: an
// IPv4-mapped IPv6 address ("::ffff:10.0.0.2/120") is taken as the IPv4
// address it maps with its prefix less 96 bits, and left out when that
// prefix is shorter than /96, as it then names no IPv4 subnet (its rules
// would compare an IPv4 address with an IPv6 mask).
func Nets(res *current.Result) []*net.IPNet {
	var out []*net.IPNet
	for _, ipc := range res.IPs {
		a := ipc.Address
		if v4 := a.IP.To4(); v4 != nil {
			ones, bits := a.Mask.Size()
			if bits == 8*net.IPv6len {
				ones -= 96
			}
			if bits == 0 || ones < 0 {
				continue
			}
			a = net.IPNet{IP: v4, Mask: net.CIDRMask(ones, 32)}
		}
		out = append(out, &a)
	}
	return out
}

// PrevNets are the Nets of DEL's prevResult, or nil when it has none:
// with them Teardown need not read the firewall.
func PrevNets(conf *cni.NetConf) []*net.IPNet {
	prev, err := cni.PrevResult(conf)
	if err != nil || prev == nil {
		return nil
	}
	return Nets(prev)
}

// InBackground runs f (a Setup or Teardown) on another goroutine and
// returns a function that waits for it and returns its error; waiting
// again returns the same error. The iptables backend spends its time in an
// iptables-restore process, and bridge and ptp overlap that with the
// kernel's link work instead of adding the two up. The goroutine works in
// the process's own netns (the node's): only ns.Do moves a thread, and it
// keeps that thread locked to itself.
func InBackground(f func() error) (wait func() error) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = f()
	}()
	return func() error {
		<-done
		return err
	}
}

// hashHex is the reference's hash: hex of sha512, cut to n characters.
func hashHex(s string, n int) string {
	sum := sha512.Sum512([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}

// ChainName is the iptables chain of an attachment, as the reference
// names it: "CNI-" and 24 hex digits of sha512(network+containerID).
func ChainName(network, containerID string) string {
	return "CNI-" + hashHex(network+containerID, 24)
}

// Comment is the comment of every iptables rule of an attachment, the
// reference's "name: <network> id: <containerID>". A comment holds at most
// 255 bytes (the kernel's XT_MAX_COMMENT_LEN less the NUL); when the names
// are longer, the network name (when over 64 bytes) and the container ID
// are written as cni.HashField, so that DEL and GC still match the rules
// exactly (a comment cut short would name nobody).
func Comment(network, containerID string) string {
	c := fmt.Sprintf("name: %q id: %q", network, containerID)
	if len(c) <= maxIPTComment {
		return c
	}
	return fmt.Sprintf("name: %q id: %q", commentNetwork(network), cni.HashField(containerID))
}

// maxIPTComment is the longest comment an iptables rule keeps.
const maxIPTComment = 255

func commentNetwork(network string) string {
	if len(network) > 64 {
		return cni.HashField(network)
	}
	return network
}

func multicast(ip net.IP) string {
	if ip.To4() != nil {
		return "224.0.0.0/4"
	}
	return "ff00::/8"
}

func subnet(ipn *net.IPNet) *net.IPNet {
	return &net.IPNet{IP: ipn.IP.Mask(ipn.Mask), Mask: ipn.Mask}
}
