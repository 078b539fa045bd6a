package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
)

func TestPlanAdd(t *testing.T) {
	a := &attachment{Admin: "CNI-ADMIN", IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("fd00::2/128")}}
	b := iptables.NewBatch("filter")
	planAdd(nil, a, iptables.IPv4, b)
	want := `*filter
:CNI-FORWARD - [0:0]
:CNI-ADMIN - [0:0]
-I FORWARD 1 -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-I CNI-FORWARD 1 -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
-A CNI-FORWARD -d 10.0.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.0.0.2/32 -j ACCEPT
COMMIT
`
	if b.String() != want {
		t.Errorf("empty table:\n%s\nwant:\n%s", b, want)
	}
	// Everything there already (the admin chain has the admin's own rules):
	// nothing is declared (which would flush) or added twice.
	saved := strings.ReplaceAll(strings.ReplaceAll(want, "-I FORWARD 1", "-A FORWARD"), "-I CNI-FORWARD 1", "-A CNI-FORWARD")
	d := iptables.ParseDump(strings.Replace(saved, "COMMIT", "-A CNI-ADMIN -s 10.9.9.9/32 -j DROP\nCOMMIT", 1))
	b = iptables.NewBatch("filter")
	planAdd(d["filter"], a, iptables.IPv4, b)
	if !b.Empty() {
		t.Errorf("second ADD:\n%s", b)
	}
	b = iptables.NewBatch("filter")
	planAdd(nil, a, iptables.IPv6, b)
	if !strings.Contains(b.String(), "-A CNI-FORWARD -s fd00::2/128 -j ACCEPT\n") || strings.Contains(b.String(), "10.0.0.2") {
		t.Errorf("v6:\n%s", b)
	}
}

func TestIsolationRules(t *testing.T) {
	s1, s2 := isolationRules("br0", "isolated")
	if len(s1) != 2 || s1[1] != `-i br0 -o br0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: isolated)" -j DROP` ||
		s2[0] != `-o br0 -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge|isolated)" -j DROP` {
		t.Errorf("isolated: %q %q", s1, s2)
	}
	if s1, _ := isolationRules("br0", "same-bridge"); len(s1) != 1 {
		t.Errorf("same-bridge: %q", s1)
	}
}

func TestValidChain(t *testing.T) {
	for s, ok := range map[string]bool{"CNI-ADMIN": true, "": false, "a b": false, `a"b`: false, strings.Repeat("x", 29): false} {
		if validChain(s) != ok {
			t.Errorf("validChain(%q) = %v", s, !ok)
		}
	}
}
