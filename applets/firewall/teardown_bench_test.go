package firewall_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// manyIPs is a prevResult with n pod addresses (n/2 IPv4, n/2 IPv6).
func manyIPs(n int) map[string]any {
	var ips []map[string]any
	for i := 0; i < n; i++ {
		addr := fmt.Sprintf("10.%d.%d.%d/32", 64+i/65536, i/256%256, i%256)
		if i%2 == 1 {
			addr = fmt.Sprintf("fd64::%x:%x/128", i/65536, i%65536)
		}
		ips = append(ips, map[string]any{"address": addr, "interface": 0})
	}
	return map[string]any{"cniVersion": "1.0.0", "interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/run/netns/x"}}, "ips": ips}
}

// BenchmarkDelManyAddresses: firewall DEL of a pod with n addresses, for
// each backend; the ADD before each DEL is not timed. Teardown must be
// linear in the attachment: before, DEL over iptables-nft searched the
// whole chain once per rule (1000 addresses 10.6 s, 3000 139.6 s, 10k
// killed after 60 s in an attack run).
//
//	CNIBOX_BINARY=... go test -run '^$' -bench DelManyAddresses -benchtime 1x ./applets/firewall/
func BenchmarkDelManyAddresses(b *testing.B) {
	for _, backend := range []string{"iptables", "nftables"} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", backend, n), func(b *testing.B) {
				r := testnet.NewRuntime(b)
				conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "fwbench", "type": "firewall",
					"backend": backend, "prevResult": manyIPs(n)})
				for b.Loop() {
					b.StopTimer()
					if out, errb, code := r.Exec("firewall", env("ADD", "big"), conf); code != 0 {
						b.Fatalf("ADD: %s %s", out, errb)
					}
					b.StartTimer()
					if out, errb, code := r.Exec("firewall", env("DEL", "big"), conf); code != 0 {
						b.Fatalf("DEL: %s %s", out, errb)
					}
				}
			})
		}
	}
}
