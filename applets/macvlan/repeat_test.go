package macvlan_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// attachmentState is what must not change in a working attachment when
// another ADD fails: the node's and the pod's snapshots (links, addresses,
// routes, the host-local reservation among the node's state files) and
// the pod's interface itself (same ifindex, same MAC).
type attachmentState struct {
	node, pod *testnet.Snapshot
	link      string
}

func stateOf(t *testing.T, r *testnet.Runtime, pod *testnet.NS) attachmentState {
	t.Helper()
	return attachmentState{
		node: r.Snapshot(t),
		pod:  (&testnet.Snapshotter{Node: pod}).Take(t),
		link: ifaceID(t, pod),
	}
}

// ifaceID is the ifindex and MAC of eth0 in pod (from ip's JSON: its
// text output may start with warnings about peer netns ids).
func ifaceID(t *testing.T, pod *testnet.NS) string {
	t.Helper()
	out, err := pod.Command("ip", "-j", "link", "show", "eth0").Output()
	if err != nil {
		t.Fatalf("the pod's eth0 is gone (ip link show eth0: %v)", err)
	}
	var links []struct {
		Index   int    `json:"ifindex"`
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show eth0: %v: %s", err, out)
	}
	return fmt.Sprintf("%d %s", links[0].Index, links[0].Address)
}

func (s attachmentState) assertSame(t *testing.T, r *testnet.Runtime, pod *testnet.NS, l *libcni.NetworkConfigList, a *testnet.Attachment, what string) {
	t.Helper()
	now := stateOf(t, r, pod)
	if d := s.node.Diff(now.node); d != "" {
		t.Errorf("%s changed the node:\n%s", what, d)
	}
	if d := s.pod.Diff(now.pod); d != "" {
		t.Errorf("%s changed the pod:\n%s", what, d)
	}
	if now.link != s.link {
		t.Errorf("%s replaced the pod's eth0: %s, was %s", what, now.link, s.link)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK of the first attachment after %s: %v", what, err)
	}
}

// TestRepeatedAdd: a second ADD into a pod whose eth0 is a working
// attachment (a runtime's retry: the same container ID and ifname; or
// another container ID with the same ifname in the same netns) fails
// with an error naming CNI_IFNAME, and leaves the first attachment as it
// was: its link, addresses, routes and host-local reservation, and
// CHECK passes. Two ADDs of one new attachment at once: exactly one
// succeeds and its attachment is complete (the attachment lock runs them
// one after the other); likewise two container IDs with the same ifname.
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"master":"up0",`+hostLocal)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	before := stateOf(t, r, pod)
	for _, c := range []struct {
		what string
		att  *testnet.Attachment
	}{
		{"a repeated ADD", a},
		{"an ADD of another container ID", r.Attach(pod, "eth0")},
	} {
		_, err := r.Add(l, c.att)
		if err == nil || !strings.Contains(err.Error(), "CNI_IFNAME") || !strings.Contains(err.Error(), "eth0") {
			t.Errorf("%s: %v, want an error naming CNI_IFNAME eth0", c.what, err)
		}
		before.assertSame(t, r, pod, l, a, c.what)
		if c.att != a {
			// The runtime DELs the container whose ADD was refused.
			if err := r.Del(l, c.att); err != nil {
				t.Errorf("DEL of the refused container ID: %v", err)
			}
			before.assertSame(t, r, pod, l, a, "the DEL of the refused container ID")
		}
	}
	if got := r.Reservations(l.Name); len(got) != 1 {
		t.Errorf("host-local holds %v, want the first attachment's address only", got)
	}

	for round := 0; round < 4; round++ {
		for _, same := range []bool{true, false} {
			p := r.Pod(t)
			atts := []*testnet.Attachment{r.Attach(p, "eth0"), r.Attach(p, "eth0")}
			if same {
				atts[1] = atts[0]
			}
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range atts {
				wg.Add(1)
				go func(i int) { defer wg.Done(); _, errs[i] = r.Add(l, atts[i]) }(i)
			}
			wg.Wait()
			won := -1
			for i, err := range errs {
				if err == nil {
					if won >= 0 {
						t.Fatalf("round %d (same attachment %v): both ADDs succeeded", round, same)
					}
					won = i
				}
			}
			if won < 0 {
				t.Fatalf("round %d (same attachment %v): both ADDs failed: %v", round, same, errs)
			}
			if err := r.Check(l, atts[won]); err != nil {
				t.Errorf("round %d (same attachment %v): CHECK of the ADD that succeeded: %v (the other: %v)", round, same, err, errs[1-won])
			}
			if !same {
				// The runtime DELs the container whose ADD failed: the
				// winner's eth0 is not its to delete.
				if err := r.Del(l, atts[1-won]); err != nil {
					t.Fatalf("DEL of the ADD that failed: %v", err)
				}
				if err := r.Check(l, atts[won]); err != nil {
					t.Errorf("round %d: CHECK of the winner after the loser's DEL: %v", round, err)
				}
			}
			if err := r.Del(l, atts[won]); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if got := p.Links(t); len(got) != 1 {
				t.Errorf("round %d: the pod has %v after DEl, want lo", round, got)
			}
		}
	}
	if got := r.Reservations(l.Name); len(got) != 1 {
		t.Errorf("host-local holds %v after the concurrent rounds, want the first attachment's address only", got)
	}
	before.assertSame(t, r, pod, l, a, "the concurrent rounds")
}
