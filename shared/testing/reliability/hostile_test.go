package reliability

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// hostileBase is a valid ADD config per applet, which the cases below
// break one thing of. Chained applets get a prevResult.
func hostileBase(applet string) map[string]any {
	conf := map[string]any{"cniVersion": "1.0.0", "name": "hostile", "type": applet}
	ipam := map[string]any{"type": "host-local", "ranges": []any{[]any{map[string]any{"subnet": "10.77.0.0/24"}}}}
	prev := map[string]any{"cniVersion": "1.0.0",
		"interfaces": []any{map[string]any{"name": "cni0"}, map[string]any{"name": "veth0"}, map[string]any{"name": "eth0", "sandbox": "/x"}},
		"ips":        []any{map[string]any{"address": "10.77.0.2/24", "gateway": "10.77.0.1", "interface": 2}}}
	switch applet {
	case "bridge", "ptp", "dummy", "tap":
		conf["ipam"] = ipam
	case "macvlan", "ipvlan", "vlan":
		conf["master"] = "eth9"
		conf["vlanId"] = 10
		conf["ipam"] = ipam
	case "host-device":
		conf["device"] = "eth9"
	case "host-local":
		conf["ipam"] = ipam
	case "static":
		conf["ipam"] = map[string]any{"type": "static", "addresses": []any{map[string]any{"address": "10.77.0.9/24"}}}
	case "dhcp":
		conf["ipam"] = map[string]any{"type": "dhcp"}
	case "portmap":
		conf["prevResult"] = prev
		conf["runtimeConfig"] = map[string]any{"portMappings": []any{map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	case "tuning", "bandwidth", "firewall", "sbr":
		conf["prevResult"] = prev
	case "vrf":
		conf["prevResult"] = prev
		conf["vrfname"] = "red"
	}
	return conf
}

// hostileCase is one bad input: a change of the base config or of the
// environment, the CNI error code it must get and a word the message
// must contain (the field).
type hostileCase struct {
	name    string
	applets []string // nil: every applet
	env     map[string]string
	conf    func(c map[string]any)
	stdin   []byte
	code    uint
	field   string
}

func set(path string, v any) func(map[string]any) {
	return func(c map[string]any) {
		keys := strings.Split(path, ".")
		m := c
		for _, k := range keys[:len(keys)-1] {
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
		m[keys[len(keys)-1]] = v
	}
}

func hostileCases() []hostileCase {
	pm := func(m map[string]any) func(map[string]any) {
		return set("runtimeConfig.portMappings", []any{m})
	}
	return []hostileCase{
		// Every applet: the protocol itself.
		{name: "not JSON", stdin: []byte("{this is not json"), code: 6, field: "network configuration"},
		{name: "config is a list", stdin: []byte(`["a"]`), code: 7, field: "top level"},
		{name: "name of the wrong type", conf: set("name", 42), code: 7, field: "name"},
		{name: "name with a slash", conf: set("name", "../../etc"), code: 7, field: "name"},
		{name: "name with a space", conf: set("name", "a b"), code: 7, field: "name"},
		{name: "unsupported cniVersion", conf: set("cniVersion", "99.0.0"), code: 1, field: "incompatible"},
		{name: "garbage cniVersion", conf: set("cniVersion", "1.0.0; rm -rf /"), code: 6, field: "cniVersion"},
		{name: "unknown CNI_COMMAND", env: map[string]string{"CNI_COMMAND": "PWN"}, code: 4, field: "CNI_COMMAND"},
		{name: "missing CNI_NETNS", env: map[string]string{"CNI_NETNS": ""}, code: 4, field: "CNI_NETNS"},
		{name: "missing CNI_CONTAINERID", env: map[string]string{"CNI_CONTAINERID": ""}, code: 4, field: "CNI_CONTAINERID"},
		{name: "container ID traversal", env: map[string]string{"CNI_CONTAINERID": "../../../etc/passwd"}, code: 4, field: "CNI_CONTAINERID"},
		{name: "container ID traversal on DEL", env: map[string]string{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "../x"}, code: 4, field: "CNI_CONTAINERID"},
		{name: "ifname with a slash", env: map[string]string{"CNI_IFNAME": "a/b"}, code: 4, field: "CNI_IFNAME"},
		{name: "ifname ..", env: map[string]string{"CNI_IFNAME": ".."}, code: 4, field: "CNI_IFNAME"},
		{name: "ifname with a space", env: map[string]string{"CNI_IFNAME": "eth 0"}, code: 4, field: "CNI_IFNAME"},
		{name: "ifname of 16 characters", env: map[string]string{"CNI_IFNAME": "abcdefghijklmnop"}, code: 4, field: "CNI_IFNAME"},
		{name: "ifname on DEL with a colon", env: map[string]string{"CNI_COMMAND": "DEL", "CNI_IFNAME": "eth0:1"}, code: 4, field: "CNI_IFNAME"},
		{name: "config over 16 MiB", stdin: []byte(`{"name":"x","pad":"` + strings.Repeat("a", 16<<20) + `"}`), code: 7, field: "larger"},

		// IPAM and main plugins.
		{name: "ipam.type with a path", applets: []string{"bridge", "ptp", "macvlan"}, conf: set("ipam.type", "../../../bin/sh"), field: "ipam"},
		{name: "bridge name with a slash", applets: []string{"bridge"}, conf: set("bridge", "br/../x"), code: 7, field: "bridge"},
		{name: "bridge name of 16 characters", applets: []string{"bridge"}, conf: set("bridge", "abcdefghijklmnop"), code: 7, field: "bridge"},
		{name: "bridge name with a NUL", applets: []string{"bridge"}, conf: set("bridge", "br\x00x"), code: 7, field: "bridge"},
		{name: "bridge name with a control character", applets: []string{"bridge"}, conf: set("bridge", "br\x7f"), code: 7, field: "bridge"},
		{name: "master with a NUL", applets: []string{"macvlan", "ipvlan", "vlan"}, conf: set("master", "eth\x009"), code: 7, field: "master"},
		{name: "host-device name with a NUL", applets: []string{"host-device"}, conf: set("device", "eth\x009"), code: 7, field: "device"},
		{name: "bridge vlan 5000", applets: []string{"bridge"}, conf: set("vlan", 5000), code: 7, field: "vlan"},
		{name: "negative mtu", applets: []string{"bridge", "ptp", "macvlan", "tuning"}, conf: set("mtu", -1), code: 7, field: "mtu"},
		{name: "mtu of the wrong type", applets: []string{"bridge", "ptp", "macvlan", "tuning"}, conf: set("mtu", "big"), code: 7, field: "mtu"},
		{name: "huge mtu", applets: []string{"bridge", "ptp", "macvlan", "tuning"}, conf: set("mtu", 1e12), code: 7, field: "mtu"},
		{name: "CNI_ARGS garbage", applets: []string{"bridge", "host-local", "static", "macvlan", "tuning"}, env: map[string]string{"CNI_ARGS": "a=b=c;;=;\x01"}, code: 4, field: "CNI_ARGS"},
		{name: "CNI_ARGS bad IP", applets: []string{"host-local", "static"}, env: map[string]string{"CNI_ARGS": "IgnoreUnknown=1;IP=999.1.1.1"}, field: "IP"},
		{name: "macvlan master with a slash", applets: []string{"macvlan"}, conf: set("master", "../eth0"), field: "master"},
		{name: "macvlan mode", applets: []string{"macvlan"}, conf: set("mode", "evil"), code: 7, field: "mode"},
		{name: "vlanId 5000", applets: []string{"vlan"}, conf: set("vlanId", 5000), code: 7, field: "vlanId"},
		{name: "negative vlanId", applets: []string{"vlan"}, conf: set("vlanId", -1), code: 7, field: "vlanId"},
		{name: "host-device name traversal", applets: []string{"host-device"}, conf: set("device", "../../etc"), field: "device"},
		{name: "host-local bad subnet", applets: []string{"host-local", "bridge"}, conf: set("ipam.ranges", []any{[]any{map[string]any{"subnet": "10.0.0.0/99"}}}), code: 7, field: "subnet"},
		{name: "host-local relative dataDir", applets: []string{"host-local"}, conf: set("ipam.dataDir", "../../etc"), code: 7, field: "dataDir"},
		{name: "host-local ranges of the wrong type", applets: []string{"host-local"}, conf: set("ipam.ranges", "10.0.0.0/8"), code: 7, field: "ranges"},
		{name: "static bad address", applets: []string{"static"}, conf: set("ipam.addresses", []any{map[string]any{"address": "10.0.0.300/24"}}), code: 7, field: "address"},

		// Meta plugins.
		{name: "sysctl outside net", applets: []string{"tuning"}, conf: set("sysctl", map[string]any{"kernel.panic": "1"}), code: 7, field: "sysctl"},
		{name: "sysctl traversal", applets: []string{"tuning"}, conf: set("sysctl", map[string]any{"net/../kernel/panic": "1"}), code: 7, field: "sysctl"},
		{name: "sysctl traversal in the ifname part", applets: []string{"tuning"}, conf: set("sysctl", map[string]any{"net.ipv4.conf.eth0/../../../../kernel.panic": "1"}), code: 7, field: "sysctl"},
		{name: "tuning bad mac", applets: []string{"tuning"}, conf: set("mac", "zz:zz"), code: 7, field: "mac"},
		{name: "negative ingressRate", applets: []string{"bandwidth"}, conf: set("ingressRate", -1), code: 7, field: "ingressRate"},
		{name: "huge ingressRate", applets: []string{"bandwidth"}, conf: set("ingressRate", 1e30), code: 7, field: "ingressRate"},
		{name: "runtime bandwidth of the wrong type", applets: []string{"bandwidth"}, conf: set("runtimeConfig.bandwidth", map[string]any{"ingressRate": "fast"}), code: 7, field: "ingressRate"},
		{name: "negative hostPort", applets: []string{"portmap"}, conf: pm(map[string]any{"hostPort": -1, "containerPort": 80, "protocol": "tcp"}), code: 7, field: "hostPort"},
		{name: "hostPort 65536", applets: []string{"portmap"}, conf: pm(map[string]any{"hostPort": 65536, "containerPort": 80, "protocol": "tcp"}), code: 7, field: "hostPort"},
		{name: "containerPort 0", applets: []string{"portmap"}, conf: pm(map[string]any{"hostPort": 8080, "containerPort": 0, "protocol": "tcp"}), code: 7, field: "containerPort"},
		{name: "protocol with injected arguments", applets: []string{"portmap"}, conf: pm(map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp -j ACCEPT"}), code: 7, field: "protocol"},
		{name: "hostIP garbage", applets: []string{"portmap"}, conf: pm(map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "1.2.3.4 -j ACCEPT"}), code: 7, field: "hostIP"},
		{name: "condition with an injected rule", applets: []string{"portmap"}, conf: set("conditionsV4", []any{"-s 10.0.0.1\n-A INPUT -j DROP"}), code: 7, field: "conditionsV4"},
		{name: "condition with an injected table", applets: []string{"portmap"}, conf: set("conditionsV6", []any{"-s ::1\nCOMMIT\n*filter\n-F"}), code: 7, field: "conditionsV6"},
		{name: "externalSetMarkChain injection", applets: []string{"portmap"}, conf: set("externalSetMarkChain", "X -j ACCEPT"), code: 7, field: "externalSetMarkChain"},
		{name: "markMasqBit 99", applets: []string{"portmap"}, conf: set("markMasqBit", 99), code: 7, field: "markMasqBit"},
		{name: "firewall admin chain injection", applets: []string{"firewall"}, conf: set("iptablesAdminChainName", "ADMIN -j ACCEPT"), code: 7, field: "iptablesAdminChainName"},
		{name: "firewall admin chain line break", applets: []string{"firewall"}, conf: set("iptablesAdminChainName", "A\n-F"), code: 7, field: "iptablesAdminChainName"},
		{name: "firewall backend", applets: []string{"firewall"}, conf: set("backend", "evil"), code: 7, field: "backend"},
		{name: "firewall ingressPolicy", applets: []string{"firewall"}, conf: set("ingressPolicy", "evil"), code: 7, field: "ingressPolicy"},
		{name: "prevResult of the wrong type", applets: []string{"portmap", "tuning", "bandwidth", "firewall"}, conf: set("prevResult", "x"), field: "prevResult"},
		{name: "prevResult with a bad address", applets: []string{"portmap", "firewall"}, conf: set("prevResult.ips", []any{map[string]any{"address": "300.1.1.1/24"}}), field: "prevResult"},
	}
}

func appliesTo(c hostileCase, applet string) bool {
	if c.applets == nil {
		return true
	}
	for _, a := range c.applets {
		if a == applet {
			return true
		}
	}
	return false
}

// TestHostileInput feeds every applet malformed and hostile input: each
// must be refused with the right CNI error code and a message naming the
// field, and the node must hold nothing more afterwards (leak checker).
func TestHostileInput(t *testing.T) {
	t.Parallel()
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "veth0")
	// The master (macvlan, ipvlan, vlan) and device (host-device) of the
	// base configs exists, so the cases get past looking it up.
	r.Node.MustRun("ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")
	// The bridge is node infrastructure: bridge makes it before IPAM runs
	// (dhcp needs the port) and keeps it, as the reference does, so an
	// IPAM config error (a bad subnet) leaves it. It exists before the
	// snapshot; everything of the refused pods must be gone.
	r.Node.MustRun("ip", "link", "add", "cni0", "type", "bridge")
	r.Node.MustRun("ip", "link", "add", "port0", "master", "cni0", "up", "type", "veth", "peer", "name", "port1")
	r.Node.MustRun("ip", "link", "set", "port1", "up")
	r.Node.MustRun("ip", "link", "set", "cni0", "up")
	snap := r.Snapshotter()
	before := snap.Take(t)
	podBefore := (&testnet.Snapshotter{Node: pod}).Take(t)
	n := 0
	for _, applet := range testnet.Applets(t) {
		for _, c := range hostileCases() {
			if !appliesTo(c, applet) {
				continue
			}

			n++
			stdin := c.stdin
			if stdin == nil {
				conf := hostileBase(applet)
				if c.conf != nil {
					c.conf(conf)
				}
				var err error
				if stdin, err = json.Marshal(conf); err != nil {
					t.Fatal(err)
				}
			}
			env := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "hostile-1", "CNI_NETNS": pod.Path,
				"CNI_IFNAME": "eth1", "CNI_PATH": r.BinDir}
			for k, v := range c.env {
				env[k] = v
			}
			var envs []string
			for k, v := range env {
				if v != "" {
					envs = append(envs, k+"="+v)
				}
			}
			stdout, stderr, code := r.Exec(applet, envs, stdin)
			what := applet + ": " + c.name
			// CNIBOX_HOSTILE_DEBUG=<applet> leak-checks after each case.
			if os.Getenv("CNIBOX_HOSTILE_DEBUG") == applet {
				snap.AssertSame(t, before, what)
			}
			if code == 0 {
				t.Errorf("%s: accepted:\n%s", what, stdout)
				continue
			}
			e := testnet.ParseError(t, stdout)
			if c.code != 0 && e.Code != c.code {
				t.Errorf("%s: code %d, want %d: %s; %s", what, e.Code, c.code, e.Msg, e.Details)
			}
			if msg := e.Msg + " " + e.Details; !strings.Contains(msg, c.field) {
				t.Errorf("%s: message does not name %q: %s (stderr %s)", what, c.field, msg, stderr)
			}
		}
	}
	snap.AssertSame(t, before, "after the hostile inputs")
	(&testnet.Snapshotter{Node: pod}).AssertSame(t, podBefore, "the pod after the hostile inputs")
	t.Logf("%d hostile inputs refused", n)
}
