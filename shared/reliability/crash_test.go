package reliability

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testnet"
)

// TestCrashInjection SIGKILLs one applet of the default chain at a random
// moment of ADD or DEL (a timed kill from the runtime side; no hook in the
// binary), then plays what a runtime does next: DEL (again), GC with the
// live pod valid. The node must then be exactly as before, and a new ADD
// for the same container must work. It runs on the default chain (bridge,
// host-local in-process, loopback, portmap, firewall, tuning, bandwidth),
// conflists/ptp.conflist (ptp, portmap) and conflists/macvlan.conflist.
// CNIBOX_CRASH sets the number of kills on the default chain, half that
// on the others (make test runs a few).
func TestCrashInjection(t *testing.T) {
	n := 6
	if s := os.Getenv("CNIBOX_CRASH"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("CNIBOX_CRASH=%q: %v", s, err)
		}
	} else if testing.Short() {
		t.Skip("-short")
	}
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		crash(t, r, defaultList(t, r), []string{"bridge", "loopback", "portmap", "firewall", "tuning", "bandwidth"}, n)
	})
	t.Run("ptp", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		crash(t, r, listFile(t, r, "ptp.conflist"), []string{"ptp", "portmap"}, (n+1)/2)
	})
	t.Run("macvlan", func(t *testing.T) {
		// No testnet.RequireKernel: it would send the whole package to
		// the VM. This host has macvlan; skip where it does not.
		r := testnet.NewRuntime(t)
		r.Node.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
		r.Node.MustRun("ip", "link", "set", "eth0", "up")
		r.Node.MustRun("ip", "link", "set", "eth0p", "up")
		if _, err := r.Node.Run("ip", "link", "add", "mvprobe", "link", "eth0", "type", "macvlan"); err != nil {
			t.Skipf("kernel lacks macvlan: %v", err)
		}
		r.Node.MustRun("ip", "link", "del", "mvprobe")
		crash(t, r, listFile(t, r, "macvlan.conflist"), []string{"macvlan"}, (n+1)/2)
	})
}

func listFile(t *testing.T, r *testnet.Runtime, name string) *libcni.NetworkConfigList {
	data, err := os.ReadFile("../../conflists/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return r.Conflist(string(data))
}

// crash runs n kills of the given applets of list.
func crash(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList, applets []string, n int) {
	live := r.Attach(r.Pod(t), "eth0")
	caps(live, 1)
	if _, err := r.Add(list, live); err != nil {
		t.Fatalf("ADD live pod: %v", err)
	}
	snap := r.Snapshotter()
	baseline := snap.Take(t)

	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	killed := 0
	for i := 0; i < n; i++ {
		target := applets[rng.Intn(len(applets))]
		delay := time.Duration(rng.Intn(150000)) * time.Microsecond
		verb := []string{"ADD", "DEL"}[rng.Intn(2)]
		what := fmt.Sprintf("kill %d: %s of %s after %v", i, verb, target, delay)
		arm := func() {
			r.ExecHook = func(plugin string, p *os.Process) {
				if filepath.Base(plugin) != target {
					return
				}
				time.AfterFunc(delay, func() { _ = p.Kill() })
			}
		}
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		caps(a, 100+i)
		var err error
		if verb == "ADD" {
			arm()
			_, err = r.Add(list, a)
		} else {
			if _, err := r.Add(list, a); err != nil {
				t.Fatalf("%s: ADD: %v", what, err)
			}
			arm()
			err = r.Del(list, a)
		}
		r.ExecHook = nil
		t.Logf("%s: %v", what, err)
		if err != nil && strings.Contains(err.Error(), "signal: killed") {
			killed++
		} else if err != nil {
			t.Errorf("%s: failed, but not by the kill: %v", what, err)
		}
		// What the runtime does next: DEL until it succeeds (once must do).
		if err := r.Del(list, a); err != nil {
			t.Errorf("%s: the runtime's DEL after the kill: %v", what, err)
		}
		if err := r.GC(list, live); err != nil {
			t.Errorf("%s: GC: %v", what, err)
		}
		if d := baseline.Diff(snap.Take(t)); d != "" {
			t.Errorf("%s: after DEL and GC the node differs (+ leaked, - lost):\n%s", what, d)
			baseline = snap.Take(t) // report each leak once
		}
		// The same container can be added again.
		if _, err := r.Add(list, a); err != nil {
			t.Errorf("%s: ADD again for the same container: %v", what, err)
		}
		if err := r.Del(list, a); err != nil {
			t.Errorf("%s: DEL of the new ADD: %v", what, err)
		}
		pod.Delete()
	}
	if err := r.Check(list, live); err != nil {
		t.Errorf("the live pod failed CHECK after all kills: %v", err)
	}
	snap.AssertSame(t, baseline, "after every kill")
	t.Logf("crash injection: %d runs, %d applet processes killed", n, killed)
}
