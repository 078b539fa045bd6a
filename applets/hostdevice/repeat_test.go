package hostdevice_test

import (
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestRepeatedAdd: see testnet.RepeatedAdd. With hd0 in the pod as eth0,
// a runtime's retried ADD fails naming the device and eth0; an ADD of
// another container ID with the same ifname and another device (hd1) fails
// naming CNI_IFNAME, with hd1 back home as it was, and the DEL after it
// leaves hd0 in the pod (its eth0 is not the device that attachment's
// config selects). eth0 is identified by its MAC and alias (the device's
// name). The concurrent rounds race one attachment of hd1 with itself:
// the winner's eth0 is hd1, which its DEL sends home.
func TestRepeatedAdd(t *testing.T) {
	r := node(t)
	r.Node.MustRun("ip", "link", "add", "hd1", "type", "veth", "peer", "name", "hd1p")
	v := ipamVersion(t)
	l1 := list(t, r, v, `"device":"hd1",`+hostLocal)
	testnet.RepeatedAdd{
		List:         list(t, r, v, `"device":"hd0",`+hostLocal),
		Want:         []string{"hd0", "eth0"},
		Other:        l1,
		OtherWant:    []string{"CNI_IFNAME", "eth0"},
		Concurrent:   l1,
		Rounds:       3,
		SameOnly:     true,
		Reservations: true,
		Link: func(t *testing.T, pod *testnet.NS) string {
			l := linkMap(t, pod)["eth0"]
			return l.Address + " alias " + l.Alias
		},
		Added: func(t *testing.T, round int, pod *testnet.NS) {
			if got := linkMap(t, pod)["eth0"]; got.Alias != "hd1" {
				t.Errorf("round %d: the pod's eth0 = %+v, want hd1", round, got)
			}
		},
		Deleted: func(t *testing.T, round int) {
			if got := linkMap(t, r.Node)["hd1"]; got.Name != "hd1" || got.Alias != "" {
				t.Fatalf("round %d: hd1 not home after DEL: %+v", round, got)
			}
		},
	}.Run(t, r)
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
