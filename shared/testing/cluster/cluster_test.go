package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/testing/traffic"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// echoPort is where every pod's TCP echo answers with its name.
const echoPort = 7

// TestCluster plays the three-node lab for each backend: two pods per
// node; every pod reaches every other pod (ping, TCP) and every other
// node; a hostPort on node1 answers node3; each node's routes (and
// vxlan's FDB and neighbours) are flannel's; flanneld restarted on node2
// (ADD fails with 11 while its subnet file is gone, DEL works, and then
// everything is reachable again); DEL of every pod leaves nothing.
func TestCluster(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) { playLab(t, backend, true) })
	}
}

// TestClusterIPIP is TestCluster for flannel's ipip backend, which needs
// the kernel's ipip module: the host lacks it, so it runs in the VM (make
// vmtest copies etcd and flanneld in). flanneld's restart, which does not
// depend on the backend, is left to TestCluster: under qemu TCG the lab
// takes minutes.
func TestClusterIPIP(t *testing.T) {
	testnet.RequireKernel(t, "ipip")
	playLab(t, "ipip", false)
}

// playLab is TestCluster for one backend; restart plays flanneld's restart.
func playLab(t *testing.T, backend string, restart bool) {
	l := New(t, backend, 3)
	t.Logf("flanneld %s, %s", l.FlanneldVersion(), l.EtcdVersion())
	hostPort := map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": echoPort, "protocol": "tcp"}}}
	for _, nd := range l.Nodes {
		for j := 1; j <= 2; j++ {
			var caps map[string]any
			if nd.Index == 1 && j == 1 {
				caps = hostPort
			}
			p := nd.MustAddPod(fmt.Sprintf("%s-pod%d", nd.Name, j), caps)
			traffic.Serve(t, p.NS, echoPort, p.Name)
		}
	}
	if err := l.WaitRoutes(Patience(20 * time.Second)); err != nil {
		t.Fatalf("flannel's state:\n%v", err)
	}
	checkReach(t, l)
	traffic.Expect(t, l.Nodes[2].Node, "tcp", l.Nodes[0].IP, 8080, "node1-pod1")

	if restart {
		// flanneld goes away on node2 and its subnet file with it (as
		// /run at a reboot): the node cannot start pods, but can stop them.
		n2 := l.Nodes[1]
		subnet := n2.Subnet()
		n2.StopFlanneld()
		if err := os.Remove(n2.SubnetFile); err != nil {
			t.Fatal(err)
		}
		_, err := n2.AddPod("node2-early", nil)
		if CNICode(err) != 11 || !strings.Contains(err.Error(), n2.SubnetFile) {
			t.Errorf("ADD while flanneld is down: %v; want code 11 naming %s", err, n2.SubnetFile)
		}
		if err := n2.DelPod(n2.Pods[1]); err != nil {
			t.Errorf("DEL while flanneld is down: %v", err)
		}
		n2.RestartFlanneld()
		if n2.Subnet() != subnet {
			t.Errorf("node2's lease changed across the restart: %s, then %s", subnet, n2.Subnet())
		}
		p := n2.MustAddPod("node2-pod3", nil)
		traffic.Serve(t, p.NS, echoPort, p.Name)
		if err := l.WaitRoutes(Patience(20 * time.Second)); err != nil {
			t.Fatalf("flannel's state after the restart:\n%v", err)
		}
		checkReach(t, l)
	}

	for _, nd := range l.Nodes {
		for len(nd.Pods) > 0 {
			if err := nd.DelPod(nd.Pods[0]); err != nil {
				t.Errorf("%s: DEL: %v", nd.Name, err)
				break
			}
		}
		checkEmpty(t, nd)
	}
}

// checkReach: every pod pings and TCP-echoes every other pod, and pings
// every node but its own on the underlay; the answering pod sees the
// asking pod's own address (no NAT inside the cluster network).
func checkReach(t *testing.T, l *Lab) {
	t.Helper()
	pods := l.Pods()
	var wg sync.WaitGroup
	for _, src := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, dst := range pods {
				if dst == src {
					continue
				}
				if err := src.Ping(dst.IP); err != nil {
					t.Errorf("%s -> %s: %v", src.Name, dst.Name, err)
				}
				traffic.Expect(t, src.NS, "tcp", dst.IP, echoPort, dst.Name)
			}
			for _, nd := range l.Nodes {
				if nd != src.Node {
					if err := src.Ping(nd.IP); err != nil {
						t.Errorf("%s -> %s: %v", src.Name, nd.Name, err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// checkEmpty: after DEL of every pod the node holds no veth, no address
// reservation and no saved flannel config.
func checkEmpty(t *testing.T, nd *Node) {
	t.Helper()
	if v := nd.Veths(); len(v) > 0 {
		t.Errorf("%s: veths left: %v", nd.Name, v)
	}
	if r := nd.Reservations("cbr0"); len(r) > 0 {
		t.Errorf("%s: reservations left: %v", nd.Name, r)
	}
	if ents, _ := os.ReadDir(filepath.Join(nd.StateDir, "flannel")); len(ents) > 0 {
		t.Errorf("%s: saved flannel configs left: %v", nd.Name, ents)
	}
}
