package veth_test

import (
	"errors"
	"fmt"
	"github.com/cnibox/cnibox/shared/cni"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/veth"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// nodeAndPod returns a node netns (where the test's goroutine runs Create
// and Delete through node.Do) and a pod netns opened for Create.
func nodeAndPod(t *testing.T) (*testnet.NS, *testnet.NS, ns.NetNS) {
	t.Helper()
	testnet.RequireRoot(t)
	node, pod := testnet.NewNS(t, "node"), testnet.NewNS(t, "pod")
	podNS, err := ns.GetNS(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { podNS.Close() })
	return node, pod, podNS
}

func links(t *testing.T, n *testnet.NS) string {
	t.Helper()
	return n.MustRun("sh", "-c", "ip -o link 2>/dev/null | cut -d: -f2,3 | sed 's/@.*//'")
}

// TestCreateKeepsExisting: Create never deletes what it finds. A host end
// of the same attachment (a live attachment looks exactly like a killed
// ADD's leftover) is refused and stays, as does the pod's interface;
// a pod that already has the name is refused with the reference's words.
func TestCreateKeepsExisting(t *testing.T) {
	node, pod, podNS := nodeAndPod(t)
	o := veth.Options{Network: "net", ContainerID: "c1", IfName: "eth0"}
	var first *veth.Pair
	if err := node.Do(func() (err error) { first, err = veth.Create(podNS, o); return err }); err != nil {
		t.Fatalf("first Create: %v", err)
	}
	nodeLinks, podLinks := links(t, node), links(t, pod)

	err := node.Do(func() error { _, err := veth.Create(podNS, o); return err })
	if !errors.Is(err, veth.ErrExists) {
		t.Errorf("second Create of the attachment: %v, want ErrExists", err)
	}
	err = node.Do(func() error { return veth.Absent(podNS, "c2", "eth0") })
	if !errors.Is(err, veth.ErrExists) || !strings.Contains(err.Error(), `container veth name ("eth0")`) {
		t.Errorf("Absent with eth0 in the pod: %v", err)
	}
	o2 := o
	o2.ContainerID = "c2"
	err = node.Do(func() error { _, err := veth.Create(podNS, o2); return err })
	if !errors.Is(err, veth.ErrExists) {
		t.Errorf("Create of another container as eth0 of the same pod: %v, want ErrExists", err)
	}
	if got := links(t, node); got != nodeLinks {
		t.Errorf("node links changed:\n%s\nnow:\n%s", nodeLinks, got)
	}
	if got := links(t, pod); got != podLinks {
		t.Errorf("pod links changed:\n%s\nnow:\n%s", podLinks, got)
	}

	// DEL of the other container leaves eth0 (its host end names c1);
	// DEL of c1 removes the pair.
	if err := node.Do(func() error { return veth.Delete("net", "c2", "eth0", pod.Path, cni.Recorded{}) }); err != nil {
		t.Fatal(err)
	}
	if got := links(t, pod); got != podLinks {
		t.Errorf("DEL of another container ID took the pod's eth0:\n%s", got)
	}
	if err := node.Do(func() error { return veth.Delete("net", "c1", "eth0", pod.Path, cni.Recorded{}) }); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links(t, pod), "eth0") || strings.Contains(links(t, node), first.Host.Attrs().Name) {
		t.Errorf("DEL left the pair:\n%s\n%s", links(t, pod), links(t, node))
	}
}

// TestPairDeleteOnlyItsOwn: Pair.Delete deletes the pair Create made, and
// not a link that took its name after it was gone.
func TestPairDeleteOnlyItsOwn(t *testing.T) {
	node, _, podNS := nodeAndPod(t)
	o := veth.Options{Network: "net", ContainerID: "c1", IfName: "eth0"}
	var p *veth.Pair
	if err := node.Do(func() (err error) { p, err = veth.Create(podNS, o); return err }); err != nil {
		t.Fatal(err)
	}
	name := p.Host.Attrs().Name
	node.MustRun("ip", "link", "del", name)
	node.MustRun("ip", "link", "add", name, "type", "veth", "peer", "name", "other")
	if err := node.Do(p.Delete); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(func() error { _, err := netlinksafe.LinkByName(name); return err }); err != nil {
		t.Errorf("Delete of a pair already gone took the link now named %s: %v", name, err)
	}
	var again *veth.Pair
	node.MustRun("ip", "link", "del", name)
	if err := node.Do(func() (err error) {
		again, err = veth.Create(podNS, veth.Options{Network: "net", ContainerID: "c1", IfName: "net1"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(again.Delete); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links(t, node), again.Host.Attrs().Name) {
		t.Errorf("Delete left its pair")
	}
}

// BenchmarkAbsent is what bridge and ptp ADD pay to refuse a pod that has
// the interface already, before IPAM: one setns there and back and one
// link lookup.
//
//	go test -run '^$' -bench Absent ./shared/veth/
func BenchmarkAbsent(b *testing.B) {
	testnet.RequireRoot(b)
	pod := testnet.NewNS(b, "pod")
	podNS, err := ns.GetNS(pod.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer podNS.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := veth.Absent(podNS, "c1", "eth0"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCreateQueueLengths: the pod's end has the kernel's default transmit
// queue length (1000) and the host's end 0, as the reference's pair (made
// from the pod's side, host end as the peer) has them.
func TestCreateQueueLengths(t *testing.T) {
	node, _, podNS := nodeAndPod(t)
	o := veth.Options{Network: "net", ContainerID: "c1", IfName: "eth0"}
	var p *veth.Pair
	if err := node.Do(func() (err error) { p, err = veth.Create(podNS, o); return err }); err != nil {
		t.Fatalf("Create: %v", err)
	}
	var hostQ, podQ int
	if err := node.Do(func() error {
		l, err := netlinksafe.LinkByName(p.Host.Attrs().Name)
		if err == nil {
			hostQ = l.Attrs().TxQLen
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err == nil {
			podQ = l.Attrs().TxQLen
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if hostQ != 0 || podQ != 1000 {
		t.Errorf("txqueuelen: host end %d, pod end %d; want 0 and 1000 (the reference's)", hostQ, podQ)
	}
}

// TestCreateHostDAD: the host end keeps the kernel's accept_dad (the
// reference's) unless NoHostDAD asks for 0 (ptp's).
func TestCreateHostDAD(t *testing.T) {
	node, _, podNS := nodeAndPod(t)
	node.MustRun("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=1")
	for _, tc := range []struct {
		noDAD bool
		want  string
	}{{false, "1"}, {true, "0"}} {
		o := veth.Options{Network: "net", ContainerID: fmt.Sprint("c", tc.noDAD), IfName: fmt.Sprint("eth", tc.want), NoHostDAD: tc.noDAD}
		var p *veth.Pair
		if err := node.Do(func() (err error) { p, err = veth.Create(podNS, o); return err }); err != nil {
			t.Fatalf("Create: %v", err)
		}
		got := strings.TrimSpace(node.MustRun("cat", "/proc/sys/net/ipv6/conf/"+p.Host.Attrs().Name+"/accept_dad"))
		if got != tc.want {
			t.Errorf("NoHostDAD %v: host end accept_dad = %s, want %s", tc.noDAD, got, tc.want)
		}
	}
}

// TestQueues: the host end has one queue each way (no grace period under
// RTNL to cut them), the pod's end exactly what a veth made without
// asking gets (what the reference's pod sees), its queue length 1000 and
// the host end's 0, MTU and MAC as asked.
func TestQueues(t *testing.T) {
	node, pod, podNS := nodeAndPod(t)
	o := veth.Options{Network: "net", ContainerID: "c1", IfName: "eth0", MTU: 1400, MAC: []byte{0x02, 0, 0, 0, 0, 7}}
	if err := node.Do(func() error { _, err := veth.Create(podNS, o); return err }); err != nil {
		t.Fatal(err)
	}
	pod.MustRun("ip", "link", "add", "name", "plain0", "type", "veth", "peer", "name", "plain1")
	field := func(n *testnet.NS, dev, key string) string {
		f := strings.Fields(n.MustRun("ip", "-d", "link", "show", "dev", dev))
		for i := range f[:len(f)-1] {
			if f[i] == key {
				return f[i+1]
			}
		}
		t.Fatalf("ip -d link show %s has no %s", dev, key)
		return ""
	}
	host := veth.HostName("c1", "eth0")
	for _, k := range []string{"numtxqueues", "numrxqueues"} {
		if got := field(node, host, k); got != "1" {
			t.Errorf("host end %s %s, want 1", host, k)
		}
		if got, want := field(pod, "eth0", k), field(pod, "plain1", k); got != want {
			t.Errorf("pod end %s %s, want the kernel's default %s", k, got, want)
		}
	}
	for _, c := range []struct {
		n        *testnet.NS
		dev, key string
		want     string
	}{{node, host, "qlen", "0"}, {pod, "eth0", "qlen", "1000"}, {node, host, "mtu", "1400"}, {pod, "eth0", "mtu", "1400"}, {pod, "eth0", "link/ether", "02:00:00:00:00:07"}} {
		got := "0"
		if c.key != "qlen" || strings.Contains(c.n.MustRun("ip", "link", "show", "dev", c.dev), "qlen") {
			got = field(c.n, c.dev, c.key)
		}
		if got != c.want {
			t.Errorf("%s %s %s, want %s", c.dev, c.key, got, c.want)
		}
	}
}
