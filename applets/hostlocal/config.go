package hostlocal

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnibox/cnibox/shared/cni"
)

// DefaultDataDir is where the reference host-local keeps its state, and so
// where we keep ours: a node can switch between the two.
const DefaultDataDir = "/var/lib/cni/networks"

// Config is the network configuration host-local reads. As an IPAM plugin
// it gets the whole configuration of the plugin that delegates to it; only
// "ipam", "runtimeConfig" and "args" matter here.
type Config struct {
	cni.NetConf
	IPAM *IPAMConf `json:"ipam"`
	// RuntimeConfig carries the capabilities "ipRanges" (range sets put
	// before the configured ones) and "ips" (addresses to reserve).
	RuntimeConfig struct {
		IPRanges [][]RangeConf `json:"ipRanges,omitempty"`
		IPs      []string      `json:"ips,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	// Args is the conventions' "args": {"cni": {"ips": [...]}}.
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args,omitempty"`
}

// IPAMConf is the "ipam" object.
type IPAMConf struct {
	Type string `json:"type"`
	// The legacy single range: subnet, rangeStart, rangeEnd and gateway at
	// the top of "ipam" make a range set put before "ranges".
	RangeConf
	// Ranges lists range sets; one address is allocated from each.
	Ranges [][]RangeConf `json:"ranges,omitempty"`
	// Routes are returned in the result as they are.
	Routes []*types.Route `json:"routes,omitempty"`
	// DataDir is the root of the state; the network's reservations live in
	// DataDir/<network name>. Default /var/lib/cni/networks.
	DataDir string `json:"dataDir,omitempty"`
	// ResolvConf names a resolv.conf whose nameserver, domain, search and
	// options lines become the result's DNS.
	ResolvConf string `json:"resolvConf,omitempty"`
}

// params is a validated configuration.
type params struct {
	network string
	dataDir string
	sets    []RangeSet
	routes  []*types.Route
	// requested are the addresses asked for, with the field that asked.
	requested []requestedIP
	conf      *Config
}

type requestedIP struct {
	addr  netip.Addr
	field string
}

// envArgs is what host-local reads from CNI_ARGS.
type envArgs struct {
	types.CommonArgs
	IP types.UnmarshallableString `json:"ip,omitempty"`
}

// decode reads the configuration far enough to find the store: enough
// for DEL and GC, which must work even when the ranges have become
// invalid (a DEL that fails on a config edit leaks addresses forever).
func decode(req *cni.Request) (*Config, string, error) {
	conf := &Config{}
	if err := req.Decode(conf); err != nil {
		return nil, "", err
	}
	if conf.IPAM == nil {
		return nil, "", cni.ConfigError("ipam: missing; host-local needs an \"ipam\" object")
	}
	dir := conf.IPAM.DataDir
	if dir == "" {
		dir = DefaultDataDir
	}
	if !filepath.IsAbs(dir) {
		return nil, "", cni.ConfigError("ipam.dataDir: %q is not an absolute path", conf.IPAM.DataDir)
	}
	return conf, filepath.Clean(dir), nil
}

// load decodes and validates the whole configuration, CNI_ARGS included.
func load(req *cni.Request) (*params, error) {
	conf, dir, err := decode(req)
	if err != nil {
		return nil, err
	}
	p, err := validate(conf, req.Version, req.Args)
	if err != nil {
		return nil, err
	}
	p.network = req.Name
	p.dataDir = dir
	return p, nil
}

// validate turns a decoded configuration into params. Errors are config
// errors (code 7) naming the field, except CNI_ARGS ones (code 4).
func validate(conf *Config, version, cniArgs string) (*params, error) {
	p := &params{conf: conf, routes: conf.IPAM.Routes}

	for i, rs := range conf.RuntimeConfig.IPRanges {
		set, err := parseRangeSet(rs, fmt.Sprintf("runtimeConfig.ipRanges[%d]", i))
		if err != nil {
			return nil, cni.ConfigError("%v", err)
		}
		p.sets = append(p.sets, set)
	}
	if conf.IPAM.Subnet != "" {
		set, err := parseRangeSet([]RangeConf{conf.IPAM.RangeConf}, "ipam")
		if err != nil {
			return nil, cni.ConfigError("%v", err)
		}
		p.sets = append(p.sets, set)
	} else if conf.IPAM.RangeStart != "" || conf.IPAM.RangeEnd != "" || conf.IPAM.Gateway != "" {
		return nil, cni.ConfigError("ipam.subnet: missing; ipam.rangeStart, rangeEnd and gateway need it")
	}
	for i, rs := range conf.IPAM.Ranges {
		set, err := parseRangeSet(rs, fmt.Sprintf("ipam.ranges[%d]", i))
		if err != nil {
			return nil, cni.ConfigError("%v", err)
		}
		p.sets = append(p.sets, set)
	}
	if len(p.sets) == 0 {
		return nil, cni.ConfigError("ipam.ranges: no IP ranges specified (set ipam.ranges or ipam.subnet)")
	}

	v4, v6 := 0, 0
	for i := range p.sets {
		if p.sets[i].Is4() {
			v4++
		} else {
			v6++
		}
		for j := range p.sets[:i] {
			if p.sets[i].overlaps(&p.sets[j]) {
				return nil, cni.ConfigError("%s: overlaps %s (%s)", p.sets[i].Field, p.sets[j].Field, p.sets[j].String())
			}
		}
	}
	if (v4 > 1 || v6 > 1) && !cni.VersionAtLeast(version, "0.3.0") {
		return nil, cni.ConfigError("ipam.ranges: cniVersion %s allows one address per family; %d IPv4 and %d IPv6 range sets need 0.3.0 or later", version, v4, v6)
	}

	// Requested addresses, in the reference's order: CNI_ARGS, args, runtimeConfig.
	if cniArgs != "" {
		var e envArgs
		if err := types.LoadArgs(cniArgs, &e); err != nil {
			return nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_ARGS: %v", err)
		}
		if e.IP != "" {
			for _, s := range strings.Split(string(e.IP), ",") {
				a, err := parseRequested(s)
				if err != nil {
					return nil, cni.Errorf(cni.ErrInvalidEnv, "CNI_ARGS IP: %v", err)
				}
				p.requested = append(p.requested, requestedIP{a, "CNI_ARGS IP"})
			}
		}
	}
	if conf.Args != nil && conf.Args.CNI != nil {
		for i, s := range conf.Args.CNI.IPs {
			a, err := parseRequested(s)
			if err != nil {
				return nil, cni.ConfigError("args.cni.ips[%d]: %v", i, err)
			}
			p.requested = append(p.requested, requestedIP{a, fmt.Sprintf("args.cni.ips[%d]", i)})
		}
	}
	for i, s := range conf.RuntimeConfig.IPs {
		a, err := parseRequested(s)
		if err != nil {
			return nil, cni.ConfigError("runtimeConfig.ips[%d]: %v", i, err)
		}
		p.requested = append(p.requested, requestedIP{a, fmt.Sprintf("runtimeConfig.ips[%d]", i)})
	}
	return p, nil
}

// assignRequested gives each range set at most one of the requested
// addresses (the first that falls in it, as the reference does). An
// address that falls in no set, or in a set that already got one, is an
// error naming the field that asked for it.
func assignRequested(p *params) ([]netip.Addr, error) {
	out := make([]netip.Addr, len(p.sets))
	seen := map[netip.Addr]bool{}
	for _, r := range p.requested {
		if seen[r.addr] {
			continue
		}
		seen[r.addr] = true
		placed := false
		for i := range p.sets {
			if p.sets[i].Contains(r.addr) && !out[i].IsValid() {
				if !p.sets[i].Allocatable(r.addr) {
					return nil, cni.ConfigError("%s: %s is the gateway, subnet or broadcast address of %s and cannot be allocated", r.field, r.addr, p.sets[i].Field)
				}
				out[i] = r.addr
				placed = true
				break
			}
		}
		if !placed {
			return nil, cni.ConfigError("%s: failed to allocate all requested IPs: %s is outside every range set (or its range set already has a requested address)", r.field, r.addr)
		}
	}
	return out, nil
}
