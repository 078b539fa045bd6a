package hostdevice_test

import (
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// attachmentState is what must not change in a working attachment when
// another invocation fails: the node's and the pod's snapshots (links
// with their aliases, addresses, routes, the host-local reservation among
// the node's state files) and the pod's eth0 itself (ifindex, MAC).
type attachmentState struct {
	node, pod *testnet.Snapshot
	link      string
}

// ignoreDirs are host-local network directories (not reservations) that
// a later ADD may create: "networks/<name>/".
var ignoreDirs []*regexp.Regexp

func stateOf(t *testing.T, r *testnet.Runtime, pod *testnet.NS) attachmentState {
	t.Helper()
	l := linkMap(t, pod)["eth0"]
	snap := r.Snapshotter()
	snap.Ignore = append(append([]*regexp.Regexp(nil), snap.Ignore...), ignoreDirs...)
	return attachmentState{
		node: snap.Take(t),
		pod:  (&testnet.Snapshotter{Node: pod}).Take(t),
		link: l.Address + " alias " + l.Alias,
	}
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

// TestRepeatedAdd: with hd0 in the pod as eth0, a runtime's retried ADD
// (same container ID and ifname) fails naming the device and eth0, and an
// ADD of another container ID with the same ifname and another device
// (hd1) fails naming CNI_IFNAME, with hd1 back home as it was; the DEL a
// runtime sends after that failed ADD leaves hd0 in the pod (its eth0 is
// not the device that attachment's config selects). Throughout, the first
// attachment keeps its device, addresses, routes and reservation, and
// CHECK passes. Two ADDs of one new attachment at once: exactly one
// succeeds, and its attachment is complete.
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	r.Node.MustRun("ip", "link", "add", "hd1", "type", "veth", "peer", "name", "hd1p")
	v := ipamVersion(t)
	l0 := list(t, r, v, `"device":"hd0",`+hostLocal)
	l1 := list(t, r, v, `"device":"hd1",`+hostLocal)
	ignoreDirs = []*regexp.Regexp{regexp.MustCompile(`^files: networks/` + l1.Name + `/ `)}
	t.Cleanup(func() { ignoreDirs = nil })
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l0, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	before := stateOf(t, r, pod)

	_, err := r.Add(l0, a)
	if err == nil || !strings.Contains(err.Error(), "hd0") || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("repeated ADD: %v, want an error naming hd0 and eth0", err)
	}
	before.assertSame(t, r, pod, l0, a, "a repeated ADD")

	b := r.Attach(pod, "eth0")
	_, err = r.Add(l1, b)
	if err == nil || !strings.Contains(err.Error(), "CNI_IFNAME") || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("ADD of another container ID: %v, want an error naming CNI_IFNAME eth0", err)
	}
	before.assertSame(t, r, pod, l0, a, "an ADD of another container ID with another device")
	if err := r.Del(l1, b); err != nil {
		t.Errorf("DEL of the ADD that failed: %v", err)
	}
	before.assertSame(t, r, pod, l0, a, "the DEL of that failed ADD")
	if got := r.Reservations(l0.Name); len(got) != 1 {
		t.Errorf("host-local holds %v, want the first attachment's address only", got)
	}

	for round := 0; round < 3; round++ {
		p := r.Pod(t)
		c := r.Attach(p, "eth0")
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Add(1)
			go func(i int) { defer wg.Done(); _, errs[i] = r.Add(l1, c) }(i)
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("round %d: two ADDs of one attachment at once: %v, want exactly one error", round, errs)
		}
		if err := r.Check(l1, c); err != nil {
			t.Errorf("round %d: CHECK of the ADD that succeeded: %v (errors %v)", round, err, errs)
		}
		if got := linkMap(t, p)["eth0"]; got.Alias != "hd1" {
			t.Errorf("round %d: the pod's eth0 = %+v, want hd1", round, got)
		}
		if err := r.Del(l1, c); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if got := linkMap(t, r.Node)["hd1"]; got.Name != "hd1" || got.Alias != "" {
			t.Fatalf("round %d: hd1 not home after DEL: %+v", round, got)
		}
	}
	before.assertSame(t, r, pod, l0, a, "the concurrent rounds")
}

// TestDelLeavesAnotherMoveAlone: a pod where another attachment's ADD is
// moving its device in (cd2, in the pod under its own name with its alias
// set, not yet renamed): a DEL of an attachment whose device is hd0 and
// whose eth0 is not there (a repeated DEL, or one after a failed ADD)
// leaves cd2 in the pod; only a device of its own config's name is taken
// for one a killed plugin left half-way.
func TestDelLeavesAnotherMoveAlone(t *testing.T) {
	r := node(t)
	l := list(t, r, ipamVersion(t), `"device":"hd0"`)
	pod := r.Pod(t)
	pod.MustRun("ip", "link", "add", "cd2", "type", "veth", "peer", "name", "cd2p")
	pod.MustRun("ip", "link", "set", "cd2", "alias", "cd2")
	if err := r.Del(l, r.Attach(pod, "eth0")); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got, ok := linkMap(t, pod)["cd2"]; !ok || got.Alias != "cd2" {
		t.Errorf("another attachment's device in progress was taken: the pod has %v", keys(linkMap(t, pod)))
	}
	if _, ok := linkMap(t, r.Node)["cd2"]; ok {
		t.Errorf("cd2 was moved to the node")
	}
}
