package iface_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/iface"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func v6Result(t *testing.T, addr, gw string) *current.Result {
	t.Helper()
	ip, n, err := net.ParseCIDR(addr)
	if err != nil {
		t.Fatal(err)
	}
	res := &current.Result{IPs: []*current.IPConfig{{Address: net.IPNet{IP: ip, Mask: n.Mask}, Gateway: net.ParseIP(gw)}}}
	if gw != "" {
		_, def, _ := net.ParseCIDR("::/0")
		res.Routes = []*types.Route{{Dst: *def}}
	}
	return res
}

// TestDAD: with DAD and no IPv6 gateway, Apply does not wait and the
// address is usable at once (optimistic) while DAD runs; with a gateway it
// waits until DAD is done, as the reference does; without DAD the address
// skips it.
func TestDAD(t *testing.T) {
	pod := testnet.NewNS(t, "pod")
	pod.MustRun("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	pod.MustRun("ip", "link", "set", "d1", "up")
	pod.MustRun("sysctl", "-qw", "net.ipv6.conf.d1.disable_ipv6=0")
	pod.MustRun("ip", "link", "add", "e0", "type", "veth", "peer", "name", "e1")
	pod.MustRun("ip", "link", "set", "e1", "up")
	pod.MustRun("ip", "link", "add", "f0", "type", "veth", "peer", "name", "f1")
	pod.MustRun("ip", "link", "set", "f1", "up")
	optimistic := !strings.Contains(pod.MustRun("sh", "-c", "ls /proc/sys/net/ipv6/conf/d0/optimistic_dad || true"), "No such")

	apply := func(ifName string, res *current.Result, dad bool) time.Duration {
		start := time.Now()
		if err := pod.Do(func() error { return iface.Apply(ifName, res, iface.Options{DAD: dad}) }); err != nil {
			t.Fatalf("Apply %s: %v", ifName, err)
		}
		return time.Since(start)
	}

	if d := apply("d0", v6Result(t, "fd00:1::2/64", ""), true); d > 500*time.Millisecond {
		t.Errorf("DAD without a gateway: Apply took %v, want no wait", d)
	}
	out := pod.MustRun("ip", "-6", "addr", "show", "dev", "d0", "scope", "global")
	if optimistic && !strings.Contains(out, "optimistic") && strings.Contains(out, "tentative") {
		t.Errorf("want an optimistic address while DAD runs: %s", out)
	}
	if v := strings.TrimSpace(pod.MustRun("cat", "/proc/sys/net/ipv6/conf/d0/accept_dad")); v != "1" {
		t.Errorf("accept_dad = %s, want 1", v)
	}

	apply("e0", v6Result(t, "fd00:2::2/64", "fd00:2::1"), true)
	if out := pod.MustRun("ip", "-6", "addr", "show", "dev", "e0", "scope", "global"); strings.Contains(out, "tentative") {
		t.Errorf("with an IPv6 gateway Apply returned before DAD finished: %s", out)
	}
	if err := pod.Do(func() error { return iface.Verify("e0", v6Result(t, "fd00:2::2/64", "fd00:2::1")) }); err != nil {
		t.Errorf("Verify: %v", err)
	}

	apply("f0", v6Result(t, "fd00:3::2/64", "fd00:3::1"), false)
	if out := pod.MustRun("ip", "-6", "addr", "show", "dev", "f0", "scope", "global"); strings.Contains(out, "tentative") {
		t.Errorf("without DAD the address is tentative: %s", out)
	}
}
