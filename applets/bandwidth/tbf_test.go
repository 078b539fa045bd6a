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
		{8, 8 * 1_000_000_000, 25, "takes 1000000000 s to drain"},
		{100_000_000_000, 8, 10000, "latencyMs: 10000 ms"},
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
