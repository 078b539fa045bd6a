package bandwidth

import (
	"crypto/sha512"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestTBFMath: at the default latency the numbers are the reference's
// (rate/8 B/s, burst/8 B, buffer in ticks, limit rate·25ms + burst), so
// either plugin's CHECK accepts the other's qdiscs.
func TestTBFMath(t *testing.T) {
	for _, c := range []struct {
		rate, burst uint64
		latency     float64
	}{{10_000_000, 1_000_000, 25}, {1_000_000_000, 8_000_000, 25}, {8, 8, 25}, {50_000_000_000, 100_000_000, 25}, {10_000_000, 1_000_000, 2.5}} {
		got, err := newTBF("", "ingress", c.rate, c.burst, c.latency)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		rate, burst := c.rate/8, c.burst/8
		buffer := uint32(float64(uint32(float64(burst)*1e6/float64(rate))) * netlink.TickInUsec())
		limit := uint32(float64(rate)*(1e6*c.latency/1000)/1e6) + uint32(burst)
		if got.Rate != rate || got.Buffer != buffer || got.Limit != limit || got.Burst != uint32(burst) {
			t.Errorf("%+v: got %+v, want rate %d buffer %d limit %d", c, got, rate, buffer, limit)
		}
	}
}

func TestTBFValidation(t *testing.T) {
	for _, c := range []struct {
		rate, burst uint64
		latency     float64
		want        string
	}{
		{1000, 0, 25, "x.ingressBurst: must be set when x.ingressRate is"},
		{0, 1000, 25, "x.ingressRate: must be set when x.ingressBurst is"},
		{1000, 8 * math.MaxUint32, 25, "x.ingressBurst: 34359738360 bits is too large"},
		{7, 1000, 25, "x.ingressRate: 7 bits/s is below the minimum"},
		{1000, 7, 25, "x.ingressBurst: 7 bits is below the minimum"},
	} {
		_, err := newTBF("x.", "ingress", c.rate, c.burst, c.latency)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("rate %d burst %d latency %g: err = %v, want %q", c.rate, c.burst, c.latency, err, c.want)
		}
	}
	if p, err := newTBF("", "egress", 0, 0, 25); p != nil || err != nil {
		t.Errorf("zero rate and burst: %v, %v", p, err)
	}
}

// maxUint32Bits is the burst containerd and CRI-O send for the
// kubernetes.io/ingress-bandwidth and egress-bandwidth annotations.
const maxUint32Bits = math.MaxUint32

// TestTBFContainerd: containerd's request for an annotation (the rate,
// with a burst of MaxUint32 bits) is accepted at every rate. Where the
// bucket fits the kernel (16 Mbit/s and up) the numbers are the
// reference's; below, the bucket is the longest the kernel holds, the queue
// is 25 ms plus that bucket, and a warning names the field and the value
// used. CHECK still knows the reference's (wrapped) numbers.
func TestTBFContainerd(t *testing.T) {
	tick := netlink.TickInUsec()
	for _, c := range []struct {
		rate    uint64
		clamped bool
	}{{1_000_000, true}, {10_000_000, true}, {15_000_000, true}, {16_000_000, false}, {100_000_000, false}, {1000, true}} {
		got, err := newTBF("runtimeConfig.bandwidth.", "ingress", c.rate, maxUint32Bits, 25)
		if err != nil {
			t.Errorf("rate %d, burst MaxUint32: %v", c.rate, err)
			continue
		}
		rate, burst := c.rate/8, uint64(maxUint32Bits/8)
		refBuffer := uint32(uint64(float64(uint32(uint64(float64(burst)*1e6/float64(rate)))) * tick))
		refLimit := uint32(float64(rate)*25000/1e6) + uint32(burst)
		if got.RefBuffer != refBuffer || got.RefLimit != refLimit {
			t.Errorf("rate %d: reference numbers %d/%d, want buffer %d limit %d", c.rate, got.RefBuffer, got.RefLimit, refBuffer, refLimit)
		}
		if !c.clamped {
			if got.Rate != rate || got.Buffer != refBuffer || got.Limit != refLimit || uint64(got.Burst) != burst || len(got.Warnings) != 0 {
				t.Errorf("rate %d: got %+v, want the reference's buffer %d limit %d and no warning", c.rate, got, refBuffer, refLimit)
			}
			continue
		}
		bucket := uint32(math.Floor(math.MaxUint32 / tick * float64(rate) / 1e6))
		limit := uint32(float64(rate)*25000/1e6) + bucket
		if got.Rate != rate || got.Buffer != math.MaxUint32 || got.Burst != bucket || got.Limit != limit {
			t.Errorf("rate %d: got %+v, want buffer %d (the kernel's maximum), burst %d, limit %d", c.rate, got, uint32(math.MaxUint32), bucket, limit)
		}
		want := fmt.Sprintf("runtimeConfig.bandwidth.ingressBurst: 4294967295 bits (536870911 bytes) at runtimeConfig.bandwidth.ingressRate %d bits/s takes", c.rate)
		used := fmt.Sprintf("using a burst of %d bytes (%d bits, buffer 4294967295 ticks)", bucket, uint64(bucket)*8)
		if len(got.Warnings) != 1 || !strings.HasPrefix(got.Warnings[0], want) || !strings.HasSuffix(got.Warnings[0], used) {
			t.Errorf("rate %d: warnings %q, want one starting %q and ending %q", c.rate, got.Warnings, want, used)
		}
		// The bucket drains in 274.9 s at the rate, as long as the kernel
		// allows, and never exceeds what was asked for.
		if secs := float64(got.Burst) / float64(rate); secs < 274 || secs > 275 || uint64(got.Burst) > burst {
			t.Errorf("rate %d: bucket of %d bytes drains in %.1f s", c.rate, got.Burst, secs)
		}
	}
	// The example of the issue: the reference's 10 Mbit/s bucket wraps to
	// "burst 193273526b" (tc at the usual 64 ns tick).
	if tick == 15.625 {
		got, _ := newTBF("", "egress", 10_000_000, maxUint32Bits, 25)
		if got.RefBuffer != 2415919079 || got.RefLimit != 536902161 {
			t.Errorf("reference numbers at 10M: buffer %d limit %d, want 2415919079 536902161", got.RefBuffer, got.RefLimit)
		}
		if got.Buffer != math.MaxUint32 || got.Burst != 343597383 || got.Limit != 343628633 {
			t.Errorf("10M: %+v, want buffer 4294967295 burst 343597383 limit 343628633", got)
		}
	}
}

// TestTBFCRIO: CRI-O (server/sandbox_network.go) sends a burst of
// MaxUint32*8-1 bits (4 GiB less one bit) for the annotations, which the
// reference accepts at every rate, and so does cnibox (clamping the bucket
// or, at high rates, the queue). Older CRI-O sent MaxUint32*8 bits, which
// the reference refuses ("burst cannot be more than 4GB"), as cnibox does.
func TestTBFCRIO(t *testing.T) {
	const crio = 8*math.MaxUint32 - 1
	for _, rate := range []uint64{1000, 1_000_000, 100_000_000, 10_000_000_000, 1_000_000_000_000, 1_000_000_000_000_000} {
		got, err := newTBF("runtimeConfig.bandwidth.", "egress", rate, crio, 25)
		if err != nil {
			t.Errorf("rate %d, CRI-O's burst: %v", rate, err)
			continue
		}
		if got.Rate != rate/8 || got.Buffer == 0 || got.Limit < got.Burst || len(got.Warnings) == 0 {
			t.Errorf("rate %d, CRI-O's burst: %+v, want a clamped bucket or queue and a warning", rate, got)
		}
	}
	if _, err := newTBF("", "egress", 1_000_000, 8*math.MaxUint32, 25); err == nil || !strings.Contains(err.Error(), "egressBurst: 34359738360 bits is too large") {
		t.Errorf("old CRI-O's burst of 8*MaxUint32 bits: %v, want refused as the reference does", err)
	}
}

// TestTBFClamps: the slowest rate (one byte per second) with the largest
// burst, and a queue above 4 GiB, are accepted with the kernel's maximum
// and a warning naming the field.
func TestTBFClamps(t *testing.T) {
	got, err := newTBF("", "egress", 8, 8*(math.MaxUint32-1), 25)
	if err != nil || got.Buffer != math.MaxUint32 || got.Burst != uint32(math.MaxUint32/netlink.TickInUsec()/1e6) || len(got.Warnings) != 1 || !strings.HasPrefix(got.Warnings[0], "egressBurst: ") {
		t.Errorf("8 bits/s, 4 GiB burst: %+v, %v", got, err)
	}
	got, err = newTBF("", "ingress", 100_000_000_000, 8_000_000, 10000)
	if err != nil || got.Limit != math.MaxUint32 || len(got.Warnings) != 1 || !strings.HasPrefix(got.Warnings[0], "limit: ") || !strings.HasSuffix(got.Warnings[0], "using a queue of 4294967295 bytes") {
		t.Errorf("100 Gbit/s at 10 s: %+v, %v", got, err)
	}
	// 1 kbit/s with a sane burst: no clamp, the reference's numbers.
	got, err = newTBF("", "ingress", 1000, 16000, 25)
	if err != nil || len(got.Warnings) != 0 || got.Buffer != got.RefBuffer || got.Limit != got.RefLimit || got.Burst != 2000 {
		t.Errorf("1 kbit/s, 2000 byte burst: %+v, %v", got, err)
	}
}

// TestIfbName: the reference's name for the same attachment (its
// utils.MustFormatHashWithPrefix(15, "bwp", network+containerID)).
func TestIfbName(t *testing.T) {
	for _, c := range [][2]string{{"net", "c1"}, {"cnibox-default", "0123456789abcdef"}, {"", ""}} {
		want := fmt.Sprintf("%s%x", "bwp", sha512.Sum512([]byte(c[0]+c[1])))[:15]
		if got := ifbName(c[0], c[1]); got != want {
			t.Errorf("ifbName(%q, %q) = %q, want %q", c[0], c[1], got, want)
		}
	}
}

func TestAlias(t *testing.T) {
	a := ifbAlias("net", "c1")
	if a != "cnibox-bandwidth net c1" || !ifbOfNetwork(a, "net") || ifbOfNetwork(a, "ne") || ifbOfNetwork(a, "net2") || ifbOfNetwork("", "net") {
		t.Fatalf("alias %q", a)
	}
	long := strings.Repeat("n", 300)
	if a := ifbAlias(long, "c1"); len(a) != maxAlias || !ifbOfNetwork(a, long) {
		t.Fatalf("long alias %d", len(a))
	}
}
