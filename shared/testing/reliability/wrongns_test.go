package reliability

import (
	"strings"

	"github.com/containernetworking/cni/libcni"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// TestDelWrongNetns: a runtime's DEL of pod A that names pod B's netns
// (a confused or hostile runtime; CNI_NETNS of another pod) deletes
// nothing of pod B's — its eth0 (MAC, addresses), host veth, rules,
// reservation — and still releases everything of A's: its reservation,
// rules, and its host veth (found by its alias, without A's netns), for
// bridge and ptp, and the default chain (tuning puts back A's original
// MAC only in A's netns). Before, the DEL left A's veth behind (B's eth0 belonged
// to another attachment, so DEL looked no further).
func TestDelWrongNetns(t *testing.T) {
	t.Parallel()
	for i, kind := range []string{"bridge", "ptp", "default"} {
		t.Run(kind, func(t *testing.T) {
			r := testnet.NewRuntime(t)
			var list *libcni.NetworkConfigList
			if kind == "default" {
				list = defaultList(t, r)
			} else {
				list = r.Conflist(retryConf(kind, 10+i))
			}
			before := warm(t, r, list)
			podA, podB := r.Pod(t), r.Pod(t)
			a, b := r.Attach(podA, "eth0"), r.Attach(podB, "eth0")
			if kind == "default" {
				caps(a, 40) // a MAC (tuning), a port, a bandwidth limit
				caps(b, 41)
			}
			resA, err := r.Add(list, a)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Add(list, b); err != nil {
				t.Fatal(err)
			}
			bState := podState(t, podB)
			hostA := testnet.HostVeths(resA)

			// DEL of A with B's netns.
			confused := *a
			confused.Pod = podB
			if err := r.Del(list, &confused); err != nil {
				t.Fatalf("DEL of A with B's netns: %v", err)
			}
			if got := podState(t, podB); got != bState {
				t.Errorf("DEL of A with B's netns changed pod B:\n%s\nnow:\n%s", bState, got)
			}
			for _, h := range hostA {
				if strings.Contains(strings.Join(r.Veths(), " "), h) {
					t.Errorf("A's host veth %s left", h)
				}
			}
			if res := r.Reservations(list.Name); len(res) != 1 {
				t.Errorf("reservations after A's DEL: %v, want B's only", res)
			}
			// Now B alone is what the node holds: DEL of B (right netns)
			// brings the node back to where it was.
			if err := r.Del(list, b); err != nil {
				t.Fatal(err)
			}
			r.AssertNoLeaks(t, before, "after both DELs")
		})
	}
}
