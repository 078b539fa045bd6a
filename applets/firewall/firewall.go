// Package firewall is the firewall applet: chained after bridge or ptp, it
// lets the pod's traffic through the node's firewall and optionally
// isolates the pod's bridge from other bridges (ingressPolicy).
//
// Backends: "iptables" (the reference's chains and rules, exactly, so a
// node can switch between cnibox and the reference), "firewalld" (D-Bus:
// the pod's addresses become sources of a zone), and "nftables", a native
// backend over netlink the reference never had (table inet cni_firewall).
// "" picks firewalld when it runs on the system bus, else iptables, as the
// reference does; podman always writes "backend": "".
//
// The reference's rules carry no attachment identity, so it can only
// delete them when the runtime resends prevResult and never removes the
// ingress-policy rules. cnibox records each attachment's addresses (a small
// file under /var/lib/cni/cnibox-firewall), so DEL works without prevResult,
// GC removes the rules of attachments that are gone, and the last DEL on a
// bridge removes its isolation rules.
package firewall

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"unicode"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/iptables"
	"github.com/cnibox/cnibox/shared/nft"
	"github.com/cnibox/cnibox/shared/statefile"
)

// Applet is firewall's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:     "firewall",
	Kind:     "meta",
	Summary:  "let the pod through the node's firewall; isolate bridges (iptables, nftables, firewalld)",
	Versions: versions(),
	Add:      Add,
	Del:      Del,
	Check:    Check,
	GC:       GC,
	Status:   Status,
}

// versions are the spec versions from 0.4.0 on, as the reference: older
// results lack the interface list that ingressPolicy needs.
func versions() []string {
	var out []string
	for _, v := range cni.AllVersions {
		if cni.VersionAtLeast(v, "0.4.0") {
			out = append(out, v)
		}
	}
	return out
}

// Config is firewall's configuration.
type Config struct {
	cni.NetConf

	// Backend is "iptables", "firewalld", "nftables" or "" (firewalld when
	// it runs on the system D-Bus, else iptables).
	Backend string `json:"backend,omitempty"`
	// IptablesAdminChainName is the chain jumped to first from CNI-FORWARD,
	// for the admin's own rules (default CNI-ADMIN). cnibox creates it and
	// never changes its rules.
	IptablesAdminChainName string `json:"iptablesAdminChainName,omitempty"`
	// FirewalldZone is the zone the pod's addresses join (default trusted).
	FirewalldZone string `json:"firewalldZone,omitempty"`
	// IngressPolicy is "open" (default), "same-bridge" (pods of other
	// bridges cannot reach this bridge) or "isolated" (nor can pods of the
	// same bridge reach each other through the node).
	IngressPolicy string `json:"ingressPolicy,omitempty"`
}

const (
	policyOpen       = "open"
	policySameBridge = "same-bridge"
	policyIsolated   = "isolated"
)

// attachment is what the rules of one pod interface are made from. It is
// also the record kept on disk between ADD and DEL/GC.
type attachment struct {
	Net     string         `json:"network"`
	ID      string         `json:"containerID"`
	IfName  string         `json:"ifname"`
	Backend string         `json:"backend"`
	IPs     []netip.Prefix `json:"ips"` // host prefixes: /32 and /128
	Bridge  string         `json:"bridge,omitempty"`
	Policy  string         `json:"ingressPolicy,omitempty"`
	Zone    string         `json:"zone,omitempty"`
	Admin   string         `json:"adminChain,omitempty"`
}

type backend interface {
	add(a *attachment) error
	del(a *attachment) error
	check(a *attachment) error
	// isolate installs the bridge's ingress-policy rules; unisolate removes them.
	isolate(a *attachment) error
	unisolate(a *attachment) error
	usable() error
}

func backendFor(name string) backend {
	switch name {
	case "nftables":
		return nftBackend{}
	case "firewalld":
		return firewalld{}
	}
	return iptBackend{}
}

// Add lets the pod's addresses through and applies the ingress policy.
func Add(req *cni.Request) (types.Result, error) {
	a, prev, err := load(req, true)
	if err != nil {
		return nil, err
	}
	be := backendFor(a.Backend)
	// Recorded first, so that DEL finds what a killed ADD half made. A
	// record of an earlier ADD of the attachment is put back if this one
	// fails: its DEL must still find that ADD's backend and addresses.
	earlier, _ := statefile.Read(recordPath(a.Net, a.ID, a.IfName))
	if err := save(a); err != nil {
		return nil, fmt.Errorf("firewall: %w", err)
	}
	if err := be.add(a); err != nil {
		putBack(a, earlier)
		return nil, fmt.Errorf("firewall: %s: %w", a.Backend, err)
	}
	if a.Policy != policyOpen {
		if err := isolationBackend(a).isolate(a); err != nil {
			putBack(a, earlier)
			return nil, fmt.Errorf("firewall: ingressPolicy %s: %w", a.Policy, err)
		}
	}
	req.Log.Note("firewall allowed %v (%s, ingressPolicy %s)", a.IPs, a.Backend, a.Policy)
	return prev, nil
}

// putBack restores the record a failed ADD replaced (nil: there was none,
// and this ADD's stays for DEL).
func putBack(a *attachment, earlier []byte) {
	if earlier != nil {
		_ = statefile.Write(recordPath(a.Net, a.ID, a.IfName), earlier, 0o600)
	}
}

// Del removes the attachment's rules. Without prevResult it uses the
// addresses recorded at ADD.
func Del(req *cni.Request) error {
	a, _, err := load(req, false)
	if err != nil {
		return err
	}
	if rec := recall(a.Net, a.ID, a.IfName); rec != nil {
		if len(a.IPs) == 0 {
			a.IPs = rec.IPs
		}
		a.Backend, a.Bridge, a.Policy, a.Zone = rec.Backend, rec.Bridge, rec.Policy, rec.Zone
	}
	if err := undo(a); err != nil {
		return err
	}
	req.Log.Note("firewall removed the rules of %v (%s)", a.IPs, a.Backend)
	return nil
}

// undo removes a's rules, its record and, when no other attachment uses the
// bridge, the bridge's isolation rules.
func undo(a *attachment) error {
	be := backendFor(a.Backend)
	// nftables rules name their attachment, so they go even when neither
	// prevResult nor a record gives the addresses.
	if len(a.IPs) > 0 || a.Backend == "nftables" {
		if err := be.del(a); err != nil && be.usable() == nil {
			return fmt.Errorf("firewall: %s: %w", a.Backend, err)
		}
	}
	forget(a)
	if a.Policy != "" && a.Policy != policyOpen && a.Bridge != "" && !bridgeInUse(a.Bridge) {
		ib := isolationBackend(a)
		if err := ib.unisolate(a); err != nil && ib.usable() == nil {
			return fmt.Errorf("firewall: ingressPolicy %s: %w", a.Policy, err)
		}
	}
	return nil
}

// Check verifies the attachment's rules.
func Check(req *cni.Request) error {
	a, _, err := load(req, true)
	if err != nil {
		return err
	}
	if err := backendFor(a.Backend).check(a); err != nil {
		return fmt.Errorf("firewall: %s: %w", a.Backend, err)
	}
	if a.Policy != policyOpen {
		if err := checkIsolation(a); err != nil {
			return fmt.Errorf("firewall: ingressPolicy %s: %w", a.Policy, err)
		}
	}
	return nil
}

// GC removes the rules of this network's attachments that are not valid.
func GC(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	valid, err := req.ValidAttachments()
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range recorded(req.Name) {
		if !valid[cni.Attachment{ContainerID: a.ID, IfName: a.IfName}] {
			if err := undo(a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// nftables rules name their attachment: collect strays without a record.
	if nft.Usable() == nil {
		if err := nftGC(req.Name, valid); err != nil {
			errs = append(errs, fmt.Errorf("firewall: nftables: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Status fails with 50 when the configured backend cannot be used.
func Status(req *cni.Request) error {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return err
	}
	name := conf.Backend
	if name == "" {
		if firewalldRunning() {
			return nil
		}
		name = "iptables"
	}
	if err := backendFor(name).usable(); err != nil {
		return cni.NotAvailable("firewall: backend %s: %v", name, err)
	}
	return nil
}

// load decodes the configuration. needPrev makes prevResult mandatory
// and the configuration judged (ADD, CHECK). Without it (DEL) a value ADD
// would refuse is taken as its default instead, as the reference's DEL
// does (an unknown backend is its default backend there): the runtime
// DELs after every refused ADD and retries a failed DEL forever, and the
// attachment's record, when there is one, names what ADD really used.
func load(req *cni.Request, needPrev bool) (*attachment, *current.Result, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, nil, err
	}
	a := &attachment{Net: req.Name, ID: req.ContainerID, IfName: req.IfName, Backend: conf.Backend,
		Zone: conf.FirewalldZone, Admin: conf.IptablesAdminChainName, Policy: conf.IngressPolicy}
	if a.Zone == "" {
		a.Zone = "trusted"
	}
	if a.Admin == "" || !validChain(a.Admin) && !needPrev {
		a.Admin = "CNI-ADMIN"
	}
	if !validChain(a.Admin) {
		return nil, nil, cni.ConfigError("iptablesAdminChainName: %q is not a chain name (1-28 characters, no spaces or quotes)", a.Admin)
	}
	switch a.Policy {
	case "":
		a.Policy = policyOpen
	case policyOpen, policySameBridge, policyIsolated:
	default:
		if !needPrev {
			a.Policy = policyOpen
			break
		}
		return nil, nil, cni.ConfigError("ingressPolicy: %q is not open, same-bridge or isolated", a.Policy)
	}
	switch a.Backend {
	case "iptables", "firewalld", "nftables":
	default:
		if a.Backend != "" && needPrev {
			return nil, nil, cni.ConfigError("backend: %q is not iptables, firewalld or nftables", a.Backend)
		}
		a.Backend = "iptables"
		if firewalldRunning() {
			a.Backend = "firewalld"
		}
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return nil, nil, err
	}
	if prev == nil {
		if needPrev {
			return nil, nil, cni.ConfigError("prevResult: missing: firewall must be chained after a plugin that returns addresses")
		}
		return a, nil, nil
	}
	for _, ip := range prev.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		a.IPs = append(a.IPs, netip.PrefixFrom(addr, addr.BitLen()))
	}
	if a.Policy != policyOpen {
		if len(prev.Interfaces) == 0 || prev.Interfaces[0] == nil || prev.Interfaces[0].Name == "" {
			if !needPrev {
				return a, prev, nil // no bridge ADD could have isolated
			}
			return nil, nil, cni.ConfigError("ingressPolicy: %q needs the bridge as prevResult.interfaces[0]: chain firewall after bridge", a.Policy)
		}
		a.Bridge = prev.Interfaces[0].Name
		// The name goes into iptables rules as an argument and into
		// nftables as IFNAMSIZ bytes: it must be an interface name.
		if e := utils.ValidateInterfaceName(a.Bridge); e != nil || strings.ContainsFunc(a.Bridge, unicode.IsControl) {
			if !needPrev {
				a.Bridge = "" // not a bridge ADD could have isolated
				return a, prev, nil
			}
			return nil, nil, cni.ConfigError("prevResult.interfaces[0].name: %q is not an interface name (1-15 characters, no '/', ':', space or control character)", a.Bridge)
		}
	}
	return a, prev, nil
}

func validChain(s string) bool {
	if s == "" || len(s) > 28 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == '"' || c == '\'' || c > '~' {
			return false
		}
	}
	return true
}

// isolationBackend is where the ingress-policy rules go: nftables for the
// nftables backend; iptables otherwise, as the reference (firewalld has no
// such notion), or nftables when iptables is not there.
func isolationBackend(a *attachment) backend {
	if a.Backend == "nftables" || !iptables.Installed(iptables.IPv4) {
		return nftBackend{}
	}
	return iptBackend{}
}

func checkIsolation(a *attachment) error {
	if b, ok := isolationBackend(a).(interface{ checkIsolation(*attachment) error }); ok {
		return b.checkIsolation(a)
	}
	return nil
}

// Records of attachments, one file each.

const stateDir = "/var/lib/cni/cnibox-firewall"

// recordPath is <stateDir>/<network>/<containerID>.<ifname>; a name too
// long for one file name is hashed (statefile.Name): the record itself
// says whose it is.
func recordPath(net, id, ifname string) string {
	return filepath.Join(stateDir, statefile.Name(net, 255), statefile.Name(id+"."+ifname, 255))
}

func save(a *attachment) error {
	b, _ := json.Marshal(a)
	if err := statefile.Write(recordPath(a.Net, a.ID, a.IfName), b, 0o600); err != nil {
		return fmt.Errorf("record attachment: %w", err)
	}
	return nil
}

func recall(net, id, ifname string) *attachment {
	b, err := statefile.Read(recordPath(net, id, ifname))
	if err != nil {
		return nil
	}
	a := &attachment{}
	if json.Unmarshal(b, a) != nil {
		return nil
	}
	return a
}

func forget(a *attachment) {
	// The network's directory and stateDir go with the last record.
	statefile.Remove(recordPath(a.Net, a.ID, a.IfName), 2)
}

func recorded(net string) []*attachment {
	var out []*attachment
	files, _ := filepath.Glob(filepath.Join(stateDir, statefile.Name(net, 255), "*"))
	for _, f := range files {
		b, err := statefile.Read(f)
		if err != nil {
			continue
		}
		a := &attachment{}
		if json.Unmarshal(b, a) == nil && a.Net == net {
			out = append(out, a)
		}
	}
	return out
}

// bridgeInUse reports whether any recorded attachment, of any network,
// still has isolation rules on the bridge.
func bridgeInUse(bridge string) bool {
	files, _ := filepath.Glob(filepath.Join(stateDir, "*", "*"))
	for _, f := range files {
		b, err := statefile.Read(f)
		if err != nil {
			continue
		}
		a := &attachment{}
		if json.Unmarshal(b, a) == nil && a.Bridge == bridge && a.Policy != policyOpen && a.Policy != "" {
			return true
		}
	}
	return false
}
