package portmap_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cnibox/cnibox/shared/testing/testnet"
)

// BenchmarkDelManyMappings: portmap DEL of a pod with n port mappings
// (TCP host ports 10000.., IPv4), for each backend; the ADD before each
// DEL is not timed. Teardown must be linear in the attachment.
//
//	CNIBOX_BINARY=... go test -run '^$' -bench DelManyMappings -benchtime 1x ./applets/portmap/
func BenchmarkDelManyMappings(b *testing.B) {
	for _, backend := range []string{"iptables", "nftables"} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", backend, n), func(b *testing.B) {
				r := testnet.NewRuntime(b)
				var pm []map[string]any
				for i := 0; i < n; i++ {
					pm = append(pm, map[string]any{"hostPort": 10000 + i, "containerPort": 80, "protocol": "tcp"})
				}
				conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "pmbench", "type": "portmap", "backend": backend,
					"runtimeConfig": map[string]any{"portMappings": pm},
					"prevResult": map[string]any{"cniVersion": "1.0.0", "interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/run/netns/x"}},
						"ips": []any{map[string]any{"address": "10.88.0.2/16", "interface": 0}}}})
				for b.Loop() {
					b.StopTimer()
					if out, errb, code := r.Exec("portmap", env("ADD", "big"), conf); code != 0 {
						b.Fatalf("ADD: %s %s", out, errb)
					}
					b.StartTimer()
					if out, errb, code := r.Exec("portmap", env("DEL", "big"), conf); code != 0 {
						b.Fatalf("DEL: %s %s", out, errb)
					}
				}
			})
		}
	}
}
