// Package bridge is the bridge applet: it attaches the pod to a Linux
// bridge on the node through a veth pair, configures the addresses IPAM
// hands out, and optionally makes the bridge the pod's gateway and
// masquerades its traffic. Same keys, results and on-node names as the
// reference bridge plugin, plus GC and an L2-only CHECK that passes.
package bridge

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/delegate"
	"github.com/cnibox/cnibox/shared/iface"
	"github.com/cnibox/cnibox/shared/ipmasq"
	"github.com/cnibox/cnibox/shared/veth"
)

// Applet is bridge's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:     "bridge",
	Kind:     "main",
	Summary:  "attach the pod to a Linux bridge through a veth pair",
	Add:      Add,
	Del:      Del,
	DelRules: DelRules,
	Check:    Check,
	GC:       GC,
	Status:   Status,
}

// Config is bridge's configuration. Every key is the reference's.
type Config struct {
	cni.NetConf
	// Bridge is the bridge's name (default cni0); it is created if missing.
	Bridge string `json:"bridge"`
	// IsGateway puts the gateway address (IPAM's, or the subnet's first
	// address) on the bridge and enables forwarding.
	IsGateway bool `json:"isGateway"`
	// IsDefaultGateway implies IsGateway and adds a default route via it
	// unless IPAM returned one.
	IsDefaultGateway bool `json:"isDefaultGateway"`
	// ForceAddress replaces a conflicting gateway address on the bridge
	// instead of failing.
	ForceAddress bool `json:"forceAddress"`
	// IPMasq masquerades pod traffic leaving the subnet; IPMasqBackend is
	// "iptables" or "nftables" (default: iptables if installed).
	IPMasq        bool   `json:"ipMasq"`
	IPMasqBackend string `json:"ipMasqBackend"`
	// MTU of both veth ends, and of the bridge when it is created.
	MTU int `json:"mtu"`
	// HairpinMode lets frames go back out of the port they came in on.
	HairpinMode bool `json:"hairpinMode"`
	// PromiscMode sets the bridge promiscuous.
	PromiscMode bool `json:"promiscMode"`
	// Vlan is the pod port's access VLAN (PVID, untagged); VlanTrunk the
	// tagged VLANs it carries. Either enables vlan_filtering on the bridge.
	Vlan      int          `json:"vlan"`
	VlanTrunk []*VlanTrunk `json:"vlanTrunk,omitempty"`
	// PreserveDefaultVlan keeps VLAN 1 on the port when Vlan or VlanTrunk
	// is set.
	PreserveDefaultVlan bool `json:"preserveDefaultVlan"`
	// MacSpoofChk drops frames from the pod whose source MAC is not the
	// pod's (nftables, bridge family); cnibox also drops, when IPAM gave
	// the pod addresses, IPv4/IPv6/ARP (tagged or not) from other
	// addresses, and QinQ frames (see spoofcheck.go).
	MacSpoofChk bool `json:"macspoofchk"`
	// EnableDAD runs IPv6 duplicate address detection in the pod (and
	// waits for it); off by default because it costs ~2 s per pod.
	EnableDAD bool `json:"enabledad"`
	// DisableContainerInterface leaves the pod's veth down (no IPAM).
	DisableContainerInterface bool `json:"disableContainerInterface"`
	// PortIsolation isolates the pod's bridge port from other isolated ports.
	PortIsolation bool `json:"portIsolation"`
	// Args.Cni.Mac and RuntimeConfig.Mac set the pod veth's MAC
	// (precedence: runtimeConfig, args, CNI_ARGS MAC).
	Args struct {
		Cni struct {
			Mac string `json:"mac,omitempty"`
		} `json:"cni"`
	} `json:"args"`
	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig"`

	mac   net.HardwareAddr
	vlans []int
}

// VlanTrunk is one entry of vlanTrunk: a single id, or minID..maxID.
type VlanTrunk struct {
	MinID *int `json:"minID,omitempty"`
	MaxID *int `json:"maxID,omitempty"`
	ID    *int `json:"id,omitempty"`
}

type macArgs struct {
	cni.CommonArgs
	MAC types.UnmarshallableString `json:"mac,omitempty"`
}

// podAddrs returns the addresses IPAM gave the pod (none without IPAM).
func podAddrs(res *current.Result) []netip.Addr {
	if res == nil {
		return nil
	}
	var out []netip.Addr
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// maxMTU is the largest MTU an IP interface can have (IP_MAX_MTU).
const maxMTU = 65535

// decode reads the configuration without judging it: what DEL and GC
// take. They must tear down whatever a config describes, including one
// whose ADD was refused (hairpinMode with promiscMode, say): a runtime
// DELs after every failed ADD, and retries a failed DEL forever. They use
// only the name, the bridge's name, ipam.type, macspoofchk and ipMasq.
func decode(req *cni.Request) (*Config, error) {
	c := &Config{Bridge: "cni0"}
	if err := req.Decode(c); err != nil {
		return nil, err
	}
	if c.Bridge == "" {
		c.Bridge = "cni0"
	}
	return c, nil
}

// load reads and validates the configuration for ADD, CHECK and STATUS.
func load(req *cni.Request) (*Config, error) {
	c, err := decode(req)
	if err != nil {
		return nil, err
	}
	if len(c.Bridge) > 15 {
		return nil, cni.ConfigError("bridge: name %q is longer than 15 characters", c.Bridge)
	}
	if err := cni.LinkName("bridge", c.Bridge); err != nil {
		return nil, err
	}
	if c.IsDefaultGateway {
		c.IsGateway = true
	}
	if c.HairpinMode && c.PromiscMode {
		return nil, cni.ConfigError("hairpinMode, promiscMode: cannot both be set")
	}
	if c.MTU < 0 || c.MTU > maxMTU {
		return nil, cni.ConfigError("mtu: %d is not between 0 and %d", c.MTU, maxMTU)
	}
	if c.Vlan < 0 || c.Vlan > 4094 {
		return nil, cni.ConfigError("vlan: %d is not between 0 and 4094", c.Vlan)
	}
	if c.vlans, err = trunkVlans(c.VlanTrunk); err != nil {
		return nil, err
	}
	if c.DisableContainerInterface && c.IPAM.Type != "" {
		return nil, cni.ConfigError("disableContainerInterface: cannot be used with ipam (%q)", c.IPAM.Type)
	}
	if c.IPMasq {
		if c.IPMasqBackend, err = ipmasq.Backend(c.IPMasqBackend); err != nil {
			return nil, err
		}
	}
	var args macArgs
	if err := req.LoadArgs(&args); err != nil {
		return nil, err
	}
	mac, field := string(args.MAC), "CNI_ARGS MAC"
	if c.Args.Cni.Mac != "" {
		mac, field = c.Args.Cni.Mac, "args.cni.mac"
	}
	if c.RuntimeConfig.Mac != "" {
		mac, field = c.RuntimeConfig.Mac, "runtimeConfig.mac"
	}
	if mac != "" {
		if c.mac, err = net.ParseMAC(mac); err != nil {
			return nil, cni.ConfigError("%s: %v", field, err)
		}
	}
	return c, nil
}

func trunkVlans(trunk []*VlanTrunk) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	add := func(id int, field string) error {
		if id < 1 || id > 4094 {
			return cni.ConfigError("%s: %d is not between 1 and 4094", field, id)
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
		return nil
	}
	for i, t := range trunk {
		f := fmt.Sprintf("vlanTrunk[%d]", i)
		if t == nil {
			return nil, cni.ConfigError("%s: empty entry", f)
		}
		if (t.MinID == nil) != (t.MaxID == nil) {
			return nil, cni.ConfigError("%s: minID and maxID must be given together", f)
		}
		if t.MinID != nil {
			if *t.MinID > *t.MaxID {
				return nil, cni.ConfigError("%s: minID %d is above maxID %d", f, *t.MinID, *t.MaxID)
			}
			for id := *t.MinID; id <= *t.MaxID; id++ {
				if err := add(id, f+".minID"); err != nil {
					return nil, err
				}
			}
		}
		if t.ID != nil {
			if err := add(*t.ID, f+".id"); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (c *Config) vlanFiltering() bool { return c.Vlan != 0 || len(c.vlans) > 0 }

func (c *Config) masqAttachment(req *cni.Request) ipmasq.Attachment {
	return ipmasq.Attachment{Network: c.Name, ContainerID: req.ContainerID, IfName: req.IfName}
}

// Add attaches the pod to the bridge.
func Add(req *cni.Request) (res types.Result, err error) {
	c, err := load(req)
	if err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" && !cni.VersionAtLeast(req.Version, "0.3.0") {
		return nil, cni.ConfigError("ipam: required with cniVersion %s, whose results cannot describe an attachment without addresses", req.Version)
	}
	podNS, err := iface.OpenNetns(req.Netns)
	if err != nil {
		return nil, err
	}
	defer podNS.Close()
	// A pod that has the interface already is refused before anything is
	// done: a runtime's retried ADD (or another container ID given the
	// same pod and name) must neither reserve, nor set up rules, nor then
	// undo what belongs to the attachment that is there. The attachment's
	// lock (shared/cni) keeps a concurrent ADD of it from slipping in.
	if err := veth.Absent(podNS, req.ContainerID, req.IfName); err != nil {
		return nil, fmt.Errorf("bridge %q: %w", c.Bridge, err)
	}

	// The masquerade rules' iptables-restore starts now: its start-up
	// overlaps with the link and IPAM work, and it gets its input once
	// IPAM has given the addresses.
	var masq *ipmasq.Ready
	if c.IPMasq {
		masq = ipmasq.Prestart(c.IPMasqBackend)
		defer masq.Close() // after the undo below: that waits for Setup
	}

	// Anything that fails from here on undoes what this invocation did,
	// and only that, so that a failed ADD leaves neither a veth, an
	// address nor a rule behind and takes nothing that was there before:
	// pair is the veth it made, ipamDone the reservation, spoofDone and
	// masqDone the rules it set up (keyed by this attachment, which Absent
	// showed has no interface, under its lock; ipmasq.Undo leaves the
	// iptables chain that other interfaces of the container on this
	// network share). IPAM is released first, while the pod's interface
	// still exists (dhcp sends its DHCPRELEASE from it).
	var ipamDone, spoofDone bool
	var masqDone func() error
	var early *earlyIPAM
	var pair *veth.Pair
	var ipamRes *current.Result
	defer func() {
		if err == nil {
			return
		}
		if early != nil {
			// It may still be running: its reservation and rules must
			// be undone too.
			ipamRes, ipamDone, masqDone, _ = early.wait()
		}
		if ipamDone {
			_ = delegate.Del(req, c.IPAM.Type)
		}
		_ = pair.Delete()
		if spoofDone {
			_ = teardownSpoofCheck(spoofID(req.ContainerID, req.IfName))
		}
		if masqDone != nil {
			_ = masqDone()
			_ = ipmasq.Undo(c.masqAttachment(req), ipmasq.Nets(ipamRes))
		}
	}()

	// The pod's interface exists, on the bridge, before IPAM runs: dhcp
	// asks for a lease from it. An IPAM type that names no plugin (or a
	// path) is refused before anything is made.
	if c.IPAM.Type != "" {
		standalone, err := delegate.Standalone(req, c.IPAM.Type)
		if err != nil {
			return nil, err
		}
		if standalone {
			early = startIPAM(req, c, masq)
		}
	}
	br, err := ensureBridge(c)
	if err != nil {
		return nil, err
	}
	pair, err = veth.Create(podNS, veth.Options{
		Network: c.Name, ContainerID: req.ContainerID, IfName: req.IfName, MTU: c.MTU, MAC: c.mac,
	})
	if err != nil {
		return nil, fmt.Errorf("bridge %q: %w", c.Bridge, err)
	}
	if err := setupPort(c, br, pair.Host); err != nil {
		return nil, err
	}

	switch {
	case early != nil:
		e := early
		early = nil
		var ipamErr error
		if ipamRes, ipamDone, masqDone, ipamErr = e.wait(); ipamErr != nil {
			return nil, ipamErr
		}
	case c.IPAM.Type != "":
		var ipamErr error
		if ipamRes, ipamDone, ipamErr = ipamAdd(req, c); ipamErr != nil {
			return nil, ipamErr
		}
		masqDone = masq.Start(c.masqAttachment(req), ipamRes)
	}

	hostName := pair.Host.Attrs().Name
	contMAC := pair.Container.Attrs().HardwareAddr
	if c.MacSpoofChk {
		spoofDone = true
		if err := setupSpoofCheck(spoofID(req.ContainerID, req.IfName), hostName, contMAC, podAddrs(ipamRes)); err != nil {
			return nil, err
		}
	}

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: c.Bridge},
			{Name: hostName, Mac: pair.Host.Attrs().HardwareAddr.String()},
			{Name: req.IfName, Mac: contMAC.String(), Sandbox: req.Netns},
		},
	}
	var gws []*net.IPNet
	if ipamRes != nil {
		result.IPs, result.Routes, result.DNS = ipamRes.IPs, ipamRes.Routes, ipamRes.DNS
		gws = gateways(c, result)
	}
	if c.DNS.Nameservers != nil || c.DNS.Domain != "" || c.DNS.Search != nil || c.DNS.Options != nil {
		result.DNS = c.DNS
	}

	err = podNS.Do(func(ns.NetNS) error {
		if c.DisableContainerInterface {
			return nil
		}
		if ipamRes == nil {
			l, err := netlinksafe.LinkByName(req.IfName)
			if err == nil {
				err = netlink.LinkSetUp(l)
			}
			return err
		}
		// The sysctls the reference sets, whatever the addresses' family:
		// a v6 address added later (by a chained plugin, say) gets the
		// same DAD as there.
		conf := "/proc/sys/net/ipv6/conf/" + req.IfName + "/"
		if c.EnableDAD {
			_ = os.WriteFile(conf+"enhanced_dad", []byte("1"), 0o644)
			_ = os.WriteFile(conf+"accept_dad", []byte("1"), 0o644)
		} else {
			_ = os.WriteFile(conf+"accept_dad", []byte("0"), 0o644)
		}
		_ = os.WriteFile("/proc/sys/net/ipv4/conf/"+req.IfName+"/arp_notify", []byte("1"), 0o644)
		return iface.Apply(req.IfName, result, iface.Options{DAD: c.EnableDAD})
	})
	if err != nil {
		return nil, fmt.Errorf("bridge %q: configure %s in the pod: %w", c.Bridge, req.IfName, err)
	}

	if c.IsGateway && len(gws) > 0 {
		gwLink := netlink.Link(br)
		if c.Vlan != 0 {
			if gwLink, err = ensureVlanGateway(c, br); err != nil {
				return nil, err
			}
			result.Interfaces = append(result.Interfaces, &current.Interface{
				Name: gwLink.Attrs().Name, Mac: gwLink.Attrs().HardwareAddr.String()})
		}
		for _, gw := range gws {
			if err := ensureAddr(gwLink, gw, c.ForceAddress); err != nil {
				return nil, fmt.Errorf("bridge %q: gateway: %w", c.Bridge, err)
			}
		}
		if err := enableForwarding(gws); err != nil {
			return nil, err
		}
	}
	if masqDone != nil {
		if err := masqDone(); err != nil {
			return nil, err
		}
	}
	if !c.DisableContainerInterface {
		if err := waitOperUp(hostName); err != nil {
			return nil, fmt.Errorf("bridge %q: %w", c.Bridge, err)
		}
	}
	// The bridge's MAC is read last: adding a port can change it.
	if l, err := netlinksafe.LinkByName(c.Bridge); err == nil {
		result.Interfaces[0].Mac = l.Attrs().HardwareAddr.String()
	}
	return result, nil
}

// ipamAdd runs the IPAM plugin's ADD. reserved reports that it succeeded,
// so that a later failure must release what it holds.
func ipamAdd(req *cni.Request, c *Config) (res *current.Result, reserved bool, err error) {
	res, err = delegate.Add(req, c.IPAM.Type)
	if err != nil {
		return nil, false, err
	}
	if len(res.IPs) == 0 {
		return nil, true, fmt.Errorf("bridge: IPAM plugin %q returned no addresses", c.IPAM.Type)
	}
	return res, true, nil
}

// earlyIPAM is an allocator's ADD, and the masquerade rules that follow
// from its addresses, running while the bridge and veth are made:
// host-local and static need nothing from the pod's interface, and
// iptables-restore is the slowest step of an ADD, so starting it a few
// milliseconds earlier takes that much off every pod start.
type earlyIPAM struct {
	done     chan struct{}
	res      *current.Result
	reserved bool
	err      error
	masq     func() error
}

func startIPAM(req *cni.Request, c *Config, masq *ipmasq.Ready) *earlyIPAM {
	e := &earlyIPAM{done: make(chan struct{})}
	go func() {
		defer close(e.done)
		if e.res, e.reserved, e.err = ipamAdd(req, c); e.err == nil {
			e.masq = masq.Start(c.masqAttachment(req), e.res)
		}
	}()
	return e
}

// wait returns what ipamAdd and masq.Start returned, once IPAM is done.
func (e *earlyIPAM) wait() (res *current.Result, reserved bool, masq func() error, err error) {
	<-e.done
	return e.res, e.reserved, e.masq, e.err
}

// gateways works out the gateway of every pod address (IPAM's, or the
// subnet's first address with isGateway), points the addresses at the pod
// interface, adds the default routes of isDefaultGateway, and returns the
// addresses the bridge must hold.
func gateways(c *Config, res *current.Result) []*net.IPNet {
	var gws []*net.IPNet
	defaultFor := map[bool]bool{} // by "is IPv4"
	for _, r := range res.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW != nil {
			defaultFor[r.Dst.IP.To4() != nil] = true
		}
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(2)
		v4 := ipc.Address.IP.To4() != nil
		if ipc.Gateway == nil && c.IsGateway {
			n := ipc.Address.IP.Mask(ipc.Address.Mask)
			gw := make(net.IP, len(n))
			copy(gw, n)
			gw[len(gw)-1]++
			ipc.Gateway = gw
		}
		if c.IsDefaultGateway && !defaultFor[v4] && ipc.Gateway != nil {
			dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if !v4 {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
			defaultFor[v4] = true
		}
		if c.IsGateway && ipc.Gateway != nil {
			gws = append(gws, &net.IPNet{IP: ipc.Gateway, Mask: ipc.Address.Mask})
		}
	}
	return gws
}

// ensureBridge finds or creates the bridge and brings it up. Concurrent
// ADDs may race to create it: the losers find the winner's bridge.
func ensureBridge(c *Config) (*netlink.Bridge, error) {
	l, err := netlinksafe.LinkByName(c.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("bridge %q: %w", c.Bridge, err)
		}
		// A fixed MAC keeps the bridge's address from following its
		// lowest-numbered port as pods come and go.
		mac := make(net.HardwareAddr, 6)
		if _, err := rand.Read(mac); err != nil {
			return nil, err
		}
		mac[0] = mac[0]&0xfe | 0x02
		filtering := c.vlanFiltering()
		nb := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.Bridge, MTU: c.MTU, HardwareAddr: mac, TxQLen: -1}}
		if filtering {
			nb.VlanFiltering = &filtering
		}
		if err := netlink.LinkAdd(nb); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("bridge %q: create: %w", c.Bridge, err)
		}
		if l, err = netlinksafe.LinkByName(c.Bridge); err != nil {
			return nil, fmt.Errorf("bridge %q: %w", c.Bridge, err)
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("bridge %q: %s already exists and is a %s, not a bridge", c.Bridge, c.Bridge, l.Type())
	}
	if c.vlanFiltering() && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := netlink.BridgeSetVlanFiltering(br, true); err != nil {
			return nil, fmt.Errorf("bridge %q: enable vlan_filtering: %w", c.Bridge, err)
		}
	}
	if c.PromiscMode && br.Promisc == 0 {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, fmt.Errorf("bridge %q: set promiscuous: %w", c.Bridge, err)
		}
	}
	if err := veth.DisableRA(c.Bridge); err != nil {
		return nil, err
	}
	if br.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("bridge %q: set up: %w", c.Bridge, err)
		}
	}
	return br, nil
}

// setupPort makes the host veth a port of the bridge with the port
// options of the config.
func setupPort(c *Config, br *netlink.Bridge, port netlink.Link) error {
	name := port.Attrs().Name
	if err := netlink.LinkSetMaster(port, br); err != nil {
		return fmt.Errorf("bridge %q: attach %s: %w", c.Bridge, name, err)
	}
	if c.HairpinMode {
		if err := netlink.LinkSetHairpin(port, true); err != nil {
			return fmt.Errorf("bridge %q: hairpin on %s: %w", c.Bridge, name, err)
		}
	}
	if c.PortIsolation {
		if err := netlink.LinkSetIsolated(port, true); err != nil {
			return fmt.Errorf("bridge %q: isolate %s: %w", c.Bridge, name, err)
		}
	}
	return setupPortVlans(c, port, c.Vlan, c.vlans)
}

func setupPortVlans(c *Config, port netlink.Link, vlan int, trunk []int) error {
	if vlan == 0 && len(trunk) == 0 {
		return nil
	}
	name := port.Attrs().Name
	if !c.PreserveDefaultVlan {
		all, err := netlinksafe.BridgeVlanList()
		if err != nil {
			return fmt.Errorf("bridge %q: list VLANs: %w", c.Bridge, err)
		}
		for _, v := range all[int32(port.Attrs().Index)] {
			if err := netlink.BridgeVlanDel(port, v.Vid, false, false, false, true); err != nil {
				return fmt.Errorf("bridge %q: remove VLAN %d from %s: %w", c.Bridge, v.Vid, name, err)
			}
		}
	}
	if vlan != 0 {
		if err := netlink.BridgeVlanAdd(port, uint16(vlan), true, true, false, true); err != nil {
			return fmt.Errorf("bridge %q: VLAN %d on %s: %w", c.Bridge, vlan, name, err)
		}
	}
	for _, v := range trunk {
		if err := netlink.BridgeVlanAdd(port, uint16(v), false, false, false, true); err != nil {
			return fmt.Errorf("bridge %q: trunk VLAN %d on %s: %w", c.Bridge, v, name, err)
		}
	}
	if vlan == 0 && len(trunk) > 0 && !c.PreserveDefaultVlan {
		// A trunk without an access VLAN carries untagged frames on VLAN 1.
		if err := netlink.BridgeVlanAdd(port, 1, true, true, false, true); err != nil {
			return fmt.Errorf("bridge %q: native VLAN 1 on %s: %w", c.Bridge, name, err)
		}
	}
	return nil
}

// ensureVlanGateway returns the interface that holds the gateway of a
// VLAN: a veth "<bridge>.<vlan>" in the node whose peer is a bridge port
// in that VLAN, as the reference makes it.
func ensureVlanGateway(c *Config, br *netlink.Bridge) (netlink.Link, error) {
	name := fmt.Sprintf("%s.%d", c.Bridge, c.Vlan)
	if l, err := netlinksafe.LinkByName(name); err == nil {
		return l, nil
	}
	// "vgw" + hash: not "veth…", which are the pods' ports.
	peer := "vgw" + veth.HostName(c.Bridge, name)[len("veth"):]
	// Queue lengths as the reference's pair has them: its gateway end is
	// made as a pod end (the kernel's 1000), the bridge port as a peer (0).
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: c.MTU, TxQLen: 1000}, PeerName: peer}
	if c.MTU > 0 {
		v.PeerMTU = uint32(c.MTU)
	}
	if err := netlink.LinkAdd(v); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("bridge %q: create VLAN gateway %s: %w", c.Bridge, name, err)
	}
	for _, n := range []string{name, peer} {
		if err := veth.DisableRA(n); err != nil {
			return nil, err
		}
	}
	p, err := netlinksafe.LinkByName(peer)
	if err != nil {
		return nil, fmt.Errorf("bridge %q: VLAN gateway %s: %w", c.Bridge, peer, err)
	}
	if err := netlink.LinkSetMaster(p, br); err != nil {
		return nil, fmt.Errorf("bridge %q: attach %s: %w", c.Bridge, peer, err)
	}
	if err := setupPortVlans(c, p, c.Vlan, nil); err != nil {
		return nil, err
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bridge %q: VLAN gateway %s: %w", c.Bridge, name, err)
	}
	for _, x := range []netlink.Link{p, l} {
		if err := netlink.LinkSetUp(x); err != nil {
			return nil, fmt.Errorf("bridge %q: set %s up: %w", c.Bridge, x.Attrs().Name, err)
		}
	}
	return l, nil
}

// ensureAddr puts gw on link. An existing address whose subnet overlaps
// gw's is a conflict: replaced with forceAddress, an error otherwise.
// Addresses of other subnets stay, so several networks can share a bridge.
func ensureAddr(link netlink.Link, gw *net.IPNet, force bool) error {
	family := netlink.FAMILY_V4
	if gw.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlinksafe.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == gw.String() {
			return nil
		}
		if a.IPNet.Contains(gw.IP) || gw.Contains(a.IP) {
			if !force {
				return fmt.Errorf("%s already has address %s, which conflicts with %s (forceAddress replaces it)", link.Attrs().Name, a.IPNet, gw)
			}
			if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %s: %w", a.IPNet, link.Attrs().Name, err)
			}
		}
	}
	addr := &netlink.Addr{IPNet: gw}
	if family == netlink.FAMILY_V6 {
		addr.Flags = syscall.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add address %s to %s: %w", gw, link.Attrs().Name, err)
	}
	return nil
}

func enableForwarding(gws []*net.IPNet) error {
	for _, gw := range gws {
		path := "/proc/sys/net/ipv4/ip_forward"
		if gw.IP.To4() == nil {
			path = "/proc/sys/net/ipv6/conf/all/forwarding"
		}
		if cur, err := os.ReadFile(path); err == nil && string(cur) == "1\n" {
			continue
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	return nil
}

// waitOperUp waits for the host end of the pair to be operationally up,
// which it is as soon as the pod end is; it normally already is.
func waitOperUp(name string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bridge port %s is %s, not up", name, l.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Del detaches the pod: its veth (through the pod's netns when it still
// exists, through the host end otherwise), its addresses (IPAM), its
// spoof check and masquerade rules. Each step runs even if another failed,
// and nothing left to delete is not an error.
func Del(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	var errs []error
	// Independent of the links: let it run while they are deleted.
	rulesDone := ipmasq.InBackground(func() error { return c.delRules(req) })
	// IPAM first, while the pod's interface exists: dhcp releases the
	// lease from it. host-local and static need no interface: they run
	// while the veth is deleted (which waits for an RCU grace period).
	ipamErr := make(chan error, 1)
	if c.IPAM.Type == "" {
		ipamErr <- nil
	} else if standalone, _ := delegate.Standalone(req, c.IPAM.Type); standalone {
		go func() { ipamErr <- delegate.Del(req, c.IPAM.Type) }()
	} else {
		ipamErr <- delegate.Del(req, c.IPAM.Type) // reports a plugin it cannot find
	}
	errs = append(errs, veth.Delete(c.Name, req.ContainerID, req.IfName, req.Netns, req.Recorded()))
	errs = append(errs, <-ipamErr, rulesDone())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bridge %q: DEL: %w", c.Bridge, err)
	}
	return nil
}

// DelRules is the part of Del that touches no link: the masquerade and
// spoof-check rules (see cni.Applet).
func DelRules(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	if err := c.delRules(req); err != nil {
		return fmt.Errorf("bridge %q: DEL: %w", c.Bridge, err)
	}
	return nil
}

func (c *Config) delRules(req *cni.Request) error {
	var errs []error
	if c.IPMasq {
		errs = append(errs, ipmasq.TeardownFor(&c.NetConf, c.masqAttachment(req), req.Netns))
	}
	if c.MacSpoofChk {
		errs = append(errs, teardownSpoofCheck(spoofID(req.ContainerID, req.IfName)))
	}
	return errors.Join(errs...)
}

// Check verifies that everything ADD made is still there: the bridge, the
// veth pair (peers of each other, host end a port of the bridge), the
// pod's addresses and routes, and the masquerade and spoof-check rules.
func Check(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.CheckPrevResult(&c.NetConf)
	if err != nil {
		return err
	}
	if c.IPAM.Type != "" {
		if err := delegate.Check(req, c.IPAM.Type); err != nil {
			return err
		}
	}
	l, err := netlinksafe.LinkByName(c.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %q: %w", c.Bridge, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return fmt.Errorf("bridge %q: is a %s, not a bridge", c.Bridge, l.Type())
	}
	if c.PromiscMode && br.Promisc == 0 {
		return fmt.Errorf("bridge %q: not promiscuous", c.Bridge)
	}
	host, err := veth.Check(req.Netns, req.IfName, prev, func() error {
		if c.IPAM.Type == "" {
			return nil
		}
		return iface.Verify(req.IfName, prev)
	})
	if err != nil {
		return fmt.Errorf("bridge %q: %w", c.Bridge, err)
	}
	if host.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("bridge %q: %s is not a port of the bridge", c.Bridge, host.Attrs().Name)
	}
	if c.HairpinMode || c.PortIsolation {
		pi, err := netlinksafe.LinkGetProtinfo(host)
		if err != nil {
			return fmt.Errorf("bridge %q: port settings of %s: %w", c.Bridge, host.Attrs().Name, err)
		}
		if c.HairpinMode && !pi.Hairpin || c.PortIsolation && !pi.Isolated {
			return fmt.Errorf("bridge %q: port %s lost hairpin or isolation (%s)", c.Bridge, host.Attrs().Name, pi.String())
		}
	}
	if c.MacSpoofChk {
		if err := checkSpoofCheck(spoofID(req.ContainerID, req.IfName)); err != nil {
			return err
		}
	}
	if c.IPMasq && len(prev.IPs) > 0 {
		if err := ipmasq.Check(c.IPMasqBackend, c.masqAttachment(req), ipmasq.Nets(prev)); err != nil {
			return err
		}
	}
	return nil
}

// GC removes what is left of the network's attachments that the runtime
// no longer knows: host veths, spoof checks and masquerade rules, and
// (through IPAM's GC) their addresses.
func GC(req *cni.Request) error {
	c, err := decode(req)
	if err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	errs := []error{veth.DeleteStale(c.Name, valid, req.Log.Infof)}
	if c.MacSpoofChk {
		// Those of the veths just deleted too.
		ids, err := danglingSpoofChecks(func(name string) bool {
			_, err := netlinksafe.LinkByName(name)
			return err == nil
		})
		errs = append(errs, err)
		for _, id := range ids {
			errs = append(errs, teardownSpoofCheck(id))
		}
	}
	errs = append(errs, ipmasq.GC(c.Name, valid))
	if c.IPAM.Type != "" {
		errs = append(errs, delegate.GC(req, c.IPAM.Type))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bridge %q: GC: %w", c.Bridge, err)
	}
	return nil
}

// Status says whether ADD can work: IPAM's status, and the bridge name not
// taken by another kind of device.
func Status(req *cni.Request) error {
	c, err := load(req)
	if err != nil {
		return err
	}
	if l, err := netlinksafe.LinkByName(c.Bridge); err == nil {
		if _, ok := l.(*netlink.Bridge); !ok {
			return cni.NotAvailable("bridge %q: the name is taken by a %s", c.Bridge, l.Type())
		}
	}
	if c.IPMasq {
		if err := ipmasq.Usable(c.IPMasqBackend); err != nil {
			return cni.NotAvailable("bridge %q: ipMasq (%s): %v", c.Bridge, c.IPMasqBackend, err)
		}
	}
	if c.IPAM.Type != "" {
		return delegate.Status(req, c.IPAM.Type)
	}
	return nil
}
