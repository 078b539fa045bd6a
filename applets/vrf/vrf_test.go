package vrf_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node has a veth up0/up1 for ipvlan's master.
func node(t *testing.T) *testnet.Runtime {
	t.Helper()
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	r.Node.MustRun("ip", "link", "set", "up0", "up")
	r.Node.MustRun("ip", "link", "set", "up1", "up")
	return r
}

var netSeq int

func conflist(t *testing.T, r *testnet.Runtime, version string, plugins ...string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"vrf%d","plugins":[%s]}`, version, netSeq, strings.Join(plugins, ",")))
}

func ipvlan(subnet string) string {
	return fmt.Sprintf(`{"type":"ipvlan","master":"up0","ipam":{"type":"host-local","ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.98.0.0/16"}]}}`, subnet)
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func vrfOf(t *testing.T, pod *testnet.NS, name string) *netlink.Vrf {
	t.Helper()
	v, ok := pod.Link(t, name).(*netlink.Vrf)
	if !ok {
		t.Fatalf("%s is not a VRF", name)
	}
	return v
}

// TestIpvlanChain is the field's chain, ipvlan + vrf, at every version vrf
// serves: the VRF is made with the first free table (1), the interface is
// its port, and the IPAM routes are in the VRF's table, not the main one.
// CHECK passes; DEL removes the VRF with its last port.
func TestIpvlanChain(t *testing.T) {
	testnet.RequireKernel(t, "vrf", "ipvlan")
	r := node(t)
	testnet.ForEachVersion(t, cni.VersionsFrom("0.3.1"), func(t *testing.T, v string) {
		l := conflist(t, r, v, ipvlan("10.60.0.0/24"), `{"type":"vrf","vrfname":"red"}`)
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		if _, err := r.Add(l, a); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		vrf := vrfOf(t, pod, "red")
		if vrf.Table != 1 || vrf.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("VRF red: table %d flags %v, want table 1, up", vrf.Table, vrf.Attrs().Flags)
		}
		if m := pod.Link(t, "eth0").Attrs().MasterIndex; m != vrf.Attrs().Index {
			t.Errorf("eth0's master is %d, want red (%d)", m, vrf.Attrs().Index)
		}
		table := pod.MustRun("ip", "route", "show", "table", "1")
		for _, want := range []string{"default via 10.60.0.1 dev eth0", "10.98.0.0/16 via 10.60.0.1 dev eth0", "10.60.0.0/24 dev eth0"} {
			if !strings.Contains(table, want) {
				t.Errorf("VRF table lacks %q:\n%s", want, table)
			}
		}
		if main := pod.MustRun("ip", "route", "show", "table", "main"); strings.Contains(main, "eth0") {
			t.Errorf("main table still routes through eth0:\n%s", main)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Errorf("GC: %v", err)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left: %v", got)
		}
	})
}

// TestSharedVRF: two interfaces share one VRF with a configured table; a
// second VRF gets the next free table; DEL of the first port keeps the
// VRF, CHECK fails once an interface left its VRF, DEL of the last port
// removes the VRF.
func TestSharedVRF(t *testing.T) {
	testnet.RequireKernel(t, "vrf", "ipvlan")
	r := node(t)
	blue := conflist(t, r, "1.1.0", ipvlan("10.61.0.0/24"), `{"type":"vrf","vrfname":"blue","table":42}`)
	pod := r.Pod(t)
	a, b := r.Attach(pod, "net1"), r.Attach(pod, "net2")
	for _, att := range []*testnet.Attachment{a, b} {
		if _, err := r.Add(blue, att); err != nil {
			t.Fatalf("ADD %s: %v", att.IfName, err)
		}
	}
	vrf := vrfOf(t, pod, "blue")
	if vrf.Table != 42 {
		t.Errorf("blue's table = %d, want 42", vrf.Table)
	}
	green := conflist(t, r, "1.1.0", ipvlan("10.62.0.0/24"), `{"type":"vrf","vrfname":"green"}`)
	c := r.Attach(pod, "net3")
	if _, err := r.Add(green, c); err != nil {
		t.Fatalf("ADD green: %v", err)
	}
	if tb := vrfOf(t, pod, "green").Table; tb != 1 {
		t.Errorf("green's table = %d, want 1 (the lowest free)", tb)
	}
	if err := r.Del(blue, a); err != nil {
		t.Fatalf("DEL net1: %v", err)
	}
	if vrfOf(t, pod, "blue") == nil {
		t.Fatal("blue went with its first port")
	}
	if err := r.Check(blue, b); err != nil {
		t.Errorf("CHECK net2: %v", err)
	}
	// Out of the VRF (the kernel drops its routes there too), CHECK fails.
	pod.MustRun("ip", "link", "set", "net2", "nomaster")
	if err := r.Check(blue, b); err == nil {
		t.Error("CHECK passes with net2 out of the VRF")
	}
	pod.MustRun("ip", "link", "set", "net2", "master", "blue")
	if err := r.Del(blue, b); err != nil {
		t.Fatalf("DEL net2: %v", err)
	}
	if err := r.Del(green, c); err != nil {
		t.Fatalf("DEL net3: %v", err)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left: %v", got)
	}
}

// TestErrors: an existing VRF with another table is a config error and
// leaves the interface out of it (the whole chain's ADD fails and rolls
// back); a spec version before 0.3.1 is refused (code 1); vrfname is
// required; DEL with the netns gone succeeds.
func TestErrors(t *testing.T) {
	testnet.RequireKernel(t, "vrf", "ipvlan")
	r := node(t)
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "red", "type", "vrf", "table", "10")
	l := conflist(t, r, "1.0.0", ipvlan("10.63.0.0/24"), `{"type":"vrf","vrfname":"red","table":20}`)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); cniCode(err) != cni.ErrInvalidConfig || !strings.Contains(err.Error(), "table") {
		t.Errorf("ADD with a conflicting table: %v, want code 7 naming table", err)
	}
	_ = r.Del(l, a)
	if vrfOf(t, pod, "red").Table != 10 {
		t.Error("the existing VRF changed")
	}
	if _, err := r.Add(conflist(t, r, "1.0.0", ipvlan("10.63.0.0/24"), `{"type":"vrf"}`), r.Attach(pod, "eth1")); cniCode(err) != cni.ErrInvalidConfig || !strings.Contains(err.Error(), "vrfname") {
		t.Errorf("ADD without vrfname: %v", err)
	}
	out, _, code := r.Exec("vrf", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path},
		[]byte(`{"cniVersion":"0.3.0","name":"n","type":"vrf","vrfname":"red"}`))
	if e := testnet.ParseError(t, out); code == 0 || e.Code != cni.ErrIncompatibleVersion {
		t.Errorf("ADD at 0.3.0: %s", out)
	}
	good := conflist(t, r, "1.0.0", ipvlan("10.64.0.0/24"), `{"type":"vrf","vrfname":"red"}`)
	b := r.Attach(pod, "eth2")
	if _, err := r.Add(good, b); err != nil {
		t.Fatalf("ADD into the existing VRF: %v", err)
	}
	pod.Delete()
	if err := r.Del(good, b); err != nil {
		t.Errorf("DEL with the netns gone: %v", err)
	}
}

// TestRestoresIPv6: with keep_addr_on_down off, enslaving drops the
// interface's global IPv6 addresses; vrf puts them back and their routes
// into the VRF's table (a veth made as a third-party main plugin would).
func TestRestoresIPv6(t *testing.T) {
	testnet.RequireKernel(t, "vrf")
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	pod.MustRun("sysctl", "-w", "net.ipv6.conf.eth0.keep_addr_on_down=0")
	pod.MustRun("ip", "link", "set", "peer0", "up")
	pod.MustRun("ip", "link", "set", "eth0", "up")
	pod.MustRun("ip", "addr", "add", "fd00:65::2/64", "dev", "eth0", "nodad")
	pod.MustRun("ip", "route", "add", "fd00:66::/64", "via", "fd00:65::1", "dev", "eth0")
	prev := map[string]any{"cniVersion": "1.0.0",
		"interfaces": []any{map[string]any{"name": "eth0", "sandbox": pod.Path}},
		"ips":        []any{map[string]any{"address": "fd00:65::2/64", "interface": 0}}}
	pb, _ := json.Marshal(prev)
	stdin := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"n","type":"vrf","vrfname":"v6","prevResult":%s}`, pb)
	env := []string{"CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path}
	if out, stderr, code := r.Exec("vrf", append(env, "CNI_COMMAND=ADD"), []byte(stdin)); code != 0 {
		t.Fatalf("ADD: %s %s", out, stderr)
	}
	if addrs := pod.MustRun("ip", "-6", "addr", "show", "dev", "eth0"); !strings.Contains(addrs, "fd00:65::2/64") {
		t.Errorf("the IPv6 address is gone:\n%s", addrs)
	}
	if tbl := pod.MustRun("ip", "-6", "route", "show", "table", "1"); !strings.Contains(tbl, "fd00:66::/64 via fd00:65::1") {
		t.Errorf("VRF table:\n%s", tbl)
	}
	if out, _, code := r.Exec("vrf", append(env, "CNI_COMMAND=CHECK"), []byte(stdin)); code != 0 {
		t.Errorf("CHECK: %s", out)
	}
	if out, _, code := r.Exec("vrf", append(env, "CNI_COMMAND=DEL"), []byte(stdin)); code != 0 {
		t.Errorf("DEL: %s", out)
	}
	if out, _ := pod.Run("ip", "link", "show", "v6"); !strings.Contains(out, "does not exist") {
		t.Errorf("VRF v6 left after DEL of its only port: %s", out)
	}
	if pod.Link(t, "eth0").Attrs().MasterIndex != 0 {
		t.Error("eth0 still has a master")
	}
}

// TestSbrAfterVRF: ipvlan + vrf + sbr, the interplay of the two meta
// plugins. The VRF's table 100 holds routes without a rule pointing at
// it, so sbr must take 101 for its own (the reference's sbr only looks at
// rules and the main table and would share the VRF's). CHECK passes, DEL
// removes the rule, sbr's table, the VRF and the link.
func TestSbrAfterVRF(t *testing.T) {
	testnet.RequireKernel(t, "vrf", "ipvlan")
	r := node(t)
	l := conflist(t, r, "1.1.0", ipvlan("10.66.0.0/24"), `{"type":"vrf","vrfname":"red","table":100}`, `{"type":"sbr"}`)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	rules := pod.MustRun("ip", "rule", "show")
	if !strings.Contains(rules, "lookup 101") || strings.Contains(rules, "lookup 100") {
		t.Errorf("sbr's rule should look up 101, not the VRF's 100:\n%s", rules)
	}
	if tbl := pod.MustRun("ip", "route", "show", "table", "101"); !strings.Contains(tbl, "default via 10.66.0.1 dev eth0") {
		t.Errorf("table 101:\n%s", tbl)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if rules := pod.MustRun("ip", "rule", "show"); strings.Contains(rules, "lookup 101") {
		t.Errorf("sbr's rule left:\n%s", rules)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links left: %v", got)
	}
}
