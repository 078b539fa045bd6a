package ipvlan_test

// These tests need ipvlan (and dummy) in the kernel: on a host without
// them they skip, and make vmtest runs them in a VM.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node has a dummy "dum0" (always up, MTU 1500)
// to serve as master, with the default route on it.
func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	testnet.RequireKernel(t, "ipvlan", "dummy")
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "dum0", "type", "dummy")
	r.Node.MustRun("ip", "addr", "add", "192.0.2.1/24", "dev", "dum0")
	r.Node.MustRun("ip", "link", "set", "dum0", "up")
	r.Node.MustRun("ip", "route", "add", "default", "via", "192.0.2.254")
	return r
}

var netSeq int

// list writes a one-plugin conflist around the ipvlan plugin config
// fields (JSON object members without braces).
func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	name := fmt.Sprintf("ipv%d", netSeq)
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"ipvlan",%s}]}`, version, name, fields))
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}`

func result(t *testing.T, res types.Result) *current.Result {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.IPs) == 0 {
		t.Fatalf("result has no IPs: %+v", cur)
	}
	return cur
}

// dualStack is host-local with an IPv4 and an IPv6 range.
const dualStack = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/24"}],[{"subnet":"fd00:10::/64"}]]}`

// ping pings addr from pod, retrying for a few seconds: an IPv6 address
// without a gateway is usable only once duplicate address detection ends.
func ping(pod *testnet.NS, addr string) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = pod.Ping(addr); err == nil {
			return nil
		}
		time.Sleep(300 * time.Millisecond)
	}
	return err
}

// TestTwoPods: two dual-stack pods on the same master, in l2 and in l3
// mode, reach each other over IPv4 and IPv6; CHECK passes; DEL removes the
// links and releases the addresses, and a second DEL succeeds.
func TestTwoPods(t *testing.T) {
	r := node(t)
	for _, mode := range []string{"l2", "l3"} {
		t.Run(mode, func(t *testing.T) { twoPods(t, r, mode) })
	}
}

func twoPods(t *testing.T, r *testnet.Runtime, mode string) {
	l := list(t, r, "1.1.0", `"master":"dum0","mode":"`+mode+`",`+dualStack)
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
	curA, curB := result(t, resA), result(t, resB)
	if len(curA.IPs) != 2 || len(curB.IPs) != 2 {
		t.Fatalf("want an IPv4 and an IPv6 address each: %v, %v", curA.IPs, curB.IPs)
	}
	for i := range curA.IPs {
		if err := ping(podA, curB.IPs[i].Address.IP.String()); err != nil {
			t.Errorf("a cannot reach b: %v", err)
		}
		if err := ping(podB, curA.IPs[i].Address.IP.String()); err != nil {
			t.Errorf("b cannot reach a: %v", err)
		}
	}
	for _, att := range []*testnet.Attachment{a, b} {
		if err := r.Check(l, att); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
	}
	if got := len(r.Reservations(l.Name)); got != 4 {
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
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("addresses still allocated after DEL: %v", got)
	}
}

// TestPrivate: with the private flag, two pods on the same master do not
// reach each other.
func TestPrivate(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"master":"dum0","flag":"private",`+hostLocal)
	podA, podB := r.Pod(t), r.Pod(t)
	a, b := r.Attach(podA, "eth0"), r.Attach(podB, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	resB, err := r.Add(l, b)
	if err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	if err := podA.Ping(result(t, resB).IPs[0].Address.IP.String()); err == nil {
		t.Error("a reached b through a private ipvlan")
	}
	for _, att := range []*testnet.Attachment{a, b} {
		if err := r.Del(l, att); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReference: a node can switch between the reference ipvlan and
// cnibox's either way: what one ADDs, the other CHECKs and DELs.
func TestReference(t *testing.T) {
	r := node(t)
	ref := t.TempDir()
	if err := os.Symlink(testnet.RequireReference(t, "ipvlan"), filepath.Join(ref, "ipvlan")); err != nil {
		t.Fatal(err)
	}
	const v = "1.0.0" // the newest the reference (Debian's v1.1.1) takes
	for _, tc := range []struct{ name, add, rest string }{
		{"reference ADD, cnibox CHECK and DEL", ref + ":" + r.BinDir, r.BinDir},
		{"cnibox ADD, reference CHECK and DEL", r.BinDir, ref + ":" + r.BinDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := list(t, r, v, `"master":"dum0","mode":"l2",`+hostLocal)
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			r.SetPath(tc.add)
			if _, err := r.Add(l, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			r.SetPath(tc.rest)
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if got := pod.Links(t); len(got) != 1 {
				t.Errorf("links left after DEL: %v", got)
			}
			if got := r.Reservations(l.Name); len(got) != 0 {
				t.Errorf("addresses still allocated: %v", got)
			}
		})
	}
	r.SetPath(r.BinDir)
}

// TestVersions drives ADD, CHECK, DEL, STATUS and GC through libcni at
// every spec version, and checks the result's shape and merged DNS.
func TestVersions(t *testing.T) {
	r := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		l := list(t, r, v, `"master":"dum0","dns":{"nameservers":["10.0.0.53"]},
			"ipam":{"type":"static","addresses":[{"address":"10.20.0.5/24","gateway":"10.20.0.1"}],
			"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.20.0.53"],"search":["pods.example"]}}`)
		pod := r.Pod(t)
		a := r.Attach(pod, "net1")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		iv, ok := pod.Link(t, "net1").(*netlink.IPVlan)
		if !ok || iv.Mode != netlink.IPVLAN_MODE_L2 || iv.Flag != netlink.IPVLAN_FLAG_BRIDGE || iv.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("link: %#v", pod.Link(t, "net1"))
		}
		master := r.Node.Link(t, "dum0")
		if iv.Attrs().HardwareAddr.String() != master.Attrs().HardwareAddr.String() {
			t.Errorf("ipvlan MAC %s, master's %s", iv.Attrs().HardwareAddr, master.Attrs().HardwareAddr)
		}
		cur := result(t, res)
		if got := cur.IPs[0].Address.String(); got != "10.20.0.5/24" {
			t.Errorf("result address %s", got)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "net1" || cur.Interfaces[0].Sandbox != pod.Path ||
				cur.Interfaces[0].Mac != master.Attrs().HardwareAddr.String() {
				t.Errorf("result interfaces: %+v", cur.Interfaces[0])
			}
		}
		if want := []string{"10.0.0.53", "10.20.0.53"}; !slices.Equal(cur.DNS.Nameservers, want) || !slices.Equal(cur.DNS.Search, []string{"pods.example"}) {
			t.Errorf("result DNS %+v, want config and IPAM DNS merged", cur.DNS)
		}
		out := pod.MustRun("ip", "route", "show", "default")
		if !strings.Contains(out, "via 10.20.0.1 dev net1") {
			t.Errorf("default route: %q", out)
		}
		for _, knob := range []string{"ipv4/conf/net1/arp_notify", "ipv6/conf/net1/ndisc_notify"} {
			var val string
			if err := pod.Do(func() error {
				b, err := os.ReadFile("/proc/sys/net/" + knob)
				val = strings.TrimSpace(string(b))
				return err
			}); err != nil || val != "1" {
				t.Errorf("%s = %q (%v), want 1", knob, val, err)
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
		if err := r.Del(l, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left after DEL: %v", got)
		}
	})
}

// TestCnitool drives ADD, CHECK, STATUS and DEL through the reference
// cnitool.
func TestCnitool(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"master":"dum0",`+hostLocal)
	pod := r.Pod(t)
	out, err := r.Cnitool("add", l.Name, pod)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "10.10.0.") {
		t.Fatalf("ADD result: %s", out)
	}
	for _, verb := range []string{"check", "status", "del", "del"} {
		p := pod
		if verb == "status" {
			p = nil
		}
		if _, err := r.Cnitool(verb, l.Name, p); err != nil {
			t.Fatal(err)
		}
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left after DEL: %v", got)
	}
}

// TestKeys sets each key and looks at the link it gives.
func TestKeys(t *testing.T) {
	r := node(t)
	for _, tc := range []struct {
		name, fields string
		setup        func(pod *testnet.NS)
		want         func(t *testing.T, l *netlink.IPVlan)
	}{
		{name: "l3", fields: `"master":"dum0","mode":"l3"`, want: wantMode(netlink.IPVLAN_MODE_L3, netlink.IPVLAN_FLAG_BRIDGE)},
		{name: "l3s", fields: `"master":"dum0","mode":"l3s"`, want: wantMode(netlink.IPVLAN_MODE_L3S, netlink.IPVLAN_FLAG_BRIDGE)},
		{name: "private", fields: `"master":"dum0","mode":"l2","flag":"private"`, want: wantMode(netlink.IPVLAN_MODE_L2, netlink.IPVLAN_FLAG_PRIVATE)},
		{name: "vepa", fields: `"master":"dum0","mode":"l3","flag":"vepa"`, want: wantMode(netlink.IPVLAN_MODE_L3, netlink.IPVLAN_FLAG_VEPA)},
		{name: "mtu", fields: `"master":"dum0","mtu":1400`, want: func(t *testing.T, l *netlink.IPVlan) {
			if l.MTU != 1400 {
				t.Errorf("mtu %d, want 1400", l.MTU)
			}
		}},
		{name: "default master", fields: `"master":""`, want: func(t *testing.T, l *netlink.IPVlan) {
			if want := r.Node.Link(t, "dum0").Attrs().Index; l.ParentIndex != want {
				t.Errorf("parent %d, want dum0 (%d), the default route's link", l.ParentIndex, want)
			}
		}},
		{name: "linkInContainer", fields: `"master":"inner0","linkInContainer":true`, setup: func(pod *testnet.NS) {
			pod.MustRun("ip", "link", "add", "inner0", "type", "dummy")
			pod.MustRun("ip", "link", "set", "inner0", "up")
		}, want: func(t *testing.T, l *netlink.IPVlan) {
			if l.ParentIndex == 0 {
				t.Errorf("no parent")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := list(t, r, "1.1.0", tc.fields+`,"ipam":{"type":"static","addresses":[{"address":"10.30.0.2/24"}]}`)
			pod := r.Pod(t)
			if tc.setup != nil {
				tc.setup(pod)
			}
			a := r.Attach(pod, "eth0")
			if _, err := r.Add(l, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			tc.want(t, pod.Link(t, "eth0").(*netlink.IPVlan))
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		})
	}
}

func wantMode(mode netlink.IPVlanMode, flag netlink.IPVlanFlag) func(t *testing.T, l *netlink.IPVlan) {
	return func(t *testing.T, l *netlink.IPVlan) {
		if l.Mode != mode || l.Flag != flag {
			t.Errorf("mode %d flag %d, want %d %d", l.Mode, l.Flag, mode, flag)
		}
	}
}

// env is the CNI_* environment of a raw invocation.
func env(r *testnet.Runtime, cmd string, pod *testnet.NS) []string {
	netns := ""
	if pod != nil {
		netns = pod.Path
	}
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + netns, "CNI_PATH=" + r.BinDir}
}

// TestChained: without ipam, chained after a plugin whose result has one
// interface and addresses, ipvlan takes that interface as master and the
// addresses for its link; the result keeps the master and adds the link;
// CHECK passes against it.
func TestChained(t *testing.T) {
	r := node(t)
	pod := r.Pod(t)
	conf := `{"cniVersion":"1.1.0","name":"chain","type":"ipvlan","prevResult":{"cniVersion":"1.1.0",
		"interfaces":[{"name":"dum0"}],"ips":[{"address":"10.40.0.7/24","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"10.40.0.1"}]}}`
	out, stderr, code := r.Exec("ipvlan", env(r, "ADD", pod), []byte(conf))
	if code != 0 {
		t.Fatalf("ADD: %s %s", out, stderr)
	}
	res := &current.Result{}
	if err := json.Unmarshal(out, res); err != nil {
		t.Fatal(err)
	}
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != "dum0" || res.Interfaces[1].Name != "eth0" ||
		len(res.IPs) != 1 || *res.IPs[0].Interface != 1 {
		t.Fatalf("result: %s", out)
	}
	if got := pod.MustRun("ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(got, "10.40.0.7/24") {
		t.Errorf("eth0 addresses: %s", got)
	}
	if l := pod.Link(t, "eth0"); l.Attrs().ParentIndex != r.Node.Link(t, "dum0").Attrs().Index {
		t.Errorf("eth0 is not on dum0")
	}
	check := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"chain","type":"ipvlan","prevResult":%s}`, out)
	if out, _, code := r.Exec("ipvlan", env(r, "CHECK", pod), []byte(check)); code != 0 {
		t.Fatalf("CHECK: %s", out)
	}
	if out, _, code := r.Exec("ipvlan", env(r, "DEL", pod), []byte(check)); code != 0 {
		t.Fatalf("DEL: %s", out)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left after DEL: %v", got)
	}
}

// TestCheckDetectsDrift: CHECK fails when the link no longer matches the
// config or the result.
func TestCheckDetectsDrift(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"master":"dum0","mode":"l2",`+hostLocal)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatal(err)
	}
	other := list(t, r, "1.1.0", `"master":"dum0","mode":"l3",`+hostLocal)
	other.Name, other.Plugins[0].Network.Name = l.Name, l.Name
	if err := r.Check(other, a); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("CHECK with mode l3 against an l2 link: %v", err)
	}
	pod.MustRun("ip", "addr", "flush", "dev", "eth0")
	if err := r.Check(l, a); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("CHECK after the address went: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatal(err)
	}
}

// TestBadInput: each bad config gets a CNI error with code 7 naming the
// field, and leaves neither a link nor an address behind.
func TestBadInput(t *testing.T) {
	r := node(t)
	hl := func(name string) string {
		return fmt.Sprintf(`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/24"}]],"dataDir":%q}`, filepath.Join(r.StateDir, name))
	}
	for _, tc := range []struct{ name, fields, want string }{
		{"missing master", `"master":"nosuch0",` + hl("a"), "master"},
		{"bad mode", `"master":"dum0","mode":"l4",` + hl("b"), "mode"},
		{"bad flag", `"master":"dum0","flag":"open",` + hl("c"), "flag"},
		{"mtu above master", `"master":"dum0","mtu":9000,` + hl("d"), "mtu"},
		{"negative mtu", `"master":"dum0","mtu":-1,` + hl("e"), "mtu"},
		{"no ipam", `"master":"dum0"`, "ipam"},
		{"chained, no master", `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"a"},{"name":"b"}],"ips":[{"address":"10.1.1.1/24"}]}`, "master"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := r.Pod(t)
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bad","type":"ipvlan",%s}`, tc.fields)
			out, _, code := r.Exec("ipvlan", env(r, "ADD", pod), []byte(conf))
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			e := testnet.ParseError(t, out)
			if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, tc.want) {
				t.Errorf("error %d %q, want code 7 naming %q", e.Code, e.Msg, tc.want)
			}
			if got := pod.Links(t); len(got) != 1 {
				t.Errorf("links left behind: %v", got)
			}
			files, _ := filepath.Glob(filepath.Join(r.StateDir, "*", "bad", "10.*"))
			if len(files) != 0 {
				t.Errorf("addresses left allocated: %v", files)
			}
			// The runtime's DEL of the refused container succeeds: it
			// reads nothing but the JSON and the ipam type.
			out, _, code = r.Exec("ipvlan", env(r, "DEL", pod), []byte(conf))
			if code != 0 {
				t.Errorf("DEL of the refused config: exit %d, %s", code, out)
			}
		})
	}
}

// TestStatus: STATUS fails with 50 when the master is missing, and
// succeeds when it is there.
func TestStatus(t *testing.T) {
	r := node(t)
	ok := list(t, r, "1.1.0", `"master":"dum0",`+hostLocal)
	if err := r.Status(ok); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	gone := list(t, r, "1.1.0", `"master":"nosuch0",`+hostLocal)
	err := r.Status(gone)
	var e *types.Error
	if !errors.As(err, &e) || e.Code != 50 || !strings.Contains(e.Msg, "master") {
		t.Fatalf("STATUS with a missing master: %v, want code 50 naming master", err)
	}
}

// TestDelWithoutNetns: DEL succeeds and releases the address when the
// netns is gone, and when CNI_NETNS is empty.
func TestDelWithoutNetns(t *testing.T) {
	r := node(t)
	l := list(t, r, "1.1.0", `"master":"dum0",`+hostLocal)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatal(err)
	}
	pod.Delete()
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("addresses still allocated: %v", got)
	}
	conf := `{"cniVersion":"1.1.0","name":"x","type":"ipvlan","master":"dum0","ipam":{"type":"static","addresses":[{"address":"10.9.0.2/24"}]}}`
	if out, _, code := r.Exec("ipvlan", env(r, "DEL", nil), []byte(conf)); code != 0 {
		t.Fatalf("DEL without CNI_NETNS: %s", out)
	}
}
