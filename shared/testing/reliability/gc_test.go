package reliability

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestGCOtherNetworks: two networks of the default chain share a node
// (their own bridges and subnets). A pod of each is lost (netns gone, DEL
// never sent, the runtime's cached result gone too, so only the plugins'
// own GC can clean it). GC of one network removes exactly its lost pod's
// state — address, masquerade and port-mapping rules, firewall rules, IFB,
// tuning backup — and leaves the other network's, lost or live, alone;
// GC of the other network then cleans its own.
func TestGCOtherNetworks(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	r := testnet.NewRuntime(t)
	a := defaultList(t, r)
	other := strings.NewReplacer(`"cnibox-default"`, `"cnibox-other"`, `"cnibox0"`, `"cnibox1"`, "10.22.0.0/16", "10.23.0.0/16").Replace(defaultConf(t))
	b := r.Conflist(other)

	veths := map[*testnet.Attachment][]string{}
	add := func(list *libcni.NetworkConfigList, n int) *testnet.Attachment {
		att := r.Attach(r.Pod(t), "eth0")
		caps(att, n)
		res, err := r.Add(list, att)
		if err != nil {
			t.Fatalf("ADD to %s: %v", list.Name, err)
		}
		veths[att] = testnet.HostVeths(res)
		return att
	}
	lose := func(list *libcni.NetworkConfigList, att *testnet.Attachment) {
		att.Pod.Delete()
		if err := r.WaitLinksGone(veths[att]...); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(r.CacheDir, "results", list.Name+"-"+att.ContainerID+"-"+att.IfName)); err != nil {
			t.Fatal(err)
		}
	}
	snap := r.Snapshotter()
	liveA, liveB := add(a, 1), add(b, 2)
	base := snap.Take(t)
	lostA := add(a, 3)
	lose(a, lostA)
	withLostA := snap.Take(t)
	if withLostA.Count(base) == 0 {
		t.Fatal("a lost pod left nothing to collect: the test proves nothing")
	}
	t.Logf("a lost pod of %s leaves:\n%s", a.Name, base.Diff(withLostA))
	lostB := add(b, 4)
	lose(b, lostB)

	if err := r.GC(b, liveB); err != nil {
		t.Fatalf("GC %s: %v", b.Name, err)
	}
	snap.AssertSame(t, withLostA, "GC of "+b.Name+" (must remove its lost pod, nothing of "+a.Name+")")
	if err := r.GC(a, liveA); err != nil {
		t.Fatalf("GC %s: %v", a.Name, err)
	}
	snap.AssertSame(t, base, "GC of "+a.Name)
	for _, c := range []struct {
		list *libcni.NetworkConfigList
		att  *testnet.Attachment
	}{{a, liveA}, {b, liveB}} {
		if err := r.Check(c.list, c.att); err != nil {
			t.Errorf("live pod of %s after both GCs: %v", c.list.Name, err)
		}
	}
}
