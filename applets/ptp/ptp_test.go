package ptp_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

type env struct {
	*testnet.Runtime
	dataDir string
}

func newEnv(t *testing.T) *env {
	r := testnet.NewRuntime(t)
	return &env{Runtime: r, dataDir: filepath.Join(t.TempDir(), "ipam")}
}

func (e *env) list(t *testing.T, name, version, keys, ranges string) *libcni.NetworkConfigList {
	return e.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"ptp",%s"ipam":{"type":"host-local","dataDir":%q,"ranges":%s}}]}`,
		version, name, keys, e.dataDir, ranges))
}

func add(t *testing.T, e *env, l *libcni.NetworkConfigList, a *testnet.Attachment) *current.Result {
	t.Helper()
	res, err := e.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

// TestVersions: two dual-stack pods on ptp at every version: routes via
// the gateway, traffic between them (routed by the node) and to the node,
// CHECK, DEL twice, nothing left.
func TestVersions(t *testing.T) {
	e := newEnv(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		name := "ptp" + strings.ReplaceAll(v, ".", "")
		i := slices.Index(cni.AllVersions, v)
		ranges := fmt.Sprintf(`[[{"subnet":"10.90.%d.0/24"}],[{"subnet":"fd00:90:%d::/64"}]]`, i, i)
		if !cni.VersionAtLeast(v, "0.3.0") {
			ranges = fmt.Sprintf(`[[{"subnet":"10.90.%d.0/24"}]]`, i)
		}
		l := e.list(t, name, v, `"mtu":1400,`, ranges)
		p1, p2 := e.Pod(t), e.Pod(t)
		a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
		r1 := add(t, e, l, a1)
		r2 := add(t, e, l, a2)
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(r1.Interfaces) != 2 || r1.Interfaces[1].Sandbox != p1.Path || *r1.IPs[0].Interface != 1 {
				t.Errorf("result: %+v %+v", r1.Interfaces, r1.IPs)
			}
		}
		gw := fmt.Sprintf("10.90.%d.1", i)
		routes := p1.MustRun("ip", "route")
		if !strings.Contains(routes, gw+" dev eth0 scope link") || !strings.Contains(routes, fmt.Sprintf("10.90.%d.0/24 via %s", i, gw)) {
			t.Errorf("pod routes:\n%s", routes)
		}
		for _, ipc := range r2.IPs {
			if err := p1.Ping(ipc.Address.IP.String()); err != nil {
				t.Errorf("pod to pod %s: %v", ipc.Address.IP, err)
			}
		}
		if err := p1.Ping(gw); err != nil {
			t.Errorf("pod to node: %v", err)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			host := r1.Interfaces[0].Name
			if out := e.Node.MustRun("ip", "addr", "show", host); !strings.Contains(out, "inet "+gw+"/32") || !strings.Contains(out, "mtu 1400") {
				t.Errorf("node end: %s", out)
			}
			if ra := e.Node.MustRun("cat", "/proc/sys/net/ipv6/conf/"+host+"/accept_ra"); strings.TrimSpace(ra) != "0" {
				t.Errorf("accept_ra on %s = %s", host, ra)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := e.Check(l, a1); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			p1.MustRun("ip", "route", "del", fmt.Sprintf("10.90.%d.0/24", i))
			if err := e.Check(l, a1); err == nil {
				t.Error("CHECK passed with the subnet route gone")
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := e.Status(l); err != nil {
				t.Errorf("STATUS: %v", err)
			}
		}
		for _, a := range []*testnet.Attachment{a1, a2, a1} {
			if err := e.Del(l, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		}
		e.AssertNoAttachments(t, e.dataDir, name)
	})
}

// TestCnitool drives ptp through the reference cnitool at every version.
func TestCnitool(t *testing.T) {
	e := newEnv(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		name := "ptpct" + strings.ReplaceAll(v, ".", "")
		sub := fmt.Sprintf("10.91.%d", slices.Index(cni.AllVersions, v))
		e.list(t, name, v, ``, `[[{"subnet":"`+sub+`.0/24"}]]`)
		pod := e.Pod(t)
		out, err := e.Cnitool("add", name, pod)
		if err != nil || !strings.Contains(out, sub+".2/24") {
			t.Fatalf("ADD: %v %s", err, out)
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
		e.AssertNoAttachments(t, e.dataDir, name)
	})
}

// TestIPMasq: with ipMasq the outside sees the node's address, on both
// backends; DEL without the pod's netns removes the rules.
func TestIPMasq(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t)
			out := e.Outside(t, "172.31.0.1/24", "172.31.0.2/24")
			traffic.ServePeer(t, out, 9999)
			l := e.list(t, "ptpmasq", "1.0.0", `"ipMasq":true,"ipMasqBackend":"`+backend+`",`,
				`[[{"subnet":"10.92.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]`)
			pod := e.Pod(t)
			a := e.Attach(pod, "eth0")
			add(t, e, l, a)
			traffic.Expect(t, pod, "udp", "172.31.0.2", 9999, "172.31.0.1")
			if err := e.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			pod.Delete()
			if err := e.Del(l, a); err != nil {
				t.Fatal(err)
			}
			e.AssertNoAttachments(t, e.dataDir, "ptpmasq")
		})
	}
}

// TestGC removes a forgotten attachment's veth, rules and address.
func TestGC(t *testing.T) {
	e := newEnv(t)
	l := e.list(t, "ptpgc", "1.0.0", `"ipMasq":true,`, `[[{"subnet":"10.93.0.0/24"}]]`)
	p1, p2 := e.Pod(t), e.Pod(t)
	a1, a2 := e.Attach(p1, "eth0"), e.Attach(p2, "eth0")
	add(t, e, l, a1)
	add(t, e, l, a2)
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "ptpgc", "type": "ptp", "ipMasq": true,
		"ipam":                      map[string]any{"type": "host-local", "dataDir": e.dataDir, "ranges": [][]map[string]string{{{"subnet": "10.93.0.0/24"}}}},
		"cni.dev/valid-attachments": []map[string]string{{"containerID": a1.ContainerID, "ifname": "eth0"}}})
	if out, _, code := e.Exec("ptp", []string{"CNI_COMMAND=GC", "CNI_PATH=" + e.Path}, conf); code != 0 {
		t.Fatalf("GC: %s", out)
	}
	if v := e.Veths(); len(v) != 1 {
		t.Errorf("veths after GC: %v", v)
	}
	nat := e.Node.MustRun("iptables-save", "-t", "nat")
	if strings.Contains(nat, a2.ContainerID) || !strings.Contains(nat, a1.ContainerID) {
		t.Errorf("nat after GC:\n%s", nat)
	}
	if err := p1.Ping("10.93.0.1"); err != nil {
		t.Errorf("valid pod after GC: %v", err)
	}
	for _, a := range []*testnet.Attachment{a1, a2} {
		if err := e.Del(l, a); err != nil {
			t.Fatal(err)
		}
	}
	e.AssertNoAttachments(t, e.dataDir, "ptpgc")
}

// TestBadConfig: no ipam, or an IPAM result without gateways, is refused
// with code 7 and leaves nothing.
func TestBadConfig(t *testing.T) {
	e := newEnv(t)
	pod := e.Pod(t)
	env := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0", "CNI_NETNS=" + pod.Path, "CNI_PATH=" + e.Path}
	hostLocal := fmt.Sprintf(`{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.94.1.0/24"}]]}`, e.dataDir)
	for _, tc := range []struct {
		conf, field string
		delFails    bool // DEL cannot release IPAM without its type (nor can the reference's)
	}{
		{conf: `{"cniVersion":"1.0.0","name":"bad","type":"ptp"}`, field: "ipam.type", delFails: true},
		{conf: `{"cniVersion":"1.0.0","name":"bad","type":"ptp","mtu":-5,"ipam":` + hostLocal + `}`, field: "mtu"},
		{conf: `{"cniVersion":"1.0.0","name":"bad","type":"ptp","ipMasq":true,"ipMasqBackend":"x","ipam":` + hostLocal + `}`, field: "ipMasqBackend"},
		{conf: `{"cniVersion":"1.0.0","name":"bad","type":"ptp","ipam":{"type":"static","addresses":[{"address":"10.94.0.5/24"}]}}`, field: "gateway"},
	} {
		out, _, code := e.Exec("ptp", env, []byte(tc.conf))
		if code == 0 {
			t.Errorf("%s: ADD succeeded", tc.conf)
			continue
		}
		if er := testnet.ParseError(t, out); er.Code != types.ErrInvalidNetworkConfig || !strings.Contains(er.Msg, tc.field) {
			t.Errorf("%s: %d %q, want 7 naming %s", tc.conf, er.Code, er.Msg, tc.field)
		}
		// The runtime's DEL after the refused ADD succeeds, as the
		// reference's does: a failing DEL is retried forever.
		delEnv := append([]string{"CNI_COMMAND=DEL"}, env[1:]...)
		if out, _, code := e.Exec("ptp", delEnv, []byte(tc.conf)); (code != 0) != tc.delFails {
			t.Errorf("%s: DEL after the refused ADD: exit %d %s", tc.conf, code, out)
		}
	}
	if v := e.Veths(); len(v) > 0 {
		t.Errorf("veths left: %v", v)
	}
}

// TestAsReference: what the reference's ptp leaves on the node and in the
// pod, where the kernel lets the two differ: the node's route to the pod
// is scope host (ip.AddHostRoute), and the pod's arp_notify is untouched.
func TestAsReference(t *testing.T) {
	e := newEnv(t)
	l := e.list(t, "ptpref", "1.0.0", ``, `[[{"subnet":"10.95.0.0/24"}],[{"subnet":"fd00:95::/64"}]]`)
	pod := e.Pod(t)
	pod.MustRun("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=1")
	a := e.Attach(pod, "eth0")
	res := add(t, e, l, a)
	host, ip := res.Interfaces[0].Name, res.IPs[0].Address.IP.String()
	if out := e.Node.MustRun("ip", "-4", "route", "show", ip); !strings.Contains(out, ip+" dev "+host+" scope host") {
		t.Errorf("node route to the pod: %q, want %s dev %s scope host", out, ip, host)
	}
	if v := pod.MustRun("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"); strings.TrimSpace(v) != "0" {
		t.Errorf("pod arp_notify = %s, want the default 0", v)
	}
	// Its IPv6 addresses skip DAD, but accept_dad is the kernel's, as
	// the reference leaves it; the node's end has none (see veth.Options).
	if v := pod.MustRun("cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"); strings.TrimSpace(v) != "1" {
		t.Errorf("pod accept_dad = %s, want the default 1", v)
	}
	if v := e.Node.MustRun("cat", "/proc/sys/net/ipv6/conf/"+host+"/accept_dad"); strings.TrimSpace(v) != "0" {
		t.Errorf("node end accept_dad = %s, want 0", v)
	}
	if out := pod.MustRun("ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"); strings.Contains(out, "tentative") {
		t.Errorf("pod address waits for DAD: %s", out)
	}
	for _, gw := range []string{"10.95.0.1", "fd00:95::1"} {
		if err := pod.Ping(gw); err != nil {
			t.Errorf("pod to node %s: %v", gw, err)
		}
	}
	if err := e.Del(l, a); err != nil {
		t.Fatal(err)
	}
	e.AssertNoAttachments(t, e.dataDir, "ptpref")
}
