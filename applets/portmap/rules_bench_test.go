package portmap

import (
	"strings"
	"testing"

	"github.com/cnibox/cnibox/shared/iptables"
)

// Rule generation, the pure part of every portmap ADD: the per-pod chain's
// rules, and the whole plan against an empty node and against a node whose
// shared chains already exist (the common case: one pod among many).
//
//	go test -run '^$' -bench Rules ./applets/portmap/
func BenchmarkRules(b *testing.B) {
	a := testAttachment()
	b.Run("dnRules", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			dnRules(a, iptables.IPv4)
			dnRules(a, iptables.IPv6)
		}
	})
	first := func() iptables.Dump { return iptables.Dump{} }
	var shared iptables.Dump
	{
		nat, filter := planAdd(first(), a, iptables.IPv4)
		var dump strings.Builder
		for _, bt := range []*iptables.Batch{nat, filter} {
			s := bt.String()
			s = strings.ReplaceAll(s, "-I ", "-A ")
			dump.WriteString(s)
		}
		shared = iptables.ParseDump(dump.String())
	}
	for _, c := range []struct {
		name string
		d    iptables.Dump
	}{{"planAdd/empty-node", first()}, {"planAdd/shared-chains-exist", shared}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				nat, filter := planAdd(c.d, a, iptables.IPv4)
				_ = nat.String() + filter.String()
			}
		})
	}
}
