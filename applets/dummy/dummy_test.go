package dummy_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnibox/cnibox/shared/cni"
	"github.com/cnibox/cnibox/shared/testing/testnet"
)

func TestMain(m *testing.M) { testnet.Main(m) }

var netSeq int

func list(t *testing.T, r *testnet.Runtime, version, fields string) *libcni.NetworkConfigList {
	t.Helper()
	netSeq++
	if fields != "" {
		fields = "," + fields
	}
	return r.Conflist(fmt.Sprintf(`{"cniVersion":%q,"name":"dm%d","plugins":[{"type":"dummy"%s}]}`, version, netSeq, fields))
}

const hostLocal = `"ipam":{"type":"host-local","ranges":[[{"subnet":"10.50.0.0/24"}],[{"subnet":"fd00:50::/64"}]],"routes":[{"dst":"10.51.0.0/16"},{"dst":"fd00:51::/48"}]}`

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// TestVersions drives ADD, CHECK, STATUS, GC and DEL through libcni at
// every spec version: a dummy link, up, with both addresses and routes.
func TestVersions(t *testing.T) {
	testnet.RequireKernel(t, "dummy")
	r := testnet.NewRuntime(t)
	testnet.ForEachVersion(t, nil, func(t *testing.T, v string) {
		l := list(t, r, v, hostLocal)
		pod := r.Pod(t)
		a := r.Attach(pod, "dummy0")
		res, err := r.Add(l, a)
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		link := pod.Link(t, "dummy0")
		if link.Type() != "dummy" || link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("dummy0 is a %s link, flags %v", link.Type(), link.Attrs().Flags)
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			t.Fatal(err)
		}
		if cni.VersionAtLeast(v, "0.3.0") {
			if len(cur.Interfaces) != 1 || cur.Interfaces[0].Name != "dummy0" || cur.Interfaces[0].Mac != link.Attrs().HardwareAddr.String() || cur.Interfaces[0].Sandbox != pod.Path {
				t.Errorf("result interfaces = %+v", cur.Interfaces)
			}
		}
		addrs := pod.MustRun("ip", "-o", "addr", "show", "dev", "dummy0")
		if len(cur.IPs) != 2 {
			t.Fatalf("result IPs: %v", cur.IPs)
		}
		for _, ip := range cur.IPs {
			if !strings.Contains(addrs, ip.Address.String()) {
				t.Errorf("dummy0 lacks %s: %s", ip.Address.String(), addrs)
			}
		}
		routes := pod.MustRun("ip", "route", "show") + pod.MustRun("ip", "-6", "route", "show")
		for _, want := range []string{"10.51.0.0/16", "fd00:51::/48"} {
			if !strings.Contains(routes, want) {
				t.Errorf("route %s missing:\n%s", want, routes)
			}
		}
		if cni.VersionAtLeast(v, "0.4.0") {
			if err := r.Check(l, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
		}
		if cni.VersionAtLeast(v, "1.1.0") {
			if err := r.Status(l); err != nil {
				t.Errorf("STATUS: %v", err)
			}
			if err := r.GC(l, a); err != nil {
				t.Errorf("GC: %v", err)
			}
			if got := len(r.Reservations(l.Name)); got != 2 {
				t.Errorf("GC with the attachment valid left %d reservations, want 2", got)
			}
		}
		for i := 0; i < 2; i++ {
			if err := r.Del(l, a); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		if got := pod.Links(t); len(got) != 1 {
			t.Errorf("links left: %v", got)
		}
		if got := r.Reservations(l.Name); len(got) != 0 {
			t.Errorf("addresses still allocated: %v", got)
		}
	})
}

// TestCheckDetects: CHECK fails once the link is down or an address is
// gone.
func TestCheckDetects(t *testing.T) {
	testnet.RequireKernel(t, "dummy")
	r := testnet.NewRuntime(t)
	l := list(t, r, "1.1.0", hostLocal)
	pod := r.Pod(t)
	a := r.Attach(pod, "eth0")
	res, err := r.Add(l, a)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	pod.MustRun("ip", "link", "set", "eth0", "down")
	if err := r.Check(l, a); err == nil || !strings.Contains(err.Error(), "down") {
		t.Errorf("CHECK with the link down: %v", err)
	}
	pod.MustRun("ip", "link", "set", "eth0", "up")
	cur, _ := current.NewResultFromResult(res)
	pod.MustRun("ip", "addr", "del", cur.IPs[0].Address.String(), "dev", "eth0")
	if err := r.Check(l, a); err == nil {
		t.Error("CHECK passes without the IPv4 address")
	}
	if err := r.Del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestErrors: without ipam ADD is a config error (7) and makes nothing; a
// taken CNI_IFNAME is code 4 and the link stays; DEL with the netns gone
// succeeds.
func TestErrors(t *testing.T) {
	testnet.RequireKernel(t, "dummy")
	r := testnet.NewRuntime(t)
	pod := r.Pod(t)
	if _, err := r.Add(list(t, r, "1.0.0", ""), r.Attach(pod, "eth0")); cniCode(err) != cni.ErrInvalidConfig || !strings.Contains(err.Error(), "ipam") {
		t.Errorf("ADD without ipam: %v, want code 7 naming ipam", err)
	}
	if got := pod.Links(t); len(got) != 1 {
		t.Errorf("links after the refused ADD: %v", got)
	}
	l := list(t, r, "1.0.0", hostLocal)
	a := r.Attach(pod, "eth0")
	if _, err := r.Add(l, a); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if _, err := r.Add(l, r.Attach(pod, "eth0")); cniCode(err) != cni.ErrInvalidEnv {
		t.Errorf("ADD of a taken ifname: %v, want code 4", err)
	}
	if err := r.Check(l, a); err != nil {
		t.Errorf("CHECK of the first attachment after the refused ADD: %v", err)
	}
	pod.Delete()
	if err := r.Del(l, a); err != nil {
		t.Errorf("DEL with the netns gone: %v", err)
	}
	if got := r.Reservations(l.Name); len(got) != 0 {
		t.Errorf("addresses still allocated: %v", got)
	}
}
