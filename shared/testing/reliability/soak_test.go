package reliability

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

// soakSize is the number of transient pods per worker per round:
// CNIBOX_SOAK (make soak) or a small default for make test.
func soakSize(t *testing.T, small int) int {
	if s := os.Getenv("CNIBOX_SOAK"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CNIBOX_SOAK=%q: want a positive number of cycles", s)
		}
		return n
	}
	if testing.Short() {
		t.Skip("-short: no soak")
	}
	return small
}

// defaultList reads conflists/default.conflist, the chain a node gets by
// default: bridge (host-local, ipMasq), loopback, portmap, firewall,
// tuning, bandwidth. It is used as shipped: tuning's default backup dir
// (/run/cni/tuning) is the test's RunDir, which the leak checker sees.
func defaultList(t *testing.T, r *testnet.Runtime) *libcni.NetworkConfigList {
	return r.Conflist(defaultConf(t))
}

func defaultConf(t *testing.T) string {
	data, err := os.ReadFile("../../../conflists/default.conflist")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

var hostPort atomic.Int32

func init() { hostPort.Store(20000) }

// caps gives an attachment what a runtime passes for a pod with a host
// port, a bandwidth limit (so bandwidth makes an IFB) and a fixed MAC.
func caps(a *testnet.Attachment, n int) {
	a.Caps = map[string]any{
		"portMappings": []map[string]any{{"hostPort": hostPort.Add(1), "containerPort": 80, "protocol": "tcp"}},
		"bandwidth":    map[string]any{"ingressRate": 8000000, "ingressBurst": 100000, "egressRate": 8000000, "egressBurst": 100000},
		"mac":          fmt.Sprintf("02:42:ac:%02x:%02x:%02x", n>>16&0xff, n>>8&0xff, n&0xff),
	}
}

// TestSoak drives the default chain as a busy node does: workers in
// parallel ADD, CHECK and DEL transient pods, some deleted twice, some
// after their netns is gone, some never deleted (lost DELs, with and
// without libcni's cached result), while live pods stay. After every
// round GC runs (exclusively, as the spec wants) with the live pods
// valid, and the node must be exactly as it was with only the live pods:
// no link, address, route, qdisc, rule or reservation more or less.
//
// make soak sets CNIBOX_SOAK (cycles per worker per round); make test runs
// a small one.
func TestSoak(t *testing.T) {
	perRound := soakSize(t, 4)
	const workers, rounds, live = 4, 3, 3
	t.Parallel()
	r := testnet.NewRuntime(t)
	list := defaultList(t, r)

	var lives []*testnet.Attachment
	for i := 0; i < live; i++ {
		a := r.Attach(r.Pod(t), "eth0")
		caps(a, i)
		if _, err := r.Add(list, a); err != nil {
			t.Fatalf("ADD live pod %d: %v", i, err)
		}
		lives = append(lives, a)
	}
	snap := r.Snapshotter()
	baseline := snap.Take(t)

	var cycles, failures atomic.Int64
	leaks := 0
	start := time.Now()
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var lost []*testnet.Attachment
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(round*100 + w)))
				for i := 0; i < perRound; i++ {
					n := 1000 + round*100000 + w*10000 + i
					if l, err := cycle(t, r, list, rng.Intn(5), n); err != nil {
						failures.Add(1)
						t.Errorf("round %d worker %d cycle %d: %v", round, w, i, err)
					} else if l != nil {
						mu.Lock()
						lost = append(lost, l)
						mu.Unlock()
					}
					cycles.Add(1)
				}
			}(w)
		}
		wg.Wait()
		for _, a := range lives {
			if err := r.Check(list, a); err != nil {
				t.Errorf("round %d: CHECK of live pod %s: %v", round, a.ContainerID, err)
			}
		}
		if err := r.GC(list, lives...); err != nil {
			t.Fatalf("round %d: GC: %v", round, err)
		}
		if err := r.GC(list, lives...); err != nil {
			t.Fatalf("round %d: second GC: %v", round, err)
		}
		if d := baseline.Diff(snap.Take(t)); d != "" {
			leaks++
			t.Errorf("round %d (%d lost DELs): the node holds more or less than its live pods need (+ leaked, - lost):\n%s", round, len(lost), d)
		}
	}
	t.Logf("soak: %d cycles (%d workers, %d rounds, %d live pods) in %v, %d failed, %d rounds with leaks",
		cycles.Load(), workers, rounds, live, time.Since(start).Round(time.Second), failures.Load(), leaks)
}

// cycle runs one transient pod's life of the given kind and returns the
// attachment when its DEL was lost on purpose.
func cycle(t *testing.T, r *testnet.Runtime, list *libcni.NetworkConfigList, kind, n int) (*testnet.Attachment, error) {
	pod := r.Pod(t)
	defer pod.Delete()
	a := r.Attach(pod, "eth0")
	caps(a, n)
	res, err := r.Add(list, a)
	if err != nil {
		return nil, fmt.Errorf("ADD: %w", err)
	}
	// gone deletes the pod's netns and waits until the kernel has
	// destroyed it (and so the host veth), which it does asynchronously.
	gone := func() error {
		pod.Delete()
		return r.WaitLinksGone(testnet.HostVeths(res)...)
	}
	switch kind {
	case 0: // ADD, CHECK, DEL, DEL again
		if err := r.Check(list, a); err != nil {
			return nil, fmt.Errorf("CHECK: %w", err)
		}
		if err := r.Del(list, a); err != nil {
			return nil, fmt.Errorf("DEL: %w", err)
		}
		if err := r.Del(list, a); err != nil {
			return nil, fmt.Errorf("second DEL: %w", err)
		}
	case 1: // the pod's netns is gone before DEL
		if err := gone(); err != nil {
			return nil, err
		}
		if err := r.Del(list, a); err != nil {
			return nil, fmt.Errorf("DEL without netns: %w", err)
		}
		if err := r.Del(list, a); err != nil {
			return nil, fmt.Errorf("second DEL without netns: %w", err)
		}
	case 2: // plain ADD, DEL
		if err := r.Del(list, a); err != nil {
			return nil, fmt.Errorf("DEL: %w", err)
		}
	case 3: // DEL lost: libcni's GC DELs it from its cache
		return a, gone()
	case 4: // DEL lost and the runtime forgot it: only the plugins' GC cleans
		if err := gone(); err != nil {
			return nil, err
		}
		cache := filepath.Join(r.CacheDir, "results", list.Name+"-"+a.ContainerID+"-"+a.IfName)
		if err := os.Remove(cache); err != nil {
			return nil, fmt.Errorf("drop the cached result: %w", err)
		}
		return a, nil
	}
	return nil, nil
}
