package bridge_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// env is one test's node and host-local's data dir.
type env struct {
	*testnet.Runtime
	t       *testing.T
	dataDir string
}

func newEnv(t *testing.T) *env {
	r := testnet.NewRuntime(t)
	return &env{Runtime: r, t: t, dataDir: filepath.Join(t.TempDir(), "ipam")}
}

// hostLocal is an ipam section on subnet.
func (e *env) hostLocal(subnet string, extra string) string {
	return fmt.Sprintf(`{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q%s}]]}`, e.dataDir, subnet, extra)
}

// net writes a one-plugin conflist for the bridge with keys (JSON object
// members, no braces) and returns it.
func (e *env) net(name, version, keys string) *netList {
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"bridge",%s}]}`, version, name, keys)
	return &netList{e.Conflist(conf), name}
}

type libcniList = libcni.NetworkConfigList

type netList struct {
	*libcniList
	name string
}

func (e *env) add(l *netList, a *testnet.Attachment) *current.Result {
	e.t.Helper()
	res, err := e.Add(l.libcniList, a)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", l.name, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		e.t.Fatalf("convert result: %v", err)
	}
	return cur
}

func (e *env) del(l *netList, a *testnet.Attachment) {
	e.t.Helper()
	if err := e.Del(l.libcniList, a); err != nil {
		e.t.Fatalf("DEL %s: %v", l.name, err)
	}
}

func podIP(t *testing.T, res *current.Result, v4 bool) string {
	t.Helper()
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() != nil) == v4 {
			return ipc.Address.IP.String()
		}
	}
	t.Fatalf("no address of that family in %+v", res.IPs)
	return ""
}

// natRules is the node's nat tables ("" where iptables is not installed,
// as in the VM).
func (e *env) natRules() string {
	if _, err := exec.LookPath("iptables-save"); err != nil {
		return ""
	}
	return e.Node.MustRun("iptables-save", "-t", "nat") + e.Node.MustRun("ip6tables-save", "-t", "nat")
}

func (e *env) nftRuleset() string {
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	return e.Node.MustRun("nft", "list", "ruleset")
}

func (e *env) assertClean(network string) {
	e.t.Helper()
	e.AssertNoAttachments(e.t, e.dataDir, network)
}

// TestVersions attaches two pods at every spec version through libcni:
// result shape, traffic pod-to-pod and pod-to-node, CHECK, DEL twice, and
// nothing left behind.
func TestVersions(t *testing.T) {
	e := newEnv(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		e.t = t
		name := "br" + strings.ReplaceAll(v, ".", "")
		sub := subnetFor(v, 77)
		l := e.net(name, v, `"bridge":"cni-`+name+`","isGateway":true,"ipam":`+e.hostLocal(sub+".0/24", ""))
		p1, p2 := e.Pod(t), e.Pod(t)
		a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
		r1, r2 := e.add(l, a1), e.add(l, a2)
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(r1.Interfaces) != 3 || r1.Interfaces[0].Name != "cni-"+name || r1.Interfaces[2].Sandbox != p1.Path ||
				r1.Interfaces[1].Mac == "" || r1.Interfaces[2].Mac == "" || r1.Interfaces[0].Mac == "" {
				t.Errorf("interfaces = %+v", r1.Interfaces)
			}
			if i := r1.IPs[0].Interface; i == nil || *i != 2 {
				t.Errorf("ips[0].interface = %v, want 2", i)
			}
		}
		if gw := r1.IPs[0].Gateway.String(); gw != sub+".1" {
			t.Errorf("gateway = %s", gw)
		}
		if err := p1.Ping(podIP(t, r2, true)); err != nil {
			t.Errorf("pod to pod: %v", err)
		}
		if err := p2.Ping(sub + ".1"); err != nil {
			t.Errorf("pod to node: %v", err)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := e.Check(l.libcniList, a1); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			p1.MustRun("ip", "addr", "flush", "dev", "eth0")
			if err := e.Check(l.libcniList, a1); err == nil {
				t.Error("CHECK passed with the pod's address gone")
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := e.Status(l.libcniList); err != nil {
				t.Errorf("STATUS: %v", err)
			}
		}
		e.del(l, a1)
		e.del(l, a2)
		e.del(l, a1)
		e.assertClean(name)
	})
}

// subnetFor gives each spec version its own /24 ("10.<b>.<i>"): bridges
// stay on the node after DEL, and two with one subnet would fight over it.
func subnetFor(v string, b int) string {
	return fmt.Sprintf("10.%d.%d", b, slices.Index(cni.AllVersions, v))
}

// TestCnitool drives the bridge through the reference cnitool.
func TestCnitool(t *testing.T) {
	e := newEnv(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		e.t = t
		name := "ct" + strings.ReplaceAll(v, ".", "")
		sub := subnetFor(v, 78)
		e.net(name, v, `"bridge":"cni-`+name+`","isDefaultGateway":true,"ipam":`+e.hostLocal(sub+".0/24", ""))
		pod := e.Pod(t)
		out, err := e.Cnitool("add", name, pod)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, sub+".2/24") {
			t.Errorf("result: %s", out)
		}
		if routes := pod.MustRun("ip", "route"); !strings.Contains(routes, "default via "+sub+".1") {
			t.Errorf("no default route via the bridge: %s", routes)
		}
		if err := pod.Ping(sub + ".1"); err != nil {
			t.Error(err)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if _, err := e.Cnitool("check", name, pod); err != nil {
				t.Error(err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if _, err := e.Cnitool("status", name, nil); err != nil {
				t.Error(err)
			}
		}
		if _, err := e.Cnitool("del", name, pod); err != nil {
			t.Fatal(err)
		}
		e.assertClean(name)
	})
}

// TestL2Only: an empty ipam gives an address-less veth on the bridge whose
// CHECK passes (the reference's fails), and pods address themselves.
func TestL2Only(t *testing.T) {
	e := newEnv(t)
	// 0.1.0 and 0.2.0 results cannot express an attachment without addresses.
	versions := slices.DeleteFunc(slices.Clone(cni.AllVersions), func(v string) bool { return !cni.VersionAtLeast(v, "0.3.0") })
	testnet.ForEachVersion(t, versions, func(t *testing.T, v string) {
		e.t = t
		name := "l2" + strings.ReplaceAll(v, ".", "")
		l := e.net(name, v, `"bridge":"cni-`+name+`"`)
		p1, p2 := e.Pod(t), e.Pod(t)
		a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
		r := e.add(l, a1)
		e.add(l, a2)
		if len(r.IPs) != 0 {
			t.Errorf("L2 result has addresses: %+v", r.IPs)
		}
		p1.MustRun("ip", "addr", "add", "192.168.50.1/24", "dev", "eth0")
		p2.MustRun("ip", "addr", "add", "192.168.50.2/24", "dev", "eth0")
		if err := p1.Ping("192.168.50.2"); err != nil {
			t.Error(err)
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := e.Check(l.libcniList, a1); err != nil {
				t.Errorf("CHECK of an L2 attachment: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := e.Status(l.libcniList); err != nil {
				t.Errorf("STATUS: %v", err)
			}
		}
		e.del(l, a1)
		e.del(l, a2)
		e.assertClean(name)
	})
}

// TestDelWithoutNetns: with the pod's netns gone, or no CNI_NETNS at all,
// DEL still removes the host veth, the reservation and the rules.
func TestDelWithoutNetns(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t)
			l := e.net("nons", "1.0.0", `"bridge":"cni-nons","isGateway":true,"ipMasq":true,"ipMasqBackend":"`+backend+
				`","macspoofchk":true,"ipam":`+e.hostLocal("10.79.0.0/24", ""))
			pod := e.Pod(t)
			a := e.Attach(pod, "eth0")
			e.add(l, a)
			pod.Delete()
			e.del(l, a)
			e.del(l, a)
			e.assertClean("nons")

			// No CNI_NETNS at all.
			pod2 := e.Pod(t)
			a2 := e.Attach(pod2, "eth0")
			e.add(l, a2)
			a2.Pod = nil
			e.del(l, a2)
			e.assertClean("nons")
		})
	}
}

// TestGC: GC removes the veth, rules and reservation of an attachment
// the runtime no longer lists, and keeps the valid one's.
func TestGC(t *testing.T) {
	e := newEnv(t)
	keys := `"bridge":"cni-gc","isGateway":true,"ipMasq":true,"macspoofchk":true`
	l := e.net("gcnet", "1.0.0", keys+`,"ipam":`+e.hostLocal("10.80.0.0/24", ""))
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	e.add(l, a1)
	e.add(l, a2)
	gcConf := map[string]any{"cniVersion": "1.1.0", "name": "gcnet", "type": "bridge", "bridge": "cni-gc",
		"ipMasq": true, "macspoofchk": true, "ipam": json.RawMessage(e.hostLocal("10.80.0.0/24", "")),
		"cni.dev/valid-attachments": []map[string]string{{"containerID": a1.ContainerID, "ifname": "eth0"}}}
	conf, _ := json.Marshal(gcConf)
	out, _, code := e.Exec("bridge", []string{"CNI_COMMAND=GC", "CNI_PATH=" + e.Path}, conf)
	if code != 0 {
		t.Fatalf("GC: %s", out)
	}
	if v := e.Veths(); len(v) != 1 {
		t.Errorf("veths after GC = %v, want only pod 1's", v)
	}
	if nat := e.natRules(); strings.Count(nat, "-A POSTROUTING") != 1 || !strings.Contains(nat, a1.ContainerID) {
		t.Errorf("nat after GC:\n%s", nat)
	}
	if rs := e.nftRuleset(); strings.Contains(rs, a2.ContainerID) || !strings.Contains(rs, a1.ContainerID) {
		t.Errorf("nft after GC:\n%s", rs)
	}
	if err := p1.Ping("10.80.0.1"); err != nil {
		t.Errorf("valid pod lost traffic after GC: %v", err)
	}
	e.del(l, a1)
	e.del(l, a2)
	e.assertClean("gcnet")
}

// TestStatus: STATUS fails with 50 when the bridge name is taken by a
// device that is not a bridge.
func TestStatus(t *testing.T) {
	e := newEnv(t)
	conf := []byte(`{"cniVersion":"1.1.0","name":"st","type":"bridge","bridge":"cni-st"}`)
	env := []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + e.Path}
	if out, _, code := e.Exec("bridge", env, conf); code != 0 {
		t.Fatalf("STATUS without a bridge: %s", out)
	}
	e.Node.MustRun("ip", "link", "add", "cni-st", "type", "veth", "peer", "name", "cni-st-peer")
	out, _, code := e.Exec("bridge", env, conf)
	if code == 0 {
		t.Fatal("STATUS passed with cni-st a veth")
	}
	if er := testnet.ParseError(t, out); er.Code != 50 || !strings.Contains(er.Msg, "cni-st") {
		t.Errorf("error = %d %s", er.Code, er.Msg)
	}
}

// TestConcurrentAdds: pods racing to create the same bridge all succeed,
// and so do their concurrent DELs; the masquerade rules come out exact.
func TestConcurrentAdds(t *testing.T) {
	e := newEnv(t)
	l := e.net("race", "1.0.0", `"bridge":"cni-race","isGateway":true,"ipMasq":true,"macspoofchk":true,"ipam":`+e.hostLocal("10.81.0.0/24", `,"rangeStart":"10.81.0.10","rangeEnd":"10.81.0.49"`))
	ln := e.net("racenft", "1.0.0", `"bridge":"cni-race","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","ipam":`+e.hostLocal("10.81.0.0/24", `,"rangeStart":"10.81.0.50","rangeEnd":"10.81.0.99"`))
	const n = 8
	atts := make([]*testnet.Attachment, n)
	for i := range atts {
		atts[i] = e.Attach(e.Pod(t), "eth0")
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	// Half on an iptables network, half on an nftables one, on one bridge
	// (and one subnet, with disjoint ranges): ADDs and DELs race on the
	// bridge, the nat table and the nftables chains.
	list := func(i int) *netList {
		if i%2 == 0 {
			return l
		}
		return ln
	}
	for i := range atts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.Add(list(i).libcniList, atts[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %d: %v", i, err)
		}
	}
	if err := atts[0].Pod.Ping("10.81.0.1"); err != nil {
		t.Error(err)
	}
	if nat := e.natRules(); strings.Count(nat, "-A POSTROUTING") != n/2 {
		t.Errorf("want %d POSTROUTING jumps:\n%s", n/2, nat)
	}
	if rs := e.nftRuleset(); strings.Count(rs, " masquerade comment") != n/2 || strings.Count(rs, "goto masq_checks") != 1 {
		t.Errorf("want %d nftables masquerade rules and one goto:\n%s", n/2, rs)
	}
	for i := range atts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.Del(list(i).libcniList, atts[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	e.assertClean("race")
	e.assertClean("racenft")
}

// outside makes a netns beyond the node (172.30.0.2, the node's end
// 172.30.0.1) whose UDP server answers with the source it sees, and
// returns a function that asks it from a pod. The outside routes the
// pods' subnet back through the node, so that unmasqueraded pods get
// their answer too.
func (e *env) outside(t *testing.T, pods string) (addr string, sourceSeenFrom func(pod *testnet.NS) string) {
	out := e.Outside(t, "172.30.0.1/24", "172.30.0.2/24")
	out.MustRun("ip", "route", "add", pods, "via", "172.30.0.1")
	traffic.ServePeer(t, out, 9999)
	return "172.30.0.2", func(pod *testnet.NS) string {
		got, err := traffic.Ask(pod, "udp", "172.30.0.2", 9999)
		if err != nil {
			t.Fatalf("outside: %v", err)
		}
		return got
	}
}

// TestIPMasq: with ipMasq, a pod reaches an address beyond the node and
// the outside sees the node's address, on both backends; without it the
// pod's own; rules exist while attached and are gone after DEL.
func TestIPMasq(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables", ""} {
		t.Run("backend="+backend, func(t *testing.T) {
			e := newEnv(t)
			addr, source := e.outside(t, "10.82.0.0/24")
			l := e.net("masq", "1.0.0", `"bridge":"cni-masq","isDefaultGateway":true,"ipMasq":true,"ipMasqBackend":"`+backend+
				`","ipam":`+e.hostLocal("10.82.0.0/24", ""))
			pod := e.Pod(t)
			a := e.Attach(pod, "eth0")
			e.add(l, a)
			if err := pod.Ping(addr); err != nil {
				t.Errorf("pod to outside: %v", err)
			}
			if got := source(pod); got != "172.30.0.1" {
				t.Errorf("outside saw source %s, want the node's 172.30.0.1", got)
			}
			switch backend {
			case "nftables":
				if rs := e.nftRuleset(); !strings.Contains(rs, "table inet cni_plugins_masquerade") ||
					!strings.Contains(rs, "ip saddr 10.82.0.2 ip daddr != 10.82.0.0/24 masquerade") {
					t.Errorf("nft ruleset:\n%s", rs)
				}
			default:
				if nat := e.natRules(); !strings.Contains(nat, `--comment "name: \"masq\" id: \"`+a.ContainerID+`\""`) {
					t.Errorf("nat:\n%s", nat)
				}
			}
			if err := e.Check(l.libcniList, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			e.del(l, a)
			e.assertClean("masq")

			// Without ipMasq the outside sees the pod itself.
			nl := e.net("nomasq", "1.0.0", `"bridge":"cni-masq","isDefaultGateway":true,"ipam":`+e.hostLocal("10.82.0.0/24", ""))
			a = e.Attach(pod, "eth0")
			res := e.add(nl, a)
			if got := source(pod); got != podIP(t, res, true) {
				t.Errorf("without ipMasq the outside saw %s", got)
			}
			e.del(nl, a)
		})
	}
}

// TestMacSpoofCheck: with macspoofchk a pod that changes its MAC loses
// its traffic; the nftables rules carry the reference's names.
func TestMacSpoofCheck(t *testing.T) {
	e := newEnv(t)
	l := e.net("spoof", "1.0.0", `"bridge":"cni-spoof","macspoofchk":true,"ipam":`+e.hostLocal("10.83.0.0/24", ""))
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	e.add(l, a1)
	r2 := e.add(l, a2)
	if err := p1.Ping(podIP(t, r2, true)); err != nil {
		t.Fatalf("before spoofing: %v", err)
	}
	rs := e.nftRuleset()
	for _, want := range []string{"table bridge nat", "chain PREROUTING", "cni-br-iface-" + a1.ContainerID + "-eth0-mac",
		`comment "macspoofchk-` + a1.ContainerID + `-eth0"`} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	if err := e.Check(l.libcniList, a1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	p1.MustRun("ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef")
	p1.MustRun("ip", "neigh", "flush", "all")
	if err := p1.Ping(podIP(t, r2, true)); err == nil {
		t.Error("a pod with a spoofed MAC still reaches its neighbour")
	}
	e.del(l, a1)
	e.del(l, a2)
	e.assertClean("spoof")
}

// TestVlan: pods on VLAN 10 reach each other and not an untagged pod on
// the same bridge; a trunk port carries its VLANs.
func TestVlan(t *testing.T) {
	testnet.RequireKernel(t, "bridge-vlan", "vlan")
	e := newEnv(t)
	tagged := e.net("v10", "1.0.0", `"bridge":"cni-vlan","vlan":10,"isGateway":true,"ipam":`+e.hostLocal("10.84.0.0/24", `,"rangeStart":"10.84.0.10","rangeEnd":"10.84.0.19"`))
	untagged := e.net("v0", "1.0.0", `"bridge":"cni-vlan","ipam":`+e.hostLocal("10.84.0.0/24", `,"rangeStart":"10.84.0.20","rangeEnd":"10.84.0.29"`))
	trunk := e.net("vt", "1.0.0", `"bridge":"cni-vlan","vlanTrunk":[{"id":10},{"minID":20,"maxID":22}]`)
	p1, p2, p3, p4 := e.Pod(t), e.Pod(t), e.Pod(t), e.Pod(t)
	a1, a2, a3, a4 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0"), e.Attach(p3, "eth0"), e.Attach(p4, "eth0")
	e.add(tagged, a1)
	r2 := e.add(tagged, a2)
	r3 := e.add(untagged, a3)
	e.add(trunk, a4)
	if err := p1.Ping(podIP(t, r2, true)); err != nil {
		t.Errorf("same VLAN: %v", err)
	}
	if err := p1.Ping(podIP(t, r3, true)); err == nil {
		t.Error("VLAN 10 pod reaches an untagged pod")
	}
	// isGateway with a VLAN: the gateway lives on cni-vlan.10, a VLAN 10 port.
	if err := p2.Ping("10.84.0.1"); err != nil {
		t.Errorf("VLAN 10 pod to its gateway: %v", err)
	}
	if out := e.Node.MustRun("ip", "addr", "show", "cni-vlan.10"); !strings.Contains(out, "10.84.0.1/24") {
		t.Errorf("gateway interface: %s", out)
	}
	vl := e.Node.MustRun("bridge", "vlan", "show")
	for _, want := range []string{"10 PVID Egress Untagged", "20", "22"} {
		if !strings.Contains(vl, want) {
			t.Errorf("bridge vlan show lacks %q:\n%s", want, vl)
		}
	}
	// The trunk pod talks VLAN 10 tagged.
	p4.MustRun("ip", "link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10")
	p4.MustRun("ip", "addr", "add", "10.84.0.50/24", "dev", "eth0.10")
	p4.MustRun("ip", "link", "set", "eth0.10", "up")
	if err := p4.Ping(podIP(t, r2, true)); err != nil {
		t.Errorf("trunk pod over VLAN 10: %v", err)
	}
	for _, x := range []struct {
		l *netList
		a *testnet.Attachment
	}{{tagged, a1}, {tagged, a2}, {untagged, a3}, {trunk, a4}} {
		e.del(x.l, x.a)
	}
	e.assertClean("v10")
}

// TestPortOptions: mtu, hairpinMode, promiscMode, portIsolation,
// disableContainerInterface, mac precedence, dns, forceAddress.
func TestPortOptions(t *testing.T) {
	e := newEnv(t)
	l := e.net("opts", "1.0.0", `"bridge":"cni-opts","mtu":1400,"hairpinMode":true,"portIsolation":true,"isGateway":true,`+
		`"capabilities":{"mac":true},"args":{"cni":{"mac":"02:00:00:00:00:02"}},"dns":{"nameservers":["10.85.0.53"]},"ipam":`+e.hostLocal("10.85.0.0/24", ""))
	pod := e.Pod(t)
	a := e.Attach(pod, "eth0")
	a.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:00:03"}}
	a.Caps = map[string]any{"mac": "02:00:00:00:00:01"}
	res := e.add(l, a)
	if res.Interfaces[2].Mac != "02:00:00:00:00:01" {
		t.Errorf("runtimeConfig.mac lost: %s", res.Interfaces[2].Mac)
	}
	if !slices.Equal(res.DNS.Nameservers, []string{"10.85.0.53"}) {
		t.Errorf("dns = %+v", res.DNS)
	}
	if out := pod.MustRun("ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "02:00:00:00:00:01") {
		t.Errorf("pod eth0: %s", out)
	}
	port := e.Node.MustRun("ip", "-d", "link", "show", res.Interfaces[1].Name)
	for _, want := range []string{"mtu 1400", "hairpin on", "isolated on"} {
		if !strings.Contains(port, want) {
			t.Errorf("host veth lacks %q: %s", want, port)
		}
	}
	if err := e.Check(l.libcniList, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.Node.MustRun("ip", "link", "set", res.Interfaces[1].Name, "type", "bridge_slave", "hairpin", "off")
	if err := e.Check(l.libcniList, a); err == nil {
		t.Error("CHECK passed with hairpin turned off")
	}
	e.del(l, a)

	// args.cni.mac beats CNI_ARGS.
	a = e.Attach(pod, "eth0")
	a.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:00:00:00:00:03"}}
	if res = e.add(l, a); res.Interfaces[2].Mac != "02:00:00:00:00:02" {
		t.Errorf("args.cni.mac lost: %s", res.Interfaces[2].Mac)
	}
	e.del(l, a)

	// promiscMode and disableContainerInterface.
	l2 := e.net("opts2", "1.0.0", `"bridge":"cni-opts2","promiscMode":true,"disableContainerInterface":true`)
	a = e.Attach(pod, "eth0")
	e.add(l2, a)
	if out := e.Node.MustRun("ip", "link", "show", "cni-opts2"); !strings.Contains(out, "PROMISC") {
		t.Errorf("bridge not promiscuous: %s", out)
	}
	if out := pod.MustRun("ip", "link", "show", "eth0"); strings.Contains(out, ",UP") {
		t.Errorf("pod interface is up: %s", out)
	}
	if err := e.Check(l2.libcniList, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	e.del(l2, a)

	// forceAddress: a conflicting gateway address fails, or is replaced.
	e.Node.MustRun("ip", "link", "add", "cni-force", "type", "bridge")
	e.Node.MustRun("ip", "addr", "add", "10.86.0.254/24", "dev", "cni-force")
	l3 := e.net("force", "1.0.0", `"bridge":"cni-force","isGateway":true,"ipam":`+e.hostLocal("10.86.0.0/24", ""))
	a = e.Attach(pod, "eth0")
	if _, err := e.Add(l3.libcniList, a); err == nil || !strings.Contains(err.Error(), "forceAddress") {
		t.Errorf("conflicting address: err = %v", err)
	}
	// The failed ADD undid itself: no veth, no reservation.
	if v := e.Veths(); len(v) > 0 {
		t.Errorf("failed ADD left veths: %v", v)
	}
	if r := testnet.Reservations(e.dataDir, "force"); len(r) > 0 {
		t.Errorf("failed ADD left reservations: %v", r)
	}
	e.del(l3, a)
	l4 := e.net("force2", "1.0.0", `"bridge":"cni-force","isGateway":true,"forceAddress":true,"ipam":`+e.hostLocal("10.86.0.0/24", ""))
	e.add(l4, a)
	if out := e.Node.MustRun("ip", "addr", "show", "cni-force"); strings.Contains(out, "10.86.0.254") || !strings.Contains(out, "10.86.0.1/24") {
		t.Errorf("forceAddress did not replace the address: %s", out)
	}
	e.del(l4, a)
	e.assertClean("force2")
}

// TestIPv6: dual stack, no DAD (addresses usable at once), pods talk
// over IPv6; enabledad turns DAD on.
func TestIPv6(t *testing.T) {
	e := newEnv(t)
	ipam := fmt.Sprintf(`{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.87.0.0/24"}],[{"subnet":"fd00:87::/64"}]]}`, e.dataDir)
	l := e.net("v6", "1.0.0", `"bridge":"cni-v6","isGateway":true,"ipam":`+ipam)
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	e.add(l, a1)
	r2 := e.add(l, a2)
	// No DAD: the address is usable the moment ADD returns (with DAD it
	// would stay "tentative" for 1-2 s and ADD would wait for it).
	if out := p1.MustRun("ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"); strings.Contains(out, "tentative") || !strings.Contains(out, "nodad") {
		t.Errorf("address not added without DAD: %s", out)
	}
	if err := p1.Ping(podIP(t, r2, false)); err != nil {
		t.Errorf("IPv6 pod to pod: %v", err)
	}
	if err := p1.Ping("fd00:87::1"); err != nil {
		t.Errorf("IPv6 pod to node: %v", err)
	}
	if v := e.Node.MustRun("cat", "/proc/sys/net/ipv6/conf/"+veth(t, e, p1)+"/accept_ra"); strings.TrimSpace(v) != "0" {
		t.Errorf("host veth accept_ra = %s", v)
	}
	e.del(l, a1)
	e.del(l, a2)

	ld := e.net("v6dad", "1.0.0", `"bridge":"cni-v6","enabledad":true,"ipam":`+ipam)
	a := e.Attach(p1, "eth0")
	e.add(ld, a)
	if v := p1.MustRun("cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"); strings.TrimSpace(v) != "1" {
		t.Errorf("enabledad: accept_dad = %s", v)
	}
	e.del(ld, a)
	e.assertClean("v6")
}

func veth(t *testing.T, e *env, pod *testnet.NS) string {
	out := pod.MustRun("ip", "-o", "link", "show", "eth0")
	i := strings.Index(out, "@if")
	if i < 0 {
		t.Fatalf("no peer index: %s", out)
	}
	idx := strings.Fields(out[i+3:])[0]
	idx = strings.TrimSuffix(idx, ":")
	for _, l := range strings.Split(e.Node.MustRun("ip", "-o", "link"), "\n") {
		if strings.HasPrefix(l, idx+": ") {
			return strings.SplitN(strings.Fields(l)[1], "@", 2)[0]
		}
	}
	t.Fatalf("no host veth with index %s", idx)
	return ""
}

// TestBadConfig: bad keys get code 7 naming the field and leave nothing.
// The runtime's DEL after the refused ADD succeeds for every config that
// decodes (as the reference's does): a DEL that fails is retried forever
// and the pod is never torn down.
func TestBadConfig(t *testing.T) {
	e := newEnv(t)
	pod := e.Pod(t)
	for _, tc := range []struct {
		keys, field string
		delFails    bool // the JSON does not decode: DEL refuses it too
	}{
		{keys: `"vlan":5000`, field: "vlan"},
		{keys: `"vlanTrunk":[{"minID":5}]`, field: "vlanTrunk[0]"},
		{keys: `"vlanTrunk":[{"id":0}]`, field: "vlanTrunk[0].id"},
		{keys: `"hairpinMode":true,"promiscMode":true`, field: "hairpinMode"},
		{keys: `"mtu":-1`, field: "mtu"},
		{keys: `"ipMasq":true,"ipMasqBackend":"pf"`, field: "ipMasqBackend"},
		{keys: `"runtimeConfig":{"mac":"nope"}`, field: "runtimeConfig.mac"},
		{keys: `"disableContainerInterface":true,"ipam":` + e.hostLocal("10.96.1.0/24", ""), field: "disableContainerInterface"},
		{keys: `"bridge":"a-name-that-is-too-long"`, field: "bridge"},
		{keys: `"isGateway":"yes"`, field: "isGateway", delFails: true},
	} {
		conf := []byte(`{"cniVersion":"1.0.0","name":"bad","type":"bridge",` + tc.keys + `}`)
		env := []string{"CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + e.Path}
		out, _, code := e.Exec("bridge", append([]string{"CNI_COMMAND=ADD"}, env...), conf)
		if code == 0 {
			t.Errorf("%s: ADD succeeded", tc.keys)
			continue
		}
		if er := testnet.ParseError(t, out); er.Code != types.ErrInvalidNetworkConfig || !strings.Contains(er.Msg, tc.field) {
			t.Errorf("%s: error %d %q, want code 7 naming %s", tc.keys, er.Code, er.Msg, tc.field)
		}
		out, _, code = e.Exec("bridge", append([]string{"CNI_COMMAND=DEL"}, env...), conf)
		if (code != 0) != tc.delFails {
			t.Errorf("%s: DEL after the refused ADD: exit %d %s", tc.keys, code, out)
		}
	}
	if v := e.Veths(); len(v) > 0 {
		t.Errorf("bad configs left veths: %v", v)
	}
	// A pod netns that does not exist is "unknown container" (3).
	conf := []byte(`{"cniVersion":"1.0.0","name":"gone","type":"bridge","ipam":` + e.hostLocal("10.96.0.0/24", "") + `}`)
	out, _, code := e.Exec("bridge", []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0",
		"CNI_NETNS=/run/netns/cnibox-does-not-exist", "CNI_PATH=" + e.Path}, conf)
	if er := testnet.ParseError(t, out); code == 0 || er.Code != types.ErrUnknownContainer {
		t.Errorf("missing netns: exit %d, %+v", code, er)
	}
	if r := testnet.Reservations(e.dataDir, "gone"); len(r) > 0 {
		t.Errorf("missing netns: addresses reserved: %v", r)
	}
}

// TestIPAMExhausted: when IPAM has no address left the ADD fails and
// leaves no veth; the pod that has the address keeps working.
func TestIPAMExhausted(t *testing.T) {
	e := newEnv(t)
	l := e.net("full", "1.0.0", `"bridge":"cni-full","isGateway":true,"ipMasq":true,"ipam":`+e.hostLocal("10.97.0.0/24", `,"rangeStart":"10.97.0.2","rangeEnd":"10.97.0.2"`))
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	e.add(l, a1)
	if _, err := e.Add(l.libcniList, a2); err == nil {
		t.Fatal("ADD with the range exhausted succeeded")
	}
	if v := e.Veths(); len(v) != 1 {
		t.Errorf("veths after the failed ADD: %v", v)
	}
	if err := p1.Ping("10.97.0.1"); err != nil {
		t.Errorf("first pod after the failed ADD: %v", err)
	}
	e.del(l, a2)
	e.del(l, a1)
	e.assertClean("full")
}

// TestFailedAddUndoesEarlyIPAM: host-local runs, and the masquerade
// rules are written, while the veth is made; when making the veth fails
// (the pod already has an eth0) the ADD must still release the address
// and remove the rules, however far they got.
func TestFailedAddUndoesEarlyIPAM(t *testing.T) {
	e := newEnv(t)
	l := e.net("undo", "1.0.0", `"bridge":"cni-undo","isGateway":true,"ipMasq":true,"ipam":`+e.hostLocal("10.98.0.0/24", ""))
	for i := 0; i < 5; i++ {
		pod := e.Pod(t)
		pod.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
		if _, err := e.Add(l.libcniList, e.Attach(pod, "eth0")); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("ADD into a pod that has an eth0: %v", err)
		}
		e.assertClean("undo")
	}
}

// TestInteropWithReference: a node can switch between the reference
// bridge and cnibox's in either direction: what one ADDed (veth, address
// reservation, masquerade chain) the other CHECKs and DELs without a trace.
func TestInteropWithReference(t *testing.T) {
	testnet.RequireReference(t, "bridge")
	e := newEnv(t)
	ours, ref := e.BinDir, testnet.ReferenceDir()+":"+e.BinDir
	l := e.net("interop", "1.0.0", `"bridge":"cni-interop","isGateway":true,"ipMasq":true,"ipMasqBackend":"iptables","ipam":`+e.hostLocal("10.88.0.0/24", ""))
	for _, dir := range []struct{ add, del string }{{ref, ours}, {ours, ref}} {
		pod := e.Pod(t)
		a := e.Attach(pod, "eth0")
		e.SetPath(dir.add)
		res := e.add(l, a)
		if nat := e.natRules(); !strings.Contains(nat, "-A POSTROUTING -s "+podIP(t, res, true)+"/32") {
			t.Errorf("no masquerade rule after ADD:\n%s", nat)
		}
		e.SetPath(dir.del)
		if err := e.Check(l.libcniList, a); err != nil {
			t.Errorf("CHECK by the other implementation: %v", err)
		}
		e.del(l, a)
		e.assertClean("interop")
	}
}

// TestGCLibcni: a runtime's GC (libcni: DEL of the forgotten cached
// attachments, then GC with the valid list) leaves only the valid pod.
func TestGCLibcni(t *testing.T) {
	e := newEnv(t)
	l := e.net("gclib", "1.1.0", `"bridge":"cni-gclib","isGateway":true,"ipMasq":true,"ipMasqBackend":"nftables","macspoofchk":true,"ipam":`+e.hostLocal("10.89.0.0/24", ""))
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	e.add(l, a1)
	e.add(l, a2)
	if err := e.GC(l.libcniList, a1); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if v := e.Veths(); len(v) != 1 {
		t.Errorf("veths after GC: %v", v)
	}
	if r := testnet.Reservations(e.dataDir, "gclib"); len(r) != 1 {
		t.Errorf("reservations after GC: %v", r)
	}
	if rs := e.nftRuleset(); strings.Contains(rs, a2.ContainerID) {
		t.Errorf("GC left a2's rules:\n%s", rs)
	}
	if err := p1.Ping("10.89.0.1"); err != nil {
		t.Errorf("valid pod after GC: %v", err)
	}
	if err := e.GC(l.libcniList); err != nil {
		t.Fatalf("GC with nothing valid: %v", err)
	}
	e.assertClean("gclib")
}

// TestHairpin: with hairpinMode the bridge sends a frame back out of the
// port it came in on. The pod sends pings to an address it maps to its own
// MAC; they come back to it only through a hairpin port, which a counter
// in the pod (nftables, prerouting) sees.
func TestHairpin(t *testing.T) {
	e := newEnv(t)
	for i, hairpin := range []bool{true, false} {
		name := fmt.Sprintf("hp%d", i)
		l := e.net(name, "1.0.0", fmt.Sprintf(`"bridge":"cni-%s","hairpinMode":%v,"ipam":%s`, name, hairpin,
			e.hostLocal(fmt.Sprintf("10.95.%d.0/24", i), "")))
		pod := e.Pod(t)
		a := e.Attach(pod, "eth0")
		res := e.add(l, a)
		target := fmt.Sprintf("10.95.%d.250", i)
		pod.MustRun("ip", "neigh", "replace", target, "lladdr", res.Interfaces[2].Mac, "dev", "eth0", "nud", "permanent")
		pod.MustRun("nft", "add", "table", "ip", "hp")
		pod.MustRun("nft", "add", "chain", "ip", "hp", "pre", "{ type filter hook prerouting priority -400; }")
		pod.MustRun("nft", "add", "rule", "ip", "hp", "pre", "ip", "daddr", target, "counter")
		pod.Run("ping", "-c", "3", "-i", "0.2", "-W", "1", target) // no answer either way
		out := pod.MustRun("nft", "list", "chain", "ip", "hp", "pre")
		back := !strings.Contains(out, "packets 0 ")
		if back != hairpin {
			t.Errorf("hairpinMode=%v: frames came back = %v:\n%s", hairpin, back, out)
		}
		e.del(l, a)
	}
}

// TestSysctlsAsReference: the reference's sysctls, whatever the pod's
// address family: accept_dad=0 (enabledad off) and arp_notify=1 on the
// pod's interface; the host end's accept_dad is the kernel's.
func TestSysctlsAsReference(t *testing.T) {
	e := newEnv(t)
	e.Node.MustRun("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=1")
	l := e.net("sysctls", "1.0.0", `"bridge":"cni-sys","ipam":`+e.hostLocal("10.86.0.0/24", ""))
	pod := e.Pod(t)
	pod.MustRun("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=1")
	a := e.Attach(pod, "eth0")
	e.add(l, a)
	for _, c := range []struct {
		ns         *testnet.NS
		file, want string
	}{
		{pod, "/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"},
		{pod, "/proc/sys/net/ipv4/conf/eth0/arp_notify", "1"},
		{e.Node, "/proc/sys/net/ipv6/conf/" + veth(t, e, pod) + "/accept_dad", "1"},
	} {
		if got := strings.TrimSpace(c.ns.MustRun("cat", c.file)); got != c.want {
			t.Errorf("%s = %s, want %s", c.file, got, c.want)
		}
	}
	e.del(l, a)
	e.assertClean("sysctls")
}

// TestOldVersionRoutes: at 0.1.0 an IPAM result carries no route of a
// family it has no address of, so kubenet's "::/0" gives an IPv4-only
// pod no IPv6 default route (the reference's host-local result, through
// exec, drops it; the in-process one must too).
func TestOldVersionRoutes(t *testing.T) {
	e := newEnv(t)
	ipam := fmt.Sprintf(`{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.85.0.0/24","gateway":"10.85.0.1"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}`, e.dataDir)
	conf := []byte(`{"cniVersion":"0.1.0","name":"kubenet","type":"bridge","bridge":"cni-kn","isGateway":true,"ipam":` + ipam + `}`)
	pod := e.Pod(t)
	env := []string{"CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + e.Path}
	if out, _, code := e.Exec("bridge", append([]string{"CNI_COMMAND=ADD"}, env...), conf); code != 0 {
		t.Fatalf("ADD: %s", out)
	}
	if out := pod.MustRun("ip", "-6", "route", "show", "default"); strings.TrimSpace(out) != "" {
		t.Errorf("IPv4-only pod has an IPv6 default route: %s", out)
	}
	if out := pod.MustRun("ip", "-4", "route", "show", "default"); !strings.Contains(out, "via 10.85.0.1") {
		t.Errorf("no IPv4 default route: %s", out)
	}
	if out, _, code := e.Exec("bridge", append([]string{"CNI_COMMAND=DEL"}, env...), conf); code != 0 {
		t.Fatalf("DEL: %s", out)
	}
	e.assertClean("kubenet")
}
