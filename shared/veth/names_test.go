package veth_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
	"github.com/cnibox/cnibox/shared/veth"
)

// collidingPair are two valid container IDs whose first-choice host veth
// names (with ifname eth0) are the same: the pair an attack run found.
var collidingPair = [2]string{
	"0000000000000000000000000000000000000000000000000000000000001654",
	"0000000000000000000000000000000000000000000000000000000000006325",
}

// findCollision finds two new 64-hex container IDs whose first-choice
// host names collide (a birthday search over 32 bits: about 2^16 tries).
func findCollision(t *testing.T, salt string) [2]string {
	t.Helper()
	seen := map[string]string{}
	for i := 0; i < 1<<22; i++ {
		id := fmt.Sprintf("%s%0*x", salt, 64-len(salt), i)
		name := veth.HostName(id, "eth0")
		if other, ok := seen[name]; ok {
			return [2]string{other, id}
		}
		seen[name] = id
	}
	t.Fatal("no collision found")
	return [2]string{}
}

// TestHostNameCollision: two attachments whose first-choice host veth
// names collide both come up, each on its own name, and each one's DEL
// without the pod's netns (by its host end) removes only its own pair.
// Before the fallback names the second ADD failed ("the name is taken by
// another device") for as long as the first pod lived.
func TestHostNameCollision(t *testing.T) {
	pairs := map[string][2]string{
		"issue":     collidingPair,
		"generated": findCollision(t, "c0ffee"),
	}
	for name, ids := range pairs {
		t.Run(name, func(t *testing.T) {
			if veth.HostName(ids[0], "eth0") != veth.HostName(ids[1], "eth0") {
				t.Fatalf("%s and %s do not collide", ids[0], ids[1])
			}
			node := testnet.NewNS(t, "node")
			var hosts [2]string
			var pods [2]*testnet.NS
			for i, id := range ids {
				pod := testnet.NewNS(t, "pod")
				pods[i] = pod
				podNS, err := ns.GetNS(pod.Path)
				if err != nil {
					t.Fatal(err)
				}
				defer podNS.Close()
				var p *veth.Pair
				if err := node.Do(func() (err error) {
					p, err = veth.Create(podNS, veth.Options{Network: "net", ContainerID: id, IfName: "eth0"})
					return err
				}); err != nil {
					t.Fatalf("Create of %s: %v", id, err)
				}
				hosts[i] = p.Host.Attrs().Name
			}
			if hosts[0] == hosts[1] || hosts[0] != veth.HostName(ids[0], "eth0") {
				t.Fatalf("host ends %v", hosts)
			}
			// A repeated ADD of the second attachment is refused (it
			// finds its own host end among the fallbacks) and changes
			// nothing.
			podNS, _ := ns.GetNS(pods[1].Path)
			defer podNS.Close()
			err := node.Do(func() error {
				_, err := veth.Create(podNS, veth.Options{Network: "net", ContainerID: ids[1], IfName: "eth9"})
				return err
			})
			if err != nil {
				t.Fatalf("a second interface of the same pod: %v", err)
			}
			// DEL of the second by its host end, then the first.
			for i := 1; i >= 0; i-- {
				if err := node.Do(func() error { return veth.DeleteHost("net", ids[i], "eth0") }); err != nil {
					t.Fatal(err)
				}
				l := links(t, node)
				if strings.Contains(l, hosts[i]+"\n") || strings.Contains(l, " "+hosts[i]) {
					t.Errorf("DEL of %s left %s:\n%s", ids[i], hosts[i], l)
				}
				if i == 1 && !strings.Contains(l, hosts[0]) {
					t.Errorf("DEL of %s took the other's %s:\n%s", ids[1], hosts[0], l)
				}
			}
		})
	}
}

// TestHostNameFirstGone: the first attachment goes, and the second one
// (on a fallback name) is still found by DEL and GC, although its first
// choice is free again.
func TestHostNameFirstGone(t *testing.T) {
	node := testnet.NewNS(t, "node")
	ids := collidingPair
	var hosts [2]string
	for i, id := range ids {
		pod := testnet.NewNS(t, "pod")
		podNS, err := ns.GetNS(pod.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer podNS.Close()
		if err := node.Do(func() error {
			p, err := veth.Create(podNS, veth.Options{Network: "net", ContainerID: id, IfName: "eth0"})
			if err == nil {
				hosts[i] = p.Host.Attrs().Name
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	node.MustRun("ip", "link", "del", hosts[0])
	valid := map[cni.Attachment]bool{{ContainerID: ids[1], IfName: "eth0"}: true}
	if err := node.Do(func() error { return veth.DeleteStale("net", valid, t.Logf) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(links(t, node), hosts[1]) {
		t.Fatalf("GC took the live attachment's %s", hosts[1])
	}
	if err := node.Do(func() error { return veth.DeleteHost("net", ids[1], "eth0") }); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links(t, node), hosts[1]) {
		t.Fatalf("DEL did not find %s on its fallback name", hosts[1])
	}
}

// TestLongNames: a 200-byte network name with a 64-hex container ID, and
// a 1000-byte container ID, make aliases within the kernel's 255 bytes
// (ADD failed with "numerical result out of range" before), distinct per
// attachment, and DEL and GC find the pair by them.
func TestLongNames(t *testing.T) {
	long := strings.Repeat("n", 200)
	cid := strings.Repeat("a", 64)
	longID := strings.Repeat("b", 1000)
	cases := []struct{ net, id string }{
		{long, cid},
		{"net", longID},
		{long, longID},
		{strings.Repeat("x", 240), "c"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		for _, ifn := range []string{"eth0", "eth1"} {
			a := veth.Alias(c.net, c.id, ifn)
			if len(a) > 255 || seen[a] || !veth.OfNetwork(a, c.net) || veth.OfNetwork(a, c.net+"x") {
				t.Errorf("alias %q (%d bytes) of %d/%d/%s: too long, repeated, or not of its network", a, len(a), len(c.net), len(c.id), ifn)
			}
			seen[a] = true
		}
	}
	// The usual names keep the readable form.
	if a := veth.Alias("net", cid, "eth0"); a != "cnibox/net/"+cid+"/eth0" {
		t.Errorf("alias %q", a)
	}
	node := testnet.NewNS(t, "node")
	for i, c := range cases {
		pod := testnet.NewNS(t, "pod")
		podNS, err := ns.GetNS(pod.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer podNS.Close()
		if err := node.Do(func() error {
			_, err := veth.Create(podNS, veth.Options{Network: c.net, ContainerID: c.id, IfName: "eth0"})
			return err
		}); err != nil {
			t.Fatalf("case %d: Create: %v", i, err)
		}
		// GC of the network with this attachment valid keeps it; with
		// none valid removes it (via the hashed network field).
		keep := map[cni.Attachment]bool{{ContainerID: c.id, IfName: "eth0"}: true}
		if err := node.Do(func() error { return veth.DeleteStale(c.net, keep, t.Logf) }); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(links(t, pod), "eth0") {
			t.Fatalf("case %d: GC took a valid attachment", i)
		}
		if i%2 == 0 {
			if err := node.Do(func() error { return veth.DeleteStale(c.net, nil, t.Logf) }); err != nil {
				t.Fatal(err)
			}
		} else if err := node.Do(func() error { return veth.DeleteHost(c.net, c.id, "eth0") }); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(links(t, pod), "eth0") {
			t.Fatalf("case %d: DEL/GC did not find the pair", i)
		}
	}
}

// TestDeleteOnlyTied: a pod interface whose host peer carries no alias of
// ours (the reference made the pair) is deleted only when its MAC is the
// one prevResult gives the attachment; without that tie it stays (it may
// be another pod's: a runtime can pass the wrong netns). Before, any
// unmarked interface was deleted.
func TestDeleteOnlyTied(t *testing.T) {
	node, pod, _ := nodeAndPod(t)
	node.MustRun("ip", "link", "add", "vethref", "type", "veth", "peer", "name", "eth0", "netns", pod.Path)
	mac := strings.TrimSpace(pod.MustRun("cat", "/sys/class/net/eth0/address"))
	for _, podMAC := range []string{"", "02:00:00:00:00:01"} {
		if err := node.Do(func() error { return veth.Delete("net", "c1", "eth0", pod.Path, cni.Recorded{PodMAC: podMAC}) }); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(links(t, pod), "eth0") {
			t.Fatalf("DEL with prevResult MAC %q deleted an interface it cannot tie to the attachment", podMAC)
		}
	}
	if err := node.Do(func() error {
		return veth.Delete("net", "c1", "eth0", pod.Path, cni.Recorded{PodMAC: strings.ToUpper(mac)})
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links(t, pod), "eth0") {
		t.Fatalf("DEL with the right MAC left the pod's interface")
	}
	// An ADD killed between making the pair and setting the alias: the
	// host end has the attachment's derived name and no alias. DEL (with
	// no prevResult: the ADD never returned) ties it by that name.
	name := veth.HostName("c1", "eth0")
	node.MustRun("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", pod.Path)
	if err := node.Do(func() error { return veth.Delete("net", "c2", "eth0", pod.Path, cni.Recorded{}) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(links(t, pod), "eth0") {
		t.Fatalf("DEL of another attachment took an unfinished pair named after c1")
	}
	if err := node.Do(func() error { return veth.Delete("net", "c1", "eth0", pod.Path, cni.Recorded{}) }); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links(t, pod), "eth0") {
		t.Fatalf("DEL left the pair a killed ADD of its attachment made")
	}
}
