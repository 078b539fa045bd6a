package dhcp

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cnibox/cnibox/shared/cni"
)

// Config is the dhcp IPAM configuration, the same keys as the reference.
// The plugin reads it to fail early with the field's name; the daemon
// reads it again from the forwarded stdin, because a reference plugin may
// be the one that called.
type Config struct {
	cni.NetConf
	IPAM IPAMConfig `json:"ipam"`
}

// IPAMConfig is the "ipam" object.
type IPAMConfig struct {
	Type string `json:"type"`
	// DaemonSocketPath is the daemon's socket; /run/cni/dhcp.sock when empty.
	DaemonSocketPath string `json:"daemonSocketPath"`
	// Request lists options to put in the Parameter Request List.
	Request []RequestOption `json:"request"`
	// Provide lists options to send to the server.
	Provide []ProvideOption `json:"provide"`
	// Priority is the metric given to every route of the result.
	Priority int `json:"priority"`
}

// RequestOption asks the server for an option. skipDefault on any entry
// drops the default list, so that only the listed options are requested.
type RequestOption struct {
	SkipDefault bool   `json:"skipDefault"`
	Option      string `json:"option"`
}

// ProvideOption sends an option to the server, with a fixed value or the
// value of a CNI_ARGS key (fromArg). Values are sent as strings.
type ProvideOption struct {
	Option  string `json:"option"`
	Value   string `json:"value"`
	FromArg string `json:"fromArg"`
}

// DefaultSocketPath is where the daemon listens unless told otherwise.
const DefaultSocketPath = "/run/cni/dhcp.sock"

// optionNames are the names the reference accepts besides decimal codes.
var optionNames = map[string]uint8{
	"subnet-mask":             1,
	"routers":                 3,
	"host-name":               12,
	"vendor-class-identifier": 60,
	"dhcp-client-identifier":  61,
	"user-class":              77,
}

// defaultRequest is what we ask for unless skipDefault: the reference's
// subnet mask and routers, plus what the result is built from (DNS
// servers, domain name, static and classless routes).
var defaultRequest = []uint8{1, 3, 6, 15, 33, 121}

// parseConfig decodes and validates a configuration, naming the field
// that is wrong.
func parseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, cni.DecodeError("network configuration", err)
	}
	if conf.IPAM.Priority < 0 {
		return nil, cni.ConfigError("ipam.priority: %d is negative", conf.IPAM.Priority)
	}
	for i, r := range conf.IPAM.Request {
		if r.Option == "" && r.SkipDefault {
			continue
		}
		if _, err := parseOption(r.Option); err != nil {
			return nil, cni.ConfigError("ipam.request[%d].option: %v", i, err)
		}
	}
	for i, p := range conf.IPAM.Provide {
		if _, err := parseOption(p.Option); err != nil {
			return nil, cni.ConfigError("ipam.provide[%d].option: %v", i, err)
		}
		if p.Value == "" && p.FromArg == "" {
			return nil, cni.ConfigError("ipam.provide[%d]: needs \"value\" or \"fromArg\"", i)
		}
		if len(p.Value) > 255 {
			return nil, cni.ConfigError("ipam.provide[%d].value: %d bytes, an option holds at most 255", i, len(p.Value))
		}
	}
	return conf, nil
}

// parseOption turns an option name or decimal code into its code.
func parseOption(s string) (uint8, error) {
	if code, ok := optionNames[strings.ToLower(s)]; ok {
		return code, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 254 {
		return 0, fmt.Errorf("%q is neither a known option name (%s) nor a code from 1 to 254", s, knownNames())
	}
	return uint8(n), nil
}

func knownNames() string {
	return "subnet-mask, routers, host-name, vendor-class-identifier, dhcp-client-identifier, user-class"
}

// parseArgs splits CNI_ARGS ("K=V;K2=V2") into a map, as the reference
// does for fromArg.
func parseArgs(s string) map[string]string {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(pair, "="); ok && k != "" {
			out[k] = v
		}
	}
	return out
}

// clientID is the lease's key and the identifier sent in option 61.
func clientID(containerID, network, ifName string) string {
	id := containerID + "/" + network + "/" + ifName
	if len(id) > 254 {
		id = id[:254]
	}
	return id
}

// modifiers turns the configuration into what every DISCOVER and REQUEST
// carries: the client identifier, the Parameter Request List and the
// provided options. A fromArg key missing from CNI_ARGS is skipped, as the
// reference does.
func modifiers(conf *IPAMConfig, args, id string, broadcast bool) []dhcpv4.Modifier {
	var prl []dhcpv4.OptionCode
	seen := map[uint8]bool{}
	add := func(c uint8) {
		if !seen[c] {
			seen[c] = true
			prl = append(prl, dhcpv4.GenericOptionCode(c))
		}
	}
	skip := false
	for _, r := range conf.Request {
		skip = skip || r.SkipDefault
	}
	if !skip {
		for _, c := range defaultRequest {
			add(c)
		}
	}
	for _, r := range conf.Request {
		if c, err := parseOption(r.Option); err == nil {
			add(c)
		}
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(broadcast),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{0}, id...))),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(prl...)),
	}
	cniArgs := parseArgs(args)
	for _, p := range conf.Provide {
		code, err := parseOption(p.Option)
		if err != nil {
			continue
		}
		value := p.Value
		if v, ok := cniArgs[p.FromArg]; ok && p.FromArg != "" {
			value = v
		}
		if value == "" || len(value) > 255 {
			continue
		}
		data := []byte(value)
		if code == 61 {
			data = append([]byte{0}, data...) // type 0: not a hardware address
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(code), data)))
	}
	return mods
}

// scopeLink is RT_SCOPE_LINK, for routes whose router is 0.0.0.0.
const scopeLink = 253

// resultFromACK is the IPAM result of a lease: the address and mask, the
// gateway from option 3, routes from option 121 or else option 33 plus the
// default route, and DNS from options 6, 15 and 119. CNIVersion is left
// empty: a reference plugin decodes the reply into a result of its own
// version, and gob leaves fields it does not receive alone.
func resultFromACK(ack *dhcpv4.DHCPv4, priority int) (*current.Result, error) {
	ip := ack.YourIPAddr.To4()
	if ip == nil || ip.IsUnspecified() {
		return nil, fmt.Errorf("DHCPACK carries no address")
	}
	if !ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
		return nil, fmt.Errorf("DHCPACK offers %s, not a unicast address", ip)
	}
	mask := ack.SubnetMask()
	if len(mask) != net.IPv4len {
		return nil, fmt.Errorf("DHCPACK for %s carries no subnet mask (option 1)", ip)
	}
	if ones, _ := mask.Size(); !bytes.Equal(mask, net.CIDRMask(ones, 32)) {
		return nil, fmt.Errorf("DHCPACK for %s carries a non-contiguous subnet mask %s (option 1)", ip, net.IP(mask))
	}
	res := &current.Result{IPs: []*current.IPConfig{{Address: net.IPNet{IP: ip, Mask: mask}}}}
	var gw net.IP
	if routers := ack.Router(); len(routers) > 0 && !routers[0].IsUnspecified() {
		gw = routers[0].To4()
		res.IPs[0].Gateway = gw
	}

	if classless := ack.ClasslessStaticRoute(); len(classless) > 0 {
		for _, r := range classless {
			// RFC 3442 sends only the significant octets of the
			// destination, whose bits past the prefix may be set: the
			// kernel refuses such a route, so they are cleared.
			dst := net.IPNet{IP: r.Dest.IP.Mask(r.Dest.Mask), Mask: r.Dest.Mask}
			route := &types.Route{Dst: dst}
			if r.Router.IsUnspecified() {
				scope := scopeLink
				route.Scope = &scope
			} else {
				route.GW = r.Router.To4()
			}
			res.Routes = append(res.Routes, route)
		}
	} else {
		res.Routes = staticRoutes(ack.GetOneOption(dhcpv4.OptionStaticRoutingTable))
		if gw != nil {
			res.Routes = append(res.Routes, &types.Route{
				Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw})
		}
	}
	for _, r := range res.Routes {
		r.Priority = priority
	}

	for _, s := range ack.DNS() {
		res.DNS.Nameservers = append(res.DNS.Nameservers, s.String())
	}
	// Names end up in resolv.conf: one with a space or a line break could
	// add a nameserver of the server's choosing there, so such names are
	// dropped.
	if name := ack.DomainName(); dnsName(name) {
		res.DNS.Domain = name
	}
	if labels := ack.DomainSearch(); labels != nil {
		for _, name := range labels.Labels {
			if dnsName(name) {
				res.DNS.Search = append(res.DNS.Search, name)
			}
		}
	}
	return res, nil
}

// dnsName says whether s is a domain name fit for resolv.conf: 1 to 253
// letters, digits, '-', '_' and '.'.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// staticRoutes decodes option 33: pairs of (destination, router) with
// the destination's mask taken from its address class (RFC 2132 5.8).
func staticRoutes(data []byte) []*types.Route {
	var out []*types.Route
	for len(data) >= 8 {
		dst, router := net.IP(data[0:4]), net.IP(data[4:8])
		data = data[8:]
		first := dst[0]
		bits := 32
		switch {
		case first < 128:
			bits = 8
		case first < 192:
			bits = 16
		case first < 224:
			bits = 24
		}
		// Trailing zero octets below the class mask widen nothing; host
		// routes inside a class are written with a non-zero host part.
		if binary.BigEndian.Uint32(dst)&^binary.BigEndian.Uint32(net.CIDRMask(bits, 32)) != 0 {
			bits = 32
		}
		out = append(out, &types.Route{
			Dst: net.IPNet{IP: append(net.IP(nil), dst...), Mask: net.CIDRMask(bits, 32)},
			GW:  append(net.IP(nil), router...),
		})
	}
	return out
}
