package reliability

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// crashRuns is the number of runs on the default chain: CNIBOX_CRASH, or
// a few for make test.
func crashRuns(t *testing.T) int {
	s := os.Getenv("CNIBOX_CRASH")
	if s == "" {
		if testing.Short() {
			t.Skip("-short")
		}
		return 6
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("CNIBOX_CRASH=%q: want a positive number of kills", s)
	}
	return n
}

// TestCrashInjection SIGKILLs one applet process of a chain at a random
// moment of ADD or DEL (a timed kill from the runtime side; no hook in the
// binary), then plays what a runtime does next: DEL (again), GC with the
// live pod valid. The node must then be exactly as before (its netns, the
// state dir and whatever else the chain touches: the dhcp daemon's and
// server's leases, firewalld's zones), the pod must hold nothing but lo,
// and a new ADD for the same container must work and its DEL leave
// nothing. Chains: the default one (bridge, host-local in-process,
// loopback, portmap, firewall, tuning, bandwidth), conflists/ptp.conflist,
// conflists/macvlan.conflist, macvlan with static IPAM, host-device, dhcp
// under macvlan and bridge (kills of the plugin, and of the daemon, which
// is restarted), and
// bridge with the firewalld firewall backend. ipvlan and vlan are in
// TestCrashIPVlan and TestCrashVlan (kernels without them skip, the VM runs
// them). CNIBOX_CRASH sets the number of runs (one kill armed in each) on
// the default chain, half that on the others (make test: 6 and 3).
func TestCrashInjection(t *testing.T) {
	n := crashRuns(t)
	half := (n + 1) / 2
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		crash(t, &crashCase{r: r, list: defaultList(t, r), n: n,
			applets: []string{"bridge", "loopback", "portmap", "firewall", "tuning", "bandwidth"}})
	})
	t.Run("ptp", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		crash(t, &crashCase{r: r, list: listFile(t, r, "ptp.conflist"), n: half, applets: []string{"ptp", "portmap"}})
	})
	t.Run("macvlan", func(t *testing.T) {
		r := macvlanNode(t)
		crash(t, &crashCase{r: r, list: listFile(t, r, "macvlan.conflist"), n: half, applets: []string{"macvlan"}})
	})
	t.Run("static", func(t *testing.T) {
		// static runs in-process in macvlan: a kill of macvlan lands in
		// IPAM too. Each pod's address comes from the "ips" capability,
		// and a new ADD must get it again.
		r := macvlanNode(t)
		list := r.Conflist(`{"cniVersion":"1.1.0","name":"static-net","plugins":[
			{"type":"macvlan","master":"eth0","mode":"bridge","capabilities":{"ips":true},
			 "ipam":{"type":"static","routes":[{"dst":"0.0.0.0/0","gw":"10.33.0.1"}]}}]}`)
		crash(t, &crashCase{r: r, list: list, n: half, applets: []string{"macvlan"},
			setup: func(a *testnet.Attachment, i int) {
				a.Caps = map[string]any{"ips": []string{staticAddr(i)}}
			},
			wantAddr: staticAddr})
	})
	t.Run("host-device", func(t *testing.T) {
		// The device is one end of a veth made in the node (this kernel
		// has no dummy), hd0 for the pods under test, hd1 for the live
		// pod, which needs a network of its own: a device is in one pod
		// at a time. After a kill and DEL it must be back in the node
		// under its name, with no alias left.
		r := testnet.NewRuntime(t)
		for _, d := range []string{"hd0", "hd1"} {
			r.Node.MustRun("ip", "link", "add", d, "type", "veth", "peer", "name", d+"p")
		}
		conf := `{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"host-device","device":%q,
			"ipam":{"type":"static","addresses":[{"address":%q}]}}]}`
		list := r.Conflist(fmt.Sprintf(conf, "hd-net", "hd0", "10.34.0.2/24"))
		live := r.Conflist(fmt.Sprintf(conf, "hd-live", "hd1", "10.35.0.2/24"))
		crash(t, &crashCase{r: r, list: list, live: live, n: half, applets: []string{"host-device"},
			wantAddr: func(int) string { return "10.34.0.2/24" }})
	})
	t.Run("dhcp", func(t *testing.T) {
		l := newDHCPLab(t)
		crash(t, &crashCase{r: l.R, list: l.list, n: half, applets: []string{"macvlan"},
			probes: []probe{l.daemonLeases, l.serverLeases}})
	})
	t.Run("dhcp-bridge", func(t *testing.T) {
		l := newDHCPBridgeLab(t)
		crash(t, &crashCase{r: l.R, list: l.list, n: half, applets: []string{"bridge"},
			probes: []probe{l.daemonLeases, l.serverLeases}})
	})
	t.Run("dhcp-daemon", func(t *testing.T) {
		// The daemon is SIGKILLed instead (the plugin then fails to reach
		// it) and started again before the runtime's DEL. A daemon killed
		// between the server's ACK and its lease file leaves the server's
		// lease until it expires or the container's next ADD (same client
		// ID, same lease) and DEL: so the server's leases are compared
		// after those, not after every kill.
		l := newDHCPLab(t)
		crash(t, &crashCase{r: l.R, list: l.list, n: half, applets: []string{"dhcp daemon"},
			probes:  []probe{l.daemonLeases, l.daemonFiles},
			final:   []probe{l.serverLeases},
			killers: map[string]func(){"dhcp daemon": l.KillDaemon},
			recover: l.restartDaemon})
	})
	t.Run("firewalld", func(t *testing.T) {
		r := testnet.NewRuntime(t)
		fw := startFirewalld(t, r)
		list := r.Conflist(`{"cniVersion":"1.1.0","name":"fwd-net","plugins":[
			{"type":"bridge","bridge":"cni-fwd0","isGateway":true,
			 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.36.0.0/24"}]]}},
			{"type":"firewall","backend":"firewalld"}]}`)
		crash(t, &crashCase{r: r, list: list, n: half, applets: []string{"bridge", "firewall"},
			probes: []probe{fw.zoneSources}})
	})
}

// TestCrashIPVlan is crash injection of ipvlan (L2 on a veth master, with
// host-local in-process). This kernel may lack ipvlan: the VM runs it.
func TestCrashIPVlan(t *testing.T) {
	testnet.RequireKernel(t, "ipvlan")
	n := (crashRuns(t) + 1) / 2
	t.Parallel()
	r := macvlanNode(t)
	list := r.Conflist(`{"cniVersion":"1.1.0","name":"ipvlan-net","plugins":[
		{"type":"ipvlan","master":"eth0","mode":"l2",
		 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.40.0.0/24"}]]}}]}`)
	crash(t, &crashCase{r: r, list: list, n: n, applets: []string{"ipvlan"}})
}

// TestCrashVlan is crash injection of vlan (VLAN 37 on a veth master, with
// host-local in-process). A master has one link per VLAN ID, so the live
// pod is on a network of its own, VLAN 38. This kernel may lack 8021q: the
// VM runs it.
func TestCrashVlan(t *testing.T) {
	testnet.RequireKernel(t, "vlan")
	n := (crashRuns(t) + 1) / 2
	t.Parallel()
	r := macvlanNode(t)
	conf := `{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"vlan","master":"eth0","vlanId":%d,
		"ipam":{"type":"host-local","ranges":[[{"subnet":%q}]]}}]}`
	list := r.Conflist(fmt.Sprintf(conf, "vlan-net", 37, "10.37.0.0/24"))
	live := r.Conflist(fmt.Sprintf(conf, "vlan-live", 38, "10.38.0.0/24"))
	crash(t, &crashCase{r: r, list: list, live: live, n: n, applets: []string{"vlan"}})
}

func staticAddr(i int) string { return fmt.Sprintf("10.33.%d.%d/16", i/250, 2+i%250) }

// macvlanNode is a node with a veth "eth0" (up, peer eth0p) to be the
// master of macvlan, ipvlan and vlan links. It skips when the kernel
// cannot make a macvlan (no testnet.RequireKernel: that would send the
// whole TestCrashInjection to the VM).
func macvlanNode(t *testing.T) *testnet.Runtime {
	r := testnet.NewRuntime(t)
	r.Node.MustRun("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	r.Node.MustRun("ip", "link", "set", "eth0", "up")
	r.Node.MustRun("ip", "link", "set", "eth0p", "up")
	if _, err := r.Node.Run("ip", "link", "add", "mvprobe", "link", "eth0", "type", "macvlan"); err != nil {
		t.Skipf("kernel lacks macvlan: %v", err)
	}
	r.Node.MustRun("ip", "link", "del", "mvprobe")
	return r
}

func listFile(t *testing.T, r *testnet.Runtime, name string) *libcni.NetworkConfigList {
	data, err := os.ReadFile("../../../conflists/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return r.Conflist(string(data))
}

// probe adds to a snapshot a section of state that is not in the node's
// netns or state dir (a daemon's leases, firewalld's zones).
type probe func(t testing.TB) (section string, lines []string)

// crashCase is one chain under crash injection.
type crashCase struct {
	r       *testnet.Runtime
	list    *libcni.NetworkConfigList
	applets []string // plugin processes (or killers) to kill, one picked per run
	n       int      // runs
	// live is the network of the pod that stays up throughout (nil:
	// list). Only the pods of list are killed.
	live *libcni.NetworkConfigList
	// setup sets the capabilities and args of pod i's attachment (the
	// live pod is 1); nil gives the default chain's (caps).
	setup func(a *testnet.Attachment, i int)
	// probes are compared after every kill's DEL and GC; final ones only
	// at the end, after every container's new ADD and DEL.
	probes, final []probe
	// killers kill something other than a plugin process (the dhcp
	// daemon), by the name in applets; recover restarts it after a run.
	killers map[string]func()
	recover func(t *testing.T)
	// wantAddr, when set, is the address pod i must get on every ADD.
	wantAddr func(i int) string
}

func (c *crashCase) snapshot(t *testing.T, snap *testnet.Snapshotter, probes ...[]probe) *testnet.Snapshot {
	s := snap.Take(t)
	for _, ps := range probes {
		for _, p := range ps {
			sec, lines := p(t)
			s.Sections[sec] = slices.Sorted(slices.Values(lines))
		}
	}
	return s
}

// diff compares the node against baseline, retaking the snapshot for up
// to 3 s while they differ: some state goes asynchronously (a DHCP server
// handles the release after the daemon sent it).
func (c *crashCase) diff(t *testing.T, snap *testnet.Snapshotter, baseline *testnet.Snapshot, probes ...[]probe) string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		d := baseline.Diff(c.snapshot(t, snap, probes...))
		if d == "" || time.Now().After(deadline) {
			return d
		}
		time.Sleep(150 * time.Millisecond)
	}
}

func addrs(res types.Result) []string {
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil
	}
	var out []string
	for _, ip := range cur.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

// crash runs c.n kills.
func crash(t *testing.T, c *crashCase) {
	r := c.r
	setup := c.setup
	if setup == nil {
		setup = caps
	}
	liveList := c.live
	if liveList == nil {
		liveList = c.list
	}
	live := r.Attach(r.Pod(t), "eth0")
	setup(live, 1)
	start := time.Now()
	if _, err := r.Add(liveList, live); err != nil {
		t.Fatalf("ADD live pod: %v", err)
	}
	// The kill comes at a random moment of a window after the target
	// started: at first what the live pod's ADD took; a run whose kill
	// came too late narrows the window of its verb and target to how long
	// the target ran (until the next plugin started or the verb ended),
	// so that most kills land.
	took := max(time.Since(start), 10*time.Millisecond)
	window := map[string]time.Duration{}
	if c.live != nil {
		// One ADD and DEL first, so the baseline holds what the network
		// keeps between pods (host-local's directory).
		a := r.Attach(r.Pod(t), "eth0")
		setup(a, 2)
		if _, err := r.Add(c.list, a); err != nil {
			t.Fatalf("ADD of a first pod: %v", err)
		}
		if err := r.Del(c.list, a); err != nil {
			t.Fatalf("DEL of a first pod: %v", err)
		}
		a.Pod.Delete()
	}
	snap := r.Snapshotter()
	// Every kill is checked against baseline, the end against all.
	baseline := c.snapshot(t, snap, c.probes)
	all := c.snapshot(t, snap, c.probes, c.final)

	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	killed, leaks := 0, 0
	for i := 0; i < c.n; i++ {
		target := c.applets[rng.Intn(len(c.applets))]
		verb := []string{"ADD", "DEL"}[rng.Intn(2)]
		key := verb + " " + target
		if window[key] == 0 {
			window[key] = took
		}
		delay := time.Duration(rng.Int63n(int64(window[key])))
		what := fmt.Sprintf("kill %d: %s of %s after %v", i, verb, target, delay)
		killer := c.killers[target]
		var timer *time.Timer
		var ran, ended time.Time // the target's run (plugin targets)
		fired := make(chan struct{})
		arm := func() {
			if killer != nil {
				timer = time.AfterFunc(delay, func() { killer(); close(fired) })
				return
			}
			r.ExecHook = func(plugin string, p *os.Process) {
				if filepath.Base(plugin) != target {
					if !ran.IsZero() && ended.IsZero() {
						ended = time.Now()
					}
					return
				}
				ran = time.Now()
				time.AfterFunc(delay, func() { _ = p.Kill() })
			}
		}
		pod := r.Pod(t)
		a := r.Attach(pod, "eth0")
		setup(a, 100+i)
		var err error
		var start time.Time
		if verb == "ADD" {
			arm()
			start = time.Now()
			_, err = r.Add(c.list, a)
		} else {
			if _, err := r.Add(c.list, a); err != nil {
				t.Fatalf("%s: ADD: %v", what, err)
			}
			arm()
			start = time.Now()
			err = r.Del(c.list, a)
		}
		if ended.IsZero() {
			ended = time.Now()
		}
		if ran.IsZero() {
			ran = start // a killer's target: the verb's time
		}
		if ran := ended.Sub(ran); err == nil && ran < window[key] {
			window[key] = max(ran, 2*time.Millisecond)
		}
		r.ExecHook = nil
		if timer != nil && !timer.Stop() {
			<-fired // the kill happened: maybe after the verb ended
		}
		t.Logf("%s: %v", what, err)
		switch {
		case err == nil:
		case killer != nil:
			killed++ // the plugin could not reach what was killed
		case strings.Contains(err.Error(), "signal: killed"):
			killed++
		default:
			t.Errorf("%s: failed, but not by the kill: %v", what, err)
		}
		if c.recover != nil {
			c.recover(t)
		}
		// What the runtime does next: DEL until it succeeds (once must do).
		if err := r.Del(c.list, a); err != nil {
			t.Errorf("%s: the runtime's DEL after the kill: %v", what, err)
		}
		if err := r.GC(c.list, live); err != nil {
			t.Errorf("%s: GC: %v", what, err)
		}
		if d := c.diff(t, snap, baseline, c.probes); d != "" {
			leaks++
			t.Errorf("%s: after DEL and GC the node differs (+ leaked, - lost):\n%s", what, d)
			baseline = c.snapshot(t, snap, c.probes) // report each leak once
			all = c.snapshot(t, snap, c.probes, c.final)
		}
		if links := pod.Links(t); !slices.Equal(links, []string{"lo"}) {
			leaks++
			t.Errorf("%s: after DEL the pod still holds links %v", what, links)
		}
		// The same container can be added again.
		res, err := r.Add(c.list, a)
		if err != nil {
			t.Errorf("%s: ADD again for the same container: %v", what, err)
		} else if got := addrs(res); c.wantAddr != nil && !slices.Equal(got, []string{c.wantAddr(100 + i)}) {
			t.Errorf("%s: ADD again got addresses %v, want %s", what, got, c.wantAddr(100+i))
		}
		if err := r.Del(c.list, a); err != nil {
			t.Errorf("%s: DEL of the new ADD: %v", what, err)
		}
		pod.Delete()
	}
	if err := r.Check(liveList, live); err != nil {
		t.Errorf("the live pod failed CHECK after all kills: %v", err)
	}
	if d := c.diff(t, snap, all, c.probes, c.final); d != "" {
		leaks++
		t.Errorf("after every kill, new ADD and DEL the node differs (+ leaked, - lost):\n%s", d)
	}
	t.Logf("crash injection: %d runs, %d processes killed, %d leaks", c.n, killed, leaks)
}
