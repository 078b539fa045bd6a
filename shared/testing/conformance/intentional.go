package conformance

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// Intentional is a divergence from the reference that cnibox keeps on
// purpose. Every declaration is a row of README.md's "Differences from
// the reference" table (TestReadmeTable keeps the two the same).
type Intentional struct {
	// Cases matches the case name ("<source>/<name>"), Runs the run name
	// ("cnibox", "cnibox-main+ref-meta", "switch:ref->cnibox", ...; empty:
	// every run), Divergence the divergence's "kind: detail".
	Cases, Runs, Divergence string
	// Plugins, when set, must match one plugin type of the case's chain
	// (or its IPAM): the difference belongs to that applet.
	Plugins string
	// With, when set, must match another divergence of the same case and
	// run: a consequence (the filter table's built-in chains, listed
	// because a declared rule made the table non-empty) is declared only
	// together with its cause.
	With string
	// Summary is the table's "what differs" column; Reason why.
	Summary, Reason string
}

// Intentionals are the declared divergences. Keep the patterns as narrow
// as the difference: a pattern that hides a different divergence
// weakens the comparison.
var Intentionals = []Intentional{
	{
		Cases:      `.*`,
		Divergence: `less: `,
		Summary:    "After the last DEL, the reference leaves state that cnibox does not (a kind `less` line: bandwidth's qdiscs and filters on a host interface it did not make, sysctls tuning set, empty state directories, what a failed ADD made)",
		Reason:     "cnibox's DEL removes what its ADD made; the comparison still fails on anything cnibox leaves that the reference does not (kind `leak`).",
	},
	{
		Cases:      `.*`,
		Divergence: `verb: \S+ reference err:plugin, \S+ err:(4|7|11) `,
		Summary:    "A request both refuse: cnibox answers with the spec's code (4: a bad CNI_* variable or a CNI_IFNAME that is taken; 7: an invalid network configuration; 11: the dhcp daemon cannot be reached, try again later) where the reference answers its generic 999",
		Reason:     "The spec defines these codes so that a runtime can tell a bad request from a transient failure; the reference wraps most errors as 999. Both sides fail the same verbs.",
	},
	{
		Cases:      `.*`,
		Divergence: `verb: DEL#\d+ reference err:plugin, \S+ ok `,
		Summary:    "DEL succeeds where the reference's DEL fails: for a configuration whose ADD was refused (nothing was made), and for a repeated DEL of host-device (the device is already back on the node)",
		Reason:     "The spec asks DEL to succeed when what it would remove is already gone; a DEL that keeps failing makes a runtime retry the pod's teardown forever. What DEL leaves is still compared (kind leak).",
	},
	{
		Cases:      `.*`,
		Plugins:    `loopback`,
		Divergence: `result: ADD#\d+ [-+]\.(ips\[\d\]\.version|ip4\.ip|ip6\.ip|interfaces\[0\]\.(name|mac|sandbox)|ips\[\d\]\.(address|interface)) = `,
		Summary:    "loopback's result has the shape of the requested spec version: `ip4`/`ip6` at 0.1.0 and 0.2.0, `ips[].version` \"4\"/\"6\" at 0.3.x; the reference prints the 0.3 shape at 0.1.0/0.2.0 and an empty `version` at 0.3.x",
		Reason:     "Those versions of the spec define the result that way (0.3.x requires `version`); a runtime speaking 0.1.0/0.2.0 reads `ip4`.",
	},
	{
		Cases:      `.*`,
		Plugins:    `macvlan`,
		Divergence: `result: ADD#\d+ \+\.dns\.`,
		Summary:    "macvlan's result keeps the DNS its IPAM plugin returned (merged with macvlan's own `dns`); the reference replaces it with macvlan's `dns`, empty when the config has none",
		Reason:     "A runtime that writes the pod's resolv.conf from the result gets the servers IPAM was configured with (README, macvlan).",
	},
	{
		Cases:      `matrix/bridge-1\.1\.0-l2-check-fails`,
		Plugins:    `bridge`,
		Divergence: `verb: CHECK#\d+ reference err:plugin, \S+ ok `,
		Summary:    "bridge without IPAM (L2 only): CHECK passes; the reference's CHECK fails with \"no plugin name provided\"",
		Reason:     "The reference's CHECK delegates to an IPAM plugin even when there is none; cnibox checks what ADD made (README, bridge).",
	},
	{
		Cases:      `reference/static-runtimeconfig-ips`,
		Plugins:    `static`,
		Divergence: `verb: CHECK#\d+ reference err:plugin, \S+ ok `,
		Summary:    "static with a route whose destination has host bits set (3ffe:ffff:0:01ff::1/64): CHECK passes; the reference's CHECK looks for the unmasked destination, which the kernel never holds, and fails on the route its own ADD installed",
		Reason:     "CHECK must pass on the attachment ADD made; cnibox compares the route as the kernel stores it (masked).",
	},
	{
		Cases:      `matrix/firewall-1\.0\.0-unknown-backend`,
		Plugins:    `firewall`,
		Divergence: `(state|leak): [-+]node (iptables|nft): `,
		Summary:    "firewall with `\"backend\": \"nftables\"`: cnibox uses its native nftables backend (table inet cni_firewall); the reference v1.9.1 has no such backend and falls back to iptables (CNI-FORWARD, CNI-ADMIN) without a word",
		Reason:     "The configuration asks for nftables; the rules are the same (README, firewall).",
	},
	{
		Cases:      `.*`,
		Plugins:    `tuning`,
		Divergence: `(state|leak): [-+]node files: tuning/`,
		Summary:    "tuning's backup (/var/lib/cni/tuning/, a 0700 directory) also records the network and the sysctls tuning set, and DEL restores those sysctls; the reference's backup directory is 0600 and its DEL leaves the sysctls as ADD set them",
		Reason:     "DEL undoes everything ADD changed in a pod that lives on (README, tuning); a 0600 directory cannot be searched. Each side reads the other's backup: unknown keys are ignored.",
	},
	{
		Cases:      `.*`,
		Plugins:    `portmap`,
		Divergence: `(state|leak): \+node (iptables: filter (:CNI-HOSTPORT-GUARD -$|-A INPUT -j CNI-HOSTPORT-GUARD$|-A CNI-HOSTPORT-GUARD )|nft: table ip filter / chain CNI-HOSTPORT-GUARD$|nft: table ip cni_hostport / chain guard($| / ))`,
		Summary:    "portmap adds a guard, filter INPUT → CNI-HOSTPORT-GUARD (nftables backend: chain guard of table ip cni_hostport), dropping packets DNATed to 127.0.0.0/8 that arrive on another interface than lo; like the reference's CNI-HOSTPORT-* chains (cni_hostport table) it stays after DEL",
		Reason:     "Host ports to localhost need route_localnet=1, which otherwise exposes the node's 127.0.0.1 services to its network (CVE-2020-8558); the guard is shared by every attachment.",
	},
	{
		Cases:      `.*`,
		Plugins:    `portmap`,
		With:       `(state|leak): \+node iptables: filter -A INPUT -j CNI-HOSTPORT-GUARD$`,
		Divergence: `(state|leak): \+node (iptables: (\*filter|filter :(INPUT|FORWARD|OUTPUT) ACCEPT)|nft: table ip filter( / chain (INPUT|FORWARD|OUTPUT)( / type filter hook \w+ priority filter; policy accept;)?)?)$`,
		Summary:    "(with the guard) the filter table's built-in chains, listed because the guard's rule makes the table non-empty",
		Reason:     "A consequence of the guard above, declared only together with it.",
	},
	{
		Cases:      `.*`,
		Plugins:    `bridge`,
		With:       `less: -node linkattr: \S+ <[A-Z,]*> .*link/ether=00:00:00:00:00:00 .*vlan_filtering=`,
		Divergence: `leak: \+node linkattr: \S+ <[A-Z,]*> .*link/ether=<mac> .*vlan_filtering=`,
		Summary:    "The bridge keeps the MAC cnibox gave it when it made it, also once its last port is gone; the reference's bridge takes its lowest port's MAC (00:00:00:00:00:00 without ports)",
		Reason:     "The gateway's MAC then does not change under the pods' ARP caches as pods come and go (applets/bridge ensureBridge).",
	},
	{
		Cases:      `.*`,
		Plugins:    `bridge`,
		Divergence: `(state|leak): \+node fdb: <mac> dev \S+ (vlan \d+ )?master \S+ permanent \(the bridge's own address\)$`,
		Summary:    "(with the fixed MAC) the bridge's permanent forwarding entry for its own address, which the kernel adds for an address set on the bridge",
		Reason:     "A consequence of the fixed MAC above.",
	},
	{
		Cases:      `matrix/bridge-1\.1\.0-defaultgw-and-default-route`,
		Plugins:    `bridge`,
		Divergence: `verb: (ADD|CHECK)#1 reference err:plugin, \S+ ok |(state|leak): \+`,
		Summary:    "bridge with `isDefaultGateway` and an IPAM default route without gateway: cnibox installs the default route once and the attachment works; the reference's ADD fails (route \"file exists\"), so everything the working attachment holds, and what its DEL leaves like any other (the bridge's gateway addresses, forwarding sysctls), shows as more",
		Reason:     "Both ask for the same default route via the bridge; refusing the duplicate leaves the pod without a network for nothing. cnibox accepts more than the reference here, never less.",
	},
	{
		Cases:      `.*`,
		Plugins:    `bandwidth`,
		With:       `less: -node qdisc: qdisc tbf `,
		Divergence: `leak: \+node qdisc: qdisc noqueue 0: dev \S+ root$`,
		Summary:    "After DEL on a host interface bandwidth did not make (a third-party main plugin's), the interface is back to its default root qdisc (noqueue); the reference's DEL leaves its tbf there (kind less)",
		Reason:     "The mirror of the reference's leftover, not a leftover of cnibox: DEL undoes what ADD did.",
	},
	{
		Cases:      `.*`,
		Plugins:    `portmap|firewall`,
		Divergence: `(state|leak): \+node files: cnibox-(portmap|firewall)/`,
		Summary:    "portmap and firewall keep each attachment's record under /var/lib/cni/cnibox-portmap/ and cnibox-firewall/ (the directories go with the last DEL)",
		Reason:     "DEL and GC then work without prevResult or runtimeConfig, as from a runtime that lost its cache (README, portmap and firewall).",
	},
	{
		Cases:      `.*`,
		Plugins:    `bandwidth`,
		Divergence: `(state|leak): -node qdisc: qdisc tbf 1: dev \S+ root rate \S+ burst \d+b (lat [0-9.e+]+s|limit \d+b)$`,
		Summary:    "A token bucket longer than the kernel can hold (containerd's MaxUint32 burst below ~16 Mbit/s, CRI-O's 4 GiB-less-one-bit burst at any rate): the reference's 32-bit arithmetic wraps its buffer and queue (10 Mbit/s: `burst 193273526b lat 275s`; CRI-O's: `limit 3123b`), tc then shows a latency in seconds or a bare limit",
		Reason:     "A wrapped value is an accident of integer overflow, not the request; cnibox installs the nearest bucket the kernel can express and warns (the next row).",
	},
	{
		Cases:      `.*`,
		Plugins:    `bandwidth`,
		With:       `(state|leak): -node qdisc: qdisc tbf 1: dev \S+ root rate \S+ burst \d+b (lat [0-9.e+]+s|limit \d+b)$`,
		Divergence: `(state|leak): \+node qdisc: qdisc tbf 1: dev \S+ root rate \S+ burst \d+b lat [0-9.]+ms$|verb: CHECK#\d+ reference ok, switch:cnibox->ref err:plugin \(reference: ""; switch:cnibox->ref: "Limit doesn't match"\)$`,
		Summary:    "(with the wrap above) cnibox clamps such a bucket to the longest the kernel holds (274.9 s of traffic: 10 Mbit/s gives `burst 343597382b`), with a queue of 25 ms beyond it, and logs a warning naming the field and the value used; the reference's CHECK of that attachment says \"Limit doesn't match\"",
		Reason:     "The pod starts with the rate it asked for (measured 0.95x of 1M/10M/100M through containerd, TestContainerdBandwidthAnnotations), never a seconds-long queue; cnibox's CHECK accepts both its own numbers and the reference's, so a node can switch under running pods.",
	},
	{
		Cases:      `chained/bandwidth-after-sriov`,
		Plugins:    `bandwidth`,
		Divergence: `verb: ADD#1 reference err:plugin, \S+ ok |state: (-node qdisc: qdisc noqueue 0|\+node qdisc: qdisc tbf 1): dev veth0 root`,
		Summary:    "bandwidth after a main plugin whose result lists only the pod's interface: cnibox finds the host end through the kernel (the pod interface's veth peer) and shapes it; the reference looks only in prevResult and refuses (\"no veth peer of container interface found in host ns\")",
		Reason:     "The kernel knows the peer whether or not the main plugin listed it; a pod that is not on a veth is still refused with a clear error.",
	},
	{
		Cases:      `.*`,
		Plugins:    `ptp`,
		Divergence: `state: \+node sysctl: net\.ipv6\.conf\.veth\*\.accept_dad = 0$`,
		Summary:    "ptp turns DAD off on the node's end of the veth (`accept_dad=0`); the reference leaves the kernel's default",
		Reason:     "Until the host end's link-local address finishes DAD, a routed pod's IPv6 goes nowhere: the first ping6 between two ptp pods answered 13-173 ms after ADD against 2.05-2.19 s with the reference (applets/ptp TestAsReference). Nothing else on that link can collide: it is a point-to-point veth.",
	},
	{
		Cases:      `.*`,
		Plugins:    `macvlan|ipvlan|vlan|host-device`,
		Divergence: `state: \+pod sysctl: net\.ipv6\.conf\.\S+\.(optimistic_dad|use_optimistic) = 1$`,
		Summary:    "macvlan, ipvlan, vlan and host-device turn on optimistic DAD on the pod's interface; the reference leaves it off and waits for DAD to finish (ip.SettleAddresses) before it answers",
		Reason:     "The pod's IPv6 addresses are usable at once, so ADD does not wait a second or more for DAD (shared/iface apply.go); a duplicate is still detected and reported by the kernel.",
	},
	{
		Cases:      `.*`,
		Plugins:    `dhcp`,
		Divergence: `(state|leak): [-+]node files: dhcp\.sock -(rw-rw----|rwxr-xr-x) ""$`,
		Summary:    "The dhcp daemon's socket is mode 0660; the reference's is 0755",
		Reason:     "Whoever can connect can ask for and release leases for any interface; only root and the socket's group may (applets/dhcp TestRenewAndRestart).",
	},
	{
		Cases:      `.*`,
		Plugins:    `bridge`,
		Divergence: `(state|leak): \+node nft: table bridge nat / chain cni-br-iface-\S+ / (arp saddr ether != <mac> drop|arp saddr ip \S+ return|ip6? saddr \S+ return|meta protocol (8021ad|8021q|arp|ip|ip6) drop) comment "macspoofchk-`,
		Summary:    "bridge's `macspoofchk` also drops IPv4/IPv6 from addresses IPAM did not give the pod and ARP whose sender MAC or address is not the pod's, and frames still VLAN-tagged (QinQ); the reference checks the source MAC only",
		Reason:     "With a MAC check alone a pod can still send as a neighbour's address and poison neighbour tables (SECURITY.md, TestIPSpoofCheck*).",
	},
	{
		Cases:      `.*`,
		Plugins:    `bridge`,
		Divergence: `(state|leak): [-+]node sysctl: net\.ipv6\.conf\.\S+\.\d+\.accept_ra = [01]$`,
		Summary:    "bridge's VLAN gateway (`<bridge>.<vlan>`, with `vlan` and `isGateway`) has `accept_ra=0`, as the bridge itself has with both; the reference leaves the gateway at the kernel's 1",
		Reason:     "The gateway is a node interface on the pods' VLAN: with accept_ra=1 a pod could configure the node's IPv6 addresses and routes with router advertisements (CVE-2020-10749), which is why both turn it off on the bridge.",
	},
	{
		Cases:      `reference/ipvlan-(no-master|chained)`,
		Plugins:    `ipvlan`,
		Divergence: `verb: CHECK#\d+ reference err:plugin, \S+ ok `,
		Summary:    "ipvlan CHECK of an attachment its own ADD made without `master` (the default-route interface) or chained after a result with the addresses: cnibox's CHECK passes; the reference's looks up master \"\" (\"Link not found\") or compares the prevResult's node interface with the pod's netns, and fails",
		Reason:     "CHECK must pass on the attachment ADD made; cnibox checks against the master ADD used and the pod's own interface.",
	},
	{
		Cases:      `reference/ipvlan-chained`,
		Plugins:    `ipvlan`,
		Divergence: `result: ADD#1 [-+]\.(interfaces\[[01]\]\.(name|mac|sandbox)|ips\[0\]\.interface) = `,
		Summary:    "ipvlan chained after a result that holds the addresses: cnibox keeps the previous result's interfaces and appends the ipvlan link, the addresses pointing at it; the reference replaces the list with the ipvlan link alone",
		Reason:     "The spec has a chained plugin pass the previous result on with what it added; the addresses still name the pod's interface.",
	},
	{
		Cases:      `.*`,
		Plugins:    `sbr|vrf`,
		Divergence: `verb: CHECK#\d+ reference err:plugin, \S+ ok `,
		Summary:    "A chain that ends in sbr or vrf (macvlan + sbr, bridge + tuning + sbr, ipvlan + vrf) passes CHECK; the reference's main plugin looks for the result's routes in the main table, where sbr and vrf no longer keep them, and fails every such CHECK",
		Reason:     "CHECK must pass on the attachment ADD made; cnibox's main applets also look in the VRF's table and in the tables that rules from the interface's addresses point to (README, sbr and vrf).",
	},
	{
		Cases:      `.*`,
		Plugins:    `vrf`,
		Divergence: `state: [-+]pod route6: (local fe80::<eui64> dev \S+ table \d+ proto kernel metric 0|fe80::/64 dev \S+ table \d+ proto kernel metric 256|multicast ff00::/8 dev \S+ table \d+ proto kernel metric 256)$`,
		Summary:    "vrf: the IPv6 link-local routes of the interface (its local address, fe80::/64, multicast ff00::/8) are in the VRF's table on one side and not yet on the other",
		Reason:     "Enslaving restarts the interface; the kernel adds those routes to the VRF's table as IPv6 comes back up on it (the local one when the link-local address has passed DAD, about a second later), before or after the snapshot on either side (neither side waits for it; seen in the VM under load).",
	},
	{
		Cases:      `matrix/tap-1\.1\.0-all-verbs`,
		Plugins:    `tap`,
		Divergence: `(result: ADD#\d+ [-+]\.interfaces\[0\]\.mac = |state: [-+]pod linkattr: eth0 |verb: CHECK#\d+ reference ok, switch:ref->cnibox err:plugin .*has MTU 1500, the config says 1400)`,
		Summary:    "tap with both `owner` and `group`: the tap has the configured `mtu` and `mac`; the reference creates it through vishvananda/netlink's tuntap path, which drops both (random MAC, MTU 1500), so cnibox's CHECK of such a reference tap reports the MTU",
		Reason:     "The configuration asks for that MTU and MAC, and without owner/group the reference applies them; a VM runtime sizes its guest's interface from them (README, tap).",
	},
	{
		Cases:      `.*`,
		Plugins:    `dhcp`,
		Divergence: `leak: \+node files: dhcp-release/`,
		Summary:    "dhcp DEL that cannot reach the daemon records the release in `dhcp-release/` beside the daemon's socket (in /run: gone at reboot); the reference keeps no such record, and its restarted daemon renews the lease of a pod that is gone",
		Reason:     "DEL must succeed, and the release must not be lost: the daemon carries out and removes the recorded releases when it starts and at every GC (README, dhcp). A DEL cannot tell a lease the runtime lost track of from none, so it records either way.",
	},
}

var (
	compiledMu sync.Mutex
	compiled   = map[string]*regexp.Regexp{}
)

func re(s string) *regexp.Regexp {
	compiledMu.Lock()
	defer compiledMu.Unlock()
	if r, ok := compiled[s]; ok {
		return r
	}
	r := regexp.MustCompile("^(?:" + s + ")")
	compiled[s] = r
	return r
}

func init() {
	for _, i := range Intentionals {
		re(i.Cases)
		re(i.Runs)
		re(i.Divergence)
		re(i.With)
		re(i.Plugins + "$")
	}
}

// classify returns the declaration d matches, if any. plugins are the
// case's plugin and IPAM types, all its divergences in all.
func classify(d Divergence, plugins []string, all []Divergence) *Intentional {
	for i := range Intentionals {
		in := &Intentionals[i]
		if !re(in.Cases).MatchString(d.Case) || (in.Runs != "" && !re(in.Runs).MatchString(d.Run)) || !re(in.Divergence).MatchString(d.Key()) {
			continue
		}
		if in.Plugins != "" && !anyMatch(re(in.Plugins+"$"), plugins) {
			continue
		}
		if in.With != "" {
			found := false
			for _, o := range all {
				found = found || (o.Run == d.Run && re(in.With).MatchString(o.Key()))
			}
			if !found {
				continue
			}
		}
		return in
	}
	return nil
}

func anyMatch(r *regexp.Regexp, l []string) bool {
	for _, s := range l {
		if r.MatchString(s) {
			return true
		}
	}
	return false
}

// ReadmeTable is the markdown table of Intentionals, as README.md holds it.
func ReadmeTable() string {
	var b strings.Builder
	b.WriteString("| Cases | What differs | Why |\n|---|---|---|\n")
	for _, i := range Intentionals {
		cases := "`" + i.Cases + "`"
		if i.Cases == ".*" {
			cases = "all"
		}
		if i.Plugins != "" {
			cases += ", chains with " + strings.ReplaceAll(i.Plugins, "|", " or ")
		}
		if i.Runs != "" {
			cases += " (runs `" + i.Runs + "`)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", strings.ReplaceAll(cases, "|", `\|`), strings.ReplaceAll(i.Summary, "|", `\|`), strings.ReplaceAll(i.Reason, "|", `\|`))
	}
	return b.String()
}

// CniboxOnly are the applets without a reference in the runner's reference
// set, with why and where they are tested instead. They need no switch case.
var CniboxOnly = map[string]string{
	"flannel": "flannel-io/cni-plugin is not part of containernetworking/plugins v1.9.1, and the Go module proxy here refuses its module (403), so make ref-plugins cannot build it; " +
		"applets/flannel checks its delegate config and saved file byte for byte against the reference's rendering (testdata/field/k3s/delegate-bridge-*), " +
		"TestReferenceSwitch (CNIBOX_REF_FLANNEL: the reference built from its source) switches a pod both ways and compares the saved files, " +
		"and shared/testing/cluster runs it under real flanneld",
}
