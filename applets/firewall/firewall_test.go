package firewall_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// node makes a runtime whose node routes to an outside machine
// (192.168.77.2) and whose FORWARD policy is DROP, as on a host with a
// firewall: pods reach outside only through the firewall applet's rules.
func node(t *testing.T) (*testnet.Runtime, *testnet.NS) {
	r := testnet.NewRuntime(t)
	r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
	out := testnet.NewNS(t, "outside")
	n := r.Node
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.MustRun("ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", out.Name)
	n.MustRun("ip", "addr", "add", "192.168.77.1/24", "dev", "ext0")
	n.MustRun("ip", "addr", "add", "fd77::1/64", "dev", "ext0", "nodad")
	n.MustRun("ip", "link", "set", "ext0", "up")
	out.MustRun("ip", "addr", "add", "192.168.77.2/24", "dev", "eth0")
	out.MustRun("ip", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
	out.MustRun("ip", "link", "set", "eth0", "up")
	n.MustRun("iptables", "-P", "FORWARD", "DROP")
	n.MustRun("ip6tables", "-P", "FORWARD", "DROP")
	return r, out
}

// network is bridge + host-local + firewall with the given firewall keys.
func network(version, name string, n int, fwKeys string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[
 {"type":"bridge","bridge":"fwbr%d","isGateway":true,"ipMasq":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.10.%d.0/24"}],[{"subnet":"fd10:%d::/64"}]],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
 {"type":"firewall"%s}]}`, version, name, n, n, n, fwKeys)
}

func rules(t *testing.T, r *testnet.Runtime) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		out, err := r.Node.Run(cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	return b.String()
}

// TestPolicies: pods of two bridges reach the outside machine through a
// DROP-policy FORWARD (the applet's accept rules); "open" lets them reach
// each other, "same-bridge" and "isolated" do not; DEL removes every
// rule of the pods and, with the last pod, the bridges' isolation rules.
func TestPolicies(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		for _, policy := range []string{"open", "same-bridge", "isolated"} {
			t.Run(backend+"/"+policy, func(t *testing.T) {
				r, out := node(t)
				keys := fmt.Sprintf(`,"backend":%q,"ingressPolicy":%q`, backend, policy)
				if backend == "nftables" {
					// The DROP policy is iptables'; the nftables backend's
					// accepts cannot override another table's drop.
					r.Node.MustRun("iptables", "-P", "FORWARD", "ACCEPT")
					r.Node.MustRun("ip6tables", "-P", "FORWARD", "ACCEPT")
				}
				la := r.Conflist(network("1.0.0", "fwa", 1, keys))
				lb := r.Conflist(network("1.0.0", "fwb", 2, keys))
				pa, pb := r.Pod(t), r.Pod(t)
				traffic.Serve(t, pb, 80, "b")
				traffic.Serve(t, out, 80, "outside")
				aa, ab := r.Attach(pa, "eth0"), r.Attach(pb, "eth0")
				if _, err := r.Add(la, aa); err != nil {
					t.Fatalf("ADD a: %v", err)
				}
				if _, err := r.Add(lb, ab); err != nil {
					t.Fatalf("ADD b: %v", err)
				}
				if err := r.Check(la, aa); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
				traffic.Settle(t, pa)
				traffic.Settle(t, pb)
				traffic.Settle(t, r.Node)
				traffic.Expect(t, pa, "tcp", "192.168.77.2", 80, "outside")
				traffic.Expect(t, pa, "tcp", "fd77::2", 80, "outside")
				if policy == "open" {
					traffic.Expect(t, pa, "tcp", "10.10.2.2", 80, "b")
					traffic.Expect(t, pa, "udp", "fd10:2::2", 80, "b")
				} else {
					traffic.ExpectNot(t, pa, "tcp", "10.10.2.2", 80, "b")
					traffic.ExpectNot(t, pa, "udp", "fd10:2::2", 80, "b")
				}
				if err := r.Del(la, aa); err != nil {
					t.Fatalf("DEL a: %v", err)
				}
				if backend == "iptables" {
					traffic.ExpectNot(t, pa, "tcp", "192.168.77.2", 80, "outside")
				}
				if err := r.Del(lb, ab); err != nil {
					t.Fatalf("DEL b: %v", err)
				}
				s := rules(t, r)
				for _, leak := range []string{"10.10.1.2", "10.10.2.2", "fd10:1::2", "fd10:2::2", "fwbr1", "fwbr2"} {
					if strings.Contains(s, leak) {
						t.Errorf("%s left after DEL of every pod:\n%s", leak, s)
					}
				}
			})
		}
	}
}

// TestPodmanChain is the network podman 4 writes with "podman network
// create" (cniVersion 0.4.0, firewall "backend": ""), with a host port.
func TestPodmanChain(t *testing.T) {
	r, out := node(t)
	// Connections into the pod through a host port are new connections
	// that neither firewall nor portmap accepts in FORWARD (as the
	// reference): a host with podman keeps FORWARD open or uses firewalld.
	r.Node.MustRun("iptables", "-P", "FORWARD", "ACCEPT")
	list := r.Conflist(`{
   "cniVersion": "0.4.0",
   "name": "podman1",
   "plugins": [
      {"type": "bridge", "bridge": "cni-podman1", "isGateway": true, "ipMasq": true, "hairpinMode": true,
       "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]]},
       "capabilities": {"ips": true}},
      {"type": "portmap", "capabilities": {"portMappings": true}},
      {"type": "firewall", "backend": ""},
      {"type": "tuning"}
   ]
}`)
	pod := r.Pod(t)
	traffic.Serve(t, pod, 80, "pod")
	traffic.Serve(t, out, 80, "outside")
	a := r.Attach(pod, "eth0")
	a.Caps = map[string]any{"portMappings": []any{map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}}}
	if err := r.Validate(list); err != nil {
		t.Fatalf("VERSION of every plugin: %v", err)
	}
	if _, err := r.Add(list, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	traffic.Expect(t, out, "tcp", "192.168.77.1", 8080, "pod")
	traffic.Expect(t, pod, "tcp", "192.168.77.2", 80, "outside")
	if err := r.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if s := rules(t, r); !strings.Contains(s, "-A CNI-FORWARD -s 10.89.0.2/32 -j ACCEPT") {
		t.Errorf(`backend "" without firewalld did not use iptables:\n%s`, s)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if s := rules(t, r); strings.Contains(s, "10.89.0.2") || strings.Contains(s, a.ContainerID) {
		t.Errorf("rules left after DEL:\n%s", s)
	}
}

const prev = `{"cniVersion":"1.0.0","interfaces":[{"name":"fwbr9"},{"name":"veth9"},{"name":"eth0","sandbox":"/run/netns/x"}],
 "ips":[{"address":"10.10.9.%d/24","interface":2},{"address":"fd10:9::%d/64","interface":2}]}`

func raw(version, net, keys string, host int, withPrev bool) []byte {
	p := ""
	if withPrev {
		p = `,"prevResult":` + fmt.Sprintf(prev, host, host)
	}
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"firewall"%s%s}`, version, net, keys, p))
}

func env(cmd, id string) []string {
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_IFNAME=eth0", "CNI_NETNS=/run/netns/cnibox-gone", "CNI_PATH=/nonexistent"}
}

// TestDelGCStatus: DEL without prevResult, GC, STATUS, versions and bad
// input, driven raw for both backends.
func TestDelGCStatus(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			r := testnet.NewRuntime(t)
			keys := fmt.Sprintf(`,"backend":%q,"ingressPolicy":"isolated","iptablesAdminChainName":"MY-ADMIN"`, backend)
			for i, id := range []string{"pod-a", "pod-b", "pod-c"} {
				if out, errb, code := r.Exec("firewall", env("ADD", id), raw("1.1.0", "fw", keys, i+2, true)); code != 0 {
					t.Fatalf("ADD %s: %s %s", id, out, errb)
				}
			}
			if backend == "iptables" {
				s := rules(t, r)
				if !strings.Contains(s, `-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j MY-ADMIN`) || strings.Contains(s, "CNI-ADMIN") {
					t.Fatalf("iptablesAdminChainName not used:\n%s", s)
				}
			}
			if out, _, code := r.Exec("firewall", env("CHECK", "pod-a"), raw("1.1.0", "fw", keys, 2, true)); code != 0 {
				t.Fatalf("CHECK: %s", out)
			}
			if out, _, code := r.Exec("firewall", env("DEL", "pod-a"), raw("1.1.0", "fw", keys, 0, false)); code != 0 {
				t.Fatalf("DEL without prevResult: %s", out)
			}
			if s := rules(t, r); strings.Contains(s, "10.10.9.2/") || strings.Contains(s, "fd10:9::2/") || strings.Contains(s, "fd10:9::2 ") || !strings.Contains(s, "10.10.9.3") {
				t.Fatalf("DEL without prevResult: wrong rules left:\n%s", s)
			}
			gc := []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"fw","type":"firewall"%s,"cni.dev/valid-attachments":[{"containerID":"pod-b","ifname":"eth0"}]}`, keys))
			if out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=GC", "CNI_PATH=/nonexistent"}, gc); code != 0 {
				t.Fatalf("GC: %s", out)
			}
			if s := rules(t, r); strings.Contains(s, "10.10.9.4") || !strings.Contains(s, "10.10.9.3") || !strings.Contains(s, "fwbr9") {
				t.Fatalf("GC: wrong rules left:\n%s", s)
			}
			if out, _, code := r.Exec("firewall", env("DEL", "pod-b"), raw("1.1.0", "fw", keys, 3, true)); code != 0 {
				t.Fatalf("DEL: %s", out)
			}
			if s := rules(t, r); strings.Contains(s, "10.10.9.") || strings.Contains(s, "fwbr9") || strings.Contains(s, "cni_firewall") {
				t.Fatalf("rules (or the nftables backend's table) left after the last DEL:\n%s", s)
			}
			if out, _, code := r.Exec("firewall", env("DEL", "pod-b"), raw("1.1.0", "fw", keys, 3, true)); code != 0 {
				t.Fatalf("second DEL: %s", out)
			}
			if out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=STATUS"}, []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"fw","type":"firewall"%s}`, keys))); code != 0 {
				t.Fatalf("STATUS: %s", out)
			}
		})
	}
	t.Run("bad input", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		for _, tc := range []struct {
			conf  []byte
			code  uint
			field string
		}{
			{raw("1.0.0", "fw", `,"backend":"ufw"`, 2, true), 7, "backend"},
			{raw("1.0.0", "fw", `,"ingressPolicy":"closed"`, 2, true), 7, "ingressPolicy"},
			{raw("1.0.0", "fw", `,"iptablesAdminChainName":"has space"`, 2, true), 7, "iptablesAdminChainName"},
			{raw("1.0.0", "fw", ``, 2, false), 7, "prevResult"},
			{raw("0.3.1", "fw", ``, 2, true), 1, ""},
		} {
			out, _, code := r.Exec("firewall", env("ADD", "bad"), tc.conf)
			e := testnet.ParseError(t, out)
			if code == 0 || e.Code != tc.code || !strings.Contains(e.Msg, tc.field) {
				t.Errorf("%s: %d %+v", tc.conf, code, e)
			}
			// The runtime's DEL after a refused ADD succeeds, as the
			// reference's does (it falls back to its default backend):
			// a failing DEL is retried forever.
			if tc.code == 7 {
				if out, _, code := r.Exec("firewall", env("DEL", "bad"), tc.conf); code != 0 {
					t.Errorf("%s: DEL after the refused ADD: %s", tc.conf, out)
				}
			}
		}
		if s := rules(t, r); strings.Contains(s, "CNI-") || strings.Contains(s, "cni_firewall") {
			t.Errorf("bad input left rules:\n%s", s)
		}
		out, _, code := r.Exec("firewall", []string{"CNI_COMMAND=STATUS", "PATH=/usr/bin"}, []byte(`{"cniVersion":"1.1.0","name":"fw","type":"firewall","backend":"iptables"}`))
		if e := testnet.ParseError(t, out); code == 0 || e.Code != 50 {
			t.Errorf("STATUS without iptables: %d %+v", code, e)
		}
	})
}

// TestVersions: every accepted version through libcni and cnitool.
func TestVersions(t *testing.T) {
	r, out := node(t)
	traffic.Serve(t, out, 80, "outside")
	testnet.ForEachVersion(t, []string{"0.4.0", "1.0.0", "1.1.0"}, func(t *testing.T, v string) {
		list := r.Conflist(network(v, "fw"+strings.ReplaceAll(v, ".", ""), 3, `,"backend":"iptables"`))
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		if _, err := r.Add(list, a); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		traffic.Expect(t, pod, "tcp", "192.168.77.2", 80, "outside")
		if err := r.Check(list, a); err != nil {
			t.Fatalf("CHECK: %v", err)
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(list); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			if err := r.GC(list, a); err != nil {
				t.Fatalf("GC keeping the pod: %v", err)
			}
			if !strings.Contains(rules(t, r), "-A CNI-FORWARD -s 10.10.3.") {
				t.Fatal("GC removed a valid pod's rules")
			}
			if err := r.GC(list); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if s := rules(t, r); strings.Contains(s, "10.10.3.") {
				t.Fatalf("rules left after GC:\n%s", s)
			}
		}
		if err := r.Del(list, a); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		traffic.ExpectNot(t, pod, "tcp", "192.168.77.2", 80, "outside")
	})
	t.Run("cnitool", func(t *testing.T) {
		list := r.Conflist(network("1.0.0", "fwtool", 4, ""))
		pod := r.Pod(t)
		if _, err := r.Cnitool("add", list.Name, pod); err != nil {
			t.Fatal(err)
		}
		traffic.Expect(t, pod, "tcp", "192.168.77.2", 80, "outside")
		if _, err := r.Cnitool("check", list.Name, pod); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Cnitool("del", list.Name, pod); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReferenceInterop: the reference's DEL removes cnibox's rules and
// cnibox's DEL the reference's (iptables).
func TestReferenceInterop(t *testing.T) {
	testnet.RequireReference(t, "firewall")
	r, _ := node(t)
	list := r.Conflist(network("1.0.0", "fwref", 5, `,"backend":"iptables"`))
	ours, ref := r.BinDir+":"+testnet.ReferenceDir(), testnet.ReferenceDir()+":"+r.BinDir
	for _, tc := range []struct{ name, add, del string }{{"reference ADD, cnibox DEL", ref, ours}, {"cnibox ADD, reference DEL", ours, ref}} {
		t.Run(tc.name, func(t *testing.T) {
			pod := r.Pod(t)
			a := r.Attach(pod, "eth0")
			r.SetPath(tc.add)
			if _, err := r.Add(list, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			r.SetPath(ours)
			if err := r.Check(list, a); err != nil {
				t.Errorf("cnibox CHECK: %v", err)
			}
			r.SetPath(tc.del)
			if err := r.Del(list, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if s := rules(t, r); strings.Contains(s, "10.10.5.") {
				t.Errorf("rules left after DEL:\n%s", s)
			}
		})
	}
}

// TestNftablesTable: the nftables backend's table goes with the last DEL,
// unless it holds something of the admin's (a rule in chain admin), which
// keeps it, and with it the admin's rule.
func TestNftablesTable(t *testing.T) {
	r := testnet.NewRuntime(t)
	keys := `,"backend":"nftables"`
	add := func(id string, host int) {
		t.Helper()
		if out, errb, code := r.Exec("firewall", env("ADD", id), raw("1.0.0", "fwt", keys, host, true)); code != 0 {
			t.Fatalf("ADD %s: %s %s", id, out, errb)
		}
	}
	del := func(id string, host int) {
		t.Helper()
		if out, _, code := r.Exec("firewall", env("DEL", id), raw("1.0.0", "fwt", keys, host, true)); code != 0 {
			t.Fatalf("DEL %s: %s", id, out)
		}
	}
	tables := func() string { return r.Node.MustRun("nft", "list", "tables") }
	add("pod-a", 2)
	add("pod-b", 3)
	del("pod-a", 2)
	if !strings.Contains(tables(), "cni_firewall") {
		t.Fatal("DEL of one pod of two took the table")
	}
	del("pod-b", 3)
	if s := tables(); strings.Contains(s, "cni_firewall") {
		t.Fatalf("table left after the last DEL:\n%s", s)
	}
	del("pod-b", 3) // again: nothing there
	add("pod-a", 2)
	r.Node.MustRun("nft", "add", "rule", "inet", "cni_firewall", "admin", "tcp", "dport", "22", "drop")
	del("pod-a", 2)
	if s := r.Node.MustRun("nft", "list", "chain", "inet", "cni_firewall", "admin"); !strings.Contains(s, "dport 22 drop") {
		t.Fatalf("the admin's rule went with the last DEL:\n%s", s)
	}
}
