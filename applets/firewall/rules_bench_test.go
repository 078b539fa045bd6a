package firewall

import (
	"net/netip"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
)

// Rule generation of a firewall ADD, against an empty filter table and
// against one where the shared chains and 500 other pods' rules exist.
//
//	go test -run '^$' -bench PlanAdd ./applets/firewall/
func BenchmarkPlanAdd(b *testing.B) {
	a := &attachment{Admin: "CNI-ADMIN", IPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("fd00::2/128")}}
	busy := "*filter\n:CNI-FORWARD - [0:0]\n:CNI-ADMIN - [0:0]\n" +
		"-A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD\n" +
		"-A CNI-FORWARD -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN\n"
	for i := 0; i < 500; i++ {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 2)})
		for _, r := range podRules(netip.PrefixFrom(ip, 32)) {
			busy += "-A CNI-FORWARD " + r + "\n"
		}
	}
	busy += "COMMIT\n"
	tables := []struct {
		name string
		t    *iptables.Table
	}{{"empty", nil}, {"500-pods", iptables.ParseDump(busy)["filter"]}}
	for _, c := range tables {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bt := iptables.NewBatch("filter")
				planAdd(c.t, a, iptables.IPv4, bt)
				_ = bt.String()
			}
		})
	}
}
