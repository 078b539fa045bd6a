package vlan_test

// These tests need 8021q (and dummy) in the kernel: on a host without
// them they skip, and make vmtest runs them in a VM.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node has a veth "trunk0" (MTU 1500) to serve
// as master; its peer "trunk1" is up in a netns playing the switch.
func node(t *testing.T, features ...string) (*testnet.Runtime, *testnet.NS) {
	t.Helper()
	testnet.RequireKernel(t, append([]string{"vlan"}, features...)...)
	r := testnet.NewRuntime(t)
	sw := testnet.NewNS(t, "switch")
	r.Node.MustRun("ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk1", "netns", sw.Name)
	r.Node.MustRun("ip", "link", "set", "trunk0", "up")
	sw.MustRun("ip", "link", "set", "trunk1", "up")
	return r, sw
}

var netSeq int

// list writes a one-plugin conflist around the vlan plugin config fields
// (JSON object members without braces).
func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	name := fmt.Sprintf("vl%d", netSeq)
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"vlan",%s}]}`, version, name, fields))
}

func static(addr string) string {
	return fmt.Sprintf(`"ipam":{"type":"static","addresses":[{"address":%q}]}`, addr)
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}`

// peer makes, on the switch's trunk1, a VLAN link with the given id and
// protocol, moves it into a netns of its own and gives it addr.
func peer(t *testing.T, sw *testnet.NS, name, proto string, id int, addr string) *testnet.NS {
	t.Helper()
	p := testnet.NewNS(t, name)
	sw.MustRun("ip", "link", "add", "link", "trunk1", "name", name, "type", "vlan", "proto", proto, "id", fmt.Sprint(id))
	sw.MustRun("ip", "link", "set", name, "netns", p.Name)
	p.MustRun("ip", "addr", "add", addr, "dev", name)
	p.MustRun("ip", "link", "set", name, "up")
	return p
}

// TestIsolation: a pod reaches the peer on its VLAN and not the peers on
// another VLAN, nor on the same id with the other protocol (802.1ad).
func TestIsolation(t *testing.T) {
	r, sw := node(t, "vlan-802.1ad")
	peer(t, sw, "q100", "802.1Q", 100, "10.30.0.10/24")
	peer(t, sw, "q200", "802.1Q", 200, "10.30.0.11/24")
	peer(t, sw, "ad100", "802.1ad", 100, "10.30.0.12/24")
	for _, tc := range []struct {
		fields, addr, reach string
		not                 []string
	}{
		{`"vlanId":100`, "10.30.0.2/24", "10.30.0.10", []string{"10.30.0.11", "10.30.0.12"}},
		{`"vlanId":200,"protocol":"802.1Q"`, "10.30.0.3/24", "10.30.0.11", []string{"10.30.0.10"}},
		{`"vlanId":100,"protocol":"802.1ad"`, "10.30.0.4/24", "10.30.0.12", []string{"10.30.0.10"}},
	} {
		t.Run(tc.fields, func(t *testing.T) {
			l := list(t, r, "1.1.0", `"master":"trunk0",`+tc.fields+","+static(tc.addr))
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			if _, err := r.Add(l, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := pod.Ping(tc.reach); err != nil {
				t.Errorf("cannot reach %s on its VLAN: %v", tc.reach, err)
			}
			for _, ip := range tc.not {
				if err := pod.Ping(ip); err == nil {
					t.Errorf("reached %s on another VLAN", ip)
				}
			}
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		})
	}
}

// TestReference: a node can switch between the reference vlan and
// cnibox's either way: what one ADDs, the other CHECKs and DELs.
func TestReference(t *testing.T) {
	r, _ := node(t)
	ref := t.TempDir()
	if err := os.Symlink(testnet.RequireReference(t, "vlan"), filepath.Join(ref, "vlan")); err != nil {
		t.Fatal(err)
	}
	const v = "1.0.0" // the newest the reference (Debian's v1.1.1) takes
	for _, tc := range []struct{ name, add, rest string }{
		{"reference ADD, cnibox CHECK and DEL", ref + ":" + r.BinDir, r.BinDir},
		{"cnibox ADD, reference CHECK and DEL", r.BinDir, ref + ":" + r.BinDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := list(t, r, v, `"master":"trunk0","vlanId":33,"mtu":1400,`+hostLocal)
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
// every spec version, and checks the link and the result's shape.
func TestVersions(t *testing.T) {
	r, _ := node(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		l := list(t, r, v, `"master":"trunk0","vlanId":42,"mtu":1400,"dns":{"nameservers":["10.0.0.53"]},
			"ipam":{"type":"static","addresses":[{"address":"10.20.0.5/24","gateway":"10.20.0.1"}],
			"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.20.0.53"]}}`)
		pod := r.Pod(t)
		a := r.Attach(pod, "net1")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		vl, ok := pod.Link(t, "net1").(*netlink.Vlan)
		master := r.Node.Link(t, "trunk0")
		if !ok || vl.VlanId != 42 || vl.VlanProtocol != netlink.VLAN_PROTOCOL_8021Q || vl.MTU != 1400 ||
			vl.ParentIndex != master.Attrs().Index || vl.HardwareAddr.String() != master.Attrs().HardwareAddr.String() {
			t.Fatalf("link: %#v", pod.Link(t, "net1"))
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if len(cur.IPs) != 1 || cur.IPs[0].Address.String() != "10.20.0.5/24" {
			t.Errorf("result IPs: %+v", cur.IPs)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "net1" || cur.Interfaces[0].Sandbox != pod.Path ||
				cur.Interfaces[0].Mac != master.Attrs().HardwareAddr.String() {
				t.Errorf("result interfaces: %+v", cur.Interfaces)
			}
		}
		if want := []string{"10.0.0.53", "10.20.0.53"}; !slices.Equal(cur.DNS.Nameservers, want) {
			t.Errorf("result DNS %+v, want config and IPAM DNS merged", cur.DNS)
		}
		if out := pod.MustRun("ip", "route", "show", "default"); !strings.Contains(out, "via 10.20.0.1 dev net1") {
			t.Errorf("default route: %q", out)
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
// cnitool, with host-local: DEL releases the address.
func TestCnitool(t *testing.T) {
	r, _ := node(t)
	l := list(t, r, "1.1.0", `"master":"trunk0","vlanId":7,`+hostLocal)
	pod := r.Pod(t)
	out, err := r.Cnitool("add", l.Name, pod)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "10.10.0.") || len(r.Reservations(l.Name)) != 1 {
		t.Fatalf("ADD result: %s, allocations %v", out, r.Reservations(l.Name))
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
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("addresses still allocated: %v", got)
	}
}

// TestLinkInContainer: with linkInContainer the master is found in the
// pod's netns.
func TestLinkInContainer(t *testing.T) {
	r, _ := node(t, "dummy")
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "inner0", "type", "dummy")
	pod.MustRun("ip", "link", "set", "inner0", "up")
	l := list(t, r, "1.1.0", `"master":"inner0","linkInContainer":true,"vlanId":9,`+static("10.60.0.2/24"))
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if vl := pod.Link(t, "eth0").(*netlink.Vlan); vl.ParentIndex != pod.Link(t, "inner0").Attrs().Index || vl.VlanId != 9 {
		t.Errorf("link: %#v", vl)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatal(err)
	}
	if got := pod.Links(t); len(got) != 2 {
		t.Errorf("links after DEL: %v, want lo and inner0", got)
	}
}

// TestCheckDetectsDrift: CHECK fails when the link no longer matches the
// config (another vlan id, another MTU) or the result (address gone).
func TestCheckDetectsDrift(t *testing.T) {
	r, _ := node(t)
	l := list(t, r, "1.1.0", `"master":"trunk0","vlanId":10,`+static("10.70.0.2/24"))
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ fields, want string }{
		{`"vlanId":11`, "vlan id"},
		{`"vlanId":10,"protocol":"802.1ad"`, "protocol"},
		{`"vlanId":10,"mtu":1300`, "MTU"},
	} {
		other := list(t, r, "1.1.0", `"master":"trunk0",`+tc.fields+","+static("10.70.0.2/24"))
		other.Name = l.Name
		if err := r.Check(other, a); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CHECK with %s: %v, want an error naming %s", tc.fields, err, tc.want)
		}
	}
	pod.MustRun("ip", "addr", "flush", "dev", "eth0")
	if err := r.Check(l, a); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("CHECK after the address went: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatal(err)
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

// TestBadInput: each bad config gets a CNI error with code 7 naming the
// field, and leaves neither a link nor an address behind.
func TestBadInput(t *testing.T) {
	r, _ := node(t)
	hl := func(name string) string {
		return fmt.Sprintf(`"ipam":{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/24"}]],"dataDir":%q}`, filepath.Join(r.StateDir, name))
	}
	for _, tc := range []struct{ name, fields, want string }{
		{"no master", `"vlanId":5,` + hl("a"), "master"},
		{"missing master", `"master":"nosuch0","vlanId":5,` + hl("b"), "master"},
		{"vlanId negative", `"master":"trunk0","vlanId":-1,` + hl("c"), "vlanId"},
		{"vlanId 4095", `"master":"trunk0","vlanId":4095,` + hl("d"), "vlanId"},
		{"mtu above master", `"master":"trunk0","vlanId":5,"mtu":1501,` + hl("e"), "mtu"},
		{"bad protocol", `"master":"trunk0","vlanId":5,"protocol":"802.1x",` + hl("f"), "protocol"},
		{"no ipam", `"master":"trunk0","vlanId":5`, "ipam"},
		{"vlanId not a number", `"master":"trunk0","vlanId":"5",` + hl("g"), "vlanId"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := r.Pod(t)
			conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"bad","type":"vlan",%s}`, tc.fields)
			out, _, code := r.Exec("vlan", env(r, "ADD", pod), []byte(conf))
			if code == 0 {
				t.Fatalf("ADD succeeded: %s", out)
			}
			e := testnet.ParseError(t, out)
			if (e.Code != types.ErrInvalidNetworkConfig && e.Code != types.ErrDecodingFailure) || !strings.Contains(e.Msg, tc.want) {
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
			out, _, code = r.Exec("vlan", env(r, "DEL", pod), []byte(conf))
			if delFails := tc.name == "vlanId not a number"; (code != 0) != delFails {
				t.Errorf("DEL of the refused config: exit %d, %s", code, out)
			}
		})
	}
}

// TestStatus: STATUS fails with 50 when the master is missing, and
// succeeds when it is there.
func TestStatus(t *testing.T) {
	r, _ := node(t)
	if err := r.Status(list(t, r, "1.1.0", `"master":"trunk0","vlanId":3,`+hostLocal)); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	err := r.Status(list(t, r, "1.1.0", `"master":"nosuch0","vlanId":3,`+hostLocal))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != 50 || !strings.Contains(e.Msg, "master") {
		t.Fatalf("STATUS with a missing master: %v, want code 50 naming master", err)
	}
}

// TestDelWithoutNetns: DEL succeeds and releases the address when the
// netns is gone, and when CNI_NETNS is empty.
func TestDelWithoutNetns(t *testing.T) {
	r, _ := node(t)
	l := list(t, r, "1.1.0", `"master":"trunk0","vlanId":12,`+hostLocal)
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
	conf := `{"cniVersion":"1.1.0","name":"x","type":"vlan","master":"trunk0","vlanId":12,` + static("10.9.0.2/24") + `}`
	if out, _, code := r.Exec("vlan", env(r, "DEL", nil), []byte(conf)); code != 0 {
		t.Fatalf("DEL without CNI_NETNS: %s", out)
	}
}
