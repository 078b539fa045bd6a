package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/traffic"
)

// TestClusterDemo is make cluster-demo (CNIBOX_CLUSTER_DEMO=1): for each
// backend of CNIBOX_CLUSTER_BACKENDS (default "host-gw vxlan udp") the
// lab with two pods per node, each node's flannel state, who reaches
// whom, the hostPort, and iperf3/ping between two pods on one node and
// on two nodes; then the table of all measurements.
func TestClusterDemo(t *testing.T) {
	if os.Getenv("CNIBOX_CLUSTER_DEMO") == "" {
		t.Skip("make cluster-demo runs it (CNIBOX_CLUSTER_DEMO=1)")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3: %v", err)
	}
	backends := strings.Fields(os.Getenv("CNIBOX_CLUSTER_BACKENDS"))
	if len(backends) == 0 {
		backends = []string{"host-gw", "vxlan", "udp"}
	}
	secs := 5
	fmt.Sscan(os.Getenv("CNIBOX_CLUSTER_SECONDS"), &secs)
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	var rows []string
	var versions string
	for i, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			start := time.Now()
			say("\n=== flannel backend %s: 3 nodes on underlay 198.18.0.0/24, etcd, flanneld per node, cnibox's flannel conflist", backend)
			l := New(t, backend, 3)
			versions = fmt.Sprintf("flanneld %s, %s", l.FlanneldVersion(), l.EtcdVersion())
			hostPort := map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": echoPort, "protocol": "tcp"}}}
			for _, nd := range l.Nodes {
				say("%s: subnet file %s: %s", nd.Name, nd.SubnetFile, strings.Join(sortedEnv(nd.SubnetEnv()), " "))
				for j := 1; j <= 2; j++ {
					var caps map[string]any
					if nd.Index == 1 && j == 1 {
						caps = hostPort
					}
					p := nd.MustAddPod(fmt.Sprintf("%s-pod%d", nd.Name, j), caps)
					traffic.Serve(t, p.NS, echoPort, p.Name)
					say("  ADD %s: %s", p.Name, p.IP)
				}
			}
			if err := l.WaitRoutes(20 * time.Second); err != nil {
				t.Fatalf("flannel's state:\n%v", err)
			}
			for _, nd := range l.Nodes {
				fmt.Print(nd.State())
			}
			checkReach(t, l)
			if !t.Failed() {
				n := len(l.Pods())
				say("reachability: each of %d pods pinged and TCP-echoed the %d others and pinged the other nodes: all answered", n, n-1)
			}
			traffic.Expect(t, l.Nodes[2].Node, "tcp", l.Nodes[0].IP, 8080, "node1-pod1")
			say("hostPort: node3 -> %s:8080 answered by node1-pod1", l.Nodes[0].IP)

			n1, n2 := l.Nodes[0], l.Nodes[1]
			paths := [][3]any{{"cross-node " + backend, n1.Pods[0], n2.Pods[0]}}
			if i == 0 {
				paths = append([][3]any{{"same-node bridge", n1.Pods[0], n1.Pods[1]}}, paths...)
			}
			for _, p := range paths {
				m := measure(t, p[1].(*Pod), p[2].(*Pod), secs)
				row := fmt.Sprintf("| %-22s | %s | %9.2f | %7.3f / %7.3f |", p[0], mtuOf(p[1].(*Pod)), m.gbps, m.rttAvg, m.rttMax)
				say("%s", row)
				rows = append(rows, row)
			}
			for _, nd := range l.Nodes {
				for len(nd.Pods) > 0 {
					if err := nd.DelPod(nd.Pods[0]); err != nil {
						t.Fatalf("%s: DEL: %v", nd.Name, err)
					}
				}
				checkEmpty(t, nd)
			}
			say("DEL of every pod: no veth, reservation or saved config left; %s lab took %v", backend, time.Since(start).Round(100*time.Millisecond))
		})
	}
	say("\n%s; iperf3 -t %d (one TCP stream), ping -c 200 -i 0.005 (ms)", versions, secs)
	say("| path                   | pod MTU | Gbit/s    | RTT avg / max (ms)  |")
	say("|------------------------|---------|-----------|---------------------|")
	for _, r := range rows {
		say("%s", r)
	}
}

type measurement struct{ gbps, rttAvg, rttMax float64 }

// measure runs iperf3 (one TCP stream, secs seconds) and 200 pings from
// src to dst.
func measure(t *testing.T, src, dst *Pod, secs int) measurement {
	t.Helper()
	srv := dst.NS.Command("iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatalf("iperf3 -s: %v", err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out string
	var err error
	for try := 0; try < 50; try++ {
		out, err = src.NS.Run("timeout", fmt.Sprint(secs+10), "iperf3", "-c", dst.IP, "-p", "5201", "-t", fmt.Sprint(secs), "-J")
		if err == nil || !strings.Contains(out, "Connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 %s -> %s: %v", src.Name, dst.Name, err)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("iperf3's JSON: %v", err)
	}
	m := measurement{gbps: res.End.SumReceived.BitsPerSecond / 1e9}
	ping := src.NS.MustRun("ping", "-q", "-c", "200", "-i", "0.005", dst.IP)
	rtt := regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/`).FindStringSubmatch(ping)
	if rtt == nil {
		t.Fatalf("ping's summary: %s", ping)
	}
	fmt.Sscan(rtt[2], &m.rttAvg)
	fmt.Sscan(rtt[3], &m.rttMax)
	return m
}

func mtuOf(p *Pod) string {
	out, _ := p.NS.Run("cat", "/sys/class/net/eth0/mtu")
	return fmt.Sprintf("%7s", strings.TrimSpace(out))
}

func sortedEnv(env map[string]string) []string {
	var out []string
	for _, k := range []string{"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"} {
		out = append(out, k+"="+env[k])
	}
	return out
}
