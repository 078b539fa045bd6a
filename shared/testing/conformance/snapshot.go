package conformance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// state is a snapshot of a run's node and pod: testnet's Snapshot (links,
// addresses, routes, rules, qdiscs, iptables, ip6tables, nftables, the
// state and run dirs' files) plus what a differential comparison needs
// beyond a leak check: link attributes, permanent neighbours, bridge
// VLANs, tc filters and the sysctls that changed. Lines are "node
// <section>: <line>" or "pod <section>: <line>", not yet normalised.
type state []string

// sysctlBase is the sysctls of a netns before the case's first verb.
type sysctlBase map[string]string

// takeState snapshots the node and the pod. base holds the sysctls of
// both before the first verb: only the ones that changed are part of the
// state.
func takeState(t *testing.T, e *env, base map[string]sysctlBase) state {
	var out state
	for _, side := range []struct {
		name string
		ns   *testnet.NS
		dirs []string
	}{{"node", e.r.Node, []string{e.r.StateDir, e.r.RunDir}}, {"pod", e.pod, nil}} {
		if _, err := os.Stat(side.ns.Path); err != nil {
			continue // the case deleted it
		}
		s := &testnet.Snapshotter{Node: side.ns, Dirs: side.dirs, Ignore: testnet.DefaultIgnore, NoSettle: true, Batch: true, Extra: extraCmds}
		snap := s.Take(t)
		for sec, lines := range snap.Sections {
			for _, l := range lines {
				if sec == "route6" && dadRoute.MatchString(l) {
					continue
				}
				out = append(out, side.name+" "+sec+": "+l)
			}
		}
		for _, l := range extraLines(t, side.ns, snap.Raw, base[side.name], e.named) {
			out = append(out, side.name+" "+l)
		}
	}
	sort.Strings(out)
	return out
}

// dadRoute matches the local table's routes for an IPv6 address, which
// the kernel adds when the address's DAD ends, and the routes of a
// device's IPv6 link-local and multicast, which it adds when the device's
// carrier comes up (linkwatch, up to a second later): when that is
// depends on the machine's load, not on the plugin, and the address
// itself is in the "addr" section. (Without them, snapshots need not
// wait for DAD.)
var dadRoute = regexp.MustCompile(`^((local|anycast) \S+ dev \S+ table local proto kernel|fe80::/64 dev \S+ proto kernel metric 256|multicast ff00::/8 dev \S+ table local proto kernel metric 256)`)

// eui64Addr matches a kernel-generated IPv6 link-local address (after
// normalisation): the kernel adds it when the carrier comes up, at a time
// set by linkwatch; whether it will is set by addrgenmode (linkattr) and
// disable_ipv6 (sysctl), which are compared.
var eui64Addr = regexp.MustCompile(`^(node|pod) addr: \S+ inet6 fe80::<eui64>/64$`)

// extraCmds are the commands of the sections testnet's Snapshot does not
// take; they run in the snapshot's batch.
var extraCmds = [][]string{{"ip", "-4", "neigh", "show", "nud", "permanent"}, {"ip", "-6", "neigh", "show", "nud", "permanent"},
	{"bridge", "-o", "vlan", "show"}, {"bridge", "fdb", "show"}}

// extraLines are the sections testnet's Snapshot does not take, from the
// raw outputs of the snapshot's batch (raw) and the sysctls.
func extraLines(t *testing.T, n *testnet.NS, raw map[string]string, base sysctlBase, named []string) []string {
	get := func(cmd ...string) string {
		out, ok := raw[strings.Join(cmd, " ")]
		if !ok {
			t.Fatalf("snapshot: no output of %q", cmd)
		}
		return out
	}
	outs := []string{get("ip", "-o", "-d", "link", "show"), get("ip", "-4", "neigh", "show", "nud", "permanent"),
		get("ip", "-6", "neigh", "show", "nud", "permanent"), get("bridge", "-o", "vlan", "show"), get("tc", "qdisc", "show"),
		get("bridge", "fdb", "show")}
	var out []string
	for _, l := range linkAttrLines(outs[0]) {
		out = append(out, "linkattr: "+l)
	}
	// Only permanent neighbours: the others are the kernel's, learnt from
	// traffic, and come and go.
	for _, l := range strings.Split(outs[1]+outs[2], "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, "neigh: "+l)
		}
	}
	for _, l := range strings.Split(outs[3], "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] != "port" {
			out = append(out, "vlan: "+strings.Join(f, " "))
		}
	}
	// The bridges' static and permanent forwarding entries (a port's own
	// MAC, per VLAN): the learnt ones come with traffic, and the
	// devices' own multicast entries with IPv6 link-local addresses.
	for _, l := range strings.Split(outs[5], "\n") {
		if strings.Contains(l, " master ") && (strings.Contains(l, " permanent") || strings.Contains(l, " static")) {
			f := strings.Fields(l)
			line := "fdb: " + strings.Join(f, " ")
			var dev, master string
			for i := 0; i+1 < len(f); i++ {
				switch f[i] {
				case "dev":
					dev = f[i+1]
				case "master":
					master = f[i+1]
				}
			}
			if dev != "" && dev == master {
				line += " (the bridge's own address)"
			}
			out = append(out, line)
		}
	}
	// tc filters of the devices that have a qdisc of their own (a filter
	// needs one), at the root and at ingress.
	var cmds [][]string
	seen := map[string]bool{}
	for _, l := range strings.Split(outs[4], "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[0] == "qdisc" && f[1] != "noqueue" && f[3] == "dev" && !seen[f[4]] {
			seen[f[4]] = true
			cmds = append(cmds, []string{"tc", "filter", "show", "dev", f[4]}, []string{"tc", "filter", "show", "dev", f[4], "ingress"})
		}
	}
	if len(cmds) > 0 {
		flts, err := n.RunBatch(cmds)
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		for i, flt := range flts {
			dev := cmds[i][4] + " " + strings.Join(cmds[i][5:], "")
			for _, l := range strings.Split(flt, "\n") {
				if l = strings.Join(strings.Fields(l), " "); l != "" {
					out = append(out, "filter: "+dev+" "+l)
				}
			}
		}
	}
	now, err := sysctls(n, named)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for k, v := range now {
		if old, ok := base[k]; ok && old == v {
			continue
		}
		if !ok(base, k) && sameAsDefault(now, k, v) {
			continue
		}
		out = append(out, "sysctl: "+k+" = "+v)
	}
	return out
}

// ok reports whether base has key k.
func ok(base sysctlBase, k string) bool { _, found := base[k]; return found }

// perDevice matches the sysctls of one device: net.ipv4.conf.<dev>.x,
// net.ipv6.conf.<dev>.x, net.ipv4.neigh.<dev>.x, net.ipv6.neigh.<dev>.x.
var perDevice = regexp.MustCompile(`^(net\.ipv[46]\.(?:conf|neigh))\.([^.]+)\.(.+)$`)

// sameAsDefault reports whether k, a sysctl of a device made since the
// baseline, has the value the kernel gives a new veth (newDevice), or
// else the value of its family's "default": only what a plugin set on a
// new device is state, not the kernel's defaults.
func sameAsDefault(now sysctlBase, k, v string) bool {
	m := perDevice.FindStringSubmatch(k)
	if m == nil {
		return false
	}
	if tv, found := newDevice[m[1]+".*."+m[3]]; found {
		return tv == v
	}
	def, found := now[m[1]+".default."+m[3]]
	return found && def == v
}

var (
	newDeviceOnce sync.Once
	// newDevice holds the per-device sysctls of a veth the kernel just
	// made, keyed "net.ipv6.neigh.*.retrans_time": the per-device neigh
	// values are not their family's "default" entries (ND's retrans_time
	// is in other units), so only a real new device tells the defaults.
	newDevice map[string]string
)

// learnNewDevice fills newDevice, once, from a veth made in a scratch netns.
func learnNewDevice(t *testing.T) {
	newDeviceOnce.Do(func() {
		n := testnet.NewNS(t, "probe")
		defer n.Delete()
		n.MustRun("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
		all, err := sysctls(n, nil)
		if err != nil {
			t.Fatal(err)
		}
		newDevice = map[string]string{}
		for k, v := range all {
			if m := perDevice.FindStringSubmatch(k); m != nil && m[2] == "probe0" {
				newDevice[m[1]+".*."+m[3]] = v
			}
		}
	})
}

// volatileSysctl are sysctls the kernel changes by itself.
var volatileSysctl = regexp.MustCompile(`^net\.netfilter\.nf_conntrack_count$|\.stable_secret$|^net\.ipv6\.conf\.[^.]+\.mtu$`)

// sysctlRoots are the per-device sysctl directories (one subdirectory per
// device, plus all and default), of which sysctlLeaves are read: the
// per-device settings the CNI plugins set (forwarding, accept_dad,
// accept_ra, rp_filter, route_localnet, arp_notify, proxy_arp...).
// Reading all of /proc/sys/net took a third of a run's CPU time (a sysctl
// read costs ~0.1 ms of kernel time, and there are thousands); besides
// these, ip_forward and every key the case names (tuning's sysctls) are
// read.
var sysctlRoots = []string{"/proc/sys/net/ipv4/conf", "/proc/sys/net/ipv6/conf"}

var sysctlLeaves = map[string][]string{
	"/proc/sys/net/ipv4/conf": {"forwarding", "mc_forwarding", "rp_filter", "accept_redirects", "send_redirects",
		"secure_redirects", "accept_source_route", "proxy_arp", "proxy_arp_pvlan", "arp_notify", "arp_ignore",
		"arp_announce", "arp_filter", "arp_accept", "route_localnet", "promote_secondaries", "disable_policy",
		"bc_forwarding", "log_martians", "src_valid_mark", "accept_local"},
	"/proc/sys/net/ipv6/conf": {"forwarding", "accept_dad", "accept_ra", "accept_ra_defrtr", "autoconf", "disable_ipv6",
		"optimistic_dad", "use_optimistic", "ndisc_notify", "proxy_ndp", "addr_gen_mode", "keep_addr_on_down",
		"dad_transmits", "enhanced_dad", "accept_redirects"},
}

// sysctlKeyRe finds the sysctl keys a case names, in dotted or path form.
var sysctlKeyRe = regexp.MustCompile(`\bnet[./][A-Za-z0-9_./-]*[A-Za-z0-9_]`)

// namedSysctls are the /proc/sys paths of the sysctls the case's text
// names, and ip_forward.
func namedSysctls(c *Case) []string {
	paths := []string{"/proc/sys/net/ipv4/ip_forward"}
	if c == nil {
		return paths
	}
	raw, _ := json.Marshal(c)
	text := string(raw) + string(c.Conflist) + string(c.Config)
	for _, k := range sysctlKeyRe.FindAllString(text, -1) {
		if !strings.Contains(k, "/") {
			k = strings.ReplaceAll(k, ".", "/")
		}
		paths = append(paths, "/proc/sys/"+k)
	}
	return paths
}

// sysctls reads the sysctls of the netns under sysctlRoots and the given
// paths. /proc/sys/net shows the netns of the thread that opens it, so it
// is read on a thread inside.
func sysctls(n *testnet.NS, named []string) (sysctlBase, error) {
	out := sysctlBase{}
	read := func(path string) {
		data, err := os.ReadFile(path)
		if err != nil {
			return // absent, write-only (flush) or unreadable (stable_secret)
		}
		key := strings.ReplaceAll(strings.TrimPrefix(path, "/proc/sys/"), "/", ".")
		if volatileSysctl.MatchString(key) {
			return
		}
		out[key] = strings.Join(strings.Fields(string(data)), " ")
	}
	err := n.Do(func() error {
		for _, root := range sysctlRoots {
			devs, err := os.ReadDir(root)
			if err != nil {
				return err
			}
			for _, d := range devs {
				for _, leaf := range sysctlLeaves[root] {
					read(filepath.Join(root, d.Name(), leaf))
				}
			}
		}
		for _, p := range named {
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				read(p)
			}
		}
		return nil
	})
	return out, err
}

var (
	linkHead = regexp.MustCompile(`^\d+: ([^:@ ]+)(?:@[^: ]+)?: <([^>]*)> (.*)$`)
	// linkKeys are the attributes of "ip -d link" a plugin sets: MTU, the
	// MAC, promiscuity, the kind's mode and ids, and a bridge port's and
	// a bridge's switches. Timers, counters and states are not.
	linkKeys = map[string]bool{
		"mtu": true, "link/ether": true, "promiscuity": true, "mode": true, "id": true, "protocol": true,
		"vlan_filtering": true, "vlan_default_pvid": true, "vlan_protocol": true, "hairpin": true,
		"learning": true, "flood": true, "isolated": true, "proxy_arp": true, "neigh_suppress": true,
		"addrgenmode": true, "txqueuelen": true, "qlen": true,
	}
	// linkFlags are the flags that are configuration, not carrier state.
	linkFlags = map[string]bool{"UP": true, "NOARP": true, "PROMISC": true, "MULTICAST": true, "POINTOPOINT": true}
)

// linkAttrLines turns "ip -o -d link" into "name flags key=value ..." lines.
func linkAttrLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		m := linkHead.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		var flags []string
		for _, f := range strings.Split(m[2], ",") {
			if linkFlags[f] {
				flags = append(flags, f)
			}
		}
		line := m[1] + " <" + strings.Join(flags, ",") + ">"
		f := strings.Fields(strings.ReplaceAll(m[3], `\`, " "))
		for i := 0; i+1 < len(f); i++ {
			k := f[i]
			if !linkKeys[k] {
				continue
			}
			line += " " + k + "=" + f[i+1]
			i++
		}
		lines = append(lines, line)
	}
	return lines
}
