package macvlan_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node has a veth "up0" (peer "up1", both up)
// to serve as master, and a CNI_PATH where the reference host-local and
// static serve until cnibox has its own.
func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	r.Node.MustRun("ip", "link", "set", "up0", "up")
	r.Node.MustRun("ip", "link", "set", "up1", "up")
	testnet.RequireReference(t, "host-local")
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	return r
}

var netSeq int

// list writes a one-plugin conflist around the macvlan plugin config
// fields (JSON object members without braces).
func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	name := fmt.Sprintf("mv%d", netSeq)
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"macvlan",%s}]}`, version, name, fields))
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}`

// ipamVersion is the newest spec version an IPAM plugin in CNI_PATH
// serves: cnibox's host-local when the binary has it, else the reference
// (Debian's v1.1.1, which stops at 1.0.0).
func ipamVersion(t *testing.T) string { return pluginVersion(t, "host-local") }

// pluginVersion is the newest spec version plugin serves in CNI_PATH.
func pluginVersion(t *testing.T, plugin string) string {
	if slices.Contains(testnet.Applets(t), plugin) {
		return "1.1.0"
	}
	return "1.0.0"
}

// withIPAM says whether a test at version v can use host-local.
func withIPAM(t *testing.T, v string) bool {
	return !cni.VersionAtLeast(v, "1.1.0") || ipamVersion(t) == "1.1.0"
}

// linkInfo is what "ip -j -d link show" says of a link.
type linkInfo struct {
	Name     string `json:"ifname"`
	Address  string `json:"address"`
	MTU      int    `json:"mtu"`
	Flags    []string
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			Mode       string   `json:"mode"`
			BCQueueLen int      `json:"bcqueuelen"`
			MACs       []string `json:"macaddr_data"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func showLink(t *testing.T, ns *testnet.NS, name string) *linkInfo {
	t.Helper()
	out := ipOut(t, ns, "-j", "-d", "link", "show", "dev", name)
	var links []linkInfo
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v: %s", name, err, out)
	}
	return &links[0]
}

func addrOf(t *testing.T, res types.Result) string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.IPs) == 0 {
		t.Fatalf("result has no IPs: %+v", cur)
	}
	return cur.IPs[0].Address.IP.String()
}

func addr6Of(t *testing.T, res types.Result) string {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range cur.IPs {
		if ip.Address.IP.To4() == nil {
			return ip.Address.IP.String()
		}
	}
	t.Fatalf("result has no IPv6 address: %+v", cur)
	return ""
}

// TestTwoPodsPing: two pods on the same master in bridge mode reach each
// other; CHECK passes; DEL removes the links and releases the addresses,
// and a second DEL succeeds.
func TestTwoPodsPing(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"master":"up0","mode":"bridge",`+
		`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/24"}],[{"subnet":"fd00:10::/64"}]]}`)
	name := l.Name
	podA, podB := r.Pod(t), r.Pod(t)
	a, b := r.Attach(podA, "eth0"), r.Attach(podB, "eth0")
	resA, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	resB, err := r.Add(l, b)
	if err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	if err := podA.Ping(addrOf(t, resB)); err != nil {
		t.Fatalf("a cannot reach b: %v", err)
	}
	if err := podB.Ping(addrOf(t, resA)); err != nil {
		t.Fatalf("b cannot reach a: %v", err)
	}
	if err := podA.Ping(addr6Of(t, resB)); err != nil {
		t.Fatalf("a cannot reach b over IPv6: %v", err)
	}
	for _, att := range []*testnet.Attachment{a, b} {
		if err := r.Check(l, att); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
	}
	if got := len(r.Reservations(name)); got != 4 {
		t.Fatalf("host-local holds %d addresses, want 4", got)
	}
	for _, att := range []*testnet.Attachment{a, b} {
		for i := 0; i < 2; i++ {
			if err := r.Del(l, att); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
	}
	for _, pod := range []*testnet.NS{podA, podB} {
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left in the pod after DEL: %v", got)
		}
	}
	if got := r.Reservations(name); len(got) != 0 {
		t.Errorf("addresses still allocated after DEL: %v", got)
	}
}

// TestVersions drives ADD, CHECK, DEL, STATUS and GC through libcni at
// every spec version; at versions the IPAM plugin cannot serve the link is
// L2 only.
func TestVersions(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		fields := `"master":"up0"`
		if withIPAM(t, v) {
			fields += "," + hostLocal
		}
		l := list(t, r, v, fields)
		pod := r.Pod(t)
		a := r.Attach(pod, "net1")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		info := showLink(t, pod, "net1")
		if info.LinkInfo.Kind != "macvlan" || info.LinkInfo.Data.Mode != "bridge" || !slices.Contains(info.Flags, "UP") {
			t.Fatalf("link: %+v", info)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "net1" || cur.Interfaces[0].Mac != info.Address || cur.Interfaces[0].Sandbox != pod.Path {
				t.Errorf("result interfaces = %+v, link %+v", cur.Interfaces, info)
			}
		}
		if withIPAM(t, v) {
			ip := addrOf(t, res)
			if out := pod.MustRun("ip", "-o", "addr", "show", "dev", "net1"); !strings.Contains(out, ip+"/24") {
				t.Errorf("address %s not on net1: %s", ip, out)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Fatalf("GC: %v", err)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left after DEL: %v", got)
		}
		if got := r.Reservations(l.Name); len(got) != 0 {
			t.Errorf("addresses left after DEL: %v", got)
		}
	})
}

// TestCnitool drives the applet through the reference cnitool at every
// version.
func TestCnitool(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		fields := `"master":"up0","mode":"private"`
		if withIPAM(t, v) {
			fields += "," + hostLocal
		}
		l := list(t, r, v, fields)
		pod := r.Pod(t)
		out, err := r.Cnitool("add", l.Name, pod)
		if err != nil {
			t.Fatal(err)
		}
		if withIPAM(t, v) && !strings.Contains(out, "10.10.0.") {
			t.Errorf("ADD result lacks the address: %s", out)
		}
		if info := showLink(t, pod, "eth0"); info.LinkInfo.Data.Mode != "private" {
			t.Errorf("mode = %q, want private", info.LinkInfo.Data.Mode)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := r.Cnitool("check", l.Name, pod); err != nil {
				t.Fatal(err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if _, err := r.Cnitool("status", l.Name, nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Cnitool("del", l.Name, pod); err != nil {
			t.Fatal(err)
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left after DEL: %v", got)
		}
	})
}

// TestKeys exercises every key: each mode (source with its MAC list),
// mtu, mac and its two overrides, bcqueuelen, linkInContainer, the default
// master, and dns merged with the IPAM's.
func TestKeys(t *testing.T) {
	r := node(t)
	v := ipamVersion(t)
	r.Node.MustRun("ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
	r.Node.MustRun("ip", "route", "add", "default", "via", "192.0.2.254")
	static := `"ipam":{"type":"static","addresses":[{"address":"10.20.0.5/24","gateway":"10.20.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.20.0.53"],"search":["ipam.example"]}}`

	cases := []struct {
		name   string
		fields string
		ifName string
		args   [][2]string
		caps   map[string]any
		v      string
		prep   func(pod *testnet.NS)
		check  func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result)
	}{
		{name: "vepa", fields: `"master":"up0","mode":"vepa"`, check: wantMode("vepa")},
		{name: "private", fields: `"master":"up0","mode":"private"`, check: wantMode("private")},
		{name: "passthru", fields: `"master":"up0","mode":"passthru"`, check: wantMode("passthru")},
		{name: "source", fields: `"master":"up0","mode":"source","sourceMacs":["02:00:00:00:00:01","02:00:00:00:00:02"]`,
			check: func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
				wantMode("source")(t, pod, info, res)
				got := append([]string(nil), info.LinkInfo.Data.MACs...)
				slices.Sort(got)
				if !slices.Equal(got, []string{"02:00:00:00:00:01", "02:00:00:00:00:02"}) {
					t.Errorf("source MACs = %v", got)
				}
			}},
		{name: "default-master-mtu-mac-bcqueuelen", fields: `"mtu":1400,"mac":"02:11:22:33:44:55","bcqueuelen":321`,
			check: func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
				if info.MTU != 1400 || info.Address != "02:11:22:33:44:55" || info.LinkInfo.Data.BCQueueLen != 321 {
					t.Errorf("link = %+v", info)
				}
				if res.Interfaces[0].Mac != "02:11:22:33:44:55" {
					t.Errorf("result MAC = %s", res.Interfaces[0].Mac)
				}
			}},
		{name: "l2-only-no-notify", fields: `"master":"up0"`,
			check: func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
				// As the reference: no address, nothing to announce.
				if out := pod.MustRun("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"); out != "0\n" {
					t.Errorf("arp_notify = %q on an L2-only link", out)
				}
			}},
		{name: "cni-args-mac", fields: `"master":"up0","mac":"02:11:22:33:44:55"`,
			args: [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:aa:01"}}, check: wantMAC("02:00:00:00:aa:01")},
		{name: "runtimeconfig-mac", fields: `"master":"up0","capabilities":{"mac":true}`,
			args: [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:aa:01"}},
			caps: map[string]any{"mac": "02:00:00:00:bb:02"}, check: wantMAC("02:00:00:00:bb:02")},
		{name: "linkInContainer", fields: `"master":"inner0","linkInContainer":true`,
			prep: func(pod *testnet.NS) {
				pod.MustRun("ip", "link", "add", "inner0", "type", "veth", "peer", "name", "inner1")
				pod.MustRun("ip", "link", "set", "inner0", "up")
			},
			check: func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
				out := ipOut(t, pod, "-o", "link", "show", "dev", "eth0")
				if !strings.Contains(out, "eth0@inner0") {
					t.Errorf("eth0 is not on inner0: %s", out)
				}
			}},
		{name: "dns-merged", v: pluginVersion(t, "static"), fields: `"master":"up0","dns":{"nameservers":["10.0.0.53"],"domain":"conf.example"},` + static,
			check: func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
				want := types.DNS{Nameservers: []string{"10.0.0.53", "10.20.0.53"}, Domain: "conf.example", Search: []string{"ipam.example"}}
				if fmt.Sprint(res.DNS) != fmt.Sprint(want) {
					t.Errorf("dns = %+v, want %+v", res.DNS, want)
				}
				if out := pod.MustRun("ip", "route", "show", "default"); !strings.Contains(out, "via 10.20.0.1 dev eth0") {
					t.Errorf("default route: %s", out)
				}
				if out := pod.MustRun("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify", "net.ipv6.conf.eth0.ndisc_notify"); out != "1\n1\n" {
					t.Errorf("arp_notify, ndisc_notify = %q", out)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			version := v
			if c.v != "" {
				version = c.v
			}
			l := list(t, r, version, c.fields)
			pod := r.Pod(t)
			if c.prep != nil {
				c.prep(pod)
			}
			a := r.Attach(pod, "eth0")
			a.Args, a.Caps = c.args, c.caps
			res, err := r.Add(l, a)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, pod, showLink(t, pod, "eth0"), cur)
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if out := ipOut(t, pod, "-o", "link", "show"); strings.Contains(out, "eth0") {
				t.Errorf("eth0 left after DEL: %s", out)
			}
		})
	}
}

func wantMode(mode string) func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
	return func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
		if info.LinkInfo.Data.Mode != mode {
			t.Errorf("mode = %q, want %q", info.LinkInfo.Data.Mode, mode)
		}
	}
}

func wantMAC(mac string) func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
	return func(t *testing.T, pod *testnet.NS, info *linkInfo, res *current.Result) {
		if info.Address != mac || res.Interfaces[0].Mac != mac {
			t.Errorf("link MAC %s, result MAC %s, want %s", info.Address, res.Interfaces[0].Mac, mac)
		}
	}
}

// TestCheckDetectsDrift: CHECK fails when the link no longer matches the
// result or the config.
func TestCheckDetectsDrift(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"master":"up0","mtu":1400,`+hostLocal)
	for _, drift := range []struct {
		name string
		do   func(pod *testnet.NS, ip string)
		want string
	}{
		{"mac", func(pod *testnet.NS, _ string) {
			pod.MustRun("ip", "link", "set", "eth0", "address", "02:de:ad:be:ef:01")
		}, "MAC"},
		{"mtu", func(pod *testnet.NS, _ string) { pod.MustRun("ip", "link", "set", "eth0", "mtu", "1300") }, "MTU"},
		{"address", func(pod *testnet.NS, ip string) { pod.MustRun("ip", "addr", "del", ip+"/24", "dev", "eth0") }, "address"},
		{"route", func(pod *testnet.NS, _ string) { pod.MustRun("ip", "route", "del", "default") }, "route"},
		{"mode", func(pod *testnet.NS, _ string) {
			pod.MustRun("ip", "link", "set", "eth0", "type", "macvlan", "mode", "vepa")
		}, "mode"},
	} {
		t.Run(drift.name, func(t *testing.T) {
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			res, err := r.Add(l, a)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Del(l, a)
			if err := r.Check(l, a); err != nil {
				t.Fatalf("CHECK before drift: %v", err)
			}
			drift.do(pod, addrOf(t, res))
			if err := r.Check(l, a); err == nil || !strings.Contains(err.Error(), drift.want) {
				t.Fatalf("CHECK after changing the %s: %v", drift.name, err)
			}
		})
	}
}

// TestBadInput: bad configs get a CNI error naming the field, and leave
// nothing in the pod and nothing allocated; the runtime's DEL of the
// refused container then succeeds, as the reference's does.
func TestBadInput(t *testing.T) {
	r := node(t)
	v := ipamVersion(t)
	for _, c := range []struct {
		name, fields, args string
		code               uint
		want               string
	}{
		{"missing master", `"master":"nope0",` + hostLocal, "", 7, `master: link "nope0" not found`},
		{"no default route", hostLocal, "", 7, "master: not set, and there is no default route"},
		{"bad mode", `"master":"up0","mode":"bridged",` + hostLocal, "", 7, `mode: "bridged"`},
		{"mtu above master", `"master":"up0","mtu":9000,` + hostLocal, "", 7, "mtu: 9000 is larger than the MTU 1500 of master \"up0\""},
		{"negative mtu", `"master":"up0","mtu":-1,` + hostLocal, "", 7, "mtu: -1"},
		{"bad mac", `"master":"up0","mac":"xx",` + hostLocal, "", 7, `mac: "xx"`},
		{"bad CNI_ARGS mac", `"master":"up0",` + hostLocal, "IgnoreUnknown=1;MAC=01:00:00:00:00:01", 7, "CNI_ARGS MAC"},
		{"source without macs", `"master":"up0","mode":"source",` + hostLocal, "", 7, "sourceMacs"},
		{"macs without source", `"master":"up0","sourceMacs":["02:00:00:00:00:01"],` + hostLocal, "", 7, "sourceMacs: only valid with mode source"},
		{"mtu not a number", `"master":"up0","mtu":"big",` + hostLocal, "", 7, `"mtu"`},
		{"missing ipam plugin", `"master":"up0","ipam":{"type":"no-such-ipam"}`, "", 7, "no-such-ipam"},
		{"ipam fails", `"master":"up0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.30.0.0/30","rangeStart":"10.30.0.2","rangeEnd":"10.30.0.2"}]]}`, "", 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := r.Pod(t)
			conf := fmt.Sprintf(`{"cniVersion":%q,"name":"bad","type":"macvlan",%s}`, v, c.fields)
			env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + r.Path, "CNI_ARGS=" + c.args}
			if c.name == "ipam fails" {
				// The one address goes to a first pod; the second ADD fails in IPAM.
				first := r.Pod(t)
				env1 := append([]string(nil), env...)
				env1[3] = "CNI_NETNS=" + first.Path
				env1[1] = "CNI_CONTAINERID=c0"
				if out, _, code := r.Exec("macvlan", env1, []byte(conf)); code != 0 {
					t.Fatalf("first ADD: %s", out)
				}
			}
			out, _, code := r.Exec("macvlan", env, []byte(conf))
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			e := testnet.ParseError(t, out)
			if c.code != 0 && (e.Code != c.code || !strings.Contains(e.Msg, c.want)) {
				t.Errorf("error = %d %q, want %d containing %q", e.Code, e.Msg, c.code, c.want)
			}
			if got := pod.Links(t); len(got) != 1 {
				t.Errorf("links left in the pod: %v", got)
			}
			want := 0
			if c.name == "ipam fails" {
				want = 1
			}
			if got := r.Reservations("bad"); len(got) != want {
				t.Errorf("allocations = %v, want %d", got, want)
			}
			// The runtime's DEL of the refused container succeeds, as the
			// reference's does (which reads nothing but JSON and ipam),
			// unless the JSON does not decode or IPAM cannot be found.
			env[0] = "CNI_COMMAND=DEL"
			out, _, code = r.Exec("macvlan", env, []byte(conf))
			if delFails := c.name == "mtu not a number" || c.name == "missing ipam plugin"; (code != 0) != delFails {
				t.Errorf("DEL of the refused config: exit %d, %s", code, out)
			}
		})
	}
}

// TestStatus: STATUS fails with 50 when the master is missing.
func TestStatus(t *testing.T) {
	r := node(t)
	v := ipamVersion(t)
	if !cni.VersionAtLeast(v, "1.1.0") {
		v = "1.1.0" // no IPAM below then: STATUS is macvlan's own answer
	}
	for _, c := range []struct {
		master string
		code   int
	}{{"up0", 0}, {"gone0", 50}} {
		conf := fmt.Sprintf(`{"cniVersion":%q,"name":"st","type":"macvlan","master":%q}`, v, c.master)
		out, _, code := r.Exec("macvlan", []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + r.Path}, []byte(conf))
		if c.code == 0 {
			if code != 0 {
				t.Errorf("STATUS with master %s: %s", c.master, out)
			}
			continue
		}
		if e := testnet.ParseError(t, out); code == 0 || e.Code != 50 || !strings.Contains(e.Msg, "gone0") {
			t.Errorf("STATUS with master %s: exit %d: %s", c.master, code, out)
		}
	}
}

// TestDelWithoutNetns: DEL after the pod netns was deleted, or with no
// CNI_NETNS at all, succeeds and still releases the address.
func TestDelWithoutNetns(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"master":"up0",`+hostLocal)
	for _, how := range []string{"netns deleted", "no CNI_NETNS"} {
		t.Run(how, func(t *testing.T) {
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			if _, err := r.Add(l, a); err != nil {
				t.Fatal(err)
			}
			pod.Delete()
			if how == "no CNI_NETNS" {
				a.Pod = nil
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if got := r.Reservations(l.Name); len(got) != 0 {
				t.Errorf("addresses left: %v", got)
			}
		})
	}
}

// ipOut runs ip in a netns and returns its stdout only: ip may warn on
// stderr (about a peer netns it cannot name, say), which must not mix
// into JSON.
func ipOut(t *testing.T, n *testnet.NS, args ...string) string {
	t.Helper()
	out, err := n.Command("ip", args...).Output()
	if err != nil {
		t.Fatalf("ip %v in %s: %v", args, n.Name, err)
	}
	return string(out)
}

// TestConcurrentPods: pods added and deleted at the same time on one
// master (as a runtime starting a deployment does) all get a link and a
// distinct address, and leave nothing behind.
func TestConcurrentPods(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"master":"up0",`+hostLocal)
	const n = 8
	pods := make([]*testnet.NS, n)
	atts := make([]*testnet.Attachment, n)
	for i := range pods {
		pods[i] = r.Pod(t)
		atts[i] = r.Attach(pods[i], "eth0")
	}
	ips := make([]string, n)
	errs := make(chan error, n)
	for i := range pods {
		go func(i int) {
			res, err := r.Add(l, atts[i])
			if err == nil {
				cur, cerr := current.NewResultFromResult(res)
				if cerr == nil && len(cur.IPs) > 0 {
					ips[i] = cur.IPs[0].Address.IP.String()
				}
			}
			errs <- err
		}(i)
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Errorf("ADD: %v", err)
		}
	}
	seen := map[string]bool{}
	for i, ip := range ips {
		if ip == "" || seen[ip] {
			t.Errorf("pod %d got address %q (seen: %v)", i, ip, seen)
		}
		seen[ip] = true
	}
	if !t.Failed() {
		if err := pods[0].Ping(ips[n-1]); err != nil {
			t.Errorf("first pod cannot reach the last: %v", err)
		}
	}
	for i := range pods {
		go func(i int) { errs <- r.Del(l, atts[i]) }(i)
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
	for i, pod := range pods {
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("pod %d links after DEL: %v", i, got)
		}
	}
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("addresses left: %v", got)
	}
}
