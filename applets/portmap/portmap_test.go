package portmap_test

import (
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// bridgeChain is bridge + host-local (dual stack) + portmap with extra
// portmap keys, as a runtime writes it.
func bridgeChain(version, name, portmapKeys string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[
 {"type":"bridge","bridge":"cnibr0","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/24"}],[{"subnet":"fd88::/64"}]],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
 {"type":"portmap","capabilities":{"portMappings":true}%s}]}`, version, name, portmapKeys)
}

func mappings(m ...map[string]any) map[string]any {
	list := make([]any, len(m))
	for i := range m {
		list[i] = m[i]
	}
	return map[string]any{"portMappings": list}
}

func pm(host, cont int, proto, hostIP string) map[string]any {
	m := map[string]any{"hostPort": host, "containerPort": cont, "protocol": proto}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

func backendKey(b string) string {
	if b == "" {
		return ""
	}
	return fmt.Sprintf(`,"backend":%q`, b)
}

// TestTraffic proves each backend with real connections: from another
// machine, from the node, from 127.0.0.1, from a second pod (hairpin), over
// IPv4 and IPv6; traffic the node only routes is never captured; nothing
// is left after DEL.
func TestTraffic(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t)
			r := w.r
			list := r.Conflist(bridgeChain("1.0.0", "pm-"+backend, backendKey(backend)))
			pod1, pod2 := r.Pod(t), r.Pod(t)
			traffic.Serve(t, pod1, 80, "pod1")
			traffic.Serve(t, pod2, 80, "pod2")
			traffic.Serve(t, w.far, 8080, "far")
			traffic.Serve(t, w.far, 9090, "far")

			traffic.ServePeer(t, pod1, 81)
			a1 := r.Attach(pod1, "eth0")
			a1.Caps = mappings(pm(8080, 80, "tcp", ""), pm(8080, 80, "udp", ""),
				pm(9090, 80, "tcp", farIP), pm(8081, 80, "tcp", nodeIP6), pm(8082, 81, "tcp", ""))
			if _, err := r.Add(list, a1); err != nil {
				t.Fatalf("ADD pod1: %v", err)
			}
			a2 := r.Attach(pod2, "eth0")
			if _, err := r.Add(list, a2); err != nil {
				t.Fatalf("ADD pod2: %v", err)
			}
			if err := r.Check(list, a1); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			traffic.Settle(t, pod1)
			traffic.Settle(t, pod2)
			traffic.Settle(t, r.Node)

			for _, proto := range []string{"tcp", "udp"} {
				traffic.Expect(t, w.outside, proto, nodeIP, 8080, "pod1")
				traffic.Expect(t, w.outside, proto, nodeIP6, 8080, "pod1")
				traffic.Expect(t, r.Node, proto, nodeIP, 8080, "pod1")
				traffic.Expect(t, r.Node, proto, "127.0.0.1", 8080, "pod1")
				traffic.Expect(t, pod2, proto, nodeIP, 8080, "pod1")
				traffic.Expect(t, pod2, proto, nodeIP6, 8080, "pod1")
			}
			// Who the pod sees: other machines as themselves, a hairpin
			// connection masqueraded to the bridge's address: its own in
			// both backends, another pod's of the subnet with iptables
			// only (the reference's nftables rule is "ip saddr POD ip
			// daddr POD masquerade", its iptables rule "-s SUBNET").
			traffic.Expect(t, w.outside, "tcp", nodeIP, 8082, "192.168.77.2")
			traffic.Expect(t, pod1, "tcp", nodeIP, 8082, "10.88.0.1")
			if backend == "iptables" {
				traffic.Expect(t, pod2, "tcp", nodeIP, 8082, "10.88.0.1")
			}
			// Not addressed to the node: routed to far, untouched.
			traffic.Expect(t, w.outside, "tcp", farIP, 8080, "far")
			traffic.Expect(t, w.outside, "tcp", farIP, 9090, "far")
			// hostIP of the other family: the v6-only mapping does not exist on v4.
			traffic.Expect(t, w.outside, "tcp", nodeIP6, 8081, "pod1")
			traffic.ExpectNot(t, w.outside, "tcp", nodeIP, 8081, "pod1")
			if out := r.Node.MustRun("sysctl", "-n", "net.ipv4.conf.cnibr0.route_localnet"); strings.TrimSpace(out) != "1" {
				t.Errorf("route_localnet on the bridge = %q, want 1", out)
			}

			if err := r.Del(list, a1); err != nil {
				t.Fatalf("DEL pod1: %v", err)
			}
			traffic.ExpectNot(t, w.outside, "tcp", nodeIP, 8080, "pod1")
			if s := rules(t, r); strings.Contains(s, a1.ContainerID) || strings.Contains(s, dnChain(list.Name, a1.ContainerID)) {
				t.Errorf("rules of pod1 left after DEL:\n%s", s)
			}
			if err := r.Del(list, a1); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
			if err := r.Del(list, a2); err != nil {
				t.Fatalf("DEL pod2: %v", err)
			}
			t.Logf("after DEL of all pods:\n%s", rules(t, r))
		})
	}
}

// TestMartianGuard: with snat the bridge gets route_localnet=1; a pod
// that routes 127.0.0.0/8 to the node must still not reach the node's
// localhost services (CVE-2020-8558 class).
func TestMartianGuard(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run(backend, func(t *testing.T) {
			w := newWorld(t)
			r := w.r
			list := r.Conflist(bridgeChain("1.0.0", "guard-"+backend, backendKey(backend)))
			pod1, pod2 := r.Pod(t), r.Pod(t)
			traffic.Serve(t, pod1, 80, "pod1")
			traffic.Serve(t, r.Node, 9999, "node-localhost")
			a1 := r.Attach(pod1, "eth0")
			a1.Caps = mappings(pm(8080, 80, "tcp", ""))
			if _, err := r.Add(list, a1); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Add(list, r.Attach(pod2, "eth0")); err != nil {
				t.Fatal(err)
			}
			// The attacker pod sends 127.0.0.0/8 to its gateway.
			pod2.MustRun("ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
			pod2.MustRun("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
			pod2.MustRun("ip", "route", "add", "127.0.0.0/8", "via", "10.88.0.1", "dev", "eth0")
			traffic.Expect(t, r.Node, "tcp", "127.0.0.1", 8080, "pod1")
			traffic.ExpectNot(t, pod2, "tcp", "127.0.0.5", 9999, "node-localhost")
			traffic.ExpectNot(t, pod2, "udp", "127.0.0.5", 9999, "node-localhost")
		})
	}
}

// dnChain is the reference's per-container chain name, computed here
// independently of the applet.
func dnChain(net, id string) string {
	sum := sha512.Sum512([]byte(net + id))
	return ("CNI-DN-" + hex.EncodeToString(sum[:]))[:28]
}

// TestReferenceInterop: rules made by the reference portmap are found by
// cnibox's CHECK and removed by its DEL, and the other way round, in both
// backends: a node can switch either way.
func TestReferenceInterop(t *testing.T) {
	testnet.RequireReference(t, "portmap")
	w := newWorld(t)
	r := w.r
	pod := r.Pod(t)
	traffic.Serve(t, pod, 80, "pod")
	ours, ref := r.BinDir+":"+testnet.ReferenceDir(), testnet.ReferenceDir()+":"+r.BinDir

	for _, backend := range []string{"iptables", "nftables"} {
		if backend == "nftables" && !referenceHasNFTables(t) {
			t.Logf("the reference portmap in %s has no nftables backend (v1.6.0 added it; spec 1.1.0 came with it): nftables not tried", testnet.ReferenceDir())
			continue
		}
		list := r.Conflist(bridgeChain("1.0.0", "interop-"+backend[:3], backendKey(backend)))
		var refSelfCheck error
		for _, tc := range []struct{ name, add, del string }{{"reference ADD, cnibox DEL", ref, ours}, {"cnibox ADD, reference DEL", ours, ref}} {
			t.Run(backend+"/"+tc.name, func(t *testing.T) {
				a := r.Attach(pod, "eth0")
				a.Caps = mappings(pm(8080, 80, "tcp", ""), pm(8080, 80, "udp", ""))
				r.SetPath(tc.add)
				if _, err := r.Add(list, a); err != nil {
					t.Fatalf("ADD: %v", err)
				}
				traffic.Expect(t, w.outside, "tcp", nodeIP, 8080, "pod")
				traffic.Expect(t, r.Node, "udp", "127.0.0.1", 8080, "pod")
				r.SetPath(ours)
				if err := r.Check(list, a); err != nil {
					t.Errorf("cnibox CHECK: %v", err)
				}
				// The reference's CHECK must pass on cnibox's rules
				// wherever it passes on its own (Debian's 1.1.1 fails
				// its own dual-stack iptables CHECK).
				r.SetPath(ref)
				err := r.Check(list, a)
				switch {
				case tc.add == ref:
					refSelfCheck = err
					if err != nil {
						t.Logf("the reference's CHECK fails on its own rules: %v", err)
					}
				case err != nil && refSelfCheck == nil:
					t.Errorf("reference CHECK: %v", err)
				}
				r.SetPath(tc.del)
				if err := r.Del(list, a); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if s := rules(t, r); strings.Contains(s, a.ContainerID) || strings.Contains(s, dnChain(list.Name, a.ContainerID)) {
					t.Errorf("rules left after DEL:\n%s", s)
				}
				traffic.ExpectNot(t, w.outside, "tcp", nodeIP, 8080, "pod")
			})
		}
	}
}

// referenceHasNFTables reports whether the reference portmap is recent
// enough to have the nftables backend (it speaks spec 1.1.0: v1.6.0 on;
// Debian's 1.1.1 ignores "backend" and writes iptables rules).
func referenceHasNFTables(t *testing.T) bool {
	cmd := exec.Command(filepath.Join(testnet.ReferenceDir(), "portmap"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"0.3.1"}`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference portmap VERSION: %v", err)
	}
	return strings.Contains(string(out), `"1.1.0"`)
}

// TestVersions sweeps the spec versions the reference bridge speaks,
// through libcni, for both backends, and through cnitool.
func TestVersions(t *testing.T) {
	w := newWorld(t)
	r := w.r
	for _, backend := range []string{"iptables", "nftables"} {
		testnet.ForEachVersion(t, []string{"0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}, func(t *testing.T, v string) {
			list := r.Conflist(bridgeChain(v, "v"+strings.ReplaceAll(v, ".", "")+backend[:3], backendKey(backend)))
			pod := r.Pod(t)
			traffic.Serve(t, pod, 80, "pod")
			a := r.Attach(pod, "eth0")
			a.Caps = mappings(pm(8080, 80, "tcp", ""))
			if _, err := r.Add(list, a); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			traffic.Expect(t, w.outside, "tcp", nodeIP, 8080, "pod")
			if cni.VersionAtLeast(v, "0.4.0") {
				if err := r.Check(list, a); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if cni.VersionAtLeast(v, "1.1.0") {
				if err := r.Status(list); err != nil {
					t.Fatalf("STATUS: %v", err)
				}
				if err := r.GC(list, a); err != nil {
					t.Fatalf("GC keeping the pod: %v", err)
				}
				traffic.Expect(t, w.outside, "tcp", nodeIP, 8080, "pod")
				if err := r.GC(list); err != nil {
					t.Fatalf("GC: %v", err)
				}
				if s := rules(t, r); strings.Contains(s, a.ContainerID) || strings.Contains(s, dnChain(list.Name, a.ContainerID)) {
					t.Errorf("rules left after GC:\n%s", s)
				}
				traffic.ExpectNot(t, w.outside, "tcp", nodeIP, 8080, "pod")
			}
			if err := r.Del(list, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if s := rules(t, r); strings.Contains(s, a.ContainerID) || strings.Contains(s, dnChain(list.Name, a.ContainerID)) {
				t.Errorf("rules left after DEL:\n%s", s)
			}
		})
	}
	t.Run("cnitool", func(t *testing.T) {
		list := r.Conflist(bridgeChain("1.0.0", "cnitool", ""))
		pod := r.Pod(t)
		traffic.Serve(t, pod, 80, "pod")
		caps := `CAP_ARGS={"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`
		if _, err := r.Cnitool("add", list.Name, pod, caps); err != nil {
			t.Fatal(err)
		}
		traffic.Expect(t, w.outside, "tcp", nodeIP, 8080, "pod")
		if _, err := r.Cnitool("check", list.Name, pod, caps); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Cnitool("del", list.Name, pod, caps); err != nil {
			t.Fatal(err)
		}
		traffic.ExpectNot(t, w.outside, "tcp", nodeIP, 8080, "pod")
	})
}

// TestContainerdChain: the containerd getting-started network, with the
// capitalised keys containerd's CRI sends and kube-proxy's mark chain.
func TestContainerdChain(t *testing.T) {
	w := newWorld(t)
	r := w.r
	r.Node.MustRun("sh", "-c", `for t in iptables ip6tables; do $t-restore --noflush <<EOF
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
EOF
done`)
	list := r.Conflist(`{"cniVersion":"1.0.0","name":"containerd-net","plugins":[
 {"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"promiscMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}],[{"subnet":"2001:4860:4860::/64"}]],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
 {"type":"portmap","capabilities":{"portMappings":true},"externalSetMarkChain":"KUBE-MARK-MASQ"}]}`)
	pod1, pod2 := r.Pod(t), r.Pod(t)
	traffic.Serve(t, pod1, 80, "pod1")
	a := r.Attach(pod1, "eth0")
	a.Caps = map[string]any{"portMappings": []any{
		map[string]any{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""},
		map[string]any{"HostPort": 8080, "ContainerPort": 80, "Protocol": "UDP", "HostIP": ""},
	}}
	if _, err := r.Add(list, a); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Add(list, r.Attach(pod2, "eth0")); err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"tcp", "udp"} {
		traffic.Expect(t, w.outside, proto, nodeIP, 8080, "pod1")
		traffic.Expect(t, r.Node, proto, "127.0.0.1", 8080, "pod1")
		traffic.Expect(t, pod2, proto, nodeIP, 8080, "pod1")
	}
	if s := rules(t, r); strings.Contains(s, "CNI-HOSTPORT-SETMARK") {
		t.Errorf("externalSetMarkChain given, yet CNI-HOSTPORT-SETMARK was made:\n%s", s)
	}
	if err := r.Check(list, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatal(err)
	}
	if s := rules(t, r); strings.Contains(s, a.ContainerID) {
		t.Errorf("rules left after DEL:\n%s", s)
	}
}

// TestUDPConntrackFlush: a UDP flow to the host port that existed before
// the mapping reaches the pod after ADD. ADD flushes the port's conntrack
// entries for this: the test checks that the entry is gone right after ADD
// (on this kernel the old flow would also be re-NATed without the flush, so
// the answer alone would not prove it).
func TestUDPConntrackFlush(t *testing.T) {
	w := newWorld(t)
	r := w.r
	list := r.Conflist(bridgeChain("1.0.0", "ct", ""))
	pod := r.Pod(t)
	traffic.Serve(t, pod, 80, "pod")
	traffic.Serve(t, r.Node, 8080, "node")
	// A real node tracks connections before any mapping exists (a firewall
	// rule with a ct match turns conntrack on in a netns; a NAT chain alone
	// does not), and has a NAT hook, so the flow's NAT is decided when it starts.
	r.Node.MustRun("nft", "add table ip early; add chain ip early pre { type nat hook prerouting priority -150; }; "+
		"add chain ip early in { type filter hook prerouting priority -200; }; add rule ip early in ct state new counter")
	var conn net.Conn
	err := w.outside.Do(func() (err error) {
		conn, err = net.Dial("udp", net.JoinHostPort(nodeIP, "8080"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func() string {
		buf := make([]byte, 64)
		conn.Write([]byte("who"))
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		n, _ := conn.Read(buf)
		return string(buf[:n])
	}
	if got := roundTrip(); got != "node" {
		t.Fatalf("before ADD: %q answered, want node", got)
	}
	if n := udpFlows(t, r.Node, 8080); n == 0 {
		out, _ := r.Node.Run("conntrack", "-L")
		t.Fatalf("before ADD: no conntrack entry for the flow to port 8080:\n%s", out)
	}
	a := r.Attach(pod, "eth0")
	a.Caps = mappings(pm(8080, 80, "udp", ""))
	if _, err := r.Add(list, a); err != nil {
		t.Fatal(err)
	}
	// The flush itself: the old flow's entry is gone before its next packet.
	if n := udpFlows(t, r.Node, 8080); n != 0 {
		t.Fatalf("after ADD: %d conntrack entries to port 8080 left", n)
	}
	if got := roundTrip(); got != "pod" {
		t.Fatalf("after ADD: %q answered on the old flow, want pod", got)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatal(err)
	}
}

// udpFlows counts the node's conntrack entries of UDP flows to port.
func udpFlows(t *testing.T, node *testnet.NS, port uint16) int {
	t.Helper()
	n := 0
	err := node.Do(func() error {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstPort == port {
				n++
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("list conntrack entries: %v", err)
	}
	return n
}

// TestConditions: conditionsV4 limits who the mapping applies to, in either
// backend's syntax; masqAll masquerades every source.
func TestConditions(t *testing.T) {
	for _, tc := range []struct{ backend, keys string }{
		{"iptables", `,"conditionsV4":["-s","192.168.77.0/24","-m","comment","--comment","from the \"outside\""],"masqAll":true`},
		{"nftables", `,"conditionsV4":["ip saddr 192.168.77.0/24"],"masqAll":true`},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			w := newWorld(t)
			r := w.r
			list := r.Conflist(bridgeChain("1.0.0", "cond-"+tc.backend, tc.keys))
			pod := r.Pod(t)
			traffic.Serve(t, pod, 80, "pod")
			traffic.ServePeer(t, pod, 81)
			a := r.Attach(pod, "eth0")
			a.Caps = mappings(pm(8080, 80, "tcp", ""), pm(8081, 81, "tcp", ""))
			if _, err := r.Add(list, a); err != nil {
				t.Fatal(err)
			}
			if err := r.Check(list, a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			traffic.Expect(t, w.outside, "tcp", nodeIP, 8080, "pod")
			// masqAll: even another machine's connection is masqueraded.
			traffic.Expect(t, w.outside, "tcp", nodeIP, 8081, "10.88.0.1")
			traffic.ExpectNot(t, r.Node, "tcp", "127.0.0.1", 8080, "pod")
			if err := r.Del(list, a); err != nil {
				t.Fatal(err)
			}
		})
	}
}
