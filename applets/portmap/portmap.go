// Package portmap is the portmap applet: it forwards host ports to a pod
// (runtimeConfig.portMappings), chained after the plugin that gave the pod
// its addresses. Two backends write the rules, both in the reference's
// layout, rule for rule, so a node can switch between cnibox and the
// reference plugins and either one's CHECK and DEL find the other's rules:
// iptables (its chains) and nftables over netlink, no nft binary (its
// tables ip/ip6 cni_hostport; see nftables.go).
//
// Compared with the reference:
//   - DNAT applies only to traffic addressed to the node in both backends
//     (the reference's nftables backend hijacked routed traffic, CVE-2025-67499).
//   - snat sets route_localnet=1 so that 127.0.0.1:hostPort reaches the pod,
//     as the reference does; cnibox also installs the martian guard the
//     reference never added (CVE-2020-8558 class): packets to 127.0.0.0/8
//     that arrive on any interface but lo and were not DNATed are dropped
//     (iptables: filter INPUT -> CNI-HOSTPORT-GUARD; nftables: chain
//     "guard" of table ip cni_hostport).
//   - DEL also works when the runtime does not resend portMappings; GC and
//     STATUS exist; ports are checked to be 1-65535.
//   - iptables: one iptables-save and one iptables-restore per family per
//     ADD/DEL, with a bounded lock wait, instead of ~15 iptables processes.
package portmap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/nft"
	"github.com/cnibox/cnibox/shared/statefile"
)

// Applet is portmap's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "portmap",
	Kind:    "meta",
	Summary: "forward host ports to the pod (iptables or nftables)",
	Add:     Add,
	Del:     Del,
	Check:   Check,
	GC:      GC,
	Status:  Status,
}

// Config is portmap's configuration.
type Config struct {
	cni.NetConf

	// Backend is "iptables" or "nftables". Unset: inferred from
	// externalSetMarkChain or conditions when they are backend-specific,
	// else iptables when iptables-restore exists, else nftables.
	Backend *string `json:"backend,omitempty"`
	// SNAT masquerades hairpin (pod to its own host port) and localhost
	// connections so that replies come back through the node. Default true.
	SNAT *bool `json:"snat,omitempty"`
	// MasqAll masquerades every connection to a mapped port, whatever its
	// source (for macvlan/ipvlan pods that cannot route back through the node).
	MasqAll bool `json:"masqAll,omitempty"`
	// MarkMasqBit is the mark bit (0-31, default 13) that asks for
	// masquerade (iptables only).
	MarkMasqBit *int `json:"markMasqBit,omitempty"`
	// ExternalSetMarkChain is a chain that marks for masquerade (such as
	// kube-proxy's KUBE-MARK-MASQ), used instead of CNI-HOSTPORT-SETMARK
	// (iptables only; excludes markMasqBit).
	ExternalSetMarkChain *string `json:"externalSetMarkChain,omitempty"`
	// ConditionsV4/V6 are extra matches for the DNAT rules: iptables
	// arguments ("-s", "10.0.0.0/8") or nftables expressions
	// ("ip saddr 10.0.0.0/8"; cnibox understands ip/ip6 saddr/daddr and
	// iifname/oifname, with "!=").
	ConditionsV4 *[]string `json:"conditionsV4,omitempty"`
	ConditionsV6 *[]string `json:"conditionsV6,omitempty"`

	RuntimeConfig struct {
		PortMappings []Mapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// Mapping is one entry of runtimeConfig.portMappings. Keys match in any
// case: containerd sends "HostPort", podman "hostPort".
type Mapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"` // tcp (default), udp or sctp; any case
	HostIP        string `json:"hostIP,omitempty"`
}

const (
	backendIPTables = "iptables"
	backendNFTables = "nftables"
	defaultMarkBit  = 13
)

// attachment is everything a backend needs about one pod's port mappings.
type attachment struct {
	net, id  string
	snat     bool
	masqAll  bool
	markBit  int
	markJump string // chain the hairpin/localhost rules jump to
	cond4    []string
	cond6    []string
	maps     []Mapping
	v4, v6   *net.IPNet // the pod's addresses with their prefix
}

// backend writes and removes one attachment's rules.
type backend interface {
	add(a *attachment) error
	check(a *attachment) error
	// del removes every rule of the network+container, with or without
	// the mappings; pods, when known, are the pod's addresses (nftables
	// tells two networks' rules of one container apart by them).
	del(net, id string, pods []netip.Addr) error
	// gc removes the rules of the network whose container is not in keep.
	gc(net string, keep map[string]bool) error
	usable() error
}

func backendFor(name string) backend {
	if name == backendNFTables {
		return nftBackend{}
	}
	return iptBackend{}
}

// Add forwards the mapped ports and passes prevResult through.
func Add(req *cni.Request) (types.Result, error) {
	conf, a, prev, err := load(req)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cni.ConfigError("prevResult: missing: portmap must be chained after a plugin that returns addresses")
	}
	if len(a.maps) == 0 || (a.v4 == nil && a.v6 == nil) {
		return prev, nil
	}
	// Recorded first: a DEL after a failed ADD finds what was half made.
	if err := remember(req.Name, req.ContainerID, *conf.Backend, a.podAddrs()); err != nil {
		req.Log.Warnf("portmap: %v (DEL without portMappings will not find the rules)", err)
	}
	be := backendFor(*conf.Backend)
	if err := be.add(a); err != nil {
		return nil, fmt.Errorf("portmap: %s: %w", *conf.Backend, err)
	}
	for _, ip := range []*net.IPNet{a.v4, a.v6} {
		if ip != nil {
			if err := flushUDPConntrack(a.maps, ip.IP); err != nil {
				req.Log.Warnf("portmap: %v", err)
			}
		}
	}
	if a.snat && a.v4 != nil {
		if err := enableRouteLocalnet(a.v4.IP); err != nil {
			return nil, fmt.Errorf("portmap: %w", err)
		}
	}
	req.Log.Note("portmap %d mappings to %v (%s)", len(a.maps), a.podAddrs(), *conf.Backend)
	return prev, nil
}

// Del removes the attachment's rules. It needs neither the mappings nor
// the netns: rules are found by network name and container ID.
func Del(req *cni.Request) error {
	conf, a, _, err := load(req)
	if err != nil {
		return err
	}
	used, pods := recalledState(req.Name, req.ContainerID)
	for _, p := range a.podAddrs() {
		if !slices.Contains(pods, p) {
			pods = append(pods, p)
		}
	}
	if used == "" && len(conf.RuntimeConfig.PortMappings) == 0 {
		return nil // never mapped anything here: no rule to look for
	}
	names := []string{*conf.Backend}
	if used != "" && used != *conf.Backend {
		names = append(names, used)
	}
	for _, name := range names {
		be := backendFor(name)
		if err := be.del(req.Name, req.ContainerID, pods); err != nil {
			if be.usable() != nil {
				continue // that backend is gone here, so are its rules
			}
			return fmt.Errorf("portmap: %s: %w", name, err)
		}
	}
	forget(req.Name, req.ContainerID)
	req.Log.Note("portmap removed the rules of %v (%s)", pods, strings.Join(names, ", "))
	return nil
}

// Check verifies that every rule of the attachment is in place.
func Check(req *cni.Request) error {
	conf, a, prev, err := load(req)
	if err != nil {
		return err
	}
	if prev == nil {
		return cni.ConfigError("prevResult: missing: CHECK needs the result of ADD")
	}
	if len(a.maps) == 0 || (a.v4 == nil && a.v6 == nil) {
		return nil
	}
	if err := backendFor(*conf.Backend).check(a); err != nil {
		return fmt.Errorf("portmap: %s: %w", *conf.Backend, err)
	}
	return nil
}

// GC removes the rules of this network's containers that are not among the
// valid attachments, in both backends.
func GC(req *cni.Request) error {
	conf, _, _, err := load(req)
	if err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for att := range valid {
		keep[att.ContainerID] = true
		keep[statefile.Name(att.ContainerID, 255)] = true // a record's name
	}
	var errs []error
	for _, name := range []string{backendIPTables, backendNFTables} {
		be := backendFor(name)
		if name != *conf.Backend && be.usable() != nil {
			continue
		}
		if err := be.gc(req.Name, keep); err != nil {
			errs = append(errs, fmt.Errorf("portmap: %s: %w", name, err))
		}
	}
	forgetAllBut(req.Name, keep)
	return errors.Join(errs...)
}

// Status fails with code 50 when the configured backend (or, unset,
// either backend) cannot be used.
func Status(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	if conf.Backend != nil && *conf.Backend != "" {
		if err := backendFor(*conf.Backend).usable(); err != nil {
			return cni.NotAvailable("portmap: backend %s: %v", *conf.Backend, err)
		}
		return nil
	}
	// nftables first: it costs no process.
	errN := nftBackend{}.usable()
	if errN == nil {
		return nil
	}
	if errI := (iptBackend{}).usable(); errI != nil {
		return cni.NotAvailable("portmap: no usable backend: nftables: %v; iptables: %v", errN, errI)
	}
	return nil
}

// load decodes and validates the configuration and works out the
// attachment (the pod's addresses come from prevResult).
func load(req *cni.Request) (*Config, *attachment, *current.Result, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, nil, nil, err
	}
	a := &attachment{net: req.Name, id: req.ContainerID, snat: true, masqAll: conf.MasqAll, markBit: defaultMarkBit}
	if conf.SNAT != nil {
		a.snat = *conf.SNAT
	}
	if conf.MarkMasqBit != nil {
		if conf.ExternalSetMarkChain != nil {
			return nil, nil, nil, cni.ConfigError("markMasqBit: cannot be used with externalSetMarkChain")
		}
		if *conf.MarkMasqBit < 0 || *conf.MarkMasqBit > 31 {
			return nil, nil, nil, cni.ConfigError("markMasqBit: %d is not a bit number (0-31)", *conf.MarkMasqBit)
		}
		a.markBit = *conf.MarkMasqBit
	}
	a.markJump = setMarkChain
	if conf.ExternalSetMarkChain != nil {
		if *conf.ExternalSetMarkChain == "" || strings.ContainsAny(*conf.ExternalSetMarkChain, " \t\n\"'") {
			return nil, nil, nil, cni.ConfigError("externalSetMarkChain: %q is not a chain name", *conf.ExternalSetMarkChain)
		}
		a.markJump = *conf.ExternalSetMarkChain
	}
	if conf.ConditionsV4 != nil {
		a.cond4 = *conf.ConditionsV4
	}
	if conf.ConditionsV6 != nil {
		a.cond6 = *conf.ConditionsV6
	}
	for field, conds := range map[string][]string{"conditionsV4": a.cond4, "conditionsV6": a.cond6} {
		for i, c := range conds {
			if strings.ContainsAny(c, "\n\r\x00") {
				return nil, nil, nil, cni.ConfigError("%s[%d]: %q: a condition must not contain a line break or NUL", field, i, c)
			}
		}
	}
	if err := chooseBackend(conf); err != nil {
		return nil, nil, nil, err
	}
	if *conf.Backend == backendNFTables {
		for field, conds := range map[string][]string{"conditionsV4": a.cond4, "conditionsV6": a.cond6} {
			if _, err := parseConditions(conds, field == "conditionsV6"); err != nil {
				return nil, nil, nil, cni.ConfigError("%s: %v", field, err)
			}
		}
	}
	for i, m := range conf.RuntimeConfig.PortMappings {
		field := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		if m.HostPort < 1 || m.HostPort > 65535 {
			return nil, nil, nil, cni.ConfigError("%s.hostPort: %d is not a port number (1-65535)", field, m.HostPort)
		}
		if m.ContainerPort < 1 || m.ContainerPort > 65535 {
			return nil, nil, nil, cni.ConfigError("%s.containerPort: %d is not a port number (1-65535)", field, m.ContainerPort)
		}
		m.Protocol = strings.ToLower(m.Protocol)
		switch m.Protocol {
		case "":
			m.Protocol = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return nil, nil, nil, cni.ConfigError("%s.protocol: %q is not tcp, udp or sctp", field, m.Protocol)
		}
		if m.HostIP != "" {
			ip, err := netip.ParseAddr(m.HostIP)
			if err != nil || ip.Zone() != "" {
				return nil, nil, nil, cni.ConfigError("%s.hostIP: %q is not an IP address", field, m.HostIP)
			}
			m.HostIP = ip.Unmap().String()
		}
		a.maps = append(a.maps, m)
	}

	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return nil, nil, nil, err
	}
	if prev != nil {
		a.v4, a.v6 = podAddresses(prev, req.IfName)
	}
	return conf, a, prev, nil
}

// chooseBackend settles conf.Backend and refuses options of the other backend.
func chooseBackend(conf *Config) error {
	wants := map[string][]string{}
	if conf.ExternalSetMarkChain != nil {
		wants[backendIPTables] = append(wants[backendIPTables], "externalSetMarkChain")
	}
	if conf.MarkMasqBit != nil {
		wants[backendIPTables] = append(wants[backendIPTables], "markMasqBit")
	}
	for field, conds := range map[string]*[]string{"conditionsV4": conf.ConditionsV4, "conditionsV6": conf.ConditionsV6} {
		if conds == nil || len(*conds) == 0 || (*conds)[0] == "" {
			continue
		}
		b := backendNFTables
		if c := (*conds)[0][0]; c == '-' || c == '!' {
			b = backendIPTables
		}
		wants[b] = append(wants[b], field)
	}
	if conf.Backend == nil || *conf.Backend == "" {
		var name string
		switch {
		case len(wants[backendNFTables]) > 0 && len(wants[backendIPTables]) == 0:
			name = backendNFTables
		case len(wants[backendIPTables]) > 0:
			name = backendIPTables
		default:
			name = defaultBackend()
		}
		conf.Backend = &name
	}
	other := backendIPTables
	switch *conf.Backend {
	case backendIPTables:
		other = backendNFTables
	case backendNFTables:
	default:
		return cni.ConfigError("backend: %q is not iptables or nftables", *conf.Backend)
	}
	if len(wants[other]) > 0 {
		return cni.ConfigError("backend: %s was chosen but %v only apply to %s", *conf.Backend, wants[other], other)
	}
	return nil
}

// defaultBackend is the reference's choice: iptables when it is there,
// else nftables. Looking the binary up costs no process.
func defaultBackend() string {
	if iptables.Installed(iptables.IPv4) {
		return backendIPTables
	}
	if nft.Usable() == nil {
		return backendNFTables
	}
	return backendIPTables
}

// podAddresses picks the pod's first IPv4 and first IPv6 address from the
// previous result: addresses of the sandbox interface ifName, or addresses
// that name no interface.
func podAddresses(prev *current.Result, ifName string) (v4, v6 *net.IPNet) {
	for _, ip := range prev.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i >= 0 && i < len(prev.Interfaces) && (prev.Interfaces[i].Name != ifName || prev.Interfaces[i].Sandbox == "") {
				continue
			}
		}
		addr := ip.Address
		if addr.IP.To4() != nil {
			if v4 == nil {
				addr.IP = addr.IP.To4()
				if len(addr.Mask) == net.IPv6len {
					addr.Mask = addr.Mask[12:]
				}
				v4 = &addr
			}
		} else if v6 == nil {
			v6 = &addr
		}
	}
	return v4, v6
}

// mapsFor returns the mappings that apply to a family: an entry whose
// hostIP is of the other family is skipped.
func mapsFor(maps []Mapping, v6 bool) []Mapping {
	var out []Mapping
	for _, m := range maps {
		if m.HostIP != "" && strings.Contains(m.HostIP, ":") != v6 {
			continue
		}
		out = append(out, m)
	}
	return out
}

// hostIP returns the mapping's destination match, "" for any address.
func (m Mapping) hostAddr() (netip.Addr, bool) {
	if m.HostIP == "" {
		return netip.Addr{}, false
	}
	a := netip.MustParseAddr(m.HostIP)
	if a.IsUnspecified() {
		return netip.Addr{}, false
	}
	return a, true
}

// flushUDPConntrack deletes conntrack entries to the mapped UDP host ports,
// which would otherwise keep steering a flow to where it went before the
// mapping existed.
func flushUDPConntrack(maps []Mapping, pod net.IP) error {
	fam := netlink.InetFamily(unix.AF_INET)
	if pod.To4() == nil {
		fam = unix.AF_INET6
	}
	for _, m := range mapsFor(maps, pod.To4() == nil) {
		if m.Protocol != "udp" {
			continue
		}
		f := &netlink.ConntrackFilter{}
		if err := f.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return err
		}
		if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(m.HostPort)); err != nil {
			return err
		}
		if _, err := netlinksafe.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f); err != nil {
			return fmt.Errorf("flush UDP conntrack entries of host port %d: %w", m.HostPort, err)
		}
	}
	return nil
}

// enableRouteLocalnet sets route_localnet=1 on the interface that routes
// to the pod, so that connections from 127.0.0.1 can be DNATed to it. The
// backends install the martian guard that makes this safe before ADD gets here.
func enableRouteLocalnet(pod net.IP) error {
	routes, err := netlink.RouteGet(pod)
	if err != nil || len(routes) == 0 {
		return nil // no route to the pod yet: nothing to enable
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil
	}
	path := filepath.Join("/proc/sys/net/ipv4/conf", link.Attrs().Name, "route_localnet")
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable route_localnet on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// State: which backend holds an attachment's rules and the pod's addresses
// they name, so that a DEL without portMappings (the runtime need not resend
// them) finds them, a DEL of a pod that never had any costs nothing, and
// GC knows the network's attachments (an nftables rule's comment names only
// the container, as the reference's do). The record is the backend's name,
// then one address a line.

func stateFile(net, id string) string {
	return filepath.Join(stateRoot, statefile.Name(net, 255), statefile.Name(id, 255))
}

const stateRoot = "/var/lib/cni/cnibox-portmap"

func remember(net, id, backend string, pods []netip.Addr) error {
	rec := backend + "\n"
	for _, p := range pods {
		rec += p.String() + "\n"
	}
	if err := statefile.Write(stateFile(net, id), []byte(rec), 0o600); err != nil {
		return fmt.Errorf("record backend: %w", err)
	}
	return nil
}

// recalledState returns the recorded backend ("" without a record) and
// pod addresses.
func recalledState(net, id string) (string, []netip.Addr) {
	b, err := statefile.Read(stateFile(net, id))
	if err != nil {
		return "", nil
	}
	lines := strings.Fields(string(b))
	if len(lines) == 0 || (lines[0] != backendIPTables && lines[0] != backendNFTables) {
		return "", nil
	}
	var pods []netip.Addr
	for _, l := range lines[1:] {
		if a, err := netip.ParseAddr(l); err == nil {
			pods = append(pods, a)
		}
	}
	return lines[0], pods
}

// recordedIDs returns the names of the network's records: container IDs,
// or their hashes for IDs too long for a file name (stateFile takes
// either).
func recordedIDs(net string) []string {
	entries, _ := os.ReadDir(filepath.Dir(stateFile(net, "x")))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// forget removes the record, and the network's directory and the state
// root with the last one.
func forget(net, id string) {
	statefile.Remove(stateFile(net, id), 2)
}

func forgetAllBut(net string, keep map[string]bool) {
	dir := filepath.Dir(stateFile(net, "x"))
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir)
	os.Remove(stateRoot)
}
