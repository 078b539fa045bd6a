package bandwidth_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// containerdCaps is the bandwidth capability containerd's CRI builds for a
// pod with kubernetes.io/ingress-bandwidth and egress-bandwidth = rate
// (its toCNIBandWidth): the rate in bits/s, the burst MaxUint32 bits.
func containerdCaps(rate uint64) map[string]any {
	return map[string]any{"bandwidth": map[string]any{
		"ingressRate": rate, "ingressBurst": uint64(math.MaxUint32),
		"egressRate": rate, "egressBurst": uint64(math.MaxUint32)}}
}

// longestBucket is the burst (bytes) of the longest token bucket the
// kernel holds at rate bits/s: MaxUint32 scheduler ticks.
func longestBucket(rate uint64) uint32 {
	return uint32(math.Floor(math.MaxUint32 / netlink.TickInUsec() * float64(rate/8) / 1e6))
}

// tcQdiscs is "tc qdisc show" of the host veth and the IFB, for the log.
func tcQdiscs(r *testnet.Runtime, host, ifb string) string {
	out, _ := r.Node.Run("tc", "qdisc", "show", "dev", host)
	out2, _ := r.Node.Run("tc", "qdisc", "show", "dev", ifb)
	return strings.TrimSpace(out) + " | " + strings.TrimSpace(out2)
}

// TestContainerdRequest: the request containerd sends for a pod annotated
// 1M or 10M (runtimeConfig.bandwidth with MaxUint32 bursts, through libcni
// after bridge) is accepted: ADD installs the longest bucket the kernel can
// hold at that rate with a queue of 25 ms more, CHECK passes, DEL leaves
// nothing. The reference v1.9.1 accepts the same request (it installs a
// bucket its u32 arithmetic wrapped); both are logged.
func TestContainerdRequest(t *testing.T) {
	r := chainRuntime(t)
	const v = "1.0.0"
	for _, rate := range []uint64{1_000_000, 10_000_000} {
		t.Run(fmt.Sprintf("%dM", rate/1_000_000), func(t *testing.T) {
			name := fmt.Sprintf("bwcd%d", rate/1_000_000)
			list := r.Conflist(bridgeList(v, name, `{"type":"bandwidth","capabilities":{"bandwidth":true}}`))
			a := r.Attach(r.Pod(t), "eth0")
			a.Caps = containerdCaps(rate)
			res, err := r.Add(list, a)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			host, ifb := hostVethOf(t, res), ifbName(name, a.ContainerID)
			s := readShaping(t, r, host, ifb)
			bucket := longestBucket(rate)
			limit := uint32(rate/8*25/1000) + bucket
			for dir, q := range map[string]*netlink.Tbf{"ingress": s.Ingress, "egress": s.Egress} {
				if q == nil || q.Rate != rate/8 || q.Buffer != math.MaxUint32 || q.Limit != limit {
					t.Errorf("%s tbf %+v, want rate %d B/s, buffer %d ticks (a %d byte bucket), limit %d", dir, q, rate/8, uint32(math.MaxUint32), bucket, limit)
				}
			}
			if !s.Redirect {
				t.Errorf("no redirect to %s", ifb)
			}
			t.Logf("cnibox: %s", tcQdiscs(r, host, ifb))
			if err := r.Check(list, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := r.Del(list, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if names := ifbLinks(t, r); len(names) != 0 {
				t.Errorf("ifbs left after DEL: %v", names)
			}
		})
	}
}

// TestContainerdRequestReference: the reference v1.9.1 (bridge and
// bandwidth) on the same request also succeeds, with the bucket its
// arithmetic wraps to (at 10M: "burst 193273526b lat 275s"); cnibox's CHECK
// accepts what the reference installed, so a node can switch to cnibox
// under running pods.
func TestContainerdRequestReference(t *testing.T) {
	r := chainRuntime(t)
	testnet.RequireReference(t, "bandwidth")
	const v = "1.0.0"
	tick := netlink.TickInUsec()
	for _, rate := range []uint64{1_000_000, 10_000_000} {
		t.Run(fmt.Sprintf("%dM", rate/1_000_000), func(t *testing.T) {
			name := fmt.Sprintf("bwrf%d", rate/1_000_000)
			list := r.Conflist(bridgeList(v, name, `{"type":"bandwidth","capabilities":{"bandwidth":true}}`))
			a := r.Attach(r.Pod(t), "eth0")
			a.Caps = containerdCaps(rate)
			r.SetPath(testnet.ReferenceDir())
			defer r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
			res, err := r.Add(list, a)
			if err != nil {
				t.Fatalf("reference ADD: %v", err)
			}
			host, ifb := hostVethOf(t, res), ifbName(name, a.ContainerID)
			t.Logf("reference: %s", tcQdiscs(r, host, ifb))
			s := readShaping(t, r, host, ifb)
			burst := uint64(math.MaxUint32 / 8)
			wrapped := uint32(uint64(float64(uint32(uint64(float64(burst)*1e6/float64(rate/8)))) * tick))
			if s.Ingress == nil || s.Ingress.Buffer != wrapped || s.Egress == nil || s.Egress.Buffer != wrapped {
				t.Errorf("reference's buffers: %+v %+v, want the wrapped %d", s.Ingress, s.Egress, wrapped)
			}
			r.SetPath(r.BinDir + ":" + testnet.ReferenceDir())
			if err := r.Check(list, a); err != nil {
				t.Errorf("cnibox CHECK of the reference's shaping: %v", err)
			}
			if err := r.Del(list, a); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if names := ifbLinks(t, r); len(names) != 0 {
				t.Errorf("ifbs left after DEL: %v", names)
			}
		})
	}
}

// TestClampWarning: the warning names the field and the value used, on
// the plugin's stderr, and ADD succeeds (1 kbit/s, MaxUint32 burst).
func TestClampWarning(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "bwwarn"
	a := r.Attach(r.Pod(t), "eth0")
	res, err := r.Add(r.Conflist(bridgeList(v, name)), a)
	if err != nil {
		t.Fatal(err)
	}
	prev, _ := res.GetAsVersion(v)
	prevJSON, _ := json.Marshal(prev)
	stdin := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth","runtimeConfig":{"bandwidth":{"ingressRate":1000,"ingressBurst":4294967295}},"prevResult":%s}`, v, name, prevJSON)
	env := []string{"CNI_CONTAINERID=" + a.ContainerID, "CNI_IFNAME=eth0", "CNI_NETNS=" + a.Pod.Path, "CNI_PATH=" + r.BinDir}
	out, stderr, code := r.Exec("bandwidth", append(env, "CNI_COMMAND=ADD"), []byte(stdin))
	if code != 0 {
		t.Fatalf("ADD at 1 kbit/s, burst MaxUint32: %s %s", out, stderr)
	}
	want := fmt.Sprintf("runtimeConfig.bandwidth.ingressBurst: 4294967295 bits (536870911 bytes) at runtimeConfig.bandwidth.ingressRate 1000 bits/s takes 4294967 s to send, more than the longest token bucket the kernel can hold (274.9 s); using a burst of %d bytes", longestBucket(1000))
	if !strings.Contains(string(stderr), want) {
		t.Errorf("stderr %q lacks %q", stderr, want)
	}
	if _, stderr, code := r.Exec("bandwidth", append(env, "CNI_COMMAND=CHECK"), []byte(stdin)); code != 0 {
		t.Errorf("CHECK: %s", stderr)
	}
	if out, _, code := r.Exec("bandwidth", append(env, "CNI_COMMAND=DEL"), []byte(stdin)); code != 0 {
		t.Errorf("DEL: %s", out)
	}
}

// attachmentState is what must survive another ADD: the host veth's root
// tbf and ingress redirect, the IFB (same device) and its tbf.
func attachmentState(t *testing.T, r *testnet.Runtime, host, ifb string) string {
	t.Helper()
	s := readShaping(t, r, host, ifb)
	if s.Ingress == nil || s.Egress == nil || s.IFB == nil || !s.Redirect {
		return fmt.Sprintf("broken: %+v", s)
	}
	return fmt.Sprintf("ingress %d/%d/%d ifb %d egress %d/%d/%d redirect", s.Ingress.Rate, s.Ingress.Buffer, s.Ingress.Limit,
		s.IFB.Attrs().Index, s.Egress.Rate, s.Egress.Buffer, s.Egress.Limit)
}

// TestRepeatedAdd: another ADD of the same attachment (a runtime's retry)
// or of another container ID with the same interface in the same pod
// never removes or takes over the first attachment's IFB and qdiscs,
// whether it succeeds or fails; neither does the DEL of the other
// container ID. The first attachment then CHECKs and DELs cleanly.
func TestRepeatedAdd(t *testing.T) {
	r := chainRuntime(t)
	const v, name = "1.0.0", "bwrep"
	list := r.Conflist(bridgeList(v, name, limits))
	a := r.Attach(r.Pod(t), "eth0")
	res, err := r.Add(list, a)
	if err != nil {
		t.Fatal(err)
	}
	host, ifb := hostVethOf(t, res), ifbName(name, a.ContainerID)
	first := attachmentState(t, r, host, ifb)
	if strings.HasPrefix(first, "broken") {
		t.Fatalf("first ADD: %s", first)
	}
	cached, _ := res.GetAsVersion(v)
	prevJSON, _ := json.Marshal(cached)
	bw := func(cmd, cid, keys string) (string, int) {
		stdin := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":"bandwidth",%s,"prevResult":%s}`, v, name, keys, prevJSON)
		out, _, code := r.Exec("bandwidth", []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + cid, "CNI_IFNAME=eth0",
			"CNI_NETNS=" + a.Pod.Path, "CNI_PATH=" + r.BinDir}, []byte(stdin))
		return string(out), code
	}
	same := strings.TrimSuffix(strings.TrimPrefix(limits, `{"type":"bandwidth",`), "}")
	// The kernel refuses a bucket of zero ticks: this egress fails after
	// the ingress tbf was set again and the IFB taken over.
	failing := `"ingressRate":8000000,"ingressBurst":400000,"egressRate":800000000000,"egressBurst":8`
	for _, c := range []struct {
		what, cmd, cid, keys string
		ok                   bool
	}{
		{"retried ADD, same limits", "ADD", a.ContainerID, same, true},
		{"retried ADD that fails in the kernel", "ADD", a.ContainerID, failing, false},
		{"ADD of another container ID, same ifname and pod", "ADD", "other-" + a.ContainerID, same, false},
		{"ADD of another container ID that would fail", "ADD", "other-" + a.ContainerID, failing, false},
		{"DEL of that other container ID", "DEL", "other-" + a.ContainerID, same, true},
	} {
		out, code := bw(c.cmd, c.cid, c.keys)
		if (code == 0) != c.ok {
			t.Errorf("%s: exit %d, want success %v: %s", c.what, code, c.ok, out)
		}
		if code != 0 {
			t.Logf("%s: refused: %s", c.what, out)
		}
		if got := attachmentState(t, r, host, ifb); got != first {
			t.Errorf("%s changed the first attachment:\n got %s\nwant %s", c.what, got, first)
		}
	}
	if err := r.Check(list, a); err != nil {
		t.Errorf("CHECK of the first attachment: %v", err)
	}
	if err := r.Del(list, a); err != nil {
		t.Fatal(err)
	}
	if names := ifbLinks(t, r); len(names) != 0 {
		t.Errorf("ifbs left after DEL: %v", names)
	}
	r.Node.Do(func() error {
		if l, err := netlinksafe.LinkByName(ifbName(name, "other-"+a.ContainerID)); err == nil {
			t.Errorf("the other container's ifb %s is left", l.Attrs().Name)
		}
		return nil
	})
}
