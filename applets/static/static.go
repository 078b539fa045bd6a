// Package static is the static IPAM applet: it returns the addresses,
// routes and DNS its configuration (or the runtime) names, and keeps no
// state, so DEL has nothing to undo.
package static

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
)

// Applet is static's entry in cnibox's applet table.
var Applet = &cni.Applet{
	Name:    "static",
	Kind:    "ipam",
	Summary: "return fixed addresses, routes and DNS",
	Add:     Add,
	Del:     Del,
	Check:   Check,
}

// Config is the network configuration static reads (as an IPAM plugin it
// gets the delegating plugin's whole configuration).
type Config struct {
	cni.NetConf
	IPAM *IPAMConf `json:"ipam"`
	// RuntimeConfig carries the "ips" capability: CIDRs that replace
	// ipam.addresses (and args.cni.ips).
	RuntimeConfig struct {
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// Args is the conventions' "args": {"cni": {"ips": [CIDR...]}}, which
	// replaces ipam.addresses.
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args,omitempty"`
}

// IPAMConf is the "ipam" object.
type IPAMConf struct {
	Type string `json:"type"`
	// Addresses are the CIDRs to return, each with an optional gateway.
	Addresses []AddressConf `json:"addresses,omitempty"`
	// Routes and DNS are returned as they are.
	Routes []*types.Route `json:"routes,omitempty"`
	DNS    types.DNS      `json:"dns,omitempty"`
}

// AddressConf is one entry of ipam.addresses.
type AddressConf struct {
	Address string `json:"address"`
	Gateway string `json:"gateway,omitempty"`
	// Parsed takes the key "Address", which Go code that reuses the
	// reference's types writes next to "address" (its parsed net.IPNet,
	// an object). encoding/json matches keys case-insensitively but
	// prefers an exact match, so with this field "Address" no longer
	// lands in (and breaks) Address, as in the reference, which has both
	// fields. As in the reference, when it holds an IP it is the address
	// (the string is then not read).
	Parsed json.RawMessage `json:"Address,omitempty"`
}

// parsed is the prefix of the entry's "Address" object; ok=false when it
// is absent or holds no IP.
func (ac AddressConf) parsed() (p netip.Prefix, ok bool, err error) {
	if len(ac.Parsed) == 0 {
		return netip.Prefix{}, false, nil
	}
	var n net.IPNet
	if err := json.Unmarshal(ac.Parsed, &n); err != nil {
		return netip.Prefix{}, false, err
	}
	if n.IP == nil {
		return netip.Prefix{}, false, nil
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	ones, bits := n.Mask.Size()
	if !ok || bits == 0 {
		return netip.Prefix{}, false, fmt.Errorf("%s: not an address with a mask", ac.Parsed)
	}
	if ip.Is4In6() {
		ip = ip.Unmap()
		if bits == 128 {
			ones -= 96
		}
	}
	if ones < 0 || ones > ip.BitLen() {
		return netip.Prefix{}, false, fmt.Errorf("%s: the mask does not fit the address", ac.Parsed)
	}
	return netip.PrefixFrom(ip, ones), true, nil
}

// address is a validated address.
type address struct {
	prefix  netip.Prefix // the address with its prefix length
	gateway netip.Addr
	// network says the reference holds this address parsed when it
	// applies CNI_ARGS GATEWAY= (an IP= address, or an entry with an
	// "Address" object): only those get that gateway.
	network bool
}

// envArgs is what static reads from CNI_ARGS: IP appends addresses,
// GATEWAY sets the gateway of each IP= address whose subnet holds it.
type envArgs struct {
	types.CommonArgs
	IP      types.UnmarshallableString `json:"ip,omitempty"`
	GATEWAY types.UnmarshallableString `json:"gateway,omitempty"`
}

// Add returns the configured addresses, routes and DNS.
func Add(req *cni.Request) (types.Result, error) {
	conf, addrs, err := load(req)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: conf.IPAM.Routes, DNS: conf.IPAM.DNS}
	for _, a := range addrs {
		ipc := &current.IPConfig{Address: net.IPNet{
			IP:   a.prefix.Addr().AsSlice(),
			Mask: net.CIDRMask(a.prefix.Bits(), a.prefix.Addr().BitLen()),
		}}
		if a.gateway.IsValid() {
			ipc.Gateway = a.gateway.AsSlice()
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res, nil
}

// Del has nothing to release; it succeeds for any config it can read.
func Del(req *cni.Request) error {
	conf := &Config{}
	return req.Decode(conf)
}

// Check verifies that prevResult holds every configured address, with the
// same prefix length and, when one is configured, the same gateway.
func Check(req *cni.Request) error {
	conf, addrs, err := load(req)
	if err != nil {
		return err
	}
	prev, err := cni.PrevResult(&conf.NetConf)
	if err != nil {
		return err
	}
	if prev == nil {
		return cni.ConfigError("prevResult: missing; static CHECK compares the configured addresses with it")
	}
	for _, a := range addrs {
		found := false
		for _, ipc := range prev.IPs {
			ip, ok := netip.AddrFromSlice(ipc.Address.IP)
			if !ok || ip.Unmap() != a.prefix.Addr() {
				continue
			}
			found = true
			if ones, _ := ipc.Address.Mask.Size(); ones != a.prefix.Bits() {
				return fmt.Errorf("static: %s: prevResult has prefix length /%d, config /%d (interface %s)", ip, ones, a.prefix.Bits(), req.IfName)
			}
			gw, _ := netip.AddrFromSlice(ipc.Gateway)
			if a.gateway.IsValid() && gw.Unmap() != a.gateway {
				return fmt.Errorf("static: %s: prevResult has gateway %v, config %s (interface %s)", ip, ipc.Gateway, a.gateway, req.IfName)
			}
		}
		if !found {
			return fmt.Errorf("static: configured address %s is not in prevResult (interface %s)", a.prefix, req.IfName)
		}
	}
	return nil
}

// load decodes the configuration and works out the addresses in the
// reference's order: ipam.addresses, CNI_ARGS IP= appended to them and
// GATEWAY= applied to the IP= ones (the reference has only those parsed
// at that point, and entries that carry an "Address" object); then
// args.cni.ips, when set, replace all of them, and runtimeConfig.ips,
// when set, replace whatever is there (so with either, CNI_ARGS IP= and
// GATEWAY= count for nothing).
func load(req *cni.Request) (*Config, []address, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, nil, err
	}
	if conf.IPAM == nil {
		return nil, nil, cni.ConfigError("ipam: missing; static needs an \"ipam\" object")
	}
	// With args.cni.ips or runtimeConfig.ips, ipam.addresses are replaced
	// before the reference validates them: only a gateway that is not an
	// IP address (which its JSON decoding refuses) is an error then.
	replaced := len(conf.RuntimeConfig.IPs) > 0 || (conf.Args != nil && conf.Args.CNI != nil && len(conf.Args.CNI.IPs) > 0)
	var addrs []address
	for i, ac := range conf.IPAM.Addresses {
		var gw netip.Addr
		if ac.Gateway != "" {
			var err error
			gw, err = netip.ParseAddr(strings.TrimSpace(ac.Gateway))
			if err != nil || gw.Zone() != "" {
				return nil, nil, cni.ConfigError("ipam.addresses[%d].gateway: %q is not an IP address", i, ac.Gateway)
			}
		}
		p, network, err := ac.parsed()
		if err != nil {
			return nil, nil, cni.ConfigError("ipam.addresses[%d].Address: %v", i, err)
		}
		if replaced {
			continue
		}
		if !network {
			if p, err = parseCIDR(ac.Address); err != nil {
				return nil, nil, cni.ConfigError("ipam.addresses[%d].address: %v", i, err)
			}
		}
		a := address{prefix: p, network: network}
		if gw.IsValid() {
			if gw.Unmap().Is4() != p.Addr().Is4() {
				return nil, nil, cni.ConfigError("ipam.addresses[%d].gateway: %s is not of the family of %s", i, gw, p)
			}
			a.gateway = gw.Unmap()
		}
		addrs = append(addrs, a)
	}

	if req.Args != "" {
		var e envArgs
		if err := types.LoadArgs(req.Args, &e); err != nil {
			return nil, nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_ARGS: %v", err)
		}
		if e.IP != "" {
			for _, s := range strings.Split(string(e.IP), ",") {
				p, err := parseCIDR(s)
				if err != nil {
					return nil, nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_ARGS IP: %v", err)
				}
				addrs = append(addrs, address{prefix: p, network: true})
			}
		}
		if e.GATEWAY != "" {
			for _, s := range strings.Split(string(e.GATEWAY), ",") {
				gw, err := netip.ParseAddr(strings.TrimSpace(s))
				if err != nil || gw.Zone() != "" {
					return nil, nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_ARGS GATEWAY: %q is not an IP address", s)
				}
				gw = gw.Unmap()
				for i := range addrs {
					if addrs[i].network && addrs[i].prefix.Masked().Contains(gw) {
						addrs[i].gateway = gw
					}
				}
			}
		}
	}

	if conf.Args != nil && conf.Args.CNI != nil && len(conf.Args.CNI.IPs) > 0 {
		addrs = nil
		for i, s := range conf.Args.CNI.IPs {
			p, err := parseCIDR(s)
			if err != nil {
				return nil, nil, cni.ConfigError("args.cni.ips[%d]: %v", i, err)
			}
			addrs = append(addrs, address{prefix: p})
		}
	}
	if len(conf.RuntimeConfig.IPs) > 0 {
		addrs = nil
		for i, s := range conf.RuntimeConfig.IPs {
			p, err := parseCIDR(s)
			if err != nil {
				return nil, nil, cni.ConfigError("runtimeConfig.ips[%d]: %v", i, err)
			}
			addrs = append(addrs, address{prefix: p})
		}
	}

	v4, v6 := 0, 0
	for _, a := range addrs {
		if a.prefix.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if (v4 > 1 || v6 > 1) && !cni.VersionAtLeast(req.Version, "0.3.0") {
		return nil, nil, cni.ConfigError("ipam.addresses: cniVersion %s allows one address per family; %d IPv4 and %d IPv6 need 0.3.0 or later", req.Version, v4, v6)
	}
	return conf, addrs, nil
}

// parseCIDR parses an address with its prefix length ("10.1.2.3/24").
func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address in CIDR notation (such as 10.1.2.3/24)", s)
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		if p.Bits() < 0 {
			return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped address needs a prefix of at least /96", s)
		}
	}
	return p, nil
}
