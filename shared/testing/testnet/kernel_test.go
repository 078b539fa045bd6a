package testnet

import (
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

// TestKernelFeatures proves that the VM's kernel has every feature
// RequireKernel knows, and that a namespace made by the harness can hold
// each kind of link.
func TestKernelFeatures(t *testing.T) {
	RequireKernel(t, KernelFeatures...)
	n := NewNS(t, "probe")
	n.MustRun("ip", "link", "add", "d0", "type", "dummy")
	n.MustRun("ip", "link", "add", "iv0", "link", "d0", "type", "ipvlan", "mode", "l2")
	n.MustRun("ip", "link", "add", "d0.10", "link", "d0", "type", "vlan", "id", "10")
	n.MustRun("ip", "link", "add", "d0.20", "link", "d0", "type", "vlan", "proto", "802.1ad", "id", "20")
	out := n.MustRun("ip", "-d", "-o", "link", "show")
	for _, want := range []string{"ipvlan", "vlan protocol 802.1ad id 20", "vlan protocol 802.1Q id 10"} {
		if !strings.Contains(out, want) {
			t.Errorf("ip -d link show lacks %q:\n%s", want, out)
		}
	}
}

// TestUnknownKernelFeature: asking for a feature RequireKernel does not
// know is an error in the test, not a skip.
func TestUnknownKernelFeature(t *testing.T) {
	if err := probe("no-such-feature"); err == nil || !strings.Contains(err.Error(), "unknown kernel feature") {
		t.Fatalf("probe(no-such-feature) = %v", err)
	}
}
